"""A WHEP viewer for the tests: aiortc receiving a rendition's video and audio, decoding both.

    python whep_client.py URL --seconds 6

One JSON line on stdout when done (or refused):

    {"event": "watched", "frames": 150, "sizes": [[640, 360]], "first_frame_seconds": 0.8,
     "video_seconds": 5.96, "distinct": 150, "audio_frames": 290, "audio_rates": [48000],
     "deleted": 200}
    {"event": "refused", "status": 404, "body": "…"}

``--clock``: the publisher sent clock_pattern pictures; ``latency_ms`` has the
median, p95 and max of now minus the time each decoded picture shows (after
``--warmup`` seconds).
``first_frame_seconds``: from the answer to the first decoded picture (a new
viewer waits for the next keyframe); ``connected_to_first_frame_seconds``: from
ICE + DTLS connected to it, the wait for a keyframe alone. ``max_gap_seconds``:
the longest step between consecutive decoded pictures' timestamps (media time: a
lost keyframe shows as a gap, a busy viewer process does not).

``--viewers N``: N viewers in this one process (one event loop), joining together,
one "watched" line each: how the crowd tests spread viewers over a few processes.
``--no-audio``: video only (a crowd's Opus decodes would cost the cores the worker
needs). ``--count-only``: ICE, DTLS and SRTP as usual, but the video's RTP is counted
(``RtpCounter``) instead of depacketised and decoded: a viewer light enough that a
hundred of them on this machine leave the cores to the worker (how many viewers one
worker holds); ``sizes`` is then empty and ``packets``, ``lost`` and ``keyframes``
are added. Run it in the worker's network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import struct
import sys
import time
from urllib.parse import urljoin

import aiohttp
import clock_pattern  # beside this file
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtcrtpreceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket


class AskingAgainNackGenerator(rtcrtpreceiver.NackGenerator):
    """NACKs as a browser sends them: a packet still missing is asked for again.

    aiortc's receiver NACKs a missing packet when the gap shows, and again only when a
    new gap shows; libwebrtc asks again every round trip until the packet comes or is
    too old. With aiortc's rule one lost NACK or lost retransmission can leave the
    jitter buffer waiting on that frame for 512 packets (seconds of video, then a PLI),
    which is aiortc's receiver, not what a browser viewing the worker sees. So this
    viewer asks again, at most every ``AGAIN`` seconds, while anything is missing.
    """

    AGAIN = 0.04

    def __init__(self) -> None:
        super().__init__()
        self._asked = 0.0

    def add(self, packet: RtpPacket) -> bool:
        missed = super().add(packet)
        now = time.monotonic()
        if missed or (self.missing and now - self._asked >= self.AGAIN):
            self._asked = now
            return True
        return False


# NB: the receiver looks the class up when it is made, once per track
rtcrtpreceiver.NackGenerator = AskingAgainNackGenerator  # type: ignore[misc]


class RtpCounter:
    """What ``--count-only`` keeps of the video's RTP: packets, pictures, gaps, keyframes.

    Installed as the DTLS transport's ``_handle_rtp_data`` (aiortc 1.16): it gets each
    packet after SRTP ``unprotect`` (so only authentic packets count) and before aiortc
    parses and routes it, which is the part of a viewer's cost this leaves out.
    """

    def __init__(self, payload_types: set[int]) -> None:
        self.payload_types = payload_types
        self.packets = self.lost = 0
        self.stamps: set[int] = set()  # each picture's RTP timestamp (90 kHz), unwrapped
        self.keyframes: set[int] = set()  # those of the IDR pictures
        self.first_key: float | None = None
        self._origin: int | None = None
        self._sequence: int | None = None

    async def __call__(self, data: bytes, arrival_time_ms: int) -> None:
        if len(data) < 12 or data[1] & 0x7F not in self.payload_types:
            return  # audio, or RTX (none on this path: nothing is lost in the namespace)
        sequence, timestamp = struct.unpack_from("!HI", data, 2)
        if self._sequence is not None:
            self.lost += (sequence - self._sequence - 1) & 0xFFFF
        self._sequence = sequence
        self.packets += 1
        if self._origin is None:
            self._origin = timestamp
        stamp = (timestamp - self._origin) & 0xFFFFFFFF
        self.stamps.add(stamp)
        if _starts_keyframe(data):
            self.keyframes.add(stamp)
            if self.first_key is None:
                self.first_key = time.monotonic()

    def seconds(self) -> list[float]:
        return sorted(stamp / 90000 for stamp in self.stamps)


def _starts_keyframe(data: bytes) -> bool:
    """Whether this H.264 RTP packet (RFC 6184) begins an IDR picture or its SPS."""
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extensions: 4 bytes, then their length in words
        start += 4 + 4 * struct.unpack_from("!H", data, start + 2)[0]
    payload = data[start:]
    if len(payload) < 2:
        return False
    nal = payload[0] & 0x1F
    if nal == 24 and len(payload) > 3:  # STAP-A: the first aggregated unit's type
        return payload[3] & 0x1F in (5, 7)
    if nal == 28:  # FU-A: the first fragment of an IDR slice
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return nal in (5, 7)


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def watch(args: argparse.Namespace) -> int:
    results = await asyncio.gather(*(view(args) for _ in range(args.viewers)))
    for result in results:
        say(**result)
    return 0


async def view(args: argparse.Namespace) -> dict[str, object]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN server: none is reachable
    pc.addTransceiver("video", direction="recvonly")
    if not args.no_audio:
        pc.addTransceiver("audio", direction="recvonly")
    connected: list[float] = []

    @pc.on("connectionstatechange")
    def changed() -> None:
        if pc.connectionState == "connected" and not connected:
            connected.append(time.monotonic())

    tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    heard: list[int] = []  # the sample rate of each decoded audio frame

    async def listen(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                heard.append((await track.recv()).sample_rate)  # type: ignore[union-attr]

    def arrived(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            listeners.append(asyncio.ensure_future(listen(track)))
        else:
            tracks.put_nowait(track)

    listeners: list[asyncio.Future[None]] = []
    pc.on("track", arrived)
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/sdp"}
        async with http.post(args.url, data=pc.localDescription.sdp, headers=headers) as reply:
            body = await reply.text()
            if reply.status != 201:
                await pc.close()
                return {"event": "refused", "status": reply.status, "body": body}
            location = urljoin(args.url, reply.headers["Location"])
        answered = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        counted: dict[str, int] = {}  # --count-only's own figures
        if args.count_only:
            counter = await count(pc, answered + args.seconds)
            stamps, first_at = counter.seconds(), counter.first_key
            frames, sizes, delays = len(stamps), set[tuple[int, int]](), list[float]()
            counted = dict(
                packets=counter.packets, lost=counter.lost, keyframes=len(counter.keyframes)
            )
        else:
            track = await asyncio.wait_for(tracks.get(), 10)
            frames, sizes, first_at, stamps, delays = await decode(track, args, answered)
        async with http.delete(location) as reply:
            deleted = reply.status
    for listener in listeners:
        listener.cancel()
    await pc.close()
    ordered = sorted(set(stamps))
    return dict(
        event="watched",
        frames=frames,
        sizes=sorted(sizes),
        first_frame_seconds=None if first_at is None else round(first_at - answered, 3),
        connected_to_first_frame_seconds=(
            round(first_at - connected[0], 3) if first_at is not None and connected else None
        ),
        max_gap_seconds=_largest_step(ordered),
        # the span of the pictures' timestamps: frames / span is the frame rate received
        video_seconds=round(max(stamps) - min(stamps), 3) if stamps else 0.0,
        distinct=len(set(stamps)),
        # --clock: glass to glass, the publisher's wall clock to this decoded picture
        latency_ms=clock_pattern.summary(delays) if delays else None,
        audio_frames=len(heard),
        audio_rates=sorted(set(heard)),
        **counted,
        deleted=deleted,
    )


async def decode(
    track: MediaStreamTrack, args: argparse.Namespace, answered: float
) -> tuple[int, set[tuple[int, int]], float | None, list[float], list[float]]:
    """The video decoded until ``--seconds`` after the answer: the pictures, their sizes,
    when the first came (time.monotonic()), their timestamps and (--clock) their delays."""
    frames, first_at, deadline = 0, None, answered + args.seconds
    sizes: set[tuple[int, int]] = set()
    stamps: list[float] = []
    delays: list[float] = []
    while time.monotonic() < deadline:
        try:
            frame = await asyncio.wait_for(track.recv(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, MediaStreamError):
            break
        if first_at is None:
            first_at = time.monotonic()
        frames += 1
        sizes.add((frame.width, frame.height))  # type: ignore[union-attr]
        stamps.append(float(frame.pts * frame.time_base))  # type: ignore[operator]
        if args.clock and time.monotonic() - answered >= args.warmup:
            delays.append(clock_pattern.latency_ms(frame))
    return frames, sizes, first_at, stamps, delays


async def count(pc: RTCPeerConnection, until: float) -> RtpCounter:
    """--count-only: the video's RTP counted until ``until`` (time.monotonic())."""
    video = next(t for t in pc.getTransceivers() if t.kind == "video")
    counter = RtpCounter(
        {
            c.payloadType
            for c in video._codecs
            if c.payloadType is not None and not c.mimeType.lower().endswith("/rtx")
        }
    )
    # NB: on the instance, before DTLS is up (setRemoteDescription only starts connecting);
    # with BUNDLE the audio shares this transport, and RtpCounter skips its packets.
    video.receiver.transport._handle_rtp_data = counter  # type: ignore[method-assign]
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    return counter


def _largest_step(ordered: list[float]) -> float | None:
    steps = [b - a for a, b in itertools.pairwise(ordered)]
    return round(max(steps), 3) if steps else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--clock", action="store_true", help="read the publisher's clock_pattern")
    parser.add_argument(
        "--warmup", type=float, default=0, help="--clock: count no picture in the first S seconds"
    )
    parser.add_argument("--viewers", type=int, default=1, help="viewers in this process")
    parser.add_argument("--no-audio", action="store_true", help="receive video only")
    parser.add_argument(
        "--count-only", action="store_true", help="count the video's RTP instead of decoding it"
    )
    return asyncio.run(watch(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
