"""Restream: the worker sends a copy of a rendition to another RTMP destination.

The destination is a second kubecast worker (it checks the stream key, as YouTube
or Twitch would) with a single passthrough rendition, so what arrived is exactly
what was sent; ffprobe reads it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    codecs,
    free_port,
    launch_configured_worker,
    needs_ffmpeg,
    publish,
    until,
    video_stream,
)

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(150)]

TARGET_KEY = "yt-key-8c2e41f7"
PASSTHROUGH = {
    "gopSeconds": 1,
    "segmentSeconds": 2,
    "renditions": [{"name": "source", "passthrough": True}],
}


def test_a_live_stream_is_restreamed_to_another_rtmp_server_with_its_key(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "target-key"
    key_file.write_text(TARGET_KEY + "\n")
    receiver = launch_configured_worker(
        tmp_path / "receiver", key=TARGET_KEY, stream="youtube", app="live2", profile=PASSTHROUGH
    )
    target = {
        "name": "youtube",
        "url": f"rtmp://127.0.0.1:{receiver.rtmp_port}/live2",
        "streamKeyFile": str(key_file),
        "rendition": "180p",
    }
    worker = launch_configured_worker(
        tmp_path / "worker", key="source-key-51d0", stream="studio", restream=[target]
    )
    try:
        assert worker.status()["restream"][0]["state"] == "Idle"
        publisher = publish(worker.rtmp(key="source-key-51d0"), seconds=16, wait=False)
        target = until(
            lambda: (t := worker.status()["restream"][0])["state"] == "Live" and t,
            timeout=40,
            what="the restream target Live",
        )
        assert target["url"] == f"rtmp://127.0.0.1:{receiver.rtmp_port}/live2"
        received = receiver.wait_state("live", timeout=20)
        assert received["ingest"]["counters"]["refused_wrong_key"] == 0
        assert publisher.wait(timeout=60) == 0
        # The copy ends with the publish: the target goes back to Idle, not Retrying.
        worker.wait_state("idle", timeout=20)
        until(
            lambda: worker.status()["restream"][0]["state"] == "Idle",
            timeout=30,
            what="the restream target Idle after the publish",
        )
        receiver.wait_state("idle", timeout=30)
        assert worker.status()["restream"][0]["restarts"] == 0
    finally:
        worker.stop()
        receiver.stop()

    playlist = receiver.out / "source" / "index.m3u8"
    video = video_stream(playlist)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 180)
    assert codecs(playlist) == {"h264", "aac"}
    segments = playlist.read_text().count("#EXTINF")
    assert segments >= 3, f"only {segments} segments arrived"
    logged = "\n".join(worker.raw + receiver.raw)
    assert TARGET_KEY not in logged


def test_an_unreachable_target_is_retried_and_reported_while_the_stream_plays_on(
    tmp_path: Path,
) -> None:
    nobody = free_port()  # nothing listens here
    worker = launch_configured_worker(
        tmp_path,
        key="source-key-77aa",
        stream="studio",
        restream=[{"name": "gone", "url": f"rtmp://127.0.0.1:{nobody}/live"}],
    )
    try:
        publisher = publish(worker.rtmp(key="source-key-77aa"), seconds=12, wait=False)
        failing = until(
            lambda: (t := worker.status()["restream"][0])["state"] == "Retrying" and t,
            timeout=40,
            what="the restream target Retrying",
        )
        assert failing["lastError"], failing
        assert worker.status()["state"] == "live", "a failing copy must not stop the stream"
        assert worker.wait_logged("restream target failed; retrying")["target"] == "gone"
        assert publisher.wait(timeout=60) == 0
        worker.wait_state("idle", timeout=20)
    finally:
        worker.stop()
