"""The packager's own files: master playlist, ENDLIST, and clearing a finished session."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import m3u8

from kubecast_worker import files, packager
from kubecast_worker.status import RenditionState
from kubecast_worker.tally import SegmentBitrates


def rendition(name: str, width: int, height: int, kbps: int, peak: int) -> RenditionState:
    return RenditionState(
        name=name, width=width, height=height, fps=30.0, nominal_kbps=kbps, peak_kbps=peak
    )


def test_master_playlist_has_what_players_choose_by() -> None:
    variants = [
        packager.variant(
            rendition("720p", 1280, 720, 2500, 2675),
            segment_type="ts",
            audio_kbps=128,
            video_codecs="avc1.64001f",
        ),
        packager.variant(
            rendition("360p", 640, 360, 800, 856),
            segment_type="ts",
            audio_kbps=64,
            video_codecs="avc1.4d401e",
        ),
    ]
    text = packager.render_master(variants)
    parsed = m3u8.loads(text)
    assert parsed.is_variant and parsed.is_independent_segments
    top, low = (p.stream_info for p in parsed.playlists)
    assert [p.uri for p in parsed.playlists] == ["720p/index.m3u8", "360p/index.m3u8"]
    assert top.resolution == (1280, 720) and low.resolution == (640, 360)
    assert top.codecs == "avc1.64001f,mp4a.40.2"
    assert top.frame_rate == 30.0
    # BANDWIDTH: peak (maxrate + audio) with TS overhead; AVERAGE: the targets.
    assert top.bandwidth == round((2675 + 128) * 1.10 * 1000)
    assert top.average_bandwidth == round((2500 + 128) * 1.10 * 1000)
    assert top.bandwidth > low.bandwidth


def test_video_only_variants_do_not_announce_audio() -> None:
    v = packager.variant(
        rendition("360p", 640, 360, 800, 856),
        segment_type="fmp4",
        audio_kbps=None,
        video_codecs="avc1.4d401e",
    )
    assert v.codecs == "avc1.4d401e"
    assert "#EXT-X-VERSION:7" in packager.render_master([v], segment_type="fmp4")


def test_passthrough_bandwidth_comes_from_what_was_measured() -> None:
    state = RenditionState(name="source", width=1280, height=720, fps=25.0, passthrough=True)
    v = packager.variant(
        state, segment_type="ts", audio_kbps=128, video_codecs="avc1.4d401f", measured_kbps=1500
    )
    assert (v.bandwidth, v.average_bandwidth) == (1_800_000, 1_500_000)


def test_measured_segments_set_bandwidth_once_there_are_enough() -> None:
    state = rendition("720p", 1280, 720, 2500, 2675)
    segments = SegmentBitrates(2.0)
    limits = packager.variant(state, segment_type="ts", audio_kbps=128, video_codecs="avc1.64001f")
    # One segment above the rate-control limit: BANDWIDTH rises to it at once.
    segments.add(2.0, 2_000 * 1_000 // 8 * 2)  # 2,000 kbit/s
    segments.add(2.0, 3_400 * 1_000 // 8 * 2)  # 3,400 kbit/s: above maxrate
    early = packager.variant(
        state,
        segment_type="ts",
        audio_kbps=128,
        video_codecs="avc1.64001f",
        measured=segments.measured(),
    )
    assert early.bandwidth == 3_400_000 > limits.bandwidth
    assert early.average_bandwidth == 2_700_000
    # Enough segments: BANDWIDTH is the measured peak, even below the limit.
    quiet = SegmentBitrates(2.0)
    for kbps in (1_000, 1_200, 1_100):
        quiet.add(2.0, kbps * 1_000 // 8 * 2)
    late = packager.variant(
        state,
        segment_type="ts",
        audio_kbps=128,
        video_codecs="avc1.64001f",
        measured=quiet.measured(),
    )
    assert (late.bandwidth, late.average_bandwidth) == (1_200_000, 1_100_000)


def test_peak_is_over_runs_of_half_to_one_and_a_half_target_durations() -> None:
    meter = SegmentBitrates(2.0)
    meter.add(2.0, 250_000)  # 1,000 kbit/s
    # A short last segment: 2,000 kbit/s on its own (0.4 s < 0.5 x 2 s) is no peak,
    # but with its neighbour (2.4 s <= 1.5 x 2 s) it is: 350,000 B in 2.4 s.
    meter.add(0.4, 100_000)
    assert meter.peak_kbps == 350_000 * 8 / 2.4 / 1000
    meter.add(1.0, 75_000)  # 600 kbit/s: lowers no peak
    assert meter.peak_kbps == 350_000 * 8 / 2.4 / 1000
    assert meter.average_kbps() == 425_000 * 8 / 3.4 / 1000
    assert meter.count == 3


def test_master_is_rewritten_only_when_its_text_changes(tmp_path: Path) -> None:
    v = packager.variant(
        rendition("360p", 640, 360, 800, 856),
        segment_type="ts",
        audio_kbps=64,
        video_codecs="avc1.4d401e",
    )
    assert packager.write_master(tmp_path, [v], segment_type="ts")
    assert not packager.write_master(tmp_path, [v], segment_type="ts")


def test_endlist_is_appended_once_and_missing_playlists_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "360p").mkdir()
    playlist = tmp_path / "360p" / "index.m3u8"
    playlist.write_text("#EXTM3U\n#EXTINF:2.0,\na-00000.ts\n")
    assert packager.end(tmp_path, ["360p", "180p"]) == ["360p"]
    assert packager.end(tmp_path, ["360p"]) == ["360p"]
    assert playlist.read_text().count("#EXT-X-ENDLIST") == 1
    assert m3u8.load(str(playlist)).is_endlist


def test_segment_count_runs_on_across_a_sliding_window() -> None:
    text = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.0,\na-7.ts\n#EXTINF:2.0,\na-8.ts\n"
    assert packager.segment_count(text) == 9
    assert packager.segment_count("#EXTM3U\n") == 0


def test_reset_removes_our_files_only(tmp_path: Path) -> None:
    (tmp_path / "master.m3u8").write_text("#EXTM3U\n")
    ours = tmp_path / "720p"
    ours.mkdir()
    for name in ("index.m3u8", "a-00001.ts", "a-init.mp4", "a-00002.m4s", "x.ts.tmp"):
        (ours / name).write_text("x")
    (ours / "keep.txt").write_text("someone else's")
    other = tmp_path / "recordings"
    other.mkdir()
    (other / "talk.ts").write_text("not in a rendition directory")
    packager.reset(tmp_path)
    assert not (tmp_path / "master.m3u8").exists()
    assert sorted(p.name for p in ours.iterdir()) == ["keep.txt"]
    assert (other / "talk.ts").exists()


def test_atomic_writes_never_show_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "master.m3u8"
    versions = ["#EXTM3U\n" + (f"# version {i}\n" * 2000) for i in range(30)]
    files.write_atomically(target, versions[0])
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for text in versions:
        files.write_atomically(target, text)
    stop.set()
    reader.join()
    assert seen <= set(versions)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_epochs_are_short_and_sortable() -> None:
    first = packager.new_epoch()
    assert first.isalnum() and len(first) <= 9
    assert packager.new_epoch() >= first
