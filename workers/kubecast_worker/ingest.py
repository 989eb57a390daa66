"""Ingest: open the input, demux it, decode it once, on a timeline that starts at 0.

A ``Source`` is used by exactly one thread (the session's ingest thread). It
yields ``Media`` items: decoded video and audio frames for the ladder and, when
a passthrough rendition asks for them, the demuxed packets themselves.

Timestamps are rebased so that the first packet of a session is at 0 s. That
keeps every rendition's fixed GOP grid (keyframes at 0, gop, 2·gop …) and the
HLS muxers' segment cuts on the same instants whatever the publisher's clock,
and lets a looping file continue where the previous pass ended instead of
jumping back in time.

Where the bytes come from:
- push: ``PublishSession.flv`` from the RTMP front (a blocking file-like), or
  ``SrtSession.stream``, MPEG-TS from the SRT listener's child (a pipe);
- pull: an ``rtmp://``, ``rtsp://``, ``http(s)://`` (HLS) or ``file://`` URL,
  optionally looped (files) and paced at real time (files and HLS, which a
  demuxer would otherwise read as fast as the disk or network allows).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.packet import Packet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from kubecast_api import redact
from kubecast_worker.logs import Log
from kubecast_worker.status import InputState, Status

Opener = Callable[[], av.container.InputContainer]

#: Seconds a network read may block before the pull is declared dropped.
READ_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0


class SourceError(Exception):
    """The input could not be opened or read; the message says why."""


@dataclass(slots=True)
class Media:
    kind: Literal["video", "audio"]
    frame: VideoFrame | AudioFrame | None = None
    packet: Packet | None = None  # to mux as it is: the source's (passthrough), or AAC
    time: float = 0.0  # seconds on the session timeline


def open_push(flv: Any) -> Opener:
    """Demux the FLV bytes of an accepted RTMP publish (``PublishSession.flv``)."""

    def opener() -> av.container.InputContainer:
        # NB: FLV streams appear as their first packets arrive, so probing reads
        # analyzeduration of media (1 s instead of FFmpeg's 5 s) before returning. Less
        # would risk missing an audio stream that starts late; it would not make the
        # first segment sooner (that waits for a whole segment of media anyway).
        return av.open(flv, mode="r", format="flv", options={"analyzeduration": "1000000"})

    return opener


def open_mpegts(stream: Any) -> Opener:
    """Demux the MPEG-TS an SRT caller sends (``srt.SrtSession.stream``, a blocking pipe)."""

    def opener() -> av.container.InputContainer:
        # As for FLV: a second of media is enough to find both streams.
        return av.open(stream, mode="r", format="mpegts", options={"analyzeduration": "1000000"})

    return opener


def open_pull(url: str) -> Opener:
    parts = urlsplit(url)
    options: dict[str, str] = {}
    if parts.scheme == "file":
        target = unquote(parts.path)
    else:
        target = url
        if parts.scheme == "rtsp":
            options["rtsp_transport"] = "tcp"

    def opener() -> av.container.InputContainer:
        return av.open(target, mode="r", options=options, timeout=(OPEN_TIMEOUT, READ_TIMEOUT))

    return opener


def paced_by_default(url: str) -> bool:
    """Files and HLS are read at real time; rtmp/rtsp sources pace themselves."""
    return urlsplit(url).scheme in ("file", "http", "https")


def describe(error: BaseException) -> str:
    """What went wrong, for a person: FFmpeg's reason and the URL it concerns.

    NB: FFmpeg's ``filename`` is the URL as given, credentials and all; it is shown
    redacted, as is any URL a library put into its message.
    """
    if isinstance(error, av.error.FFmpegError):
        filename = getattr(error, "filename", None)
        reason = error.strerror or type(error).__name__
        return reason + (f" ({redact.url(str(filename))})" if filename else "")
    return redact.text(str(error)) or type(error).__name__


class Source:
    """One input, opened, demuxed and decoded in the calling thread."""

    def __init__(
        self,
        *,
        opener: Opener,
        status: Status,
        stop: threading.Event,
        loop: bool = False,
        realtime: bool = False,
        log: Log | None = None,
    ) -> None:
        self._opener = opener
        self.status = status
        self.stop = stop
        self.loop = loop
        self.realtime = realtime
        self.log = log or logging.getLogger("kubecast.ingest")
        self.copy_video = False
        self.copy_audio = False
        self.container: av.container.InputContainer | None = None
        self.video: VideoStream | None = None
        self.audio: AudioStream | None = None
        self.info = InputState()
        #: wall time at which media time 0 "happened": a frame at t is late at
        #: ``wall_anchor + t + tolerance``.
        self.wall_anchor: float | None = None
        self._origin: Fraction | None = None
        self._offset = Fraction(0)
        self._end = Fraction(0)
        self._shifts: dict[int, int] = {}

    # -- opening -----------------------------------------------------------------

    def open(self) -> InputState:
        try:
            self.container = self._opener()
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"cannot open the input: {describe(e)}") from e
        container = self.container
        if not container.streams.video:
            self.close()
            raise SourceError("the input has no video stream; kubecast needs video")
        self.video = container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = container.streams.audio[0] if container.streams.audio else None
        ctx = self.video.codec_context
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
        self.info = InputState(
            video_codec=ctx.name,
            width=ctx.width or None,
            height=ctx.height or None,
            fps=round(float(rate), 3) if rate else None,
            rate=Fraction(rate).limit_denominator(1001) if rate else None,
            pix_fmt=ctx.format.name if ctx.format else None,
        )
        if self.audio is not None:
            actx = self.audio.codec_context
            self.info.audio_codec = actx.name
            self.info.audio_sample_rate = actx.sample_rate or None
            self.info.audio_channels = actx.channels or None
        if not self.info.width or not self.info.height:
            self.close()
            raise SourceError("the input's video has no size; is it a supported codec?")
        return self.info

    @property
    def has_audio(self) -> bool:
        """Whether the input has audio (a source without demuxed streams says so itself)."""
        return self.audio is not None

    @property
    def fps(self) -> Fraction | None:
        assert self.video is not None
        rate = self.video.average_rate or self.video.guessed_rate
        return Fraction(rate).limit_denominator(1001) if rate else None

    def close(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):  # already broken: closing is best effort
                self.container.close()
            self.container = None

    # -- reading -----------------------------------------------------------------

    def __iter__(self) -> Iterator[Media]:
        assert self.container is not None and self.video is not None
        streams = [s for s in (self.video, self.audio) if s is not None]
        while not self.stop.is_set():
            try:
                for packet in self.container.demux(streams):
                    if self.stop.is_set():
                        return
                    yield from self._packet(packet)
            except av.error.EOFError:
                pass
            except (av.error.FFmpegError, OSError) as e:
                raise SourceError(f"reading the input failed: {describe(e)}") from e
            yield from self._drain(streams)
            if not self.loop or self.stop.is_set():
                return
            self._rewind()

    def _packet(self, packet: Packet) -> Iterator[Media]:
        stream = packet.stream
        is_video = stream is self.video
        kind: Literal["video", "audio"] = "video" if is_video else "audio"
        if packet.size:
            self.status.input_bytes += packet.size
            self.status.input_meter.add(packet.size, time.time())
        at = self._rebase(packet)
        if at is not None and self.realtime:
            self._pace(at)
        elif at is not None and self.wall_anchor is None:
            self.wall_anchor = time.time() - at
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            self.status.decode_errors += 1
            frames = []
        for frame in frames:
            yield self._frame(kind, frame)
        if packet.size and ((is_video and self.copy_video) or (not is_video and self.copy_audio)):
            yield Media(kind, packet=packet, time=at or 0.0)

    def _frame(self, kind: Literal["video", "audio"], frame: Any) -> Media:
        at = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
        if kind == "video":
            self.status.frames_decoded += 1
        return Media(kind, frame=frame, time=at)

    def _drain(self, streams: list[Any]) -> Iterator[Media]:
        for stream in streams:
            kind: Literal["video", "audio"] = "video" if stream is self.video else "audio"
            try:
                frames = stream.codec_context.decode(None)
            except av.error.FFmpegError:
                frames = []
            for frame in frames:
                yield self._frame(kind, frame)

    def _rebase(self, packet: Packet) -> float | None:
        """Move the packet onto the session timeline; return its time in seconds."""
        pts, dts, tb = packet.pts, packet.dts, packet.time_base
        if (pts is None and dts is None) or tb is None:
            return None
        if self._origin is None:
            # NB: the presentation time of the first packet, not its decode time: with
            # B-frames the first dts is earlier, and the first picture would start late.
            self._origin = (pts if pts is not None else dts) * tb  # type: ignore[operator]
            self._shifts.clear()
        index = packet.stream.index
        shift = self._shifts.get(index)
        if shift is None:
            shift = self._shifts[index] = round((self._origin - self._offset) / tb)
        if pts is not None:
            packet.pts = pts = pts - shift
            end = (pts + (packet.duration or 0)) * tb
            if end > self._end:
                self._end = end
        if dts is not None:
            packet.dts = dts = dts - shift
        return float((dts if dts is not None else pts) * tb)  # type: ignore[operator]

    def _pace(self, at: float) -> None:
        now = time.time()
        if self.wall_anchor is None:
            self.wall_anchor = now - at
        delay = self.wall_anchor + at - now
        if delay > 0:
            self.stop.wait(min(delay, 5.0))

    def _rewind(self) -> None:
        """Start the file again, continuing the timeline where this pass ended."""
        assert self.container is not None
        self.log.info("looping the input", extra={"at_seconds": round(float(self._end), 3)})
        self.container.seek(0)
        for stream in (self.video, self.audio):
            if stream is not None:
                stream.codec_context.flush_buffers()
        self._offset, self._origin = self._end, None
