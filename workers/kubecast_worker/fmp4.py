"""The two numbers a DASH manifest needs from the hls muxer's CMAF files.

- ``timescale()``: the track's timescale, from the init section (``moov/trak/mdia/mdhd``);
- ``decode_time()``: where a media segment starts on that timescale
  (``moof/traf/tfdt``, its baseMediaDecodeTime).

The packager writes one track per file (a video-only or an audio-only
rendition), so the first track is the track. Only box headers are walked
(ISO/IEC 14496-12 4.2): a few hundred bytes at the start of each file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
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
