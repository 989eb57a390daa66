"""The recorder against the real pipeline: ffmpeg publishes RTMP → worker → recorder.

Every recorder here is its own process (``python -m kubecast_worker.recorder.cli``),
as in its pod, and is checked from outside: its HTTP API, the files it writes,
and what ffprobe reads from them. The ladder is tiny (320x180 and 256x144,
ultrafast, 1 s segments) so that the whole file stays light on two cores.

Recording the unwritable and the full volume needs a private mount namespace
(``unshare -m``, root): a read-only bind mount and a small tmpfs. Where that is
not allowed, the unwritable case falls back to a path under a regular file and
the full-disk case is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import m3u8
import pytest
from conftest import (
    REPO,
    WorkerProcess,
    free_port,
    http_get,
    launch_worker,
    needs_ffmpeg,
    publish,
    until,
)

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(90)]

PROFILE: dict[str, Any] = {
    "gopSeconds": 1,
    "segmentSeconds": 1,
    "audio": {"codec": "aac", "sampleRate": 48000, "channels": 2},
    "renditions": [
        {"name": "180p", "width": 320, "height": 180, "videoBitrate": 200, "maxrate": 250,
         "bufsize": 400, "audioBitrate": 64, "fps": 25, "preset": "ultrafast",
         "profile": "main"},
        {"name": "144p", "width": 256, "height": 144, "videoBitrate": 100, "maxrate": 150,
         "bufsize": 200, "audioBitrate": 48, "fps": 25, "preset": "ultrafast",
         "profile": "main"},
    ],
}  # fmt: skip
SEGMENT_S = 1.0
PUBLISHER_SIZE = "320x180"


# -- the recorder process ---------------------------------------------------------------


@dataclass
class Recorder:
    process: subprocess.Popen[bytes]
    out: Path
    http: str
    log: Path
    command: list[str]
    #: The bearer token POST /stop needs (the operator's per-Recording Secret, here a file).
    token: str = ""

    def status(self) -> dict[str, Any]:
        reply = http_get(self.http + "/status")
        assert reply.status == 200, reply
        status: dict[str, Any] = reply.json()
        return status

    def answers(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError):
            return self.status()
        return None

    def metrics(self) -> str:
        reply = http_get(self.http + "/metrics")
        assert reply.status == 200, reply
        return reply.text

    def post_stop(self) -> dict[str, Any]:
        reply = http_get(
            self.http + "/stop", method="POST", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert reply.status in (200, 202), reply
        status: dict[str, Any] = reply.json()
        return status

    def wait_for(self, what: str, condition: Any, *, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"recorder exited ({self.process.returncode}):\n{self.tail()}")
            status = self.answers()
            return status if status is not None and condition(status) else None

        try:
            found: dict[str, Any] = until(check, timeout=timeout, what=what, every=0.2)
            return found
        except AssertionError as e:
            raise AssertionError(f"{e}\nlast status: {self.answers()}\n{self.tail()}") from None

    def wait_segments(self, count: int, *, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(f"{count} recorded segments", lambda s: s["segments"] >= count,
                             timeout=timeout)  # fmt: skip

    def wait_state(self, state: str, *, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(f"state {state}", lambda s: s["state"] == state, timeout=timeout)

    def terminate(self, *, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def logs(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found


def launch(
    out: Path,
    source: str,
    *args: str,
    formats: str = "hls,mp4",
    idle_timeout: float = 30,
    port: int | None = None,
    wrapper: list[str] | None = None,
) -> Recorder:
    port = port or free_port()
    # NB: beside the volume, not in it: a test may mount a small tmpfs over the
    # volume in the recorder's namespace (as a Secret is its own mount in a pod).
    token_file = out.parent.parent / f"{out.parent.name}-{out.name}-stop-token"
    out.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(secrets.token_hex(16))
    command = [
        sys.executable, "-m", "kubecast_worker.recorder.cli",
        "--source", source, "--out", str(out), "--formats", formats,
        "--idle-timeout", str(idle_timeout),
        "--admin", f"0.0.0.0:{port}", "--bind-host", "127.0.0.1",
        "--stop-token-file", str(token_file),
        *args,
    ]  # fmt: skip
    return start(command, out=out, port=port, wrapper=wrapper)


def start(
    command: list[str], *, out: Path, port: int, wrapper: list[str] | None = None
) -> Recorder:
    log = out.parent / f"{out.name}-recorder-{time.monotonic_ns()}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [*(wrapper or []), *command], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            cwd=REPO,
        )  # fmt: skip
    token_file = Path(command[command.index("--stop-token-file") + 1])
    recorder = Recorder(
        process, out, f"http://127.0.0.1:{port}", log, command, token_file.read_text()
    )
    until(
        lambda: recorder.answers() is not None or process.poll() is not None,
        timeout=15,
        what="the recorder's HTTP API",
    )
    return recorder


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    """Every recorder a test starts is terminated (and reaped) afterwards."""
    started: list[Recorder] = []
    yield started
    for recorder in started:
        recorder.terminate()


# -- the source: a worker with a publisher --------------------------------------------------


@dataclass
class Live:
    worker: WorkerProcess
    publisher: subprocess.Popen[bytes]

    @property
    def source(self) -> str:
        return self.worker.http


def wait_live(worker: WorkerProcess, *, segments: int = 2) -> None:
    def ready() -> bool:
        reply = http_get(worker.url("/180p/index.m3u8"))
        return reply.status == 200 and len(m3u8.loads(reply.text).segments) >= segments

    until(ready, timeout=30, what=f"{segments} segments from the worker")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One worker with a publisher that stays on for the whole module."""
    worker = launch_worker(tmp_path_factory.mktemp("rec-source"), profile=PROFILE)
    publisher = publish(worker.rtmp(), seconds=300, size=PUBLISHER_SIZE, wait=False)
    try:
        wait_live(worker)
        yield Live(worker, publisher)
    finally:
        publisher.kill()
        publisher.wait()
        worker.stop()


# -- what the files say -------------------------------------------------------------------


def probe(target: Path, *entries: str, live_playlist: bool = False) -> dict[str, Any]:
    options = ["-live_start_index", "0", "-m3u8_hold_counters", "2"] if live_playlist else []
    result = subprocess.run(
        ["ffprobe", "-v", "error", *options, "-of", "json", "-show_entries", ":".join(entries),
         str(target)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def media_seconds(target: Path, *, live_playlist: bool = False) -> dict[str, float]:
    """How long video and audio run, from every packet ffprobe reads."""
    found = probe(
        target,
        "stream=index,codec_type",
        "packet=stream_index,pts_time,duration_time",
        live_playlist=live_playlist,
    )
    kinds = {s["index"]: s["codec_type"] for s in found["streams"]}
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    for p in found["packets"]:
        kind = kinds.get(p["stream_index"])
        if "pts_time" not in p or kind is None:
            continue
        starts.setdefault(kind, []).append(float(p["pts_time"]))
        ends.setdefault(kind, []).append(float(p["pts_time"]) + float(p.get("duration_time", 0)))
    return {kind: max(ends[kind]) - min(starts[kind]) for kind in starts}


def readable_now(out: Path) -> dict[str, float]:
    """What a player reads from the event playlist as it stands (no ENDLIST yet).

    A live playlist never ends for ffprobe, so it reads a copy (same folder, so
    the segment URIs resolve) that stops changing.
    """
    copy = out / f"probe-{time.monotonic_ns()}.m3u8"
    shutil.copyfile(out / "recording.m3u8", copy)
    try:
        return media_seconds(copy, live_playlist=True)
    finally:
        copy.unlink()


def stream_durations(target: Path) -> dict[str, float]:
    streams = probe(target, "stream=codec_type,duration")["streams"]
    return {s["codec_type"]: float(s["duration"]) for s in streams}


def format_duration(target: Path) -> float:
    return float(probe(target, "format=duration")["format"]["duration"])


def video_size(target: Path) -> tuple[int, int]:
    streams = probe(target, "stream=codec_type,width,height")["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    return video["width"], video["height"]


def top_level_boxes(path: Path) -> list[str]:
    boxes = []
    with open(path, "rb") as f:
        size_total = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = size_total - offset
            boxes.append(kind)
            offset += size
    return boxes


def playlist(out: Path) -> m3u8.M3U8:
    return m3u8.loads((out / "recording.m3u8").read_text())


def listed_seconds(out: Path) -> float:
    return sum(float(s.duration) for s in playlist(out).segments)


def assert_complete_recording(out: Path, status: dict[str, Any] | None) -> None:
    """ENDLIST, a faststart MP4 as long as the playlist, audio and video together.

    ``status`` is the recorder's last /status (None: the recorder has exited on
    SIGTERM, which writes everything out but leaves the recording resumable: the
    pod went away, not the recording).
    """
    text = (out / "recording.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    listed = listed_seconds(out)

    mp4 = out / "recording.mp4"
    boxes = top_level_boxes(mp4)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart
    assert format_duration(mp4) == pytest.approx(listed, abs=SEGMENT_S)
    durations = stream_durations(mp4)
    assert set(durations) == {"video", "audio"}
    assert abs(durations["video"] - durations["audio"]) < 0.1, durations
    if status is None:
        state = json.loads((out / "recorder-state.json").read_text())
        assert state["state"] == "interrupted"
        return
    assert status["duration_seconds"] == pytest.approx(listed, abs=0.01)
    files = {f["format"]: f for f in status["files"]}
    assert files["hls"]["name"] == "recording.m3u8"
    assert files["mp4"]["name"] == "recording.mp4"
    assert files["mp4"]["size_bytes"] == mp4.stat().st_size
    assert files["mp4"]["duration_seconds"] == pytest.approx(format_duration(mp4), abs=0.1)
    assert status["start_time"] and status["end_time"]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the tests ------------------------------------------------------------------------------


def test_recording_plays_while_it_grows_and_ends_as_a_faststart_mp4(
    live: Live, recorders: list[Recorder], tmp_path: Path
) -> None:
    out = tmp_path / "rec"
    recorder = launch(out, live.source, formats="hls,mp4,fmp4")
    recorders.append(recorder)

    recorder.wait_segments(2)
    early = readable_now(out)
    status = recorder.wait_segments(5)
    assert status["state"] == "recording"
    later = readable_now(out)
    assert later["video"] > early["video"] + 2 * SEGMENT_S  # it grows, and plays from the start
    assert "video" in early and "audio" in early
    growing = media_seconds(out / "recording-fragmented.mp4")
    assert growing["video"] > 0  # the fragmented MP4 plays while it grows, too

    assert recorder.post_stop()["state"] in ("recording", "finalizing", "completed")
    done = recorder.wait_state("completed")
    assert_complete_recording(out, done)
    assert "#EXT-X-DISCONTINUITY" not in (out / "recording.m3u8").read_text()
    assert video_size(out / "recording.mp4") == (320, 180)  # the highest rendition
    fragmented = out / "recording-fragmented.mp4"
    assert format_duration(fragmented) == pytest.approx(listed_seconds(out), abs=SEGMENT_S)
    assert {f["format"] for f in done["files"]} == {"hls", "mp4", "fmp4"}

    metrics = recorder.metrics()
    assert re.search(r'kubecast_recorder_state\{state="completed",stream="[^"]*"\} 1\.0', metrics)
    segments = re.search(r"kubecast_recorder_segments\{[^}]*\} ([\d.]+)", metrics)
    assert segments and float(segments.group(1)) == done["segments"]
    time.sleep(0.5)
    assert recorder.process.poll() is None  # completed: still answering until terminated
    assert recorder.answers() is not None
    assert recorder.terminate() == 0


def test_sigkill_mid_recording_then_restart_resumes_the_same_recording(
    live: Live, recorders: list[Recorder], tmp_path: Path
) -> None:
    out = tmp_path / "rec"
    last_word = tmp_path / "termination-log"  # what the kubelet keeps of an exited pod
    first = launch(out, live.source, "--termination-log", str(last_word), formats="hls,mp4,fmp4")
    recorders.append(first)
    first.wait_segments(3)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    assert not last_word.exists(), "a SIGKILLed recorder cannot have said anything"
    before = playlist(out)
    before_seconds = sum(s.duration for s in before.segments)
    assert before.segments and not before.is_endlist  # a playable event playlist, unclosed

    port = int(first.http.rsplit(":", 1)[1])
    second = start(first.command, out=out, port=port)  # the pod restarts: same args
    recorders.append(second)
    resumed = second.wait_for(
        "more segments after the restart",
        lambda s: s["segments"] >= len(before.segments) + 3,
    )
    assert resumed["state"] == "recording"
    assert second.terminate() == 0  # SIGTERM: write everything out, then exit 0

    after = playlist(out)
    assert [s.uri for s in after.segments[: len(before.segments)]] == [
        s.uri for s in before.segments
    ]  # the same playlist, continued
    assert sum(1 for s in after.segments if s.discontinuity) >= 1
    assert after.segments[len(before.segments)].discontinuity
    assert_complete_recording(out, None)
    mp4_seconds = format_duration(out / "recording.mp4")
    assert mp4_seconds >= before_seconds + 3 * SEGMENT_S - 0.5  # before and after the kill
    rebuilt = format_duration(out / "recording-fragmented.mp4")
    assert rebuilt == pytest.approx(mp4_seconds, abs=SEGMENT_S)
    # Its last /status, as the operator reads it from the pod once it no longer answers.
    said = json.loads(last_word.read_text())
    assert said["state"] == "interrupted", said
    assert said["duration_seconds"] == pytest.approx(mp4_seconds, abs=SEGMENT_S)
    assert "recording.mp4" in {f["name"] for f in said["files"]}


def test_publisher_drop_and_return_gives_one_playlist_with_a_discontinuity(
    recorders: list[Recorder], tmp_path: Path
) -> None:
    worker = launch_worker(tmp_path / "worker", profile=PROFILE, reconnect_window=30)
    try:
        first = publish(worker.rtmp(), seconds=4, size=PUBLISHER_SIZE, wait=False)
        wait_live(worker, segments=1)
        out = tmp_path / "rec"
        recorder = launch(out, worker.http, idle_timeout=30)
        recorders.append(recorder)
        recorder.wait_segments(1)
        assert first.wait(timeout=30) == 0
        worker.wait_state("reconnecting")
        before = recorder.status()["segments"]

        second = publish(worker.rtmp(), seconds=4, size=PUBLISHER_SIZE, wait=False)
        recorder.wait_segments(before + 3)
        assert second.wait(timeout=30) == 0
        recorder.post_stop()
        done = recorder.wait_state("completed")
    finally:
        worker.stop()

    recorded = playlist(out)
    assert len(list(out.glob("*.m3u8"))) == 1
    assert sum(1 for s in recorded.segments if s.discontinuity) == 1
    assert_complete_recording(out, done)


def test_fmp4_segments_of_the_source_are_recorded_with_their_init_section(
    recorders: list[Recorder], tmp_path: Path
) -> None:
    worker = launch_worker(tmp_path / "worker", profile=PROFILE, args=["--segment-type", "fmp4"])
    try:
        publisher = publish(worker.rtmp(), seconds=6, size=PUBLISHER_SIZE, wait=False)
        wait_live(worker, segments=1)
        out = tmp_path / "rec"
        recorder = launch(out, worker.http, formats="hls,mp4,fmp4")
        recorders.append(recorder)
        recorder.wait_segments(3)
        recorder.post_stop()
        done = recorder.wait_state("completed")
        publisher.kill()
    finally:
        worker.stop()

    recorded = playlist(out)
    assert "#EXT-X-MAP" in (out / "recording.m3u8").read_text()
    init = recorded.segments[0].init_section
    assert init is not None and (out / init.uri).is_file()
    assert recorded.segments[0].uri.endswith(".m4s")
    assert_complete_recording(out, done)
    assert format_duration(out / "recording-fragmented.mp4") == pytest.approx(
        listed_seconds(out), abs=SEGMENT_S
    )


def test_wait_for_next_live_skips_the_current_session_and_idle_timeout_finishes(
    recorders: list[Recorder], tmp_path: Path
) -> None:
    worker = launch_worker(tmp_path / "worker", profile=PROFILE, reconnect_window=0)
    try:
        current = publish(worker.rtmp(), seconds=5, size=PUBLISHER_SIZE, wait=False)
        wait_live(worker, segments=1)
        out = tmp_path / "rec"
        recorder = launch(out, worker.http, "--wait-for-next-live", idle_timeout=3)
        recorders.append(recorder)
        assert current.wait(timeout=30) == 0
        worker.wait_state("idle")
        waiting = recorder.status()
        assert waiting["state"] == "waiting" and waiting["segments"] == 0

        publish(worker.rtmp(), seconds=4, size=PUBLISHER_SIZE, wait=False)
        recorder.wait_state("recording")
        done = recorder.wait_state("completed", timeout=40)  # idle after the publisher left
    finally:
        worker.stop()

    assert_complete_recording(out, done)
    assert listed_seconds(out) <= 4 + 2 * SEGMENT_S  # nothing of the earlier session
    assert "#EXT-X-DISCONTINUITY" not in (out / "recording.m3u8").read_text()
    assert any("idle" in (e.get("reason") or "") for e in recorder.logs())


def test_time_window_and_max_duration_stop_the_recording_by_themselves(
    live: Live, recorders: list[Recorder], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    window = launch(
        tmp_path / "window", live.source, "--rendition", "144p",
        "--start-at", rfc3339(now + timedelta(seconds=3)),
        "--stop-at", rfc3339(now + timedelta(seconds=7)),
    )  # fmt: skip
    capped = launch(tmp_path / "capped", live.source, "--max-duration", "3")
    recorders.extend([window, capped])

    capped_done = capped.wait_state("completed")
    window_done = window.wait_state("completed")

    assert 3 <= capped_done["duration_seconds"] <= 3 + SEGMENT_S + 0.1
    assert_complete_recording(tmp_path / "capped", capped_done)
    assert 2 <= window_done["duration_seconds"] <= 4 + 2 * SEGMENT_S
    assert_complete_recording(tmp_path / "window", window_done)
    assert video_size(tmp_path / "window" / "recording.mp4") == (256, 144)  # --rendition
    started = datetime.fromisoformat(window_done["start_time"])
    assert started >= now + timedelta(seconds=3) - timedelta(seconds=SEGMENT_S)


def _private_mount(script: str) -> list[str] | None:
    """``unshare -m sh -c SCRIPT`` if this machine allows it (root, mount namespaces)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    probe_ok = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, check=False
    )
    if probe_ok.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'{script} && exec "$@"', "sh"]


def test_unwritable_out_reports_failed_with_the_reason_and_exits_non_zero(
    recorders: list[Recorder], tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    wrapper = _private_mount(f"mount --bind {volume} {volume} && mount -o remount,bind,ro {volume}")
    if wrapper is None:  # no mount namespaces here: a path that cannot be a directory
        (tmp_path / "file").write_text("")
        out, reason = tmp_path / "file" / "rec", "Not a directory"
    else:
        out, reason = volume / "rec", "Read-only file system"
    recorder = launch(out, "http://127.0.0.1:9", "--fail-linger", "3", wrapper=wrapper)
    recorders.append(recorder)

    failed = recorder.wait_state("failed", timeout=10)
    assert str(out) in failed["last_error"]
    assert reason in failed["last_error"]
    assert failed["files"] == [] and failed["segments"] == 0
    metrics = recorder.metrics()
    assert re.search(r'kubecast_recorder_state\{state="failed",stream="[^"]*"\} 1\.0', metrics)
    assert recorder.process.wait(timeout=15) == 1  # the pod restarts (restartPolicy OnFailure)


def test_full_disk_fails_clearly_and_what_was_recorded_stays_playable(
    live: Live, recorders: list[Recorder], tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    wrapper = _private_mount(f"mount -t tmpfs -o size=300k tmpfs {volume}")
    if wrapper is None:
        pytest.skip("needs a private mount namespace (root) for a small tmpfs")
    recorder = launch(volume / "rec", live.source, "--fail-linger", "30", wrapper=wrapper)
    recorders.append(recorder)

    failed = recorder.wait_state("failed", timeout=40)
    assert "No space left on device" in failed["last_error"]
    assert str(volume / "rec") in failed["last_error"]
    assert "stay playable" in failed["last_error"]
    assert failed["segments"] >= 1

    # The tmpfs lives in the recorder's mount namespace: read it from in there.
    copy = subprocess.run(
        ["nsenter", "-t", str(recorder.process.pid), "-m", "tar", "-C", str(volume), "-cf", "-",
         "rec"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    kept = tmp_path / "kept"
    kept.mkdir()
    subprocess.run(["tar", "-C", str(kept), "-xf", "-"], input=copy.stdout, check=True)
    recorded = playlist(kept / "rec")
    assert len(recorded.segments) == failed["segments"]
    readable = readable_now(kept / "rec")
    assert readable["video"] == pytest.approx(listed_seconds(kept / "rec"), abs=SEGMENT_S)
