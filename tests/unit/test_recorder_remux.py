"""Segments → MP4 by copying packets: one timeline across gaps, faststart, fragmented.

The segments are real MPEG-TS made by the ffmpeg CLI (160x90, a second each), in
runs with unrelated clocks, as a restarted source would produce them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kubecast_worker.recorder import remux

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="needs the ffmpeg and ffprobe CLIs",
)


def make_run(directory: Path, name: str, *, seconds: int, offset: float) -> list[Path]:
    """``seconds`` one-second TS segments whose clock starts near ``offset``."""
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-c:a", "aac", "-b:a", "32k", "-output_ts_offset", str(offset),
            "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod",
            "-hls_segment_filename", str(directory / f"{name}%d.ts"),
            str(directory / f"{name}.m3u8"),
        ],
        check=True,
    )  # fmt: skip
    return sorted(directory.glob(f"{name}*.ts"), key=lambda p: int(p.stem[len(name) :]))


def probe(path: Path) -> dict[str, float]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_entries",
         "stream=codec_type,duration,start_time:format=duration", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(result.stdout)
    durations = {s["codec_type"]: float(s["duration"]) for s in found["streams"]}
    durations["format"] = float(found["format"]["duration"])
    durations["start"] = min(float(s["start_time"]) for s in found["streams"])
    return durations


def boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    found, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        found.append(data[offset + 4 : offset + 8].decode("latin-1"))
        offset += size if size else len(data)
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    directory = tmp_path_factory.mktemp("segments")
    return {
        "a": make_run(directory, "a", seconds=3, offset=10),
        "b": make_run(directory, "b", seconds=2, offset=5000),  # a restarted source
        "wrap": make_run(directory, "w", seconds=4, offset=95440),  # 33-bit clock wraps
    }


def test_runs_with_unrelated_clocks_play_as_one_continuous_faststart_mp4(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    pieces = [remux.Piece(path=p) for p in runs["a"]]
    pieces += [remux.Piece(path=p, discontinuity=(i == 0)) for i, p in enumerate(runs["b"])]
    out = tmp_path / "out.mp4"
    result = remux.write_mp4(out, pieces)

    found = probe(out)
    assert found["format"] == pytest.approx(5.0, abs=0.15)  # 3 s + 2 s, no hole
    assert abs(found["video"] - found["audio"]) < 0.1
    assert found["start"] == pytest.approx(0.0, abs=0.05)
    assert result.duration == pytest.approx(found["format"], abs=0.1)
    assert result.dropped_packets == 0
    kinds = boxes(out)
    assert kinds.index("moov") < kinds.index("mdat")
    assert not list(tmp_path.glob(".*partial"))


def test_an_unmarked_clock_jump_is_joined_like_a_discontinuity(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    remux.write_mp4(out, [remux.Piece(path=p) for p in runs["a"] + runs["b"]])
    assert probe(out)["format"] == pytest.approx(5.0, abs=0.15)


def test_the_mpegts_clock_wrapping_inside_a_run_does_not_break_the_mp4(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    result = remux.write_mp4(out, [remux.Piece(path=p) for p in runs["wrap"]])
    found = probe(out)
    assert found["format"] == pytest.approx(4.0, abs=0.15)
    assert result.dropped_packets == 0


def test_the_growing_fragmented_mp4_is_readable_after_every_segment(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "growing.mp4"
    growing = remux.GrowingMp4(out)
    for index, path in enumerate(runs["a"]):
        growing.append(remux.Piece(path=path))
        assert out.exists()
        if index >= 1:  # a fragment is complete once the next keyframe arrived
            assert probe(out)["video"] >= index - 0.1
    result = growing.close()
    assert probe(out)["format"] == pytest.approx(3.0, abs=0.15)
    assert result.duration == pytest.approx(3.0, abs=0.15)
    assert "moof" in boxes(out)


def test_a_rebuilt_fragmented_mp4_replaces_the_old_one_only_once_it_caught_up(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "growing.mp4"
    out.write_bytes(b"the file of the run before the restart")
    growing = remux.GrowingMp4(out, publish_after=3)
    for path in runs["a"][:2]:
        growing.append(remux.Piece(path=path))
        assert out.read_bytes() == b"the file of the run before the restart"
    growing.append(remux.Piece(path=runs["a"][2]))
    assert out.read_bytes() != b"the file of the run before the restart"
    growing.close()
    assert probe(out)["format"] == pytest.approx(3.0, abs=0.15)

    early = remux.GrowingMp4(tmp_path / "early.mp4", publish_after=5)
    early.append(remux.Piece(path=runs["a"][0]))
    early.close()  # stopped before catching up: published anyway
    assert probe(tmp_path / "early.mp4")["format"] == pytest.approx(1.0, abs=0.15)


def test_nothing_to_remux_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(remux.RemuxError, match="nothing recorded could be read"):
        remux.write_mp4(tmp_path / "out.mp4", [])
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_segment_is_left_out_and_named(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    bad = tmp_path / "000001.ts"
    bad.write_bytes(b"not media at all" * 10)
    pieces = [remux.Piece(path=runs["a"][0]), remux.Piece(path=bad), remux.Piece(path=runs["a"][1])]
    result = remux.write_mp4(tmp_path / "out.mp4", pieces)
    assert probe(tmp_path / "out.mp4")["format"] == pytest.approx(2.0, abs=0.15)
    assert len(result.skipped) == 1 and result.skipped[0].startswith("000001.ts: ")

    with pytest.raises(remux.RemuxError, match=r"000001\.ts"):
        remux.write_mp4(tmp_path / "none.mp4", [remux.Piece(path=bad)])
    assert not (tmp_path / "none.mp4").exists()


def test_audio_specific_config_is_read_from_an_adts_header() -> None:
    # AAC LC, 48 kHz (index 3), stereo: the config every player expects (0x1190).
    header = bytes([0xFF, 0xF1, 0x4C, 0x80, 0x01, 0x3F, 0xFC])
    assert remux.audio_specific_config(header) == bytes([0x11, 0x90])
    assert remux.audio_specific_config(b"\x00\x00\x00\x01") is None
