"""A ``Source`` for frames that arrive decoded: WebRTC publishers (whip.py).

aiortc has decoded the video and the audio already, so there is nothing to
demux: the frames go on to the ladder as the demuxing ``ingest.Source`` would
hand them, on the same session timeline that starts at 0.

Timestamps: each track's frames carry their RTP timestamps (video at 90 kHz,
Opus at 48 kHz), the sender's capture clock, which is smooth where arrival
times jitter. Each track has its own random RTP origin, so a track starts on the
timeline at the moment its first frame arrived after the first video frame, and
continues by its RTP clock from there. Audio that arrives before the first video
frame is dropped: the session starts with a picture.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from kubecast_worker import events
from kubecast_worker.ingest import Media, Source, SourceError
from kubecast_worker.logs import Log
from kubecast_worker.status import InputState, Status
from kubecast_worker.whip import FrameQueue, Kind

#: The first video frames are looked at this long to measure the frame rate.
RATE_PROBE_SECONDS = 1.0
#: How long the first video frame may take after the answer (ICE, DTLS, a keyframe).
FIRST_FRAME_TIMEOUT = 20.0
#: A video frame that waited this long in the queue is skipped (the ladder's fps filter
#: repeats the previous picture in its place): a starved ingest thread must not build
#: up latency in front of the ladder. Audio is never skipped (a gap would be heard).
MAX_QUEUED_SECONDS = 1.0
VIDEO_CLOCK = 90000
WRAP = 1 << 32  # RTP timestamps are 32-bit


class FrameSource(Source):
    """Decoded frames from a ``FrameQueue``, rebased onto the session timeline."""

    def __init__(
        self,
        *,
        frames: FrameQueue,
        status: Status,
        stop: threading.Event,
        media_timeout: float,
        log: Log | None = None,
    ) -> None:
        super().__init__(opener=_no_container, status=status, stop=stop, log=log)
        self.frames = frames
        self.media_timeout = media_timeout
        self._held: list[tuple[Kind, Any, float]] = []
        self._wall0 = 0.0
        #: per track: (first RTP timestamp, its clock rate, its offset on the timeline)
        self._tracks: dict[Kind, tuple[int, int, float]] = {}
        self._last: dict[Kind, int] = {}
        #: video frames skipped for waiting too long (see MAX_QUEUED_SECONDS)
        self.skipped = 0

    @property
    def has_audio(self) -> bool:
        return self.frames.has_audio

    @property
    def fps(self) -> Fraction | None:
        return self.info.rate

    def open(self) -> InputState:
        first = self._first_video()
        self._wall0 = first[2]
        self.wall_anchor = first[2]
        frame = first[1]
        self._held = [first, *self._probe_rate()]
        rate = _rate([f for kind, f, _ in self._held if kind == "video"])
        audio = self.frames.audio_codec if self.frames.has_audio else None
        # what aiortc's decoders give: Opus at 48 kHz stereo, G.711 at 8 kHz mono
        opus = audio == "opus"
        self.info = InputState(
            video_codec=self.frames.video_codec,
            width=frame.width,
            height=frame.height,
            fps=round(float(rate), 3) if rate else None,
            rate=rate,
            pix_fmt=frame.format.name,
            audio_codec=audio,
            audio_sample_rate=(48000 if opus else 8000) if audio else None,
            audio_channels=(2 if opus else 1) if audio else None,
        )
        return self.info

    def close(self) -> None:
        """Nothing to close here: the front owns the peer connection (the worker ends it)."""

    def __iter__(self) -> Iterator[Media]:
        held, self._held = self._held, []
        for kind, frame, arrived in held:
            if media := self._media(kind, frame, arrived):
                yield media
        while not self.stop.is_set():
            try:
                item = self.frames.get(timeout=self.media_timeout)
            except queue.Empty:
                self.frames.silent = True
                self.log.warning(
                    "webrtc publisher sent nothing; ending the session",
                    extra={"seconds": self.media_timeout},
                )
                return
            if item is None:
                return
            kind, frame, arrived = item
            if kind == "video" and time.time() - arrived > MAX_QUEUED_SECONDS:
                self.skipped += 1
                self.status.post(events.FramesDropped())
                continue
            if media := self._media(kind, frame, arrived):
                yield media

    # -- the first frames ----------------------------------------------------------

    def _first_video(self) -> tuple[Kind, Any, float]:
        waited = 0.0
        while waited < FIRST_FRAME_TIMEOUT and not self.stop.is_set():
            try:
                item = self.frames.get(timeout=0.5)
            except queue.Empty:
                waited += 0.5
                continue
            if item is None:
                break
            if item[0] == "video":
                return item
        raise SourceError(
            "the WebRTC publisher sent no video"
            + (f" within {FIRST_FRAME_TIMEOUT:g} s" if waited >= FIRST_FRAME_TIMEOUT else "")
        )

    def _probe_rate(self) -> list[tuple[Kind, Any, float]]:
        """The frames of the first second (kept, to be sent on): enough to see a rate."""
        items: list[tuple[Kind, Any, float]] = []
        while not self.stop.is_set():
            try:
                item = self.frames.get(timeout=self.media_timeout)
            except queue.Empty:
                break
            if item is None:
                self.frames.end()  # seen here first: the iterator must see it too
                break
            items.append(item)
            if item[2] - self._wall0 >= RATE_PROBE_SECONDS:
                break
        return items

    # -- the timeline --------------------------------------------------------------

    def _media(self, kind: Kind, frame: Any, arrived: float) -> Media | None:
        if frame.pts is None:
            return None
        clock = VIDEO_CLOCK if kind == "video" else int(frame.sample_rate)
        track = self._tracks.get(kind)
        if track is None:
            if arrived < self._wall0:
                return None  # audio from before the first picture
            track = self._tracks[kind] = (frame.pts, clock, arrived - self._wall0)
        origin, clock, offset = track
        ticks = (frame.pts - origin) % WRAP  # NB: modulo: the 32-bit RTP clock wraps
        if ticks > WRAP // 2:
            return None  # older than the first frame (reordered): nothing to place it at
        last = self._last.get(kind)
        if last is not None and ticks <= last and kind == "audio":
            return None  # a repeated audio frame would overlap the previous one
        self._last[kind] = ticks
        pts = round(offset * clock) + ticks
        frame.pts = pts
        frame.time_base = Fraction(1, clock)
        if kind == "video":
            self.status.post(events.FramesDecoded())
        return Media(kind, frame=frame, time=pts / clock)


def _rate(frames: list[Any]) -> Fraction | None:
    """Frames per second from the RTP timestamps of the first frames, to a whole number."""
    stamps = sorted({f.pts for f in frames if f.pts is not None})
    if len(stamps) < 3:
        return None
    span = ((stamps[-1] - stamps[0]) % WRAP) / VIDEO_CLOCK
    if span <= 0:
        return None
    fps = round((len(stamps) - 1) / span)
    return Fraction(min(max(fps, 1), 60))


def _no_container() -> Any:
    raise SourceError("a frame source has no container to open")
