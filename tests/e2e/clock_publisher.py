"""A live publisher whose pictures show the wall clock: RTMP or SRT, for latency.

    python clock_publisher.py rtmp://HOST:PORT/live/KEY [--seconds 60] [--tune zerolatency]
    python clock_publisher.py 'srt://HOST:PORT?passphrase=KEY'

The ffmpeg CLI encodes and sends (PyAV's wheels have no libsrt); this process is
the camera. Every 1/30 s it stamps the wall clock into a 640x360 picture
(clock_pattern.py) and writes it to ffmpeg's stdin at once, so the time a picture
shows is when it was handed to the encoder. A frame is 345 kB, five times what a
pipe holds, so a write returns only once ffmpeg has read most of it: an encoder
that falls behind shows up as latency, not as a queue hidden in the pipe. The audio (the
worker's ladder has an AAC rung) is a 1 kHz tone that this process also writes, into a
second pipe, 1/30 s of PCM with every picture: as a live encoder gets both from capture
devices on one clock. (``--lavfi-audio``: ffmpeg makes the tone itself, paced with
``-re``; its clock starts apart from the pictures', and ffmpeg's muxer then holds video
back to interleave it with audio, about a third of a second.)

The encoder is set as OBS's x264 defaults are (veryfast, CBR, 2 s keyframes)
with ``--tune zerolatency`` unless ``--tune none``: without it x264 holds back
its rc-lookahead (10 frames at veryfast) plus B-frames and frame threads, about
half a second at 30 fps, before the first packet leaves.

The URL holds the key: it goes into ffmpeg's argv, never into a log.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import math
import os
import signal
import subprocess
import sys
import time

import clock_pattern  # beside this file

WIDTH, HEIGHT, FPS = 640, 360, 30
RATE, TONE = 48000, 1000  # Hz
#: One second of the tone (a whole number of periods) as 30 frames' worth of s16le PCM.
SOUND = array.array(
    "h", (int(8000 * math.sin(2 * math.pi * TONE * n / RATE)) for n in range(RATE))
).tobytes()
CHUNK = len(SOUND) // FPS


def encoder(
    url: str, *, tune: str, muxdelay: float | None = None, audio_fd: int | None = None
) -> list[str]:
    """ffmpeg's argv: pictures on stdin, the tone on ``audio_fd`` (or lavfi's, if None)."""
    container = "mpegts" if url.startswith("srt://") else "flv"
    # NB: ffmpeg's MPEG-TS muxer holds audio back until a PES packet holds half of
    # -muxdelay (0.7 s by default) or 2,930 bytes (about 0.18 s of 128 kbit/s AAC); a
    # receiver that interleaves audio with video waits for it. FLV sends each frame.
    delay = ["-muxdelay", str(muxdelay)] if muxdelay is not None and container == "mpegts" else []
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{WIDTH}x{HEIGHT}",
        "-framerate", str(FPS), "-i", "pipe:0",
        # NB: no probing: ffmpeg opens its inputs one by one, and 5 s of probing (the
        # default) of a pipe paced with the pictures would wait on pictures it is not reading
        *(["-analyzeduration", "0", "-probesize", "32",
           "-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", f"pipe:{audio_fd}"]
          if audio_fd is not None
          else ["-re", "-f", "lavfi", "-i", f"sine=frequency={TONE}:sample_rate={RATE}"]),
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
    parser.add_argument(
        "--lavfi-audio", action="store_true", help="ffmpeg makes the tone (-re), not this process"
    )
    args = parser.parse_args()
    sound_out: int | None = None
    sound_in: int | None = None
    if not args.lavfi_audio:
        sound_in, sound_out = os.pipe()
    command = encoder(args.url, tune=args.tune, muxdelay=args.muxdelay, audio_fd=sound_in)
    ffmpeg = subprocess.Popen(
        command, stdin=subprocess.PIPE, pass_fds=() if sound_in is None else (sound_in,)
    )
    if sound_in is not None:
        os.close(sound_in)  # ffmpeg's now
    assert ffmpeg.stdin is not None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # then close ffmpeg's input
    start = time.monotonic()
    try:
        for n in range(int(args.seconds * FPS)):
            # Real time: the n-th picture is due at start + n/FPS; a late one is sent
            # at once (and shows its own, later, clock).
            time.sleep(max(0.0, start + n / FPS - time.monotonic()))
            if sound_out is not None:  # NB: 3.2 kB, well within a pipe: never blocks long
                offset = (n % FPS) * CHUNK
                os.write(sound_out, SOUND[offset : offset + CHUNK])
            ffmpeg.stdin.write(clock_pattern.picture(clock_pattern.now_ms(), WIDTH, HEIGHT))
    except BrokenPipeError:
        return ffmpeg.wait()
    finally:
        if sound_out is not None:
            os.close(sound_out)
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
