"""The live DASH manifest (``manifest.mpd``) of the same CMAF segments as HLS.

The hls muxer writes every rendition's fMP4 segments and media playlist
(packager.HlsWriter); this module describes those very files to DASH players,
so nothing is muxed twice. Why not FFmpeg's dash muxer (with ``hls_playlist``):
it is one muxer for every rendition, so all of them would be written from one
thread; it cannot continue a manifest when a publisher comes back within the
reconnect window (the hls muxer's ``append_list`` does, with a discontinuity);
and its HLS master would not carry the measured BANDWIDTH of ours.

What players get (ISO/IEC 23009-1, the isoff-live profile):

- ``type="dynamic"`` and one Period per publish session still listed (a reconnect
  within the window is a discontinuity in HLS, a new Period here). A Period starts at
  its session's wall-clock start, which its segment names carry
  (``<epoch>-00042.m4s``, packager.new_epoch), counted from ``availabilityStartTime``:
  the presentation's first session, so that its media starts at time 0 in the
  player's MediaSource. Not the Unix epoch: Chromium 156 reports a live MediaSource's
  currentTime as the seekable range's start without moving playback there, and dash.js
  skips a seek to the time currentTime already says; a viewer who joins a session in
  its first seconds (dash.js then starts at the window's start) saw no picture until
  dash.js's gap handling seeked 8 s or more later. The presentation goes on as long as
  the previous manifest (still live) shares a Period with the new one, and keeps its
  ``availabilityStartTime`` (which must not change under a player): the manifest's
  only memory is the file itself, so a restarted worker writes the same;
- a video AdaptationSet (aligned segments: the renditions' keyframes are forced
  on the same timestamps) and an audio one, as DASH players need: dash.js does
  not play audio and video muxed in one representation;
- per Representation a ``SegmentTemplate`` with ``$Number$`` and a
  ``SegmentTimeline``: each segment's start is its ``tfdt`` (fmp4.py), its
  duration the playlist's EXTINF, so the timeline is exact, not a nominal rate;
- ``minimumUpdatePeriod`` of one segment while live, ``timeShiftBufferDepth`` the
  playlist's window (none for an event playlist: DVR from the start);
- ``UTCTiming`` direct: the server's clock when the manifest was written, so that
  dash.js does not ask a public time server (its default) where the live edge is.

When every playlist has ended (ENDLIST), ``minimumUpdatePeriod`` goes and the
last Period gets its duration: the presentation is over (DASH-IF IOP 4.11.4).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import m3u8

from kubecast_worker import files, fmp4

NAME = "manifest.mpd"
NAMESPACE = "urn:mpeg:dash:schema:mpd:2011"
PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"
AUDIO_CHANNELS = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"
UTC_DIRECT = "urn:mpeg:dash:utc:direct:2014"
#: The packager's segment names: ``<epoch>-<number>.m4s``.
_SEGMENT = re.compile(r"^(?P<epoch>[0-9a-z]+)-(?P<number>\d+)\.m4s$")


@dataclass(frozen=True)
class Track:
    """One rendition as the manifest declares it (values from the HLS master's)."""

    name: str
    kind: str  # "video" or "audio"
    bandwidth: int
    codecs: str
    width: int = 0
    height: int = 0
    frame_rate: float | Fraction | None = None
    sample_rate: int = 48000
    channels: int = 2


@dataclass(frozen=True)
class Segment:
    number: int
    start: int  # in the track's timescale (tfdt)
    duration: int


@dataclass
class Listing:
    """One track's segments of one session (a Period)."""

    epoch: str
    init: str
    timescale: int
    segments: list[Segment] = field(default_factory=list)


class Reader:
    """Reads what the playlists list; a segment's header once (segments never change)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._starts: dict[str, int] = {}
        self._timescales: dict[str, int] = {}

    def listings(self, name: str) -> tuple[list[Listing], bool]:
        """The track's segments grouped by session, and whether its playlist ended."""
        directory = self.out_dir / name
        try:
            playlist = m3u8.loads((directory / "index.m3u8").read_text())
        except FileNotFoundError:
            return [], False
        found: list[Listing] = []
        for segment in playlist.segments:
            match = _SEGMENT.match(segment.uri or "")
            init = segment.init_section.uri if segment.init_section else None
            if match is None or init is None:
                continue  # not a CMAF segment of ours
            try:
                start = self._start(directory / segment.uri)
                scale = self._timescale(directory / init)
            except (FileNotFoundError, fmp4.Fmp4Error):
                continue  # slid out and deleted since the playlist was read
            epoch = match["epoch"]
            if not found or found[-1].epoch != epoch:
                found.append(Listing(epoch=epoch, init=init, timescale=scale))
            duration = round((segment.duration or 0.0) * scale)
            found[-1].segments.append(Segment(int(match["number"]), start, duration))
        self._forget(directory, found)
        return found, bool(playlist.is_endlist)

    def _start(self, path: Path) -> int:
        key = str(path)
        if key not in self._starts:
            self._starts[key] = fmp4.decode_time(fmp4.read_head(path))
        return self._starts[key]

    def _timescale(self, path: Path) -> int:
        key = str(path)
        if key not in self._timescales:
            self._timescales[key] = fmp4.timescale(path.read_bytes())
        return self._timescales[key]

    def _forget(self, directory: Path, listed: list[Listing]) -> None:
        keep = {
            str(directory / f"{listing.epoch}-{s.number:05d}.m4s")
            for listing in listed
            for s in listing.segments
        }
        prefix = str(directory) + "/"
        for key in [k for k in self._starts if k.startswith(prefix) and k not in keep]:
            del self._starts[key]


def session_start(epoch: str) -> float:
    """The wall-clock second a session started, from its epoch (packager.new_epoch)."""
    return int(epoch, 36) / 1000


def _seconds(value: float) -> str:
    return f"PT{value:.3f}S"


def _timeline(parent: ET.Element, segments: Sequence[Segment]) -> None:
    timeline = ET.SubElement(parent, "SegmentTimeline")
    last: ET.Element | None = None
    end = None
    repeat = 0
    for s in segments:
        if last is not None and s.start == end and str(s.duration) == last.get("d"):
            repeat += 1
            last.set("r", str(repeat))
        else:
            last, repeat = ET.SubElement(timeline, "S", t=str(s.start), d=str(s.duration)), 0
        end = s.start + s.duration


def _epochs(tracks: Sequence[tuple[Track, Sequence[Listing]]]) -> list[str]:
    """The sessions listed by any track, oldest first."""
    epochs = {listing.epoch for _, listings in tracks for listing in listings}
    return sorted(epochs, key=session_start)


def _timestamp(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def availability_start(previous: str | None, epochs: Sequence[str]) -> float:
    """The presentation's start (``availabilityStartTime``): that of the ``previous``
    manifest while the presentation goes on (it is still live and shares a Period with
    ``epochs``), else the oldest listed session's start."""
    oldest = session_start(epochs[0])
    if previous is None:
        return oldest
    try:
        root = ET.fromstring(previous)
        start = datetime.fromisoformat(root.get("availabilityStartTime", "")).timestamp()
    except (ET.ParseError, ValueError):
        return oldest
    periods = {p.get("id") for p in root.iterfind(f"{{{NAMESPACE}}}Period")}
    live = "minimumUpdatePeriod" in root.attrib
    # NB: never after a Period it has to place (a negative start).
    return start if live and periods & set(epochs) and start <= oldest else oldest


def render(
    *,
    tracks: Sequence[tuple[Track, Sequence[Listing]]],
    segment_seconds: int,
    window_seconds: int | None,
    ended: bool,
    now: float,
    start: float | None = None,
) -> str:
    """The MPD text. ``tracks``: each track with its sessions, oldest first;
    ``start``: the presentation's (availability_start), by default its oldest session's."""
    epochs = _epochs(tracks)
    origin = session_start(epochs[0]) if start is None else start
    stamp = _timestamp(now)
    mpd = ET.Element(
        "MPD",
        xmlns=NAMESPACE,
        profiles=PROFILE,
        type="dynamic",
        availabilityStartTime=_timestamp(origin),
        publishTime=stamp,
        minBufferTime=_seconds(segment_seconds),
        suggestedPresentationDelay=_seconds(3 * segment_seconds),
    )
    if not ended:
        mpd.set("minimumUpdatePeriod", _seconds(segment_seconds))
    if window_seconds is not None:
        mpd.set("timeShiftBufferDepth", _seconds(window_seconds))
    last_end = 0.0
    period, start = None, 0.0
    for epoch in epochs:
        start = round(session_start(epoch) - origin, 3)
        period = ET.SubElement(mpd, "Period", id=epoch, start=_seconds(start))
        for kind in ("video", "audio"):
            present = [
                (track, listing)
                for track, listings in tracks
                if track.kind == kind
                for listing in listings
                if listing.epoch == epoch and listing.segments
            ]
            if not present:
                continue
            adaptation = ET.SubElement(
                period,
                "AdaptationSet",
                id=str(len(period)),
                contentType=kind,
                mimeType=f"{kind}/mp4",
                segmentAlignment="true",
                startWithSAP="1",
            )
            for track, listing in present:
                representation = ET.SubElement(
                    adaptation,
                    "Representation",
                    id=track.name,
                    bandwidth=str(track.bandwidth),
                    codecs=track.codecs,
                )
                if kind == "video":
                    representation.set("width", str(track.width))
                    representation.set("height", str(track.height))
                    representation.set("sar", "1:1")
                    if track.frame_rate:
                        representation.set("frameRate", _frame_rate(track.frame_rate))
                else:
                    representation.set("audioSamplingRate", str(track.sample_rate))
                    ET.SubElement(
                        representation,
                        "AudioChannelConfiguration",
                        schemeIdUri=AUDIO_CHANNELS,
                        value=str(track.channels),
                    )
                template = ET.SubElement(
                    representation,
                    "SegmentTemplate",
                    timescale=str(listing.timescale),
                    initialization=f"{track.name}/{listing.init}",
                    media=f"{track.name}/{epoch}-$Number%05d$.m4s",
                    startNumber=str(listing.segments[0].number),
                    presentationTimeOffset="0",
                )
                _timeline(template, listing.segments)
                tail = listing.segments[-1]
                last_end = max(last_end, start + (tail.start + tail.duration) / listing.timescale)
    if ended and period is not None:
        period.set("duration", _seconds(max(0.0, last_end - start)))
    ET.SubElement(mpd, "UTCTiming", schemeIdUri=UTC_DIRECT, value=stamp)
    ET.indent(mpd)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(mpd, encoding="unicode") + "\n"


def _frame_rate(fps: float | Fraction) -> str:
    """25 or 30000/1001: DASH's FrameRateType is an integer or a fraction."""
    rate = Fraction(fps).limit_denominator(1001)
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)  # 29.97 (rounded for people) is 30000/1001
    if rate.denominator != 1 and abs(float(ntsc) - fps) < 0.005:
        rate = ntsc
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def write(
    reader: Reader,
    tracks: Sequence[Track],
    *,
    segment_seconds: int,
    window_seconds: int | None,
    now: float | None = None,
) -> bool:
    """Write ``manifest.mpd`` from the tracks' playlists; False while nothing is listed."""
    listed = []
    ended = bool(tracks)
    for track in tracks:
        listings, track_ended = reader.listings(track.name)
        listed.append((track, listings))
        ended = ended and track_ended
    if not any(listings for _, listings in listed):
        return False
    path = reader.out_dir / NAME
    try:
        previous: str | None = path.read_text()
    except FileNotFoundError:
        previous = None
    text = render(
        tracks=listed,
        segment_seconds=segment_seconds,
        window_seconds=window_seconds,
        ended=ended,
        now=time.time() if now is None else now,
        start=availability_start(previous, _epochs(listed)),
    )
    files.write_atomically(path, text)
    return True


def end(path: Path) -> bool:
    """Mark a written manifest as over (the playlists got ENDLIST); False without one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    ET.register_namespace("", NAMESPACE)
    root = ET.fromstring(text)
    if "minimumUpdatePeriod" not in root.attrib:
        return True
    del root.attrib["minimumUpdatePeriod"]
    ns = {"d": NAMESPACE}
    periods = root.findall("d:Period", ns)
    if periods:
        last = periods[-1]
        start = float(last.get("start", "PT0S")[2:-1])
        end_at = start
        for template in last.iterfind(".//d:SegmentTemplate", ns):
            scale = int(template.get("timescale", "1"))
            t = 0
            for s in template.iterfind("d:SegmentTimeline/d:S", ns):
                t = int(s.get("t", t))
                t += int(s.get("d", "0")) * (int(s.get("r", "0")) + 1)
            end_at = max(end_at, start + t / scale)
        last.set("duration", _seconds(end_at - start))
    files.write_atomically(
        path,
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n",
    )
    return True
