"""Following a live media playlist: which segments are new, and is there a gap?

A live playlist is a sliding window: each poll shows the last few segments,
numbered by ``EXT-X-MEDIA-SEQUENCE``. The recorder remembers the last segment it
took (``Position``: sequence number and URI) and asks for what comes after it.

The URI is part of the position because numbers alone lie: a source that
restarts numbers its segments from 0 again (the ffmpeg CLI even reuses the same
names), so "sequence 5" can be a different segment than the one we took. A
position that is not in the window any more (we fell behind, or the source
restarted) means a gap: everything in the window is new, and the first of it
starts a discontinuity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime


@dataclasses.dataclass(frozen=True)
class SourceSegment:
    """One segment of the source's media playlist, with absolute URLs."""

    sequence: int
    url: str
    uri: str  # as written in the playlist; part of the segment's identity
    duration: float
    #: The source itself marked a discontinuity before this segment.
    discontinuity: bool = False
    init_url: str | None = None
    #: EXT-X-PROGRAM-DATE-TIME of the segment, when the source says it.
    program_date_time: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Position:
    sequence: int
    uri: str

    @classmethod
    def of(cls, segment: SourceSegment) -> Position:
        return cls(sequence=segment.sequence, uri=segment.uri)

    def to_json(self) -> dict[str, object]:
        return {"sequence": self.sequence, "uri": self.uri}

    @classmethod
    def from_json(cls, data: object) -> Position | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(sequence=int(data["sequence"]), uri=str(data["uri"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class Next:
    segments: list[SourceSegment]
    #: The segments follow the position without a gap (nothing was missed and
    #: the source did not restart in between).
    contiguous: bool


def after(position: Position | None, window: Sequence[SourceSegment]) -> Next:
    """The segments of ``window`` that come after ``position``.

    No position (nothing seen yet) takes the whole window, as a gap.
    """
    if position is None:
        return Next(list(window), contiguous=False)
    for index, segment in enumerate(window):
        if segment.sequence == position.sequence:
            if segment.uri == position.uri:
                return Next(list(window[index + 1 :]), contiguous=True)
            break  # same number, other segment: the source restarted
    if window and window[0].sequence == position.sequence + 1:
        return Next(list(window), contiguous=True)  # we were exactly at the edge
    return Next(list(window), contiguous=False)
