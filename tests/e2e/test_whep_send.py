"""The WHEP send path (whep_send): what viewers of one rendition notice.

Each frame is packetised once for the rendition and sent to each viewer in one loop,
past aiortc's per-packet coroutines, while aiortc still runs each viewer's RTCP. So:
two viewers at once and a third that joins late all decode the rendition at its size
and rate (the first two its audio too), the late one from a keyframe within a GOP,
the others without a hitch when it joins; and a viewer that loses packets gets them
again (its NACKs are answered from the stream's history) and keeps its picture rate.

ffmpeg publishes over RTMP (TCP: the lossy test's loss falls on WebRTC alone); the
viewers are aiortc (whep_client.py), in the worker's network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_PROFILE, WorkerProcess, needs_ffmpeg, publisher_command
from in_namespace import scrape, wait_state, whep_worker

from tests.integration import netns

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(300)]

KEY = "whep-send-k3y-4b8d1e7a"
ADDRESS = "10.215.0.1"
VIEWER = Path(__file__).with_name("whep_client.py")
SMALL = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}
GOP = float(SMALL_PROFILE["gopSeconds"])
FPS = 25  # publisher_command's rate; the ladder keeps it
WATCH = 10.0


@pytest.fixture
def namespace() -> Iterator[str]:
    with netns.private_namespace(f"kubecast-whepsend-{os.getpid()}", ADDRESS) as path:
        yield path


@pytest.fixture
def worker(namespace: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with whep_worker(namespace, ADDRESS, tmp_path, key=KEY, protocol="rtmp") as w:
        url = f"rtmp://{ADDRESS}:{w.rtmp_port}/live/{KEY}"
        ffmpeg = subprocess.Popen(
            ["nsenter", f"--net={namespace}", "--", *publisher_command(url, seconds=60)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_state(w, namespace, "live")
            yield w
        finally:
            ffmpeg.kill()
            ffmpeg.wait()


def watch(
    namespace: str,
    worker: WorkerProcess,
    rendition: str,
    seconds: float,
    *,
    audio: bool = False,
    count_only: bool = False,
) -> Future[Any]:
    """whep_client.py in the namespace (video, and Opus if ``audio``; counting the RTP, not
    decoding it, if ``count_only``), started now; its one JSON line."""

    def run() -> dict[str, Any]:
        done = subprocess.run(
            ["nsenter", f"--net={namespace}", "--", sys.executable, str(VIEWER),
             f"{worker.http}/whep/{rendition}", "--seconds", str(seconds),
             *([] if audio else ["--no-audio"]), *(["--count-only"] if count_only else [])],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    return ThreadPoolExecutor(1).submit(run)


def assert_watched(result: dict[str, Any], rendition: str) -> None:
    assert result["event"] == "watched", result
    assert result["sizes"] == [list(SMALL[rendition])], result
    # every picture once, at the rendition's rate
    assert FPS - 2 <= result["distinct"] / result["video_seconds"] <= FPS + 2, result


def test_viewers_of_one_rendition_and_a_late_one_decode_it_at_its_size_and_rate(
    worker: WorkerProcess, namespace: str
) -> None:
    first = [watch(namespace, worker, "360p", WATCH, audio=True) for _ in range(2)]
    time.sleep(4)  # the first two are watching
    late = watch(namespace, worker, "360p", 5).result()
    results = [f.result() for f in first]
    for result in [*results, late]:
        assert_watched(result, "360p")
    # the late viewer starts at the next keyframe: within a GOP of its connection
    assert late["connected_to_first_frame_seconds"] <= GOP + 0.5, late
    # and its joining costs the others no picture: no gap longer than a few frames
    for result in results:
        assert result["max_gap_seconds"] <= 0.2, result
        # and the audio, Opus encoded once, decoded: 20 ms frames for most of the time
        assert result["audio_rates"] == [48000], result
        assert result["audio_frames"] >= 0.6 * 50 * WATCH, result


def test_a_viewer_that_loses_packets_gets_them_again_and_keeps_its_picture_rate(
    worker: WorkerProcess, namespace: str
) -> None:
    """3 % of the datagrams in the namespace dropped (nftables, on the way out: the
    worker's RTP and the viewer's RTCP alike; RTMP is TCP): the viewer NACKs what it
    misses, the worker sends those packets again, and the viewer decodes (nearly) every
    picture."""
    rules = """table inet whep_loss {
        chain out {
            type filter hook output priority 0
            meta l4proto udp numgen random mod 100 < 3 drop
        }
    }"""
    subprocess.run(
        ["ip", "netns", "exec", Path(namespace).name, "nft", "-f", "-"],
        input=rules, text=True, check=True,
    )  # fmt: skip
    result = watch(namespace, worker, "360p", WATCH).result()
    assert_watched(result, "360p")
    # Most of the 10 s, every picture: unanswered, the NACKs leave aiortc's receiver
    # waiting on frames it cannot complete (here: a quarter of the pictures, then none).
    assert result["distinct"] >= 0.75 * FPS * WATCH, json.dumps(result)
    metrics = scrape(worker, namespace)
    retransmitted = metrics[
        ("kubecast_whep_retransmitted_packets_total", frozenset({("rendition", "360p")}))
    ]
    assert retransmitted > 0, metrics


def test_a_counting_viewer_sees_every_packet_and_a_keyframe_each_gop(
    worker: WorkerProcess, namespace: str
) -> None:
    """The benchmark's light viewer (whep_client --count-only, how many viewers one worker
    holds) counts what a decoding viewer would see: every packet, every picture at the
    rendition's rate, one keyframe per GOP, the first within a GOP of connecting."""
    counted = watch(namespace, worker, "360p", WATCH, count_only=True)
    decoded = watch(namespace, worker, "360p", WATCH).result()
    result = counted.result()
    assert result["event"] == "watched" and result["lost"] == 0, result
    assert FPS - 2 <= result["distinct"] / result["video_seconds"] <= FPS + 2, result
    assert abs(result["distinct"] - decoded["distinct"]) <= FPS, (result, decoded)
    assert result["packets"] > result["distinct"], result  # a keyframe takes several
    assert abs(result["keyframes"] - result["video_seconds"] / GOP) <= 1.5, result
    assert result["connected_to_first_frame_seconds"] <= GOP + 0.5, result
