"""A live publisher whose pictures show the wall clock: RTMP or SRT, for latency.

    python clock_publisher.py rtmp://HOST:PORT/live/KEY [--seconds 60] [--tune zerolatency]
    python clock_publisher.py 'srt://HOST:PORT?passphrase=KEY'

The ffmpeg CLI encodes and sends (PyAV's wheels have no libsrt); this process is
the camera. Every 1/30 s it stamps the wall clock into a 640x360 picture
(clock_pattern.py) and writes it to ffmpeg's stdin at once, so the time a picture
shows is when it was handed to the encoder. A frame is 345 kB, five times what a
pipe holds, so a write returns only once ffmpeg has read most of it: an encoder
that falls behind shows up as latency, not as a queue hidden in the pipe. A 1 kHz tone, made
by ffmpeg at real time, is the audio (the worker's ladder has an AAC rung).

The encoder is set as OBS's x264 defaults are (veryfast, CBR, 2 s keyframes)
with ``--tune zerolatency`` unless ``--tune none``: without it x264 holds back
its rc-lookahead (10 frames at veryfast) plus B-frames and frame threads, about
half a second at 30 fps, before the first packet leaves.

The URL holds the key: it goes into ffmpeg's argv, never into a log.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time

import clock_pattern  # beside this file

WIDTH, HEIGHT, FPS = 640, 360, 30


def encoder(url: str, *, tune: str, muxdelay: float | None = None) -> list[str]:
    container = "mpegts" if url.startswith("srt://") else "flv"
    # NB: ffmpeg's MPEG-TS muxer holds audio back until a PES packet holds half of
    # -muxdelay (0.7 s by default) or 2,930 bytes (about 0.18 s of 128 kbit/s AAC); a
    # receiver that interleaves audio with video waits for it. FLV sends each frame.
    delay = ["-muxdelay", str(muxdelay)] if muxdelay is not None and container == "mpegts" else []
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{WIDTH}x{HEIGHT}",
        "-framerate", str(FPS), "-i", "pipe:0",
        "-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-c:v", "libx264", "-preset", "veryfast", *(["-tune", tune] if tune != "none" else []),
        "-profile:v", "main", "-g", str(2 * FPS), "-keyint_min", str(2 * FPS),
        "-sc_threshold", "0", "-b:v", "1500k", "-maxrate", "1500k", "-bufsize", "1500k",
        "-c:a", "aac", "-b:a", "128k",
        *delay, "-f", container, url,
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", help="rtmp://HOST:PORT/APP/KEY or srt://HOST:PORT?passphrase=KEY")
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--tune", choices=("zerolatency", "none"), default="zerolatency")
    parser.add_argument(
        "--muxdelay", type=float, help="SRT: ffmpeg's -muxdelay (s) for MPEG-TS; default 0.7"
    )
    args = parser.parse_args()
    command = encoder(args.url, tune=args.tune, muxdelay=args.muxdelay)
    ffmpeg = subprocess.Popen(command, stdin=subprocess.PIPE)
    assert ffmpeg.stdin is not None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # then close ffmpeg's input
    start = time.monotonic()
    try:
        for n in range(int(args.seconds * FPS)):
            # Real time: the n-th picture is due at start + n/FPS; a late one is sent
            # at once (and shows its own, later, clock).
            time.sleep(max(0.0, start + n / FPS - time.monotonic()))
            ffmpeg.stdin.write(clock_pattern.picture(clock_pattern.now_ms(), WIDTH, HEIGHT))
    except BrokenPipeError:
        return ffmpeg.wait()
    finally:
        if not ffmpeg.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # ffmpeg gone already
                ffmpeg.stdin.close()
        try:
            ffmpeg.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ffmpeg.kill()
    return ffmpeg.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
