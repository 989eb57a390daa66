"""whep_send against the aiortc this project pins: its internals are there, and a frame
packetised once comes back whole from the RTP payloads every viewer is sent."""

from __future__ import annotations

import asyncio
import os
from fractions import Fraction

import av
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import PACKET_MAX, h264_depayload

from kubecast_worker import whep_send


def test_this_aiortc_has_what_the_fast_path_relies_on() -> None:
    """Else every viewer silently falls back to aiortc's own, costlier path."""

    async def check() -> bool:
        pc = RTCPeerConnection()
        try:
            video = pc.addTransceiver("video", direction="sendonly")
            audio = pc.addTransceiver("audio", direction="sendonly")
            return whep_send.supported(video.sender) and whep_send.supported(audio.sender)
        finally:
            await pc.close()

    assert asyncio.run(check())


def nal_units(annex_b: bytes) -> list[bytes]:
    """The NAL units of an Annex B stream, start codes (3 or 4 bytes) dropped."""
    units = [u for u in annex_b.split(b"\x00\x00\x01") if u]
    return [u[:-1] if u.endswith(b"\x00") else u for u in units]


def test_a_720p_keyframe_packetised_once_reassembles_from_its_payloads() -> None:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 1280, 720, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
    frame = av.VideoFrame(1280, 720, "yuv420p")
    for plane in frame.planes:
        plane.update(os.urandom(plane.buffer_size))  # noise: a keyframe of many packets
    frame.pts = 90
    packet = next(p for p in encoder.encode(frame) + encoder.encode(None))
    assert packet.is_keyframe

    payloads, timestamp = whep_send.packetise(packet, whep_send.h264_packetiser())

    assert len(payloads) > 1 and all(len(p) <= PACKET_MAX for p in payloads)
    assert timestamp == packet.pts * 90000 * packet.time_base  # the 90 kHz RTP clock
    received = b"".join(h264_depayload(p) for p in payloads)  # as a viewer reassembles it
    assert nal_units(received) == nal_units(bytes(packet))
