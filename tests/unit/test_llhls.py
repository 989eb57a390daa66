"""The low-latency HLS packager (llhls.py) against the rules of RFC 8216bis and the
shape of Apple's LL-HLS example playlists.

A real encode (PyAV: libx264 with a keyframe every second, AAC) goes into a
LowLatencyWriter, and every version of the playlist it publishes is read from
disk as a player would read it, between two packets:

- no part is longer than PART-TARGET, and PART-HOLD-BACK is at least 3 part targets;
- the preload hint of each version names the part that the next version adds;
- a segment's parts, concatenated, are its segment file byte for byte;
- INDEPENDENT=YES exactly on the parts that ffprobe finds starting with a keyframe;
- parts are listed for the segments near the live edge only, and files that slid
  out of the window are deleted.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import pytest
from av.video.frame import PictureType

from kubecast_worker import delta_update, llhls, packager
from kubecast_worker.blocking_reload import BadDirective, Directives, Edge

FPS = 30
SECONDS = 9
needs_ffprobe = pytest.mark.skipif(
    subprocess.run(["which", "ffprobe"], capture_output=True, check=False).returncode != 0,
    reason="needs ffprobe",
)


def make_writer(
    out: Path, *, epoch: str, append: bool = False, event: bool = False
) -> llhls.LowLatencyWriter:
    packaging = packager.Packaging(
        out_dir=out,
        segment_seconds=2,
        segment_type="fmp4",
        window_segments=3,
        event=event,
        low_latency=True,
    )
    return llhls.LowLatencyWriter(
        packaging=packaging,
        name="180p",
        epoch=epoch,
        append=append,
        session_start=time.time(),
        parts=llhls.PartPlan.of(frame_seconds=1 / FPS, group_seconds=1),
    )


def encode(writer: llhls.LowLatencyWriter, *, seconds: int = SECONDS) -> list[str]:
    """Feed ``seconds`` of test pattern and tone; returns every playlist version seen."""
    container = writer.container
    # A keyframe every second, exactly, as ladder.Encoder forces them.
    video = container.add_stream(
        "libx264", rate=FPS,
        options={"preset": "ultrafast", "g": str(FPS), "keyint_min": str(FPS),
                 "sc_threshold": "0"},
    )  # fmt: skip
    video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
    video.codec_context.time_base = Fraction(1, FPS)
    audio = container.add_stream("aac", rate=48000)
    audio.layout = "stereo"
    pattern = av.open(f"testsrc2=size=320x180:rate={FPS}", format="lavfi")
    tone = av.open("sine=frequency=440:sample_rate=48000", format="lavfi")
    frames, samples = pattern.decode(video=0), tone.decode(audio=0)
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000, frame_size=1024)
    versions: list[str] = []
    sent = 0

    def seen() -> None:
        try:
            text = writer.playlist_path.read_text()
        except FileNotFoundError:
            return
        if not versions or versions[-1] != text:
            versions.append(text)

    for index in range(seconds * FPS):
        frame = next(frames).reformat(format="yuv420p")
        frame.pts, frame.time_base = index, Fraction(1, FPS)
        # Keyframes where the GOP says (lavfi marks every frame as one).
        frame.pict_type = PictureType.I if index % FPS == 0 else PictureType.NONE
        writer.write(video.encode(frame))
        seen()
        while sent < (index + 1) * 48000 // FPS:
            for chunk in resampler.resample(next(samples)):
                chunk.pts, chunk.time_base = sent, Fraction(1, 48000)
                sent += chunk.samples
                writer.write(audio.encode(chunk))
                seen()
    writer.write(video.encode(None))
    writer.write(audio.encode(None))
    writer.close()
    seen()
    pattern.close()
    tone.close()
    return versions


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("llhls")
    writer = make_writer(out, epoch="ep1")
    return writer.directory, encode(writer)


def test_part_plans_divide_the_gop_near_a_third_of_a_second() -> None:
    assert llhls.PartPlan.of(frame_seconds=1 / 30, group_seconds=1).frames == 10
    assert llhls.PartPlan.of(frame_seconds=1 / 30, group_seconds=2).frames == 10
    assert llhls.PartPlan.of(frame_seconds=1 / 25, group_seconds=2).frames == 10  # 0.4 s
    assert llhls.PartPlan.of(frame_seconds=1 / 60, group_seconds=2).frames == 20
    # AAC frames never divide a segment: six parts of 16 frames make 2.048 s.
    audio = llhls.PartPlan.of(frame_seconds=1024 / 48000, group_seconds=2)
    assert audio.frames == 16
    # A passthrough source's GOP is unknown: the nearest whole number of frames.
    assert llhls.PartPlan.of(frame_seconds=1 / 25, group_seconds=None).frames == 8
    plan = llhls.PartPlan.of(frame_seconds=1 / 30, group_seconds=1)
    assert plan.target == 0.33334 and plan.frag_duration_us == 333_332


def test_every_version_obeys_the_part_rules(session: tuple[Path, list[str]]) -> None:
    _, versions = session
    assert len(versions) > SECONDS * 3 - 3  # a version per part, about three a second
    for text in versions:
        playlist = m3u8.loads(text)
        target = playlist.part_inf.part_target
        assert target == pytest.approx(1 / 3, abs=1e-4)
        control = playlist.server_control
        assert control.can_block_reload == "YES"
        assert control.part_hold_back >= 3 * target
        assert control.can_skip_until is None  # 3 segments: nothing a delta could skip
        assert playlist.target_duration == 2
        for segment in playlist.segments:
            assert all(p.duration <= target for p in segment.parts), text
            if segment.uri:
                assert round(segment.duration) <= playlist.target_duration
                assert segment.program_date_time is not None
            if segment.parts:
                assert segment.parts[0].independent == "YES"  # a segment starts on a keyframe
        # Apple's shape: the hint comes after the last part, before any report or end.
        lines = text.splitlines()
        hints = [i for i, line in enumerate(lines) if line.startswith("#EXT-X-PRELOAD-HINT")]
        if hints:
            assert hints == [len(lines) - 1], text
            assert 'TYPE=PART,URI="ep1-' in lines[-1]


def parts_of(text: str) -> list[str]:
    return [p.uri for s in m3u8.loads(text).segments for p in s.parts]


def test_the_preload_hint_names_the_next_part(session: tuple[Path, list[str]]) -> None:
    _, versions = session
    checked = 0
    for before, after in itertools.pairwise(versions):
        hint = m3u8.loads(before).preload_hint
        if hint is None:
            continue
        new = [uri for uri in parts_of(after) if uri not in set(parts_of(before))]
        assert new and new[0] == hint.uri, (before, after)
        checked += 1
    # Every part but the first was hinted, segment boundaries included.
    assert checked >= len(versions) - 2
    last = m3u8.loads(versions[-1])
    assert last.preload_hint is None  # the session is over: no part is coming


def test_parts_concatenate_to_their_segment(session: tuple[Path, list[str]]) -> None:
    directory, versions = session
    compared = 0
    for text in versions:
        for segment in m3u8.loads(text).segments:
            if not segment.uri or not segment.parts or not (directory / segment.uri).exists():
                continue
            if not all((directory / p.uri).exists() for p in segment.parts):
                continue
            joined = b"".join((directory / p.uri).read_bytes() for p in segment.parts)
            assert joined == (directory / segment.uri).read_bytes(), segment.uri
            assert sum(p.duration for p in segment.parts) == pytest.approx(segment.duration, 1e-4)
            compared += 1
    assert compared >= 2


def first_video_packet(directory: Path, name: str) -> dict[str, str]:
    init = next(directory.glob("*-init.mp4")).read_bytes()
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-select_streams", "v",
         "-show_entries", "packet=pts_time,flags", "-read_intervals", "%+#1", "-"],
        input=init + (directory / name).read_bytes(), capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["packets"][0]  # type: ignore[no-any-return]


@needs_ffprobe
def test_independent_exactly_on_the_parts_that_start_with_a_keyframe(
    session: tuple[Path, list[str]],
) -> None:
    directory, versions = session
    final = m3u8.loads(versions[-1])
    parts = [p for s in final.segments for p in s.parts]
    assert len(parts) >= 6
    for part in parts:
        flags = first_video_packet(directory, part.uri)["flags"]
        assert flags.startswith("K") == (part.independent == "YES"), (part.uri, flags)
    # One keyframe a second, parts of a third: every third part is independent.
    assert sum(p.independent == "YES" for p in parts) == pytest.approx(len(parts) / 3, abs=1)


@needs_ffprobe
def test_ffprobe_reads_every_listed_segment_whole(session: tuple[Path, list[str]]) -> None:
    directory, versions = session
    final = m3u8.loads(versions[-1])
    init = next(directory.glob("*-init.mp4")).read_bytes()
    for segment in final.segments:
        result = subprocess.run(
            ["ffprobe", "-v", "error", "-of", "json", "-show_entries",
             "stream=codec_type,codec_name:format=duration", "-"],
            input=init + (directory / segment.uri).read_bytes(), capture_output=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        probed = json.loads(result.stdout)
        kinds = sorted(s["codec_name"] for s in probed["streams"])
        assert kinds == ["aac", "h264"]


def test_parts_near_the_edge_only_and_old_files_deleted(session: tuple[Path, list[str]]) -> None:
    directory, versions = session
    live = m3u8.loads(versions[-2])  # the last version with the session still live
    assert len([s for s in live.segments if s.uri]) == 3  # the window
    with_parts = [s for s in live.segments if s.parts]
    # Parts for the segments ending within three target durations (6 s) of the end.
    assert 1 <= len(with_parts) <= 4 and with_parts == live.segments[-len(with_parts) :]
    # Files of the segments that slid out are gone, one segment late.
    listed = {s.uri for s in live.segments if s.uri}
    segments = sorted(p.name for p in directory.glob("ep1-?????.m4s"))
    assert set(segments) >= listed
    assert len(segments) <= len(listed) + 2
    assert "ep1-00000.m4s" not in segments and "ep1-00000.0.m4s" not in {
        p.name for p in directory.iterdir()
    }


def test_a_publisher_back_continues_the_playlist_after_a_discontinuity(tmp_path: Path) -> None:
    first = make_writer(tmp_path, epoch="ep1")
    encode(first, seconds=3)  # segments 0 (2 s) and 1 (1 s)
    second = make_writer(tmp_path, epoch="ep2", append=True)
    versions = [m3u8.loads(text) for text in encode(second, seconds=9)]
    # While both sessions are listed: the first new segment follows a discontinuity,
    # with its own init section, and numbering goes on where the first stopped.
    both = next(v for v in versions if any(s.uri == "ep2-00002.m4s" for s in v.segments))
    uris = [s.uri for s in both.segments]
    assert uris[:3] == ["ep1-00000.m4s", "ep1-00001.m4s", "ep2-00002.m4s"]
    new = both.segments[2]
    assert new.discontinuity and new.init_section.uri == "ep2-init.mp4"
    assert both.segments[1].init_section.uri == "ep1-init.mp4"
    assert not both.segments[1].parts  # the old session's live edge is gone
    assert (both.media_sequence or 0, both.discontinuity_sequence or 0) == (0, 0)
    # Once the segment after the discontinuity slid out too, the sequence counts it.
    final = versions[-1]
    assert not any(s.discontinuity for s in final.segments)
    assert final.discontinuity_sequence == 1
    assert final.media_sequence == int(final.segments[0].uri[4:9])
    assert not (tmp_path / "180p" / "ep1-00000.m4s").exists()


# -- the edge the origin reads (blocking_reload.py) ------------------------------------


def test_the_origin_reads_the_edge_the_writer_wrote(session: tuple[Path, list[str]]) -> None:
    _, versions = session
    for text in versions[:-1]:
        playlist = m3u8.loads(text)
        edge = Edge.of(text)
        complete = [s for s in playlist.segments if s.uri]
        open_parts = [p for s in playlist.segments if not s.uri for p in s.parts]
        assert edge.next_msn == playlist.media_sequence + len(complete)
        assert edge.open_parts == len(open_parts)
        assert edge.blocking and not edge.ended
        assert edge.hint == playlist.preload_hint.uri
        # What the hint names is what a blocking request for the next part waits for.
        if edge.open_parts:
            assert edge.has(edge.next_msn, edge.open_parts - 1)
        elif complete:  # just after a segment closed: its parts are all there, no later one
            assert edge.has(edge.next_msn - 1, edge.last_parts - 1)
            assert not edge.has(edge.next_msn - 1, edge.last_parts)
        assert not edge.has(edge.next_msn, edge.open_parts)
        assert not edge.has(edge.next_msn + 1, 0)
        assert not edge.has(edge.next_msn, None)  # the open segment is not complete
        if complete:
            assert edge.has(edge.next_msn - 1, None)


def test_directives_that_cannot_be_answered_are_bad_requests() -> None:
    edge = Edge.of(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:40\n"
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1\n"
        "#EXTINF:2.0,\na-00040.m4s\n#EXTINF:2.0,\na-00041.m4s\n"
        '#EXT-X-PART:DURATION=0.3,URI="a-00042.0.m4s",INDEPENDENT=YES\n'
    )
    assert (edge.next_msn, edge.open_parts, edge.last_parts) == (42, 1, 0)
    Directives(43, 0).check(edge)  # last segment 41: up to 43 may be waited for
    with pytest.raises(BadDirective, match="more than two"):
        Directives(44, 0).check(edge)
    with pytest.raises(BadDirective):
        Directives.of({"_HLS_part": "1"})
    with pytest.raises(BadDirective):
        Directives.of({"_HLS_msn": "-1"})
    assert Directives.of({"_HLS_msn": "42", "_HLS_part": "1"}) == Directives(42, 1)
    assert Directives.of({"other": "1"}) is None


# -- delta updates (delta_update.py) ---------------------------------------------------


def test_a_delta_update_is_the_playlist_less_what_a_player_has_already(tmp_path: Path) -> None:
    writer = make_writer(tmp_path, epoch="ev", event=True)
    versions = encode(writer, seconds=17)
    live = versions[-2]
    full = m3u8.loads(live)
    assert full.server_control.can_skip_until == 12  # six target durations
    assert full.version == 9 and full.playlist_type == "event"
    # A live window no longer than six target durations: no delta updates offered.
    assert (
        delta_update.skip_until(
            llhls.MediaPlaylist(segment_seconds=2, part_target=0.3, window=6).render()
        )
        is None
    )

    text = delta_update.delta(live)
    update = m3u8.loads(text)
    skipped = update.skip.skipped_segments
    complete = [s for s in full.segments if s.uri]
    assert 1 <= skipped < len(complete)
    # What is left is the playlist's own tail, numbered as in the playlist.
    assert update.media_sequence == full.media_sequence
    assert [s.uri for s in update.segments] == [s.uri for s in full.segments[skipped:]]
    assert [s.duration for s in update.segments] == [s.duration for s in full.segments[skipped:]]
    assert update.segments[0].init_section.uri == "ev-init.mp4"
    assert update.preload_hint.uri == full.preload_hint.uri
    assert update.version == 9
    # Skipped: the segments that start more than CAN-SKIP-UNTIL before the end, all of them.
    total = sum(s.duration for s in complete)
    starts = [sum(s.duration for s in complete[:i]) for i in range(len(complete))]
    assert all(total - start > 12 for start in starts[:skipped])
    assert total - starts[skipped] <= 12
    # A playlist that offers none, or has nothing old enough, is its whole self.
    assert delta_update.delta(versions[3]) == versions[3]
