"""A still of the live stream: ``thumbnail.jpg`` beside the master playlist.

It is taken from frames the smallest rendition already has: decoded once by
the ingest thread, then scaled by that rendition's own filter graph. Making a
thumbnail costs one JPEG encode of a small picture every few seconds, never a
second decode of the source. FFmpeg's ``mjpeg`` encoder (through PyAV) writes
the JPEG; the file is replaced atomically, so the origin serves a whole one.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame

from kubecast_worker import files

NAME = "thumbnail.jpg"
#: Media seconds between two thumbnails.
EVERY_SECONDS = 5.0
#: FFmpeg's JPEG quality scale (2 best .. 31 worst); 5 is sharp at a few kB.
QUALITY = 5


class Thumbnailer:
    """Writes ``<out_dir>/thumbnail.jpg`` from one rendition's frames. One thread owns it."""

    def __init__(self, out_dir: Path, *, every_seconds: float = EVERY_SECONDS) -> None:
        self.path = out_dir / NAME
        self.every = Fraction(every_seconds)
        self._next: Fraction | None = None
        self._codec: VideoCodecContext | None = None
        self.written = 0

    def offer(self, frame: VideoFrame) -> None:
        """Take ``frame`` if a thumbnail is due at its time; cheap when it is not."""
        if frame.pts is None or frame.time_base is None:
            return
        at = frame.pts * frame.time_base
        if self._next is not None and at < self._next:
            return
        self._next = at + self.every
        files.write_atomically(self.path, self._jpeg(frame))
        self.written += 1

    def _jpeg(self, frame: VideoFrame) -> bytes:
        codec = self._codec
        if codec is None or (codec.width, codec.height) != (frame.width, frame.height):
            codec = av.CodecContext.create("mjpeg", "w")
            assert isinstance(codec, VideoCodecContext)
            codec.width, codec.height = frame.width, frame.height
            codec.pix_fmt = "yuvj420p"  # full-range YUV, what JPEG viewers expect
            codec.time_base = Fraction(1, 1)
            codec.qmin = codec.qmax = QUALITY
            self._codec = codec
        picture = frame.reformat(format="yuvj420p")
        # The encoder wants rising timestamps, in its own time base (1 s a picture).
        picture.pts, picture.time_base = self.written, codec.time_base
        # mjpeg is intra-only: one packet per frame, at once, with nothing held back.
        return b"".join(bytes(packet) for packet in codec.encode(picture))

    def remove(self) -> None:
        """A stream that ends has no live picture to show."""
        self.path.unlink(missing_ok=True)
