"""The DASH manifest from what the playlists list: timelines, periods, the end."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from kubecast_worker import mpd

NS = {"d": mpd.NAMESPACE}
VIDEO = mpd.Track("360p", "video", 900_000, "avc1.64001e", 640, 360, 25.0)
AUDIO = mpd.Track("audio-96k", "audio", 100_000, "mp4a.40.2")
#: Two sessions: a publisher came back within the reconnect window.
FIRST, SECOND = "mx5n0000", "mx5n1000"


def listing(epoch: str, first: int, count: int, *, scale: int = 12800) -> mpd.Listing:
    step = 2 * scale
    segments = [mpd.Segment(first + i, i * step, step) for i in range(count)]
    return mpd.Listing(epoch=epoch, init=f"{epoch}-init.mp4", timescale=scale, segments=segments)


def render(*tracks: tuple[mpd.Track, list[mpd.Listing]], ended: bool = False) -> ET.Element:
    text = mpd.render(
        tracks=tracks, segment_seconds=2, window_seconds=12, ended=ended, now=1_800_000_000.0
    )
    return ET.fromstring(text)


def test_equal_segments_are_one_timeline_entry_with_repeats() -> None:
    root = render((VIDEO, [listing(FIRST, 7, 5)]))
    (template,) = root.iterfind(".//d:SegmentTemplate", NS)
    assert template.get("startNumber") == "7"
    assert template.get("media") == f"360p/{FIRST}-$Number%05d$.m4s"
    assert template.get("initialization") == f"360p/{FIRST}-init.mp4"
    entries = [s.attrib for s in template.iterfind("d:SegmentTimeline/d:S", NS)]
    assert entries == [{"t": "0", "d": "25600", "r": "4"}]


def test_a_shorter_segment_starts_a_new_entry_that_continues_the_timeline() -> None:
    scale = 48000
    odd = listing(FIRST, 0, 3, scale=scale)
    odd.segments[1] = mpd.Segment(1, 2 * scale, 95232)
    odd.segments[2] = mpd.Segment(2, 2 * scale + 95232, 2 * scale)
    root = render((AUDIO, [odd]))
    entries = [s.attrib for s in root.iterfind(".//d:S", NS)]
    assert entries == [
        {"t": "0", "d": "96000"},
        {"t": "96000", "d": "95232"},
        {"t": "191232", "d": "96000"},
    ]


def test_each_session_is_a_period_that_starts_at_its_wall_clock_start() -> None:
    root = render(
        (VIDEO, [listing(FIRST, 0, 2), listing(SECOND, 2, 3)]),
        (AUDIO, [listing(FIRST, 0, 2, scale=48000), listing(SECOND, 2, 3, scale=48000)]),
    )
    periods = root.findall("d:Period", NS)
    assert [p.get("id") for p in periods] == [FIRST, SECOND]
    # Counted from the first session's start: its media starts at 0 in the player.
    assert root.get("availabilityStartTime") == "2026-12-02T04:39:49.248Z"
    assert mpd.session_start(FIRST) == 1_796_186_389.248
    starts = [float(p.get("start", "")[2:-1]) for p in periods]
    assert starts == [0.0, (int(SECOND, 36) - int(FIRST, 36)) / 1000]
    for period in periods:
        kinds = [a.get("contentType") for a in period.findall("d:AdaptationSet", NS)]
        assert kinds == ["video", "audio"]
    second = periods[1].find(".//d:SegmentTemplate", NS)
    assert second is not None and second.get("startNumber") == "2"
    assert root.get("minimumUpdatePeriod") == "PT2.000S"
    assert root.get("timeShiftBufferDepth") == "PT12.000S"
    utc = root.find("d:UTCTiming", NS)
    assert utc is not None and utc.get("value") == "2027-01-15T08:00:00.000Z"


def test_a_track_without_segments_in_a_period_is_left_out_of_it() -> None:
    # The audio of the first session already slid out; its video did not.
    root = render(
        (VIDEO, [listing(FIRST, 0, 1), listing(SECOND, 1, 2)]),
        (AUDIO, [listing(SECOND, 1, 2, scale=48000)]),
    )
    first, second = root.findall("d:Period", NS)
    assert [a.get("contentType") for a in first.findall("d:AdaptationSet", NS)] == ["video"]
    assert len(second.findall("d:AdaptationSet", NS)) == 2


def test_frame_rates_are_integers_or_ntsc_fractions() -> None:
    ntsc = mpd.Track("720p", "video", 1, "avc1.64001f", 1280, 720, 29.97)
    root = render((ntsc, [listing(FIRST, 0, 1)]), (VIDEO, [listing(FIRST, 0, 1)]))
    rates = [r.get("frameRate") for r in root.iterfind(".//d:Representation", NS)]
    assert rates == ["30000/1001", "25"]


def test_ending_drops_the_updates_and_gives_the_last_period_its_duration(tmp_path: Path) -> None:
    text = mpd.render(
        tracks=[(VIDEO, [listing(FIRST, 0, 2), listing(SECOND, 2, 3)])],
        segment_seconds=2,
        window_seconds=None,
        ended=False,
        now=1_800_000_000.0,
    )
    path = tmp_path / mpd.NAME
    path.write_text(text)
    assert mpd.end(path)
    root = ET.fromstring(path.read_text())
    assert "minimumUpdatePeriod" not in root.attrib
    assert "timeShiftBufferDepth" not in root.attrib  # an event playlist: from the start
    periods = root.findall("d:Period", NS)
    assert periods[-1].get("duration") == "PT6.000S" and periods[0].get("duration") is None
    assert mpd.end(path)  # again: nothing left to do
    assert not mpd.end(tmp_path / "missing.mpd")


def write(tmp_path: Path, *listings: mpd.Listing, now: float) -> ET.Element:
    """``mpd.write`` of VIDEO's playlist listing ``listings`` (written as the packager
    would, segment files with their tfdt), over what ``tmp_path`` already holds."""
    directory = tmp_path / VIDEO.name
    directory.mkdir(exist_ok=True)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2"]
    for index, each in enumerate(listings):
        (directory / each.init).write_bytes(INIT)
        lines += ["#EXT-X-DISCONTINUITY"] if index else []
        lines.append(f'#EXT-X-MAP:URI="{each.init}"')
        for s in each.segments:
            name = f"{each.epoch}-{s.number:05d}.m4s"
            (directory / name).write_bytes(_segment(s.start))
            lines += [f"#EXTINF:{s.duration / each.timescale:.6f},", name]
    (directory / "index.m3u8").write_text("\n".join(lines) + "\n")
    assert mpd.write(mpd.Reader(tmp_path), [VIDEO], segment_seconds=2, window_seconds=12, now=now)
    return ET.fromstring((tmp_path / mpd.NAME).read_text())


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


#: An init section with just what fmp4.timescale reads: moov/trak/mdia/mdhd (12800).
INIT = _box(
    b"moov",
    _box(b"trak", _box(b"mdia", _box(b"mdhd", bytes(12) + (12800).to_bytes(4, "big") + bytes(8)))),
)


def _segment(decode_time: int) -> bytes:
    tfdt = _box(b"tfdt", b"\x01\x00\x00\x00" + decode_time.to_bytes(8, "big"))
    return _box(b"moof", _box(b"traf", tfdt))


def test_the_presentation_keeps_its_start_while_it_goes_on(tmp_path: Path) -> None:
    first = write(tmp_path, listing(FIRST, 0, 3), now=1_800_000_000.0)
    ast = first.get("availabilityStartTime")
    # The publisher came back; then the first session slid out of every playlist.
    write(tmp_path, listing(FIRST, 0, 3), listing(SECOND, 3, 2), now=1_800_000_010.0)
    later = write(tmp_path, listing(SECOND, 3, 6), now=1_800_000_020.0)
    assert later.get("availabilityStartTime") == ast, "it must not change under a player"
    (period,) = later.findall("d:Period", NS)
    assert float(period.get("start", "")[2:-1]) == round(
        mpd.session_start(SECOND) - mpd.session_start(FIRST), 3
    )


def test_a_new_presentation_starts_at_its_first_session(tmp_path: Path) -> None:
    write(tmp_path, listing(FIRST, 0, 3), now=1_800_000_000.0)
    assert mpd.end(tmp_path / mpd.NAME)  # over: the next publish is a new presentation
    root = write(tmp_path, listing(SECOND, 0, 2), now=1_800_000_100.0)
    (period,) = root.findall("d:Period", NS)
    assert period.get("start") == "PT0.000S"
    assert mpd.availability_start(None, [SECOND]) == mpd.session_start(SECOND)
    # Nor does a manifest that shares no Period with the playlists carry on.
    unrelated = ET.tostring(render((VIDEO, [listing(FIRST, 0, 1)])), encoding="unicode")
    assert mpd.availability_start(unrelated, [SECOND]) == mpd.session_start(SECOND)
