"""Real publishers other than the ffmpeg CLI, and a way to load the CPU while they run.

- ``gstreamer_command``: ``gst-launch-1.0`` pushing ``videotestsrc`` (x264enc) and
  ``audiotestsrc`` (avenc_aac, FFmpeg's AAC encoder inside GStreamer) through flvmux to
  ``rtmp2sink``: the publisher that broke the first publish to a fresh worker under load
  (docs/reliability.md, "GStreamer publisher").
- ``cpu_load``: busy processes, one per core by default, as other work on a shared
  machine would be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

GST_ELEMENTS = ("videotestsrc", "audiotestsrc", "x264enc", "avenc_aac", "flvmux", "rtmp2sink")


def _has_gstreamer() -> bool:
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        return False
    for element in GST_ELEMENTS:
        found = subprocess.run(
            ["gst-inspect-1.0", "--exists", element], capture_output=True, check=False
        )
        if found.returncode != 0:
            return False
    return True


needs_gstreamer = pytest.mark.skipif(
    not _has_gstreamer(),
    reason="needs GStreamer with " + ", ".join(GST_ELEMENTS) + " (hack/system-packages.sh --tests)",
)


def gstreamer_command(
    url: str,
    *,
    seconds: float,
    size: tuple[int, int] = (1280, 720),
    rate: int = 30,
    audio_rate: int = 44100,
    channels: int = 2,
) -> list[str]:
    """A live GStreamer publisher: H.264 (x264enc, zerolatency) and AAC (avenc_aac), for
    ``seconds``, then end of stream (``-e``: flvmux and rtmp2sink finish cleanly)."""
    width, height = size
    audio_buffers = int(seconds * audio_rate / 1024) + 1  # audiotestsrc: 1024 samples a buffer
    return [
        "gst-launch-1.0", "-e",
        "videotestsrc", "is-live=true", f"num-buffers={int(seconds * rate)}",
        "!", f"video/x-raw,width={width},height={height},framerate={rate}/1",
        "!", "x264enc", "tune=zerolatency", "speed-preset=veryfast", f"key-int-max={2 * rate}",
        "bitrate=2500",
        "!", "video/x-h264,profile=main",
        "!", "flvmux", "streamable=true", "name=mux",
        "!", "rtmp2sink", f"location={url}",
        "audiotestsrc", "is-live=true", f"num-buffers={audio_buffers}",
        "!", f"audio/x-raw,rate={audio_rate},channels={channels}",
        "!", "audioconvert", "!", "avenc_aac", "bitrate=128000", "!", "mux.",
    ]  # fmt: skip


@contextlib.contextmanager
def cpu_load(processes: int | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Busy loops (one per core unless told) for the duration of the block."""
    count = processes or os.cpu_count() or 2
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield busy
    finally:
        for process in busy:
            process.kill()
        for process in busy:
            process.wait()
