"""whip.OpusTap: a WHIP publisher's Opus packets reach WHEP as they arrived.

Real aiortc objects (a peer connection with an audio receiver, its codec parameters
and jitter-buffer frames); no network. The packets' way through a real connection to
real viewers is tests/e2e/test_worker_whip.py (kubecast_whep_audio_packets_total).
"""

from __future__ import annotations

import asyncio
import queue

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from kubecast_worker import whip

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
PCMU = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000)


def test_each_opus_packet_goes_to_the_sink_and_on_to_the_decoder() -> None:
    heard: list[tuple[bytes, int]] = []
    tap = whip.OpusTap(lambda data, timestamp: heard.append((data, timestamp)))
    items = [
        (OPUS, JitterFrame(b"\xfc\x01", 0)),
        (OPUS, JitterFrame(b"\xfc\x02", 960)),
        (PCMU, JitterFrame(b"\x7f" * 160, 1920)),  # not Opus: the decoder's alone
        (OPUS, JitterFrame(b"", 2880)),  # nothing to pass on
        None,  # the receiver stopping: ends the decoder thread
    ]
    for item in items:
        tap.put(item)
    assert heard == [(b"\xfc\x01", 0), (b"\xfc\x02", 960)]
    # The decoder thread still gets everything, in order.
    assert [tap.get_nowait() for _ in items] == items
    assert tap.empty()


def test_the_tap_takes_the_place_of_a_peer_connections_audio_decoder_queue() -> None:
    async def main() -> None:
        pc = RTCPeerConnection()
        try:
            assert not whip.OpusTap.install(pc, print)  # no audio receiver yet
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            assert whip.OpusTap.install(pc, print)
            audio = next(t.receiver for t in pc.getTransceivers() if t.kind == "audio")
            video = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
            name = "_RTCRtpReceiver__decoder_queue"
            assert isinstance(getattr(audio, name), whip.OpusTap)
            assert type(getattr(video, name)) is queue.Queue  # video stays as it was
        finally:
            await pc.close()

    asyncio.run(main())
