"""What the packagers need from CMAF (fragmented MP4) files.

For the DASH manifest, two numbers of the hls muxer's files:

- ``timescale()``: the track's timescale, from the init section (``moov/trak/mdia/mdhd``);
- ``decode_time()``: where a media segment starts on that timescale
  (``moof/traf/tfdt``, its baseMediaDecodeTime).

The packager writes one track per file (a video-only or an audio-only
rendition), so the first track is the track. Only box headers are walked
(ISO/IEC 14496-12 4.2): a few hundred bytes at the start of each file.

For low-latency HLS (llhls.py), the mp4 muxer's byte stream cut at box boundaries
(``BoxSplitter``), and of each moof+mdat fragment its start, its length and whether
it starts with a keyframe (``fragment()``, from tfhd, tfdt and trun).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Enough of a segment to reach its first tfdt: styp, sidx boxes and the moof's start.
HEAD_BYTES = 4096
_CONTAINERS = {b"moov", b"trak", b"mdia", b"moof", b"traf"}


class Fmp4Error(Exception):
    """The file is not the fragmented MP4 the hls muxer writes."""


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at  # to the end of the file
        if size < header:
            raise Fmp4Error(f"a box of {size} bytes at offset {at}")
        yield kind, at + header, min(at + size, end)
        at += size


def _find(data: bytes, path: tuple[bytes, ...]) -> tuple[int, int]:
    start, end = 0, len(data)
    for wanted in path:
        for kind, payload, box_end in _boxes(data, start, end):
            if kind == wanted:
                start, end = payload, box_end
                break
        else:
            raise Fmp4Error(f"no {b'/'.join(path).decode()} box")
    return start, end


def timescale(init: bytes) -> int:
    """Ticks per second of the (first) track of an init section."""
    at, _ = _find(init, (b"moov", b"trak", b"mdia", b"mdhd"))
    version = init[at]
    # version 1 has 64-bit creation and modification times before the timescale
    return int(struct.unpack_from(">I", init, at + (20 if version == 1 else 12))[0])


def decode_time(segment: bytes) -> int:
    """baseMediaDecodeTime of a media segment's first fragment."""
    at, _ = _find(segment, (b"moof", b"traf", b"tfdt"))
    version = segment[at]
    if version == 1:
        return int(struct.unpack_from(">Q", segment, at + 4)[0])
    return int(struct.unpack_from(">I", segment, at + 4)[0])


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


# -- fragments, for the low-latency packager (llhls.py) -------------------------------------

#: ISO/IEC 14496-12 8.8.3.1: sample_is_non_sync_sample, in a sample's flags.
_NON_SYNC = 0x10000


@dataclass(frozen=True)
class TrackDefaults:
    """The first track of an init section, and what its fragments may leave out
    (``trex``'s defaults)."""

    track_id: int
    timescale: int
    sample_duration: int = 0
    sample_flags: int = 0


@dataclass(frozen=True)
class Fragment:
    """One moof+mdat of the first track: where it starts, how long, and whether its
    first sample is a sync sample (a keyframe: a part a player can start at)."""

    decode_time: int
    duration: int
    independent: bool


def track_defaults(init: bytes) -> TrackDefaults:
    scale = timescale(init)
    at, _ = _find(init, (b"moov", b"trak", b"tkhd"))
    # version 1 has 64-bit creation and modification times before the track_ID
    track_id = struct.unpack_from(">I", init, at + (20 if init[at] == 1 else 12))[0]
    start, end = _find(init, (b"moov", b"mvex"))
    for kind, payload, _ in _boxes(init, start, end):
        # version/flags, track_ID, default_sample_description_index, duration, size, flags
        if kind == b"trex" and struct.unpack_from(">I", init, payload + 4)[0] == track_id:
            duration, _, flags = struct.unpack_from(">III", init, payload + 12)
            return TrackDefaults(track_id, scale, duration, flags)
    return TrackDefaults(track_id, scale)


def fragment(moof: bytes, track: TrackDefaults) -> Fragment | None:
    """The first track's part of ``moof`` (a whole box, header included); None when
    the fragment has no samples of that track."""
    start, end = _find(moof, (b"moof",))
    for kind, payload, box_end in _boxes(moof, start, end):
        if kind == b"traf":
            found = _traf(moof, payload, box_end, track)
            if found is not None:
                return found
    return None


def _traf(moof: bytes, start: int, end: int, track: TrackDefaults) -> Fragment | None:
    duration, flags = track.sample_duration, track.sample_flags
    decode, total, first_flags, independent = 0, 0, None, False
    for kind, at, _ in _boxes(moof, start, end):
        box_flags = int.from_bytes(moof[at + 1 : at + 4], "big")
        if kind == b"tfhd":
            if struct.unpack_from(">I", moof, at + 4)[0] != track.track_id:
                return None
            offset = at + 8  # version/flags, track_ID
            offset += 8 if box_flags & 0x01 else 0  # base_data_offset
            offset += 4 if box_flags & 0x02 else 0  # sample_description_index
            if box_flags & 0x08:
                duration = struct.unpack_from(">I", moof, offset)[0]
                offset += 4
            offset += 4 if box_flags & 0x10 else 0  # default_sample_size
            if box_flags & 0x20:
                flags = struct.unpack_from(">I", moof, offset)[0]
        elif kind == b"tfdt":
            decode = struct.unpack_from(">Q" if moof[at] == 1 else ">I", moof, at + 4)[0]
        elif kind == b"trun":
            count = struct.unpack_from(">I", moof, at + 4)[0]
            offset = at + 8 + (4 if box_flags & 0x01 else 0)  # data_offset
            if box_flags & 0x04:
                first_flags = struct.unpack_from(">I", moof, offset)[0]
                offset += 4
            fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if box_flags & bit]
            for index in range(count):
                sample_duration, sample_flags = duration, flags
                for bit in fields:
                    value = struct.unpack_from(">I", moof, offset)[0]
                    offset += 4
                    if bit == 0x100:
                        sample_duration = value
                    elif bit == 0x400:
                        sample_flags = value
                if index == 0 and total == 0:
                    first = first_flags if first_flags is not None else sample_flags
                    independent = not first & _NON_SYNC
                total += sample_duration
    return Fragment(decode_time=int(decode), duration=total, independent=independent)


class BoxSplitter:
    """Cuts a byte stream into whole top-level boxes, as they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """(type, the whole box) of each box that ``data`` completes."""
        self._buffer += data
        done = []
        while len(self._buffer) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buffer, 0)
            if size == 1:
                if len(self._buffer) < 16:
                    break
                size = struct.unpack_from(">Q", self._buffer, 8)[0]
            if size < 8:
                raise Fmp4Error(f"a top-level box of {size} bytes")
            if len(self._buffer) < size:
                break
            done.append((bytes(kind), bytes(self._buffer[:size])))
            del self._buffer[:size]
        return done
