"""The wall clock burnt into a picture, and read back: glass-to-glass latency on one machine.

The top ninth of a frame is a row of 32 blocks, white for a 1 bit and black for a 0:
the capture time in milliseconds, modulo 2**32, most significant bit first. The
rest is grey. Blocks that wide survive any bitrate and scale: a reader samples the
centre of each block at whatever size the frame arrives.
"""

from __future__ import annotations

import time
from fractions import Fraction

from av.video.frame import VideoFrame

BITS = 32
BLACK, WHITE, GREY = 16, 235, 128


def now_ms() -> int:
    """The wall clock in milliseconds, modulo 2**32: what a picture shows."""
    return int(time.time() * 1000) % (1 << 32)


def picture(ms: int, width: int = 640, height: int = 360) -> bytes:
    """A raw yuv420p picture (planes packed, no padding) showing ``ms``: what a
    publisher writes into an encoder's pipe (``ffmpeg -f rawvideo -pix_fmt yuv420p``)."""
    return _luma(ms, width, height) + bytes([128]) * (2 * (width // 2) * (height // 2))


def _luma(ms: int, width: int, height: int) -> bytes:
    block, band = width // BITS, height // 9
    row = b"".join(
        bytes([WHITE if ms >> (BITS - 1 - i) & 1 else BLACK]) * block for i in range(BITS)
    ).ljust(width, bytes([GREY]))
    return row * band + bytes([GREY]) * (width * (height - band))


def stamp(width: int = 640, height: int = 360, *, now: float | None = None) -> VideoFrame:
    """A yuv420p frame showing ``now`` (default: the wall clock)."""
    ms = now_ms() if now is None else int(now * 1000) % (1 << 32)
    frame = VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    assert luma.line_size == width, "a padded plane: pick a width that is a multiple of 64"
    luma.update(_luma(ms, width, height))
    for chroma in frame.planes[1:]:
        chroma.update(bytes([128]) * chroma.buffer_size)
    frame.time_base = Fraction(1, 90000)
    return frame


def read(frame: VideoFrame) -> int:
    """The milliseconds a frame made by ``stamp`` shows (at any size it was scaled to)."""
    luma = frame.planes[0]
    data, stride = bytes(luma), luma.line_size
    y = frame.height // 18
    value = 0
    for i in range(BITS):
        x = int((i + 0.5) * frame.width / BITS)
        value = value << 1 | (data[y * stride + x] > GREY)
    return value


def latency_ms(frame: VideoFrame) -> int:
    """Now minus the time the frame shows, in milliseconds."""
    return (now_ms() - read(frame)) % (1 << 32)


def summary(delays: list[int]) -> dict[str, int]:
    """Median, p95 and max of latencies in ms (nearest rank), and how many there were."""
    ordered = sorted(delays)
    return {
        "median": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
        "samples": len(ordered),
    }
