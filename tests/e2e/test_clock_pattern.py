"""The burnt-in clock survives what the latency bench puts it through: an H.264
encode at a live bitrate, a decode, and a scale to another rung's size."""

from __future__ import annotations

import io
import subprocess
from fractions import Fraction

import av
import clock_pattern
import pytest
from conftest import needs_ffmpeg

pytestmark = pytest.mark.e2e

#: Clocks whose bits differ in every position, and the wrap at 2**32.
TIMES = [0x00000000, 0xFFFFFFFF, 0xA5A5A5A5, 0x5A5A5A5A, 1_764_676_800_123 % (1 << 32)]


def encode(frames: list[av.VideoFrame]) -> bytes:
    """H.264 in MPEG-TS, as a live rung: x264 ultrafast at 300 kbit/s, 640x360."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.bit_rate = 300_000
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for n, frame in enumerate(frames):
            frame.pts, frame.time_base = n, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        return list(container.decode(video=0))


@pytest.mark.parametrize("size", [(640, 360), (320, 180), (1280, 720)])
def test_the_clock_reads_back_after_an_encode_and_a_scale(size: tuple[int, int]) -> None:
    frames = [clock_pattern.stamp(now=ms / 1000) for ms in TIMES]
    decoded = decode(encode(frames))
    width, height = size
    shown = [clock_pattern.read(f.reformat(width=width, height=height)) for f in decoded]
    assert shown == TIMES


@needs_ffmpeg
def test_a_raw_picture_piped_to_the_ffmpeg_cli_reads_back() -> None:
    """What clock_publisher.py writes into ffmpeg's stdin, scaled by ffmpeg to 180p."""
    raw = b"".join(clock_pattern.picture(ms) for ms in TIMES)
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p",
         "-video_size", "640x360", "-framerate", "30", "-i", "pipe:0", "-vf", "scale=320:180",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "200k", "-f", "mpegts", "pipe:1"],
        input=raw, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert [clock_pattern.read(f) for f in decode(done.stdout)] == TIMES
