"""Recorded segments → one MP4, by copying packets (PyAV, no re-encode).

Every call here is blocking and touches PyAV objects: the recorder runs them in
its single media thread, so one thread owns a muxer for its whole life.

One timeline across gaps: segments between two discontinuities share the
source's clock and are copied as they are (shifted so the file starts at 0). At
a discontinuity (and wherever the clock jumps by more than ``JUMP_S``) the next
run is shifted to start where the previous one ended, audio and video by the
same amount so they stay in sync. The MP4 plays straight through the gaps.

Two flavours, the same code:

- ``faststart``: ``movflags=+faststart`` moves the index (moov) in front of the
  media (mdat) when the file is closed, so players start without seeking to the
  end. Written to a temp name and renamed when complete.
- ``fragmented``: ``frag_keyframe+empty_moov+default_base_moof``: an empty
  index up front and one fragment per keyframe, so the file plays while it grows.

AAC from MPEG-TS comes with ADTS headers, which MP4 does not allow; the
``aac_adtstoasc`` filter strips them. A fragmented MP4 writes its header before
the first packet, so the AudioSpecificConfig is built from the first ADTS
header up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.bitstream import BitStreamFilterContext

FASTSTART = {"movflags": "+faststart"}
#: NB: flush_packets: without it the fragments sit in the write buffer, not in the file.
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
#: A clock jump this large inside a run is a discontinuity the source did not mark.
JUMP_S = Fraction(10)
#: MPEG-TS timestamps are 33 bits at 90 kHz and wrap after ~26.5 hours.
TS_WRAP = 1 << 33
TS_TIME_BASE = Fraction(1, 90000)

log = logging.getLogger("kubecast.recorder.remux")


class RemuxError(Exception):
    """The segments could not be copied into an MP4; the message says which and why."""


class UnreadableSegment(RemuxError):
    """One segment could not be read; the MP4 goes on without it."""


@dataclasses.dataclass(frozen=True)
class Piece:
    """One recorded segment as the remuxer reads it."""

    path: Path
    discontinuity: bool = False
    init: Path | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    duration: float
    stream_durations: dict[str, float]
    dropped_packets: int
    #: Segments left out because they could not be read, with the reason.
    skipped: tuple[str, ...] = ()


def audio_specific_config(adts: bytes) -> bytes | None:
    """The 2-byte AudioSpecificConfig that an ADTS header describes (None if not ADTS)."""
    if len(adts) < 7 or adts[0] != 0xFF or (adts[1] & 0xF6) != 0xF0:
        return None
    object_type = (adts[2] >> 6) + 1
    frequency_index = (adts[2] >> 2) & 0x0F
    channels = ((adts[2] & 0x01) << 2) | (adts[3] >> 6)
    value = (object_type << 11) | (frequency_index << 7) | (channels << 3)
    return value.to_bytes(2, "big")


@dataclasses.dataclass
class _Track:
    """An output stream and where its clock stands."""

    stream: Any
    last_dts: Fraction | None = None  # output seconds
    end: Fraction = Fraction(0)  # output seconds, pts + duration


class Remuxer:
    """Appends recorded segments to one MP4 file, continuous across gaps."""

    def __init__(self, path: Path, *, fragmented: bool):
        self.path = path
        self.fragmented = fragmented
        self._output: Any = None
        self._tracks: dict[str, _Track] = {}
        self._offset = Fraction(0)  # source seconds → output seconds
        self._source_end: Fraction | None = None  # where the source clock stood
        self._wrap = Fraction(0)  # MPEG-TS wraps added so far, in seconds
        self.dropped = 0
        self.pieces = 0
        self.skipped: list[str] = []

    @property
    def duration(self) -> float:
        return float(max((t.end for t in self._tracks.values()), default=Fraction(0)))

    def _open_output(self, streams: dict[int, Any], packets: list[Any]) -> None:
        options = FRAGMENTED if self.fragmented else FASTSTART
        try:
            self._output = av.open(str(self.path), "w", format="mp4", options=dict(options))
        except (OSError, av.FFmpegError) as e:
            raise RemuxError(f"cannot create {self.path}: {e}") from e
        for index, stream in streams.items():
            out = self._output.add_stream_from_template(stream)
            if stream.type == "audio" and not out.codec_context.extradata:
                # NB: before the header: a fragmented MP4 writes it up front.
                first = next((p for p in packets if p.stream_index == index), None)
                config = audio_specific_config(bytes(first)) if first is not None else None
                if config:
                    out.codec_context.extradata = config
            self._tracks[stream.type] = _Track(stream=out)

    def append(self, piece: Piece) -> None:
        """Copy one segment. ``UnreadableSegment`` leaves the file as it was."""
        try:
            with _open_piece(piece) as source:
                streams, packets = self._read(source)
                try:
                    self._copy(streams, packets, piece)
                except (av.FFmpegError, ValueError) as e:
                    raise RemuxError(f"cannot copy {piece.path} into {self.path}: {e}") from e
        except (OSError, av.FFmpegError, ValueError) as e:
            self.skipped.append(f"{piece.path.name}: {e}")
            raise UnreadableSegment(f"cannot read the segment {piece.path}: {e}") from e
        self.pieces += 1

    def _read(self, source: Any) -> tuple[dict[int, Any], list[Any]]:
        streams: dict[int, Any] = {}
        for stream in source.streams:
            if stream.type in ("video", "audio") and stream.type not in {
                s.type for s in streams.values()
            }:
                streams[stream.index] = stream
        if self._output is not None:  # later pieces: only what the file has tracks for
            streams = {i: s for i, s in streams.items() if s.type in self._tracks}
        packets = []
        for packet in source.demux(*streams.values()):
            if packet.pts is None and packet.dts is None:
                continue  # the flush packet at the end of each stream
            if packet.dts is None:
                packet.dts = packet.pts
            if packet.pts is None:
                packet.pts = packet.dts
            packets.append(packet)
        return streams, packets

    def _copy(self, streams: dict[int, Any], packets: list[Any], piece: Piece) -> None:
        if not packets:
            return
        if self._output is None:
            self._open_output(streams, packets)

        continuing = self._source_end is not None and not piece.discontinuity
        # Source clock of each packet (seconds), MPEG-TS wraps undone.
        reference = self._source_end if continuing else None
        clocks = []
        for packet in packets:
            time_base = Fraction(packet.time_base)
            clock = Fraction(packet.dts) * time_base
            if time_base == TS_TIME_BASE:
                reference = clock if reference is None else reference
                # NB: a 33-bit wrap looks like a jump back by ~26.5 hours.
                wraps = round((reference - clock) / (TS_WRAP * TS_TIME_BASE))
                clock += wraps * TS_WRAP * TS_TIME_BASE
                reference = clock
            clocks.append(clock)
        first = min(clocks)
        if not continuing or self._source_end is None or abs(first - self._source_end) > JUMP_S:
            self._offset = max((t.end for t in self._tracks.values()), default=Fraction(0)) - first

        filters = {
            index: BitStreamFilterContext("aac_adtstoasc", stream)
            for index, stream in streams.items()
            if stream.type == "audio" and stream.codec_context.name == "aac"
        }
        source_end = first
        for packet, clock in zip(packets, clocks, strict=True):
            track = self._tracks[streams[packet.stream_index].type]
            time_base = Fraction(packet.time_base)
            dts = clock + self._offset
            if track.last_dts is not None and dts <= track.last_dts:
                self.dropped += 1  # would break the MP4's monotonic clock
                continue
            new_dts = round(dts / time_base)
            new_pts = packet.pts + (new_dts - packet.dts)
            span = Fraction(max(new_pts, new_dts) + (packet.duration or 0)) * time_base
            track.last_dts = dts
            track.end = max(track.end, span)
            source_end = max(source_end, span - self._offset)
            packet.dts, packet.pts = new_dts, new_pts
            bsf = filters.get(packet.stream_index)
            for out in bsf.filter(packet) if bsf is not None else [packet]:
                out.stream = track.stream
                self._output.mux(out)
        self._source_end = source_end

    def close(self) -> Result:
        if self._output is not None:
            try:
                self._output.close()
            except (OSError, av.FFmpegError) as e:
                raise RemuxError(f"cannot finish {self.path}: {e}") from e
            finally:
                self._output = None
        return Result(
            duration=self.duration,
            stream_durations={kind: float(t.end) for kind, t in self._tracks.items()},
            dropped_packets=self.dropped,
            skipped=tuple(self.skipped),
        )

    def abort(self) -> None:
        if self._output is not None:
            with contextlib.suppress(Exception):
                self._output.close()
            self._output = None


def _open_piece(piece: Piece) -> Any:
    if piece.init is None:
        return av.open(str(piece.path))
    # fMP4 segments only make sense after their init section.
    data = piece.init.read_bytes() + piece.path.read_bytes()
    return av.open(io.BytesIO(data))


def write_mp4(path: Path, pieces: list[Piece], *, fragmented: bool = False) -> Result:
    """Remux ``pieces`` into ``path`` (written beside it, renamed when complete)."""
    temp = path.with_name(f".{path.name}.partial")
    remuxer = Remuxer(temp, fragmented=fragmented)
    try:
        for piece in pieces:
            with contextlib.suppress(UnreadableSegment):  # counted in result.skipped
                remuxer.append(piece)
        result = remuxer.close()
        if remuxer.pieces == 0:
            unreadable = f" ({'; '.join(result.skipped)})" if result.skipped else ""
            raise RemuxError(f"nothing recorded could be read{unreadable}")
        temp.replace(path)
    except BaseException:
        remuxer.abort()
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return result


class GrowingMp4:
    """The fragmented MP4 that grows with the recording, playable at any moment.

    It is written under a temp name until it holds ``publish_after`` segments,
    then renamed into place; FFmpeg keeps writing through the open file. A
    restarted recorder rebuilds it from the recorded segments the same way (the
    old file may end in a torn fragment) and replaces the old one once the new
    one has caught up.
    """

    def __init__(self, path: Path, *, publish_after: int = 1):
        self.path = path
        self.publish_after = max(1, publish_after)
        self._temp = path.with_name(f".{path.name}.partial")
        self._remuxer = Remuxer(self._temp, fragmented=True)
        self._published = False

    @property
    def duration(self) -> float:
        return self._remuxer.duration

    def append(self, piece: Piece) -> None:
        with contextlib.suppress(UnreadableSegment):  # counted in the result's skipped
            self._remuxer.append(piece)
        caught_up = self._remuxer.pieces >= self.publish_after
        if not self._published and caught_up and self._temp.exists():
            self._temp.replace(self.path)
            self._published = True

    def close(self) -> Result:
        result = self._remuxer.close()
        if not self._published and self._temp.exists():
            self._temp.replace(self.path)
            self._published = True
        return result

    def abort(self) -> None:
        self._remuxer.abort()
        if not self._published:
            with contextlib.suppress(OSError):
                self._temp.unlink()
