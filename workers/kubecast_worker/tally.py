"""What a rendition's writer has written: its running totals, handed back by value.

A writer (packager.HlsWriter, llhls.LowLatencyWriter) keeps a ``Tally`` of its own
and returns a frozen ``Written`` from each ``write()`` and ``close()``. Its
rendition's thread posts that to ``Status`` and publishes it to the ingest
thread, which writes the master from it: nobody reads a writer's counters back
while it changes them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """Bitrates measured on the written segments (``SegmentBitrates``)."""

    count: int = 0
    peak_kbps: float = 0.0
    average_kbps: float | None = None


@dataclass(frozen=True)
class Written:
    frames: int = 0
    bytes: int = 0
    #: the media time of the last write that said one
    media_time: float = 0.0
    segments: int = 0
    #: seconds from the start of the publish to the first segment
    first_segment_seconds: float | None = None
    measured: Measured = Measured()


class SegmentBitrates:
    """Bitrates of the segments a rendition has written, for the master's BANDWIDTH.

    HLS (RFC 8216bis, 4.4.6.2) defines BANDWIDTH as the peak segment bit rate: the
    largest bit rate of any run of contiguous segments whose total duration is
    between 0.5 and 1.5 times the target duration; AVERAGE-BANDWIDTH is the
    average over the stream. A short last segment alone is no peak, but counts
    with its neighbour.
    """

    #: a run of segments is never longer than 1.5 target durations: a few suffice
    RECENT = 8

    def __init__(self, target_seconds: float) -> None:
        self.target = target_seconds
        self.count = 0
        self.peak_kbps = 0.0
        self.bits = 0
        self.seconds = 0.0
        self._recent: deque[tuple[float, int]] = deque(maxlen=self.RECENT)

    def add(self, duration: float, nbytes: int) -> None:
        if duration <= 0:
            return
        self.count += 1
        self.bits += nbytes * 8
        self.seconds += duration
        self._recent.append((duration, nbytes * 8))
        seconds, bits = 0.0, 0
        for d, b in reversed(self._recent):  # every run that ends with this segment
            seconds, bits = seconds + d, bits + b
            if seconds > 1.5 * self.target:
                break
            if seconds >= 0.5 * self.target:
                self.peak_kbps = max(self.peak_kbps, bits / seconds / 1000)

    def average_kbps(self) -> float | None:
        return self.bits / self.seconds / 1000 if self.seconds else None

    def measured(self) -> Measured:
        return Measured(self.count, self.peak_kbps, self.average_kbps())


class Tally:
    """A writer's own counters (one thread: the writer's), summed up as ``Written``."""

    def __init__(self, *, segment_seconds: float, session_start: float) -> None:
        self.session_start = session_start
        self.bitrates = SegmentBitrates(segment_seconds)
        self.frames = 0
        self.bytes = 0
        self.media_time = 0.0
        self.segments = 0
        self.first_segment_seconds: float | None = None
        self._measured = Measured()

    def segment(self, duration: float | None = None, nbytes: int | None = None) -> None:
        """A segment was closed: measured if its size is known (not yet deleted)."""
        if self.segments == 0:
            self.first_segment_seconds = round(time.time() - self.session_start, 3)
        self.segments += 1
        if duration is not None and nbytes is not None:
            self.bitrates.add(duration, nbytes)
            self._measured = self.bitrates.measured()

    def written(self) -> Written:
        return Written(
            frames=self.frames,
            bytes=self.bytes,
            media_time=self.media_time,
            segments=self.segments,
            first_segment_seconds=self.first_segment_seconds,
            measured=self._measured,
        )
