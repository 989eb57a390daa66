"""Low-Latency HLS: a rendition's parts, segments and media playlist, packaged by us.

FFmpeg's hls muxer writes no partial segments, so a low-latency rendition
(``spec.outputs.hls.lowLatency``) is muxed by FFmpeg's ``mp4`` muxer (through
PyAV) into a Python sink instead, as fragmented MP4 that cuts a fragment every
part target (``frag_duration``) and at every keyframe (``frag_keyframe``). The
byte stream is cut at box boundaries (fmp4.BoxSplitter):

- ftyp+moov is the init section, ``<epoch>-init.mp4``;
- each moof+mdat is one part, ``<epoch>-00042.3.m4s`` (segment 42, part 3), written
  as soon as the muxer emits it, which is when the next fragment's first frame
  arrives; its start is its ``tfdt``, its length the sum of its sample durations,
  and it is ``INDEPENDENT`` when its first sample is a sync sample;
- a segment is the parts from a keyframe until the segment duration is reached,
  written as its own file too, byte for byte their concatenation:
  ``<epoch>-00042.m4s``, the hls muxer's names, so that plain HLS players, the
  DASH manifest (mpd.py) and the recorder read the same files as ever.

Every file is written whole and renamed into place (files.write_atomically). The
media playlist is ours, written with the ``m3u8`` library after every part (RFC
8216bis 4.4.3.7-8, 4.4.4.9, 4.4.5.3; Apple's "Enabling Low-Latency HLS"):
``EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK`` (3 part targets),
``EXT-X-PART-INF``, ``EXT-X-PART`` for the segments within the last three target
durations, ``EXT-X-PRELOAD-HINT`` naming the part that comes next,
``EXT-X-PROGRAM-DATE-TIME`` on every segment, ``EXT-X-RENDITION-REPORT`` of the
other renditions, and ``CAN-SKIP-UNTIL`` on the playlists long enough for delta
updates. The origin answers blocking reloads (``_HLS_msn``/``_HLS_part``:
blocking_reload.py) and delta updates (``_HLS_skip``: delta_update.py) from this file.

Part length. A part is a whole number of the first track's frames (video frames,
or AAC frames in an audio-only rendition), chosen so that parts divide the GOP
evenly near ``NOMINAL_PART_SECONDS`` (30 fps, 1 or 2 s GOP: 10 frames, 0.333 s);
PART-TARGET is exactly that length. The muxer flushes a fragment at the first
packet of any track at least ``frag_duration`` after the fragment's start, so
``frag_duration`` is one microsecond under the part length: the video frame that
ends a part triggers the flush, and the muxed audio (whose fragment starts no
earlier) never triggers it sooner unless its frames end on the same instant.
The only shorter parts are one before a keyframe that is not on the grid (a
passthrough source's own GOP) and the last one of a session.

Across publishes, the semantics of packager.HlsWriter: a publisher back within
the reconnect window continues the same playlist (its segments stay listed, the
first new segment carries ``EXT-X-DISCONTINUITY``, media sequence numbers keep
counting, ``EXT-X-DISCONTINUITY-SEQUENCE`` counts the discontinuities that slid
out); packager.end() appends ENDLIST when the window passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import av
import av.container
import m3u8
from av.packet import Packet

from kubecast_worker import delta_update, files, fmp4, packager
from kubecast_worker.blocking_reload import Edge
from kubecast_worker.tally import Tally, Written

#: What a part aims at: Apple suggests about a third of a second to one second; hls.js
#: then holds three parts (PART-HOLD-BACK) behind the live edge.
NOMINAL_PART_SECONDS = 1 / 3
#: Part lengths considered when parts can divide the GOP evenly.
PART_RANGE = (0.2, 0.5)
#: PART-HOLD-BACK in part targets (RFC 8216bis: at least 2; Apple recommends 3).
HOLD_BACK_PARTS = 3
#: Parts are listed for the segments within this many target durations of the end.
PARTS_KEPT_TARGETS = 3
#: CAN-SKIP-UNTIL in target durations (RFC 8216bis 4.4.3.8: at least six).
SKIP_TARGETS = 6
#: fMP4 init sections of a media playlist without I-frames only need version 6;
#: the hls muxer writes 7 for fMP4, and so do we.
VERSION = 7
MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe+frag_discont+cmaf+skip_trailer"
DIGITS = 5  # of part durations and PART-TARGET


@dataclass(frozen=True)
class PartPlan:
    """How long a rendition's parts are: ``frames`` of ``frame_seconds`` each."""

    frames: int
    frame_seconds: float

    @property
    def target(self) -> float:
        """PART-TARGET: no part is longer (rounded up, as written)."""
        return math.ceil(self.frames * self.frame_seconds * 10**DIGITS) / 10**DIGITS

    @property
    def frag_duration_us(self) -> int:
        return max(1, round(self.frames * self.frame_seconds * 1_000_000) - 1)

    @classmethod
    def of(
        cls,
        *,
        frame_seconds: float,
        group_seconds: float | None,
        nominal: float = NOMINAL_PART_SECONDS,
    ) -> PartPlan:
        """Parts for frames of ``frame_seconds``, keyframes every ``group_seconds``
        (None: not known, as with a passthrough source's own GOP).

        A whole group of frames (a GOP) is cut evenly when it can be, into parts of
        ``PART_RANGE`` nearest ``nominal``; else into as many parts as ``nominal``
        makes, the last a little shorter (AAC frames never divide a segment evenly).
        """
        if group_seconds is None:
            return cls(max(1, round(nominal / frame_seconds)), frame_seconds)
        group = group_seconds / frame_seconds
        if abs(group - round(group)) < 1e-6:
            whole = round(group)
            lengths = [d for d in range(1, whole + 1) if whole % d == 0]
            fitting = [d for d in lengths if PART_RANGE[0] <= d * frame_seconds <= PART_RANGE[1]]
            if fitting:
                best = min(fitting, key=lambda d: (abs(d * frame_seconds - nominal), d))
                return cls(best, frame_seconds)
        parts = max(1, round(group_seconds / nominal))
        return cls(max(1, math.ceil(group / parts)), frame_seconds)


# -- the playlist ----------------------------------------------------------------------


@dataclass
class Part:
    uri: str
    duration: float
    independent: bool


@dataclass
class Segment:
    #: media sequence number, which is also the number in its file's name
    number: int
    init: str
    program_date_time: datetime | None = None
    discontinuity: bool = False
    #: None while the segment is still being written (only its parts are listed)
    uri: str | None = None
    duration: float = 0.0
    parts: list[Part] = field(default_factory=list)

    @property
    def parts_duration(self) -> float:
        return sum(p.duration for p in self.parts)


class MediaPlaylist:
    """One rendition's low-latency media playlist: what it lists, and its text.

    ``segments`` are complete; ``open`` is the segment being written, listed by its
    parts only. ``window``: how many complete segments a live playlist keeps (None:
    an event playlist, every one).
    """

    def __init__(
        self,
        *,
        segment_seconds: int,
        part_target: float,
        window: int | None,
        event: bool = False,
    ) -> None:
        self.segment_seconds = segment_seconds
        self.part_target = part_target
        self.window = window
        self.event = event
        self.segments: list[Segment] = []
        self.open: Segment | None = None
        self.media_sequence = 0
        self.discontinuity_sequence = 0
        #: the URI of the part that comes next (EXT-X-PRELOAD-HINT), while live
        self.preload_hint: str | None = None
        #: (URI, LAST-MSN, LAST-PART) of the other renditions (EXT-X-RENDITION-REPORT)
        self.reports: list[tuple[str, int, int | None]] = []
        #: the next segment opened follows an earlier session's (continue_from)
        self._discontinuity = False

    @property
    def next_number(self) -> int:
        """The media sequence number of the next segment to open."""
        if self.open is not None:
            return self.open.number + 1
        return self.media_sequence + len(self.segments)

    def continue_from(self, text: str) -> None:
        """Go on from an earlier session's published playlist: its complete segments
        stay listed (their parts do not: they were that session's live edge) and the
        next segment starts with a discontinuity."""
        previous = m3u8.loads(text)
        self.media_sequence = previous.media_sequence or 0
        self.discontinuity_sequence = previous.discontinuity_sequence or 0
        for s in previous.segments:
            if s.uri is None:  # parts of a segment that never closed (a crash)
                continue
            self.segments.append(
                Segment(
                    number=self.media_sequence + len(self.segments),
                    init=s.init_section.uri if s.init_section else "",
                    program_date_time=s.program_date_time,
                    discontinuity=bool(s.discontinuity),
                    uri=s.uri,
                    duration=float(s.duration or 0.0),
                )
            )
        self._discontinuity = bool(self.segments)

    def open_segment(self, *, init: str, program_date_time: datetime) -> Segment:
        assert self.open is None
        # The first segment after an earlier session's: a discontinuity (RFC 8216 4.3.2.3).
        self.open = Segment(
            number=self.next_number,
            init=init,
            program_date_time=program_date_time,
            discontinuity=self._discontinuity,
        )
        self._discontinuity = False
        return self.open

    def close_segment(self, uri: str) -> tuple[Segment, list[Segment]]:
        """The open segment is complete; returns it and the segments that slid out."""
        segment = self.open
        assert segment is not None and segment.parts
        segment.uri = uri
        segment.duration = segment.parts_duration
        self.segments.append(segment)
        self.open = None
        gone: list[Segment] = []
        while self.window is not None and len(self.segments) > self.window:
            first = self.segments.pop(0)
            gone.append(first)
            self.media_sequence += 1
            # RFC 8216 4.4.3.3: the discontinuities before the first segment listed.
            self.discontinuity_sequence += first.discontinuity
        return segment, gone

    @property
    def target_duration(self) -> int:
        longest = max((round(s.duration) for s in self.segments), default=0)
        return max(self.segment_seconds, longest)

    def render(self) -> str:
        playlist = m3u8.M3U8()
        skip_until = self.skip_until
        # EXT-X-SKIP in the delta updates needs version 9 (RFC 8216bis 7).
        playlist.version = delta_update.VERSION if skip_until else VERSION
        playlist.is_independent_segments = True
        playlist.target_duration = self.target_duration
        playlist.media_sequence = self.media_sequence
        playlist.discontinuity_sequence = self.discontinuity_sequence
        if self.event:
            playlist.playlist_type = "event"
        playlist.server_control = m3u8.ServerControl(
            can_block_reload="YES",
            can_skip_until=skip_until,
            # rounded up: never under three part targets as written
            part_hold_back=math.ceil(HOLD_BACK_PARTS * self.part_target * 1000) / 1000,
        )
        playlist.part_inf = m3u8.PartInformation(part_target=self.part_target)
        listed = [*self.segments, *([self.open] if self.open else [])]
        with_parts = self._with_parts(listed)
        for s in listed:
            parts = [
                {
                    "uri": p.uri,
                    "duration": _round(p.duration),
                    "independent": "YES" if p.independent else None,
                }
                for p in (s.parts if s.number in with_parts else [])
            ]
            playlist.segments.append(
                m3u8.Segment(
                    uri=s.uri,
                    duration=s.duration if s.uri else None,
                    program_date_time=s.program_date_time,
                    discontinuity=s.discontinuity,
                    init_section={"uri": s.init},
                    parts=parts,
                )
            )
        if self.preload_hint:
            playlist.preload_hint = m3u8.PreloadHint("PART", None, self.preload_hint)
        for uri, last_msn, last_part in self.reports:
            playlist.add_rendition_report(m3u8.RenditionReport(None, uri, last_msn, last_part))
        # NB: m3u8 ends a segment that has only parts with a newline of its own, which
        # leaves a blank line before the hint; blank lines are ignored, but not pretty.
        return playlist.dumps(infspec="microseconds").replace("\n\n", "\n")

    @property
    def skip_until(self) -> float | None:
        """CAN-SKIP-UNTIL, when the playlist can grow longer than it: six target
        durations (the least RFC 8216bis 4.4.3.8 allows), for event playlists and
        windows longer than that."""
        until = SKIP_TARGETS * self.target_duration
        if self.window is not None and self.window * self.segment_seconds <= until:
            return None
        return float(until)

    def _with_parts(self, listed: list[Segment]) -> set[int]:
        """Numbers of the segments that end within PARTS_KEPT_TARGETS target
        durations of the playlist's end (RFC 8216bis 4.4.4.9), and the open one."""
        keep, after = set(), 0.0
        horizon = PARTS_KEPT_TARGETS * self.target_duration
        for s in reversed(listed):
            if after >= horizon:
                break
            keep.add(s.number)
            after += s.duration if s.uri else s.parts_duration
        return keep


def _round(seconds: float) -> float:
    return round(seconds, DIGITS)


# -- the writer ------------------------------------------------------------------------


class _Sink:
    """The mp4 muxer's output: PyAV writes the bytes here (a non-seekable file)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


class LowLatencyWriter:
    """One low-latency rendition: init section, parts, segments and playlist. One
    thread owns it; the same interface as packager.HlsWriter.

    ``parts``: the part length (PartPlan.of); ``keyframes_on_time``: keyframes fall
    on the segment grid (an encoded rendition, or audio), so a segment closes with
    the part that completes it, and the preload hint then names the next segment's
    first part; else (passthrough) it closes when the next keyframe comes.
    """

    def __init__(
        self,
        *,
        packaging: packager.Packaging,
        name: str,
        epoch: str,
        append: bool,
        session_start: float,
        parts: PartPlan,
        keyframes_on_time: bool = True,
    ) -> None:
        self.tally = Tally(segment_seconds=packaging.segment_seconds, session_start=session_start)
        self.session_start = session_start
        self.packaging = packaging
        self.directory = packaging.out_dir / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.playlist_path = self.directory / packager.PLAYLIST
        self.epoch = epoch
        self.parts = parts
        self.keyframes_on_time = keyframes_on_time
        self.init_uri = f"{epoch}-init.mp4"
        self.playlist = MediaPlaylist(
            segment_seconds=packaging.segment_seconds,
            part_target=parts.target,
            window=None if packaging.event else packaging.window_segments,
            event=packaging.event,
        )
        self._published: str | None = None
        if append and self.playlist_path.exists():
            self._published = self.playlist_path.read_text()
            self.playlist.continue_from(self._published)
        #: a segment closes at this length: segmentSeconds, less half a frame of slack
        self._segment_at = packaging.segment_seconds - parts.frame_seconds / 2
        self._splitter = fmp4.BoxSplitter()
        self._init = b""
        self._track: fmp4.TrackDefaults | None = None
        self._moof: bytes | None = None
        self._pending = b""  # a fragment without samples of the first track
        self._segment_bytes: list[bytes] = []
        self._part_files: dict[int, list[str]] = {}
        self._slid_out: list[Segment] = []
        self._sink = _Sink()
        self.container: av.container.OutputContainer = av.open(
            self._sink,
            mode="w",
            format="mp4",
            options={
                "movflags": MOVFLAGS,
                "frag_duration": str(parts.frag_duration_us),
                # Each packet's bytes reach the sink at once (no AVIO buffering).
                "flush_packets": "1",
                # The same timeline as packager.HlsWriter's (TIMESTAMP_OFFSET).
                "output_ts_offset": str(packager.TIMESTAMP_OFFSET),
            },
        )

    # -- the rendition thread's interface (packager.HlsWriter's)

    def write(self, packets: Iterable[Packet], *, media_time: float | None = None) -> Written:
        tally = self.tally
        written = 0
        for packet in packets:
            if packet.size == 0:
                continue
            size = packet.size
            self.container.mux(packet)
            written += size
            tally.frames += packet.stream.type == "video"
            self._take()
        tally.bytes += written
        if media_time is not None:
            tally.media_time = media_time
        return tally.written()

    def close(self) -> Written:
        """Flush the last part, close the last segment, and publish without a hint
        (ENDLIST is packager.end()'s, as for the hls muxer's playlists)."""
        try:
            self.container.close()
        finally:
            self._take()
            # NB: a last fragment with no video (a few AAC frames past the last picture)
            # is dropped: a segment must be its parts, and no part can follow it.
            self._pending = b""
            if self.playlist.open is not None:
                self._close_segment()
            self.playlist.preload_hint = None
            if self._init:
                self._publish()
        return self.tally.written()

    # -- from bytes to files

    def _take(self) -> None:
        data = self._sink.take()
        if not data:
            return
        for kind, box in self._splitter.feed(data):
            if kind in (b"ftyp", b"moov"):
                self._init += box
                if kind == b"moov":
                    files.write_atomically(self.directory / self.init_uri, self._init)
                    self._track = fmp4.track_defaults(self._init)
            elif kind == b"moof":
                self._moof = box
            elif kind == b"mdat" and self._moof is not None:
                self._fragment(self._moof, box)
                self._moof = None
            # anything else (styp, sidx, mfra) is not ours to keep

    def _fragment(self, moof: bytes, mdat: bytes) -> None:
        assert self._track is not None
        info = fmp4.fragment(moof, self._track)
        if info is None:  # no samples of the first track: goes with the next part
            self._pending += moof + mdat
            return
        data, self._pending = self._pending + moof + mdat, b""
        scale = self._track.timescale
        duration = info.duration / scale
        start = info.decode_time / scale
        playlist = self.playlist
        open_ = playlist.open
        if open_ is not None and info.independent and open_.parts_duration >= self._segment_at:
            self._close_segment()  # passthrough: the keyframe after the segment's length
        if playlist.open is None:
            playlist.open_segment(
                init=self.init_uri,
                # The session's start is media time 0 (+ TIMESTAMP_OFFSET) in every
                # rendition: one clock for all of them, as players compare them by it.
                program_date_time=datetime.fromtimestamp(
                    self.session_start + start - packager.TIMESTAMP_OFFSET, UTC
                ),
            )
        segment = playlist.open
        assert segment is not None
        uri = f"{self.epoch}-{segment.number:05d}.{len(segment.parts)}.m4s"
        files.write_atomically(self.directory / uri, data)
        self._part_files.setdefault(segment.number, []).append(uri)
        segment.parts.append(Part(uri=uri, duration=duration, independent=info.independent))
        self._segment_bytes.append(data)
        if self.keyframes_on_time and segment.parts_duration >= self._segment_at:
            self._close_segment()
        playlist.preload_hint = self._next_part_uri()
        self._publish()

    def _next_part_uri(self) -> str:
        open_ = self.playlist.open
        if open_ is None:
            return f"{self.epoch}-{self.playlist.next_number:05d}.0.m4s"
        return f"{self.epoch}-{open_.number:05d}.{len(open_.parts)}.m4s"

    def _close_segment(self) -> None:
        open_ = self.playlist.open
        assert open_ is not None
        uri = f"{self.epoch}-{open_.number:05d}.m4s"
        data = b"".join(self._segment_bytes)
        self._segment_bytes = []
        files.write_atomically(self.directory / uri, data)
        segment, gone = self.playlist.close_segment(uri)
        self.tally.segment(segment.duration, len(data))
        self._forget(gone)

    def _forget(self, gone: list[Segment]) -> None:
        """Delete the files of segments that slid out, one segment late (as the hls
        muxer's delete_segments: a player may still be reading the playlist before)."""
        # Parts: once their segment is past the window (an event playlist keeps its
        # segments, but their parts are listed near the live edge only).
        keep_parts = self.packaging.window_segments + 1
        numbers = sorted(self._part_files)
        for number in numbers[: max(0, len(numbers) - keep_parts)]:
            for uri in self._part_files.pop(number):
                (self.directory / uri).unlink(missing_ok=True)
        self._slid_out.extend(gone)
        while len(self._slid_out) > 1:
            old = self._slid_out.pop(0)
            if old.uri:
                (self.directory / old.uri).unlink(missing_ok=True)

    def _reports(self) -> list[tuple[str, int, int | None]]:
        """Where the other renditions' live edges are, from their playlists as last
        published (RFC 8216bis 4.4.5.4): a player switching renditions asks the new
        one for its next part at once, without a plain reload first."""
        found: list[tuple[str, int, int | None]] = []
        for other in sorted(self.packaging.out_dir.iterdir()):
            if other == self.directory:
                continue
            try:
                edge = Edge.of((other / packager.PLAYLIST).read_text())
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not edge.blocking or edge.ended or (edge.next_msn == 0 and not edge.open_parts):
                continue
            at: tuple[int, int | None]
            if edge.open_parts:
                at = (edge.next_msn, edge.open_parts - 1)
            else:
                at = (edge.next_msn - 1, edge.last_parts - 1 if edge.last_parts else None)
            found.append((f"../{other.name}/{packager.PLAYLIST}", *at))
        return found

    def _publish(self) -> None:
        # The reports go while the session is over: the others' edges are not moving.
        self.playlist.reports = self._reports() if self.playlist.preload_hint else []
        previous, self._published = self._published, self.playlist.render()
        files.write_atomically(self.playlist_path, self._published)
        if self.playlist.open is None or len(self.playlist.open.parts) == 1:
            # Once a segment: the files of earlier sessions that slid out of the window.
            for stale in packager.stale_segments(
                self.directory, epoch=self.epoch, previous=previous, current=self._published
            ):
                stale.unlink(missing_ok=True)
