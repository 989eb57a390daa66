"""Real RTMP publishers that are not all the ffmpeg CLI, for the fault tests.

- ``ffmpeg``: the e2e suite's publisher (``tests.e2e.conftest.publisher_command``);
- ``pyav``: this module run as a program, ``python -m tests.faults.live_publishers``: PyAV,
  with the FFmpeg build of its wheel (not the CLI's), its own encoder and FLV settings,
  encoding testsrc2 and a sine to libx264 + AAC, paced to real time;
- ``gstreamer``: ``gst-launch-1.0`` with ``rtmp2sink``, ``x264enc`` and ``avenc_aac``, a
  wholly different RTMP and FLV stack.

Each runs until it is stopped. The URL (with the stream key) goes to PyAV through the
environment, not argv; ffmpeg and gst-launch take it as an argument, as users run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

KINDS = ("ffmpeg", "pyav", "gstreamer")
URL_ENV = "KUBECAST_FAULTS_PUBLISH_URL"
SIZE = (320, 180)
RATE = 25


def gstreamer_command(url: str) -> list[str]:
    width, height = SIZE
    return [
        "gst-launch-1.0", "-q", "-e",
        "videotestsrc", "is-live=true", "pattern=smpte",
        "!", f"video/x-raw,width={width},height={height},framerate={RATE}/1",
        "!", "x264enc", "tune=zerolatency", "speed-preset=ultrafast", f"key-int-max={RATE}",
        "bitrate=400",
        "!", "video/x-h264,profile=main", "!", "h264parse", "!", "queue",
        "!", "flvmux", "name=mux", "streamable=true",
        "!", "rtmp2sink", f"location={url}",
        "audiotestsrc", "is-live=true", "wave=sine",
        "!", "audioconvert", "!", "audioresample", "!", "audio/x-raw,rate=44100,channels=2",
        "!", "avenc_aac", "bitrate=128000", "!", "aacparse", "!", "queue", "!", "mux.",
    ]  # fmt: skip


def start(kind: str, url: str) -> subprocess.Popen[bytes]:
    """Start a publisher of ``kind`` pushing to ``url`` until it is stopped."""
    from tests.e2e.conftest import REPO, publisher_command

    env = dict(os.environ)
    if kind == "ffmpeg":
        width, height = SIZE
        command = publisher_command(url, seconds=3600, size=f"{width}x{height}", rate=RATE)
    elif kind == "pyav":
        command = [sys.executable, "-m", "tests.faults.live_publishers"]
        env[URL_ENV] = url
    elif kind == "gstreamer":
        command = gstreamer_command(url)
    else:
        raise ValueError(kind)
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=REPO,
    )  # fmt: skip


def missing() -> list[str]:
    """The publisher programs this machine lacks."""
    return [name for name in ("ffmpeg", "gst-launch-1.0") if shutil.which(name) is None]


def drop(process: subprocess.Popen[bytes], how: str) -> None:
    """End a publisher: ``kill`` (SIGKILL: the socket just closes, as when a network
    or a laptop goes away) or ``term`` (SIGTERM/SIGINT: the client ends its own way)."""
    if process.poll() is None:
        if how == "kill":
            process.kill()
        else:
            process.send_signal(signal.SIGINT if how == "int" else signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pyav_publish(url: str) -> None:
    import av

    width, height = SIZE
    video_in = av.open(f"testsrc2=size={width}x{height}:rate={RATE}", format="lavfi")
    audio_in = av.open("sine=frequency=880:sample_rate=44100", format="lavfi")
    out = av.open(url, mode="w", format="flv")
    video = out.add_stream("libx264", rate=RATE)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(RATE)}
    video.codec_context.bit_rate = 400_000
    audio = out.add_stream("aac", rate=44100)
    audio.codec_context.layout = "stereo"
    audio.codec_context.bit_rate = 96_000
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
    fifo = av.AudioFifo()
    frames = video_in.decode(video=0)
    sines = audio_in.decode(audio=0)
    started = time.monotonic()
    audio_samples = 0
    for index, frame in enumerate(frames):
        at = index / RATE
        # Real time, as a camera would deliver it.
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame.pts, frame.time_base = index, Fraction(1, RATE)
        for packet in video.encode(frame.reformat(format="yuv420p")):
            out.mux(packet)
        while audio_samples < (index + 1) * 44100 // RATE:
            for chunk in resampler.resample(next(sines)):
                fifo.write(chunk)
            while (block := fifo.read(1024)) is not None:
                block.pts, block.time_base = audio_samples, Fraction(1, 44100)
                audio_samples += block.samples
                for packet in audio.encode(block):
                    out.mux(packet)


if __name__ == "__main__":
    _pyav_publish(os.environ[URL_ENV])
