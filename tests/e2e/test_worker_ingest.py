"""Who gets in, what the worker survives, and what happens between publishes."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import m3u8
import pytest
from conftest import (
    WorkerProcess,
    codecs,
    http_get,
    launch_worker,
    needs_ffmpeg,
    publish,
    until,
)

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(120)]

StartWorker = Callable[..., WorkerProcess]


def segments(playlist: Path) -> list[str]:
    return [s.uri for s in m3u8.load(str(playlist)).segments]


def test_wrong_stream_key_is_refused_and_counted(start_worker: StartWorker) -> None:
    worker = start_worker()
    publisher = publish(worker.rtmp(key="not-the-key"), seconds=3)
    assert publisher.returncode != 0  # ffmpeg is told no at the publish command

    status = worker.status()
    assert status["ingest"]["counters"]["refused_wrong_key"] == 1
    assert status["ingest"]["counters"]["accepted"] == 0
    assert status["state"] == "idle" and status["sessions"] == 0
    metrics = worker.metrics()
    assert 'kubecast_ingest_refused_total{reason="wrong_key",stream="e2e"} 1.0' in metrics
    assert not (worker.out / "master.m3u8").exists()
    assert worker.process.poll() is None


def test_random_bytes_on_the_rtmp_port_do_not_stop_the_worker(start_worker: StartWorker) -> None:
    worker = start_worker()
    assert worker.rtmp_port is not None
    garbage = [
        os.urandom(4096),  # not even a handshake
        b"\x03" + os.urandom(1536) + os.urandom(3000),  # a handshake, then noise
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for payload in garbage:
        with socket.create_connection(("127.0.0.1", worker.rtmp_port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
    until(
        lambda: worker.status()["ingest"]["counters"]["protocol_errors"] >= 2,
        timeout=10,
        what="protocol errors counted",
    )
    assert worker.process.poll() is None

    publish(worker.rtmp(), seconds=4)
    status = worker.wait_state("idle")
    assert status["ingest"]["counters"]["accepted"] == 1
    assert status["lastError"] is None
    for name in ("360p", "180p"):
        playlist = worker.out / name / "index.m3u8"
        assert len(segments(playlist)) >= 2
        assert codecs(playlist) == {"h264", "aac"}


def test_a_worker_killed_mid_publish_continues_its_playlists_when_restarted(
    tmp_path: Path,
) -> None:
    """The kubelet restarts a killed container in the same pod, on the same media
    volume: the playlists it left open go on, after a discontinuity, as they would
    for a publisher that reconnects."""
    first = launch_worker(tmp_path, reconnect_window=30)
    try:
        publisher = publish(first.rtmp(), seconds=30, wait=False)
        playlist = first.out / "360p" / "index.m3u8"
        until(lambda: playlist.exists() and len(segments(playlist)) >= 3, timeout=30,
              what="three segments")  # fmt: skip
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        publisher.kill()
        publisher.wait()
    finally:
        first.stop()
    before = segments(playlist)
    assert "#EXT-X-ENDLIST" not in playlist.read_text()

    second = launch_worker(tmp_path, reconnect_window=30)
    try:
        assert second.status()["state"] == "reconnecting"  # not idle: the playlists are open
        publish(second.rtmp(), seconds=4)
        second.wait_state("reconnecting")
        after = segments(playlist)
        assert after[: len(before)] == before  # the same playlist, continued
        assert len(after) > len(before)
        assert playlist.read_text().count("#EXT-X-DISCONTINUITY") == 1
        assert second.wait_logged("continuing the playlists a previous run left open")
    finally:
        assert second.stop() == 0
    assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_publisher_returning_within_the_window_continues_the_same_playlist(
    start_worker: StartWorker,
) -> None:
    worker = start_worker(reconnect_window=30)
    publish(worker.rtmp(), seconds=4)
    between = worker.wait_state("reconnecting")
    assert between["publisher"] is None
    playlist = worker.out / "360p" / "index.m3u8"
    first = segments(playlist)
    assert first and "#EXT-X-ENDLIST" not in playlist.read_text()

    publish(worker.rtmp(), seconds=4)
    worker.wait_state("reconnecting")
    text = playlist.read_text()
    assert text.count("#EXT-X-DISCONTINUITY") == 1
    both = segments(playlist)
    assert both[: len(first)] == first  # the same playlist, continued
    epochs = [re.match(r"(\w+)-(\d+)\.ts$", uri) for uri in both]
    assert len({m.group(1) for m in epochs if m}) == 2
    numbers = [int(m.group(2)) for m in epochs if m]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert http_get(worker.url("/master.m3u8")).status == 200
    assert worker.status()["sessions"] == 2

    assert worker.stop() == 0  # stopping the worker ends what it started
    assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_a_publish_after_the_window_starts_new_playlists(start_worker: StartWorker) -> None:
    worker = start_worker(reconnect_window=0)
    publish(worker.rtmp(), seconds=3)
    worker.wait_state("idle")
    playlist = worker.out / "360p" / "index.m3u8"
    first = segments(playlist)
    assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")

    publish(worker.rtmp(), seconds=3)
    until(
        lambda: worker.status()["sessions"] == 2 and worker.status()["state"] == "idle",
        timeout=20,
        what="the second publish to end",
    )
    second = segments(playlist)
    text = playlist.read_text()
    assert "#EXT-X-DISCONTINUITY" not in text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert not set(first) & set(second)  # new names: caches never serve an old segment
    assert not any((playlist.parent / uri).exists() for uri in first)
    assert m3u8.load(str(playlist)).media_sequence == 0


def test_fmp4_segments_are_served_and_playable(start_worker: StartWorker) -> None:
    worker = start_worker(args=["--segment-type", "fmp4"])
    publish(worker.rtmp(), seconds=4)
    worker.wait_state("idle")
    playlist = worker.out / "360p" / "index.m3u8"
    parsed = m3u8.load(str(playlist))
    assert parsed.segment_map and parsed.segment_map[0].uri.endswith("-init.mp4")
    assert all(s.uri.endswith(".m4s") for s in parsed.segments)
    assert codecs(playlist) == {"h264", "aac"}
    init = http_get(worker.url(f"/360p/{parsed.segment_map[0].uri}"))
    media = http_get(worker.url(f"/360p/{parsed.segments[0].uri}"))
    assert init.status == media.status == 200
    assert init.headers["Content-Type"] == media.headers["Content-Type"] == "video/mp4"
    assert b"ftyp" in init.body[:16] and b"moof" in media.body[:1024]
    assert "#EXT-X-VERSION:7" in http_get(worker.url("/master.m3u8")).text
