"""Odd media input: each case is transcoded correctly or refused with a status that says
why, and the worker stays up for the next publisher.

One ``kubecast-worker run`` process (push ingest, the small 360p/180p ladder at up to
30 fps, no reconnect window: every publish starts new playlists) takes, one after
another, real publishers (the ffmpeg CLI, and GStreamer for 48 kHz mono) sending:
no audio; no video; 25 fps; 1366x768; 48 kHz mono audio; B-frames; a resolution
change in the middle of one RTMP session; Sorenson H.263 (``flv1``, what the FLV muxer
carries besides H.264). A second worker pulls an MPEG-4 Part 2 file. A normal ffmpeg
publisher goes live on the first worker at the end.

"Transcoded correctly" is what ffprobe reads from every rendition, segment by
segment: the rendition's size (never above the source's), its frame rate never above
the source's (``r_frame_rate``, ``avg_frame_rate`` and frames counted over the
duration), the whole duration, and audio exactly when the source had audio. The
outcomes go to test-artifacts/faults/odd-media.json (the table in
docs/reliability.md, "Odd media input").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import m3u8
import pytest

from tests.e2e.conftest import (
    REPO,
    SMALL_PROFILE,
    WorkerProcess,
    ffprobe,
    launch_worker,
    needs_ffmpeg,
    publish,
    until,
)

from .publishers import gstreamer_command, needs_gstreamer

pytestmark = [
    pytest.mark.slow, pytest.mark.e2e, needs_ffmpeg, needs_gstreamer, pytest.mark.timeout(600)
]  # fmt: skip

SECONDS = 5
RUNGS = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}
ARTIFACT = REPO / "test-artifacts" / "faults" / "odd-media.json"
FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
H264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
AAC = ["-c:a", "aac", "-b:a", "128k"]


def lavfi_video(size: str = "640x360", rate: int = 30) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]


def lavfi_audio(rate: int = 44100) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate={rate}"]


def ffmpeg_push(*args: str) -> Callable[[str, Path], list[str]]:
    def command(url: str, _: Path) -> list[str]:
        return [*FFMPEG, "-re", *args, "-t", str(SECONDS), "-f", "flv", url]

    return command


def resolution_change(url: str, scratch: Path) -> list[str]:
    """1280x720 then 640x360 in one H.264 stream, sent as one RTMP session.

    Two elementary streams back to back: the second starts with its own SPS/PPS (x264
    repeats them in-band without global headers), as an encoder that changes size does.
    """
    parts = []
    for i, size in enumerate(("1280x720", "640x360")):
        part = scratch / f"part{i}.h264"
        subprocess.run(
            # NB: no B-frames: a raw H.264 stream has no timestamps, and ffmpeg can only
            # make them up (-framerate) when decode order is presentation order.
            [*FFMPEG, "-y", *lavfi_video(size), "-t", str(SECONDS / 2), *H264, "-g", "30",
             "-bf", "0", "-f", "h264", str(part)],
            check=True,
        )  # fmt: skip
        parts.append(part.read_bytes())
    joined = scratch / "joined.h264"
    joined.write_bytes(b"".join(parts))
    return [*FFMPEG, "-re", "-framerate", "30", "-f", "h264", "-i", str(joined),
            *lavfi_audio(), "-t", str(SECONDS), "-c:v", "copy", *AAC, "-f", "flv", url]  # fmt: skip


def gstreamer_mono_48k(url: str, _: Path) -> list[str]:
    return gstreamer_command(
        url, seconds=SECONDS, size=(640, 360), rate=30, audio_rate=48000, channels=1
    )


@dataclass(frozen=True)
class Case:
    name: str
    publisher: Callable[[str, Path], list[str]]
    #: what the source is: (width, height) of its video after any change, fps, audio
    size: tuple[int, int] | None
    fps: Fraction | None
    audio: bool
    #: None: transcoded; else the words /status lastError must contain
    refused: str | None = None


PUSH_CASES = [
    Case("no audio", ffmpeg_push(*lavfi_video(), *H264, "-g", "30", "-an"), (640, 360),
         Fraction(30), audio=False),
    Case("no video", ffmpeg_push(*lavfi_audio(), "-vn", *AAC), None, None, audio=True,
         refused="no video stream"),
    Case("25 fps", ffmpeg_push(*lavfi_video(rate=25), *lavfi_audio(), *H264, "-g", "25", *AAC),
         (640, 360), Fraction(25), audio=True),
    Case("1366x768", ffmpeg_push(*lavfi_video("1366x768"), *lavfi_audio(), *H264, "-g", "30",
                                 *AAC), (1366, 768), Fraction(30), audio=True),
    Case("48 kHz mono (GStreamer)", gstreamer_mono_48k, (640, 360), Fraction(30), audio=True),
    Case("B-frames (x264 bframes=3)",
         ffmpeg_push(*lavfi_video(), *lavfi_audio(), *H264, "-g", "30", "-bf", "3",
                     "-x264-params", "bframes=3:b-adapt=0", *AAC),
         (640, 360), Fraction(30), audio=True),
    Case("resolution change 1280x720 -> 640x360", resolution_change, (640, 360), Fraction(30),
         audio=True),
    Case("Sorenson H.263 (flv1)",
         ffmpeg_push(*lavfi_video(), *lavfi_audio(), "-c:v", "flv1", "-q:v", "4", "-g", "30",
                     *AAC), (640, 360), Fraction(30), audio=True),
]  # fmt: skip

RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = launch_worker(tmp_path_factory.mktemp("odd-media"), profile=SMALL_PROFILE)
    try:
        yield process
    finally:
        process.stop()
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(RESULTS, indent=2) + "\n")


def sessions_over(worker: WorkerProcess) -> int:
    return sum(
        len(worker.logged(m)) for m in ("publish ended", "publish failed", "publish crashed")
    )


def probe_rendition(playlist: Path) -> dict[str, Any]:
    """What ffprobe reads from each segment of a rendition, and from all of them."""
    segments = sorted(playlist.parent.glob("*.ts"))
    sizes = set()
    for segment in segments:
        video = [s for s in ffprobe(segment, "stream=codec_type,width,height")["streams"]
                 if s["codec_type"] == "video"]  # fmt: skip
        sizes |= {(s["width"], s["height"]) for s in video}
    whole = ffprobe(
        playlist,
        "stream=index,codec_type,codec_name,r_frame_rate,avg_frame_rate,sample_rate,channels",
        "packet=stream_index,pts_time,duration_time",
    )
    kinds = {s["index"]: s for s in whole["streams"]}
    video_pts = [
        float(p["pts_time"])
        for p in whole["packets"]
        if kinds[p["stream_index"]]["codec_type"] == "video" and "pts_time" in p
    ]
    audio = [s for s in whole["streams"] if s["codec_type"] == "audio"]
    video = next(s for s in whole["streams"] if s["codec_type"] == "video")
    span = max(video_pts) - min(video_pts)
    return {
        "segments": len(segments),
        "sizes": sorted(sizes),
        "codec": video["codec_name"],
        "r_frame_rate": video["r_frame_rate"],
        "avg_frame_rate": video["avg_frame_rate"],
        "frames": len(video_pts),
        # frames over the time they cover: n frames span n-1 frame intervals
        "measured_fps": round((len(video_pts) - 1) / span, 2) if span else None,
        "seconds": round(span + (1 / float(Fraction(video["avg_frame_rate"]))), 2),
        "audio": [f"{a['codec_name']} {a['sample_rate']} Hz {a['channels']} ch" for a in audio],
    }


def check_transcoded(case: Case, out: Path, result: dict[str, Any]) -> None:
    master = m3u8.load(str(out / "master.m3u8"))
    frame_rates = {p.uri.split("/")[0]: p.stream_info.frame_rate for p in master.playlists}
    result["master_frame_rate"] = frame_rates
    assert case.size is not None and case.fps is not None
    for name, (width, height) in RUNGS.items():
        playlist = out / name / "index.m3u8"
        assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST"), name
        got = probe_rendition(playlist)
        result["renditions"][name] = got
        assert got["codec"] == "h264"
        assert got["sizes"] == [(width, height)], got  # every segment, whatever the source did
        assert width <= case.size[0] and height <= case.size[1]
        expected = min(case.fps, Fraction(30))
        assert Fraction(got["r_frame_rate"]) == expected, got
        assert Fraction(got["avg_frame_rate"]) == expected, got
        assert got["measured_fps"] is not None and abs(got["measured_fps"] - expected) < 0.5, got
        assert frame_rates[name] == pytest.approx(float(expected), abs=0.001)
        assert abs(got["seconds"] - SECONDS) < 0.6, got
        if case.audio:
            assert got["audio"] == ["aac 48000 Hz 2 ch"], got  # the profile's audio
        else:
            assert got["audio"] == [], got


@pytest.mark.parametrize("case", PUSH_CASES, ids=[c.name for c in PUSH_CASES])
def test_odd_input_is_transcoded_or_refused_with_a_reason(
    worker: WorkerProcess, case: Case, tmp_path: Path
) -> None:
    before = sessions_over(worker)
    ended_before = len(worker.logged("playlists ended"))
    opened_before = len(worker.logged("input opened"))
    command = case.publisher(worker.rtmp(), tmp_path)
    publisher = subprocess.run(command, capture_output=True, timeout=SECONDS + 60, check=False)
    until(lambda: sessions_over(worker) > before, timeout=60, what=f"{case.name}: session end")
    status = worker.status()
    result: dict[str, Any] = {
        "publisher_exit": publisher.returncode,
        "state": status["state"],
        "lastError": status["lastError"],
        # /status has no input once idle: what the worker logged when it opened it
        "input": [e["input"] for e in worker.logged("input opened")[opened_before:]],
        "renditions": {},
    }
    RESULTS[case.name] = result
    assert worker.process.poll() is None, "the worker died"
    if case.refused is not None:
        result["outcome"] = "refused"
        assert status["lastError"] and case.refused in status["lastError"], status
        assert status["state"] == "idle"
        return
    until(
        lambda: len(worker.logged("playlists ended")) > ended_before,
        timeout=30,
        what=f"{case.name}: playlists ended",
    )
    assert worker.logged("publish ended")[-1:], worker.raw[-10:]
    assert sessions_over(worker) == len(worker.logged("publish ended")) + sum(
        len(worker.logged(m)) for m in ("publish failed", "publish crashed")
    )
    assert status["lastError"] is None, status
    check_transcoded(case, worker.out, result)
    result["outcome"] = "transcoded"


def test_an_mpeg4_part2_file_pulled_is_transcoded(tmp_path: Path) -> None:
    clip = tmp_path / "mpeg4.mp4"
    subprocess.run(
        [*FFMPEG, "-y", *lavfi_video(), *lavfi_audio(48000), "-t", str(SECONDS),
         "-c:v", "mpeg4", "-q:v", "4", "-g", "30", *AAC, str(clip)],
        check=True,
    )  # fmt: skip
    pull = launch_worker(tmp_path / "pull", profile=SMALL_PROFILE, pull=clip.as_uri())
    case = Case("MPEG-4 Part 2 (pulled file)", lambda *_: [], (640, 360), Fraction(30), True)
    result: dict[str, Any] = {"renditions": {}}
    RESULTS[case.name] = result
    try:
        pull.wait_logged("playlists ended", timeout=60)
        status = pull.status()
        opened = pull.logged("input opened")[0]["input"]  # /status has no input once idle
        result.update(state=status["state"], lastError=status["lastError"], input=opened)
        assert status["lastError"] is None, status
        assert opened.startswith("mpeg4 640x360"), opened
        check_transcoded(case, pull.out, result)
        result["outcome"] = "transcoded"
        assert pull.process.poll() is None
    finally:
        pull.stop()


def test_a_normal_publisher_works_after_all_of_them(worker: WorkerProcess) -> None:
    before = len(worker.logged("publish ended"))
    publisher = publish(worker.rtmp(), seconds=6, wait=False)
    live = worker.wait_state("live", timeout=30)
    assert live["input"]["resolution"] == "640x360"
    assert publisher.wait(timeout=40) == 0
    until(lambda: len(worker.logged("publish ended")) > before, timeout=30, what="publish ended")
    for name in RUNGS:
        assert (worker.out / name / "index.m3u8").read_text().count("#EXTINF:") >= 2
    assert worker.status()["lastError"] is None
    RESULTS["normal publisher afterwards"] = {"outcome": "transcoded", "state": live["state"]}
