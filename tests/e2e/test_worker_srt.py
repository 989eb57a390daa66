"""SRT ingest: real SRT callers (ffmpeg's libsrt, GStreamer's srtsink) to ``kubecast-worker``.

The worker listens on a loopback UDP port with the stream key as the SRT passphrase
(through Haivision's srt-live-transmit, see workers/kubecast_worker/srt.py). A caller
with a wrong or no passphrase is refused in the SRT handshake and counted; the right
one goes live, and every rendition is HLS that ffprobe reads at its size.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    http_get,
    launch_configured_worker,
    needs_ffmpeg,
    until,
    video_stream,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(180)]

#: The shape of a generated key (secrets.token_urlsafe(32)): a valid SRT passphrase.
KEY = "Zt1Yq8u3Kc0bWf5nR2sV7xA9dL4mP6hE-_oQeJgTiUy"
SMALL = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ffmpeg_srt(url: str, *, seconds: float) -> list[str]:
    """ffmpeg as an SRT caller: H.264 + AAC in MPEG-TS, at real time."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "50",
        "-c:a", "aac", "-b:a", "128k",
        "-f", "mpegts", url,
    ]  # fmt: skip


def counters(worker: WorkerProcess) -> dict[str, int]:
    return worker.status()["ingest"]["counters"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    port = free_udp_port()
    worker = launch_configured_worker(
        tmp_path_factory.mktemp("srt"),
        key=KEY,
        ingest={"listen": f"127.0.0.1:{port}", "protocol": "srt"},
    )
    try:
        yield worker
    finally:
        worker.stop()


def srt_url(worker: WorkerProcess, query: str = "") -> str:
    return f"srt://127.0.0.1:{worker.rtmp_port}" + (f"?{query}" if query else "")


def test_status_shows_the_srt_url_without_the_passphrase(worker: WorkerProcess) -> None:
    status = worker.status()
    assert status["ingest"]["mode"] == "push"
    assert status["ingest"]["url"] == srt_url(worker)
    assert status["ready"] is True


def test_wrong_and_missing_passphrases_are_refused_and_counted(worker: WorkerProcess) -> None:
    before = counters(worker)["refused_wrong_key"]
    for query in ("passphrase=not-the-right-key", ""):
        caller = subprocess.run(
            ffmpeg_srt(srt_url(worker, query), seconds=2),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert caller.returncode != 0
        assert "Input/output error" in caller.stderr  # what ffmpeg's user sees
    until(
        lambda: counters(worker)["refused_wrong_key"] == before + 2,
        timeout=10,
        what="two refusals counted",
    )
    metrics = worker.metrics()
    assert f'reason="wrong_key",stream="e2e"}} {before + 2}.0' in metrics or (
        f'stream="e2e",reason="wrong_key"}} {before + 2}.0' in metrics
    ), metrics
    assert worker.status()["state"] == "idle"  # and the worker is still serving


def test_ffmpeg_over_srt_goes_live_with_every_rendition(worker: WorkerProcess) -> None:
    caller = subprocess.Popen(
        ffmpeg_srt(srt_url(worker, f"passphrase={KEY}"), seconds=8),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        live = until(
            lambda: (
                (s := worker.status())["state"] == "live"
                and all(r.get("segments", 0) >= 1 for r in s["renditions"])
                and s
            ),
            timeout=30,
            what="live with a segment in every rendition",
        )
        assert live["publisher"].startswith("127.0.0.1:")
        assert live["input"]["videoCodec"] == "h264" and live["input"]["audioCodec"] == "aac"
        # A second caller while the first is live gets no answer.
        second = subprocess.run(
            ffmpeg_srt(srt_url(worker, f"passphrase={KEY}&connect_timeout=2000"), seconds=2),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode != 0
        assert worker.status()["publisher"] == live["publisher"]
        assert caller.wait(timeout=40) == 0, caller.stderr.read() if caller.stderr else b""
    finally:
        caller.kill()
        caller.wait()
    worker.wait_state("idle", timeout=30)  # SRT's shutdown, or its 5 s peer idle timeout
    for name, (width, height) in SMALL.items():
        playlist = worker.out / name / "index.m3u8"
        video = video_stream(playlist)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
    assert counters(worker)["accepted"] >= 1


def test_gstreamer_srtsink_publishes_too(worker: WorkerProcess) -> None:
    assert shutil.which("gst-launch-1.0"), "GStreamer: hack/system-packages.sh --tests installs it"
    accepted = counters(worker)["accepted"]
    pipeline = (
        "videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=640,height=360,"
        "framerate=25/1 ! x264enc tune=zerolatency key-int-max=50 ! "
        # SPS/PPS before every keyframe: a caller may connect after the first one
        "h264parse config-interval=-1 ! mux. "
        "audiotestsrc is-live=true num-buffers=280 ! audioconvert ! avenc_aac ! aacparse ! mux. "
        # alignment=7: 7 TS packets (1316 bytes) per buffer, the most one SRT message holds
        f'mpegtsmux name=mux alignment=7 ! srtsink uri="srt://127.0.0.1:{worker.rtmp_port}'
        f'?mode=caller&passphrase={KEY}"'
    )
    caller = subprocess.Popen(
        ["gst-launch-1.0", "-q", *pipeline.split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        until(lambda: worker.status()["state"] == "live", timeout=30, what="live from GStreamer")
        assert caller.wait(timeout=40) == 0, caller.stderr.read() if caller.stderr else b""
    finally:
        caller.kill()
        caller.wait()
    worker.wait_state("idle", timeout=30)
    assert counters(worker)["accepted"] == accepted + 1
    playlist = worker.out / "180p" / "index.m3u8"
    assert video_stream(playlist)["height"] == 180


def test_the_passphrase_never_appears_in_logs_status_or_metrics(worker: WorkerProcess) -> None:
    seen = "\n".join(worker.raw) + json.dumps(worker.status()) + worker.metrics()
    seen += http_get(worker.url("/player/status")).text
    assert KEY not in seen
    assert any(entry.get("msg") == "srt publisher accepted" for entry in worker.logs)


def test_a_key_too_short_for_srt_is_a_clear_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("short")
    run = subprocess.run(
        [sys.executable, "-m", "kubecast_worker.cli", "run", "--listen", f"srt://127.0.0.1:{free_udp_port()}",
         "--stream-key-file", str(key_file), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode != 0
    assert "10 to 79 characters" in run.stderr and "short" not in run.stderr
