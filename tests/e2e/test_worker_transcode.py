"""``kubecast-worker transcode``: the live pipeline on a file, as fast as the CPU allows.

It runs the rendition threads flat out, so it is also the load test of handing
frames between threads (a shared-frame design crashed PyAV 18.1 with SIGSEGV).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_PROFILE, REPO, make_media, needs_ffmpeg, timing, video_stream

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(180)]

EXPECTED = {"720p": (1280, 720), "480p": (854, 480), "360p": (640, 360)}


def transcode(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "kubecast_worker.cli", "transcode", str(source),
         "--profile", str(DEFAULT_PROFILE), "--out", str(out), "--log-format", "text", *extra],
        capture_output=True, text=True, timeout=150, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("media") / "720p.mp4", seconds=4, size="1280x720")


def test_transcode_makes_aligned_renditions_and_drops_1080p(source: Path, tmp_path: Path) -> None:
    summary = transcode(source, tmp_path)
    assert summary["mediaSeconds"] > 3.9
    states = {r["name"]: r["state"] for r in summary["renditions"]}
    assert states == {"720p": "Active", "480p": "Active", "360p": "Active", "1080p": "Dropped"}
    keyframes = {}
    for name, (width, height) in EXPECTED.items():
        playlist = tmp_path / name / "index.m3u8"
        assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
        video = video_stream(playlist)
        # The ladder's 30 fps is a ceiling: the 25 fps source keeps its rate.
        assert (video["width"], video["height"], video["avg_frame_rate"]) == (width, height, "25/1")
        t = timing(playlist)
        assert abs(t.video_seconds - 4.0) < 0.1 and abs(t.audio_seconds - 4.0) < 0.1, t
        keyframes[name] = t.keyframes
    assert keyframes["720p"] == keyframes["480p"] == keyframes["360p"]
    assert len(keyframes["720p"]) == 2  # 2 s GOP over 4 s
    assert (tmp_path / "master.m3u8").is_file()


def test_passthrough_rendition_copies_the_source_next_to_encoded_ones(
    source: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "gopSeconds: 2\nsegmentSeconds: 2\nrenditions:\n"
        "  - {name: source, passthrough: true}\n"
        "  - {name: 360p, width: 640, height: 360, videoBitrate: 800, fps: 25,"
        " preset: ultrafast}\n"
    )
    out = tmp_path / "out"
    summary = transcode(source, out, "--profile", str(profile))
    assert [r["name"] for r in summary["renditions"]] == ["source", "360p"]
    copied, scaled = out / "source" / "index.m3u8", out / "360p" / "index.m3u8"
    video = video_stream(copied)
    assert (video["width"], video["height"], video["avg_frame_rate"]) == (1280, 720, "25/1")
    assert timing(copied).keyframes == timing(scaled).keyframes  # the source's 2 s GOP
    master = (out / "master.m3u8").read_text()
    assert "RESOLUTION=1280x720" in master and "source/index.m3u8" in master


def decoded_audio(playlist: Path) -> bytes:
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(playlist), "-map", "0:a", "-f", "s16le", "-"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def test_renditions_with_the_same_audio_bitrate_carry_the_same_whole_audio(
    source: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "gopSeconds: 2\nsegmentSeconds: 2\nrenditions:\n"
        "  - {name: 360p, width: 640, height: 360, videoBitrate: 800, audioBitrate: 96,"
        " preset: ultrafast}\n"
        "  - {name: 240p, width: 426, height: 240, videoBitrate: 400, audioBitrate: 96,"
        " preset: ultrafast}\n"
        "  - {name: 180p, width: 320, height: 180, videoBitrate: 200, audioBitrate: 48,"
        " preset: ultrafast}\n"
    )
    out = tmp_path / "out"
    transcode(source, out, "--profile", str(profile))
    audio = {}
    for name in ("360p", "240p", "180p"):
        playlist = out / name / "index.m3u8"
        assert abs(timing(playlist).audio_seconds - 4.0) < 0.1, name
        audio[name] = decoded_audio(playlist)
    # The two 96 kbit/s renditions share one encode's packets; 180p has its own bitrate.
    assert audio["360p"] == audio["240p"] != audio["180p"]
    assert len(audio["360p"]) > 3.9 * 48000 * 2 * 2  # 4 s of 48 kHz stereo, 16 bit
