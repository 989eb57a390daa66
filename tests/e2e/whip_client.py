"""A WHIP publisher for the tests: aiortc sending a camera's video and a microphone's audio.

    python whip_client.py URL --seconds 10 [--codec vp8|h264] [--no-audio] [--no-delete]

aiortc's MediaPlayer reads a test pattern and a tone from FFmpeg's lavfi at real
time, and aiortc encodes them as a browser encodes its camera: H.264 or VP8 video
and Opus audio. One JSON line on stdout per event, for the test to follow:

    {"event": "answered", "status": 201, "location": "/whip/live/…"}
    {"event": "refused", "status": 401, "body": "…"}     (then exit 0)
    {"event": "connected"}
    {"event": "deleted", "status": 200}

The key comes from $WHIP_TOKEN (or --token).
``--clock``: the picture is the wall clock (clock_pattern.py), for latency.
``--no-delete``: stay until killed, never DELETE (a publisher that vanishes).
Run it where the worker's namespace is: aioice never offers 127.0.0.1 as a candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from urllib.parse import urljoin

import aiohttp
import clock_pattern  # beside this file
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from av.video.frame import VideoFrame

#: A test pattern and a tone, made at real time by FFmpeg's lavfi (PyAV's own FFmpeg).
CAMERA = "testsrc2=size=640x360:rate=25"
MICROPHONE = "sine=frequency=440:sample_rate=48000"


class ClockTrack(VideoStreamTrack):
    """640x360 at 30 fps, each frame showing the wall clock when it was made."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = clock_pattern.stamp()
        frame.pts, frame.time_base = pts, time_base
        return frame


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def publish(args: argparse.Namespace) -> int:
    # NB: a generator, not a file in a loop: aiortc's MediaPlayer sends a looped file's
    # timestamps back to 0 and then no longer paces it.
    if args.clock:
        player = MediaPlayer(MICROPHONE, format="lavfi")
        camera: MediaStreamTrack = ClockTrack()
    else:
        player = MediaPlayer(f"{CAMERA}[out0];{MICROPHONE}[out1]", format="lavfi")
        assert player.video is not None
        camera = player.video
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN server: none is reachable
    video = pc.addTransceiver(camera, direction="sendonly")
    codecs = [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() in (f"video/{args.codec}", "video/rtx")
    ]
    video.setCodecPreferences(codecs)
    if not args.no_audio and player.audio is not None:
        pc.addTransceiver(player.audio, direction="sendonly")
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def changed() -> None:
        if pc.connectionState == "connected":
            connected.set()

    await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {args.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(args.url, data=pc.localDescription.sdp, headers=headers) as reply:
            body = await reply.text()
            if reply.status != 201:
                say("refused", status=reply.status, body=body)
                await pc.close()
                camera.stop()
                return 0
            location = urljoin(args.url, reply.headers["Location"])
            say("answered", status=reply.status, location=reply.headers["Location"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await asyncio.wait_for(connected.wait(), 20)
        say("connected")
        await asyncio.sleep(args.seconds if not args.no_delete else 3600)
        async with http.delete(location) as reply:
            say("deleted", status=reply.status)
    await pc.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token", default=os.environ.get("WHIP_TOKEN", ""))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--no-delete", action="store_true")
    parser.add_argument(
        "--clock", action="store_true", help="send the wall clock as the picture (clock_pattern)"
    )
    return asyncio.run(publish(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
