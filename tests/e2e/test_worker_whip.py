"""WHIP ingest: a real WebRTC publisher (aiortc) to ``kubecast-worker``, in a network namespace.

aioice never offers 127.0.0.1 as an ICE candidate, and the machine's own
interfaces are never a test target, so the worker and its publishers run in a
network namespace of this module's own: a veth pair whose one address,
10.213.0.1, exists only there. Both run under ``nsenter --net``; the test talks
to the worker's admin port from a thread that entered the namespace
(tests/integration/netns.py), and reads the HLS it writes from the disk.

The publisher (whip_client.py) is aiortc sending a file's picture and tone as a
browser would: VP8 or H.264 video and Opus audio, encoded by aiortc at real time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    ffprobe,
    launch_configured_worker,
    needs_ffmpeg,
    publisher_command,
    timing,
    until,
    video_stream,
)
from in_namespace import audio_packets, scrape, status, wait_state, whep_viewers, whep_worker

from tests.integration import netns

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(300)]

KEY = "whip-k3y-7c1e0b5d2a9f4386"
ADDRESS = "10.213.0.1"
CLIENT = Path(__file__).with_name("whip_client.py")
VIEWER = Path(__file__).with_name("whep_client.py")
SMALL = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}
#: The worker ends a session this long after the last frame (whip.DEFAULT_MEDIA_TIMEOUT).
MEDIA_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A network namespace with one non-loopback address, gone after the module."""
    with netns.private_namespace(f"kubecast-whip-{os.getpid()}", ADDRESS) as path:
        yield path


@pytest.fixture(scope="module")
def worker(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with whep_worker(namespace, ADDRESS, tmp_path_factory.mktemp("whip"), key=KEY) as w:
        yield w


# -- talking to the worker in its namespace -------------------------------------------------


class Publisher:
    """whip_client.py in the namespace; its JSON events, as they come."""

    def __init__(self, namespace: str, worker: WorkerProcess, *args: str, key: str = KEY) -> None:
        url = f"http://{ADDRESS}:{worker.rtmp_port}/whip/live"
        self.process = subprocess.Popen(
            ["nsenter", f"--net={namespace}", "--", sys.executable, str(CLIENT), url,
             *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "WHIP_TOKEN": key},  # not in argv, where ps would show it
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend(line.decode(errors="replace") for line in self.process.stderr)

    def wait(self, event: str, timeout: float = 30) -> dict[str, Any]:
        found = until(
            lambda: (
                next((e for e in self.events if e["event"] == event), None)
                or self.process.poll() is not None
            ),
            timeout=timeout,
            what=f"publisher event {event!r}",
        )
        assert isinstance(found, dict), f"publisher exited: {self.events} {self.errors[-10:]}"
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def finish(self, timeout: float = 60) -> None:
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.kill()
        assert self.process.returncode == 0, self.errors[-20:]


def watch(namespace: str, worker: WorkerProcess, rendition: str, seconds: float) -> Any:
    """whep_client.py in the namespace, started now; ``.result()`` is its one JSON line."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{worker.http}/whep/{rendition}"

    def run() -> dict[str, Any]:
        done = subprocess.run(
            ["nsenter", f"--net={namespace}", "--", sys.executable, str(VIEWER), url,
             "--seconds", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    return ThreadPoolExecutor(1).submit(run)


def counters(worker: WorkerProcess, namespace: str) -> dict[str, int]:
    return status(worker, namespace)["ingest"]["counters"]  # type: ignore[no-any-return]


# -- the tests -------------------------------------------------------------------------------


def test_status_shows_the_whip_url(worker: WorkerProcess, namespace: str) -> None:
    current = status(worker, namespace)
    assert current["ingest"]["url"] == f"http://{ADDRESS}:{worker.rtmp_port}/whip/live"
    assert current["state"] == "idle" and current["ready"] is True


def test_a_wrong_key_gets_401_and_is_counted(worker: WorkerProcess, namespace: str) -> None:
    before = counters(worker, namespace)
    publisher = Publisher(namespace, worker, key="not-the-key")
    refused = publisher.wait("refused")
    publisher.finish()
    assert refused["status"] == 401
    after = counters(worker, namespace)
    assert after["refused_wrong_key"] == before["refused_wrong_key"] + 1
    assert after["accepted"] == before["accepted"]
    assert status(worker, namespace)["state"] == "idle"
    assert worker.process.poll() is None


def test_a_vp8_publisher_goes_live_and_every_rendition_is_hls_with_audio(
    worker: WorkerProcess, namespace: str
) -> None:
    publisher = Publisher(namespace, worker, "--codec", "vp8", "--seconds", "10")
    publisher.wait("answered")
    wait_state(worker, namespace, "live")
    live = status(worker, namespace)
    assert live["input"]["videoCodec"] == "vp8" and live["input"]["audioCodec"] == "opus"
    # A second publisher while this one is live: 409, counted, and the first stays on.
    busy_before = counters(worker, namespace)["refused_busy"]
    second = Publisher(namespace, worker)
    assert second.wait("refused")["status"] == 409
    second.finish()
    assert counters(worker, namespace)["refused_busy"] == busy_before + 1
    assert status(worker, namespace)["state"] == "live"
    assert publisher.wait("deleted", timeout=40)["status"] == 200
    wait_state(worker, namespace, "idle")
    publisher.finish()
    for name, (width, height) in SMALL.items():
        playlist = worker.out / name / "index.m3u8"
        video = video_stream(playlist)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
        took = timing(playlist)
        # Ten seconds were sent (less the first frames before ICE and DTLS were up).
        assert 6.0 < took.video_seconds < 11.0, took
        assert abs(took.audio_seconds - took.video_seconds) < 0.5, took
    assert KEY not in "\n".join(worker.raw)


def test_an_h264_publisher_goes_live(worker: WorkerProcess, namespace: str) -> None:
    publisher = Publisher(namespace, worker, "--codec", "h264", "--seconds", "6")
    wait_state(worker, namespace, "live")
    assert status(worker, namespace)["input"]["videoCodec"] == "h264"
    publisher.wait("deleted", timeout=30)
    wait_state(worker, namespace, "idle")
    publisher.finish()
    video = video_stream(worker.out / "360p" / "index.m3u8")
    assert (video["width"], video["height"]) == SMALL["360p"]


def test_a_vanished_publisher_ends_its_session_and_the_next_goes_live(
    worker: WorkerProcess, namespace: str
) -> None:
    gone = Publisher(namespace, worker, "--no-delete")
    gone.wait("connected")
    wait_state(worker, namespace, "live")
    time.sleep(2)  # some media first: the session is well under way
    gone.kill()  # no DELETE, no DTLS close: it just stops sending
    killed = time.monotonic()
    ended = wait_state(worker, namespace, "idle", timeout=30)
    # The media timeout, plus the pipeline's flush; ICE consent alone would take ~30 s.
    assert ended - killed < MEDIA_TIMEOUT + 5, ended - killed
    assert any(line.get("msg") == "whip publisher gone: no_media" for line in worker.logs), (
        worker.raw[-20:]
    )
    after = Publisher(namespace, worker, "--seconds", "4")
    assert after.wait("answered")["status"] == 201
    wait_state(worker, namespace, "live")
    after.wait("deleted", timeout=30)
    wait_state(worker, namespace, "idle")
    after.finish()


def test_whep_viewers_share_each_renditions_encode_at_its_size(
    worker: WorkerProcess, namespace: str
) -> None:
    """Three viewers (two of 360p, one of 180p) of one WHIP publisher, each decoding
    the H.264 of its rendition's one encoder: at that rendition's size, from a keyframe."""
    heard = audio_packets(scrape(worker, namespace))
    refused = watch(namespace, worker, "360p", 1).result()
    assert (refused["event"], refused["status"]) == ("refused", 404)  # nothing is live yet
    publisher = Publisher(namespace, worker, "--seconds", "25")
    wait_state(worker, namespace, "live")
    viewers = {
        "360p-a": watch(namespace, worker, "360p", 8),
        "360p-b": watch(namespace, worker, "360p", 8),
        "180p": watch(namespace, worker, "180p", 8),
    }
    results = {name: viewer.result() for name, viewer in viewers.items()}
    for name, result in results.items():
        width, height = SMALL[name.split("-")[0]]
        assert result["event"] == "watched", result
        assert result["sizes"] == [[width, height]], result
        # 8 s at 25 fps is 200 frames; a viewer starts at a keyframe (1 s GOP) once
        # ICE and DTLS are up, and this machine is shared.
        assert result["frames"] >= 75, result
        assert result["first_frame_seconds"] < 4.0, result
        # Opus, decoded: 20 ms frames for most of the time watched.
        assert result["audio_rates"] == [48000] and result["audio_frames"] >= 150, result
        # Every picture once, at the rendition's rate (the publisher's 25 fps).
        assert 23 <= result["distinct"] / result["video_seconds"] <= 27, result
        assert result["deleted"] == 200, result
    left = [e for e in worker.logs if e.get("msg", "").startswith("whep viewer left")]
    assert len(left) >= 3 and left[-1]["viewers"] == 0, left
    # What they heard was the publisher's own Opus, passed on: never decoded and encoded
    # (the counter counts a packet once, however many listen to it).
    audio = audio_packets(scrape(worker, namespace), since=heard)
    assert audio["publisher"] >= 150 and audio["encoded"] == 0, audio
    publisher.wait("deleted", timeout=40)
    wait_state(worker, namespace, "idle")
    publisher.finish()


def test_metrics_count_whep_viewers_while_they_watch_and_after_they_leave(
    worker: WorkerProcess, namespace: str
) -> None:
    """/metrics over HTTP: a gauge of viewers per rendition that follows real aiortc viewers
    as they join and leave, and counters of sessions started, ended and refused."""
    before = scrape(worker, namespace)

    def count(name: str, **labels: str) -> float:
        """How much the sample ``name{labels}`` grew since the test began."""
        key = (name, frozenset(labels.items()))
        return scrape(worker, namespace).get(key, 0.0) - before.get(key, 0.0)

    refused = watch(namespace, worker, "360p", 1).result()  # nothing is live yet
    assert refused["status"] == 404, refused
    assert count("kubecast_whep_sessions_refused_total", reason="not_playing") == 1
    publisher = Publisher(namespace, worker, "--seconds", "25")
    wait_state(worker, namespace, "live")
    assert whep_viewers(scrape(worker, namespace)) == {"360p": 0, "180p": 0}
    viewers = [watch(namespace, worker, rendition, 8) for rendition in ("360p", "360p", "180p")]
    watching = until(
        lambda: whep_viewers(scrape(worker, namespace)) == {"360p": 2, "180p": 1},
        timeout=15,
        what="three viewers in /metrics",
        every=0.2,
    )
    assert watching
    results = [viewer.result() for viewer in viewers]
    assert all(r["event"] == "watched" and r["deleted"] == 200 for r in results), results
    after = scrape(worker, namespace)
    assert whep_viewers(after) == {"360p": 0, "180p": 0}
    for rendition, n in (("360p", 2), ("180p", 1)):
        assert count("kubecast_whep_sessions_started_total", rendition=rendition) == n
        assert (
            count("kubecast_whep_sessions_ended_total", rendition=rendition, reason="viewer_left")
            == n
        )
    assert count("kubecast_whep_sessions_refused_total", reason="not_playing") == 1
    publisher.wait("deleted", timeout=40)
    wait_state(worker, namespace, "idle")
    publisher.finish()
    # Idle: no rendition to join, so no viewer series; the counters stay.
    idle = scrape(worker, namespace)
    assert whep_viewers(idle) == {}
    assert count("kubecast_whep_sessions_started_total", rendition="360p") == 2


def test_a_publisher_back_within_the_reconnect_window_continues_the_playlists(
    namespace: str, tmp_path: Path
) -> None:
    """As for RTMP: the playlists stay open while the stream is reconnecting, and the
    next WHIP publisher continues them after a discontinuity."""
    worker = launch_configured_worker(
        tmp_path,
        key=KEY,
        reconnect_window=60,
        ingest={"listen": f"{ADDRESS}:0", "protocol": "whip"},
        http=f"{ADDRESS}:0",
        admin=f"{ADDRESS}:0",
        wrap=["nsenter", f"--net={namespace}", "--"],
    )
    try:
        for _ in range(2):
            publisher = Publisher(namespace, worker, "--seconds", "5")
            wait_state(worker, namespace, "live")
            publisher.wait("deleted", timeout=30)
            wait_state(worker, namespace, "reconnecting")
            publisher.finish()
        playlist = (worker.out / "360p" / "index.m3u8").read_text()
        assert "#EXT-X-DISCONTINUITY" in playlist and "#EXT-X-ENDLIST" not in playlist
    finally:
        worker.stop()
    video = video_stream(worker.out / "360p" / "index.m3u8")  # ended by the stop
    assert (video["width"], video["height"]) == SMALL["360p"]


def test_an_rtmp_publishers_renditions_play_by_whep(namespace: str, tmp_path: Path) -> None:
    """WHEP does not need WHIP: ffmpeg publishes over RTMP, an aiortc viewer watches 180p
    and hears the audio. The profile offers only 180p to WebRTC (``webrtc: true``): 360p is
    refused to WHEP viewers and keeps its B-frames for HLS; 180p is made without."""
    rungs = [dict(r) for r in SMALL_PROFILE["renditions"]]
    rungs[0]["preset"] = "veryfast"  # B-frames, where the tests' ultrafast has none
    rungs[1]["webrtc"] = True
    profile = {**SMALL_PROFILE, "renditions": rungs}
    with whep_worker(namespace, ADDRESS, tmp_path, key=KEY, protocol="rtmp", profile=profile) as w:
        url = f"rtmp://{ADDRESS}:{w.rtmp_port}/live/{KEY}"
        ffmpeg = subprocess.Popen(
            ["nsenter", f"--net={namespace}", "--", *publisher_command(url, seconds=20)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_state(w, namespace, "live")
            refused = watch(namespace, w, "360p", 1).result()
            assert (refused["event"], refused["status"]) == ("refused", 404), refused
            result = watch(namespace, w, "180p", 6).result()
            assert result["event"] == "watched", result
            assert result["sizes"] == [list(SMALL["180p"])], result
            assert result["frames"] >= 50 and result["first_frame_seconds"] < 4.0, result
            # The publisher's AAC at 44.1 kHz, decoded once and encoded to Opus once.
            assert result["audio_rates"] == [48000] and result["audio_frames"] >= 100, result
            audio = audio_packets(scrape(w, namespace))
            assert audio["encoded"] >= 100 and audio["publisher"] == 0, audio
        finally:
            ffmpeg.kill()
            ffmpeg.wait()
    worker = w
    kinds = {name: picture_types(worker.out / name / "index.m3u8") for name in ("360p", "180p")}
    assert kinds["360p"]["B"] > 0, kinds  # not offered to WebRTC: the preset's B-frames
    assert kinds["180p"]["B"] == 0 and kinds["180p"]["P"] > 0, kinds


def picture_types(playlist: Path) -> Counter[str]:
    """How many I, P and B pictures the rendition's segments hold (ffprobe decodes them)."""
    frames = ffprobe(playlist, "frame=pict_type")["frames"]
    return Counter(f.get("pict_type", "?") for f in frames)
