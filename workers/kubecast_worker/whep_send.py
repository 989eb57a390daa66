"""The WHEP viewers' send path: each encoded frame packetised once, sent to each viewer in one loop.

aiortc's own path costs every viewer, for every RTP packet, an ``RtpPacket``, its
header extensions packed in Python, and four awaited layers
(``RTCRtpSender._run_rtp`` → ``RTCDtlsTransport._send_rtp`` → aioice
``Connection.sendto`` → ``StunProtocol.send_data``) before the one ``sendto()``
that matters; and the H.264 packetisation of the same frame once per viewer. A
profile of twenty 720p viewers put that chain at 38 % of the worker's samples.

Here the rendition's frame is packetised once (``packetise``: aiortc's own
``H264Encoder.pack``), and ``RtpStream.send`` gives each viewer the frame's packets
in one synchronous loop: the RTP header is packed once per frame (aiortc's
``RtpPacket.serialize``, so the header extensions are the ones negotiated) and only
its marker and sequence number change per packet; then SRTP ``protect`` and the
nominated ICE pair's datagram ``sendto``.

aiortc's ``RTCRtpSender`` stays in place for everything but sending media: its RTCP
task sends the sender reports and receives the viewer's RTCP (NACK, PLI, receiver
reports). So this module feeds it what that side reads, through aiortc internals
(checked by ``supported()`` when a viewer joins; without them the viewer gets
aiortc's plain path, see whep.PacketTrack):

- ``RTCRtpSender.send``: wrapped per sender, to learn the negotiated parameters
  (payload type, RTX, header extension ids, mid) aiortc starts its RTP task with;
- ``RTCRtpSender._RTCRtpSender__packet_count``, ``__octet_count``,
  ``__ntp_timestamp``, ``__rtp_timestamp``: what its sender reports (and
  ``getStats()``) say; updated once per frame;
- ``RTCRtpSender._retransmit``: replaced per sender, because the packets it would
  retransmit are in this module's history, not in aiortc's;
- ``RTCDtlsTransport._tx_srtp``: the SRTP session DTLS keyed;
- ``RTCIceTransport._connection._nominated``: aioice's selected candidate pair, whose
  ``StunProtocol.transport`` is the asyncio datagram transport aiortc sends on.

Not kept up to date: the DTLS transport's own byte and packet counts (its part of
``getStats()``), which nothing in the worker reads.

Written against aiortc 1.16 / aioice 0.13 (pyproject pins aiortc <2); the tests
check ``supported()`` so that an upgrade that moves these shows up as a failure,
not as a silent return to the slow path.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any

import aioice.ice
from aiortc import RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import convert_timebase
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.utils import random32
from av.packet import Packet

#: The sender's private counters its RTCP sender reports read.
_COUNTERS = ("packet_count", "octet_count", "ntp_timestamp", "rtp_timestamp")
#: Bytes waiting in a viewer's socket's asyncio buffer (the kernel's is full) before it
#: drops to the next keyframe: about a second of 720p. UDP seldom blocks; a stalled
#: viewer's packets are dropped by the network, not queued here.
MAX_BUFFERED = 384 * 1024
#: Packets each viewer's stream keeps for NACKs: about 4 s of 720p, 10 s of 360p. A
#: browser asks for a lost packet again every round trip until it comes (aiortc's
#: sender keeps 128, under half a second of 720p: a far viewer's second NACK came too
#: late). Cheap, for the payloads are the rendition's, shared by all its viewers: a
#: viewer's history holds its own headers only.
HISTORY_SIZE = 1024
#: NTP seconds between 1900 and the Unix epoch
_NTP_OFFSET = 2208988800


def supported(sender: RTCRtpSender) -> bool:
    """Whether this aiortc has the internals ``RtpStream`` relies on (module docstring)."""
    dtls = sender.transport
    return (
        all(hasattr(sender, f"_RTCRtpSender__{name}") for name in _COUNTERS)
        and callable(getattr(sender, "_retransmit", None))
        and hasattr(dtls, "_tx_srtp")
        and hasattr(getattr(dtls.transport, "_connection", None), "_nominated")
    )


def packetise(packet: Packet, encoder: H264Encoder | None) -> tuple[list[bytes], int]:
    """An encoded frame's RTP payloads and timestamp (in the codec's clock), once for all.

    ``encoder``: the rendition's aiortc ``H264Encoder`` (only its ``pack()``, which
    never encodes); None for Opus, whose packet is its one payload at 48 kHz.
    """
    if encoder is not None:
        return encoder.pack(packet)
    assert packet.pts is not None and packet.time_base is not None
    return [bytes(packet)], convert_timebase(packet.pts, packet.time_base, Fraction(1, 48000))


def h264_packetiser() -> H264Encoder:
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/h264", clockRate=90000))
    assert isinstance(encoder, H264Encoder)
    return encoder


def abs_send_time(now: float) -> int:
    """The abs-send-time header extension's value for wall-clock ``now`` (6.18 fixed point)."""
    return int((now + _NTP_OFFSET) * (1 << 18)) & 0x00FFFFFF


class RtpStream:
    """One viewer's RTP stream of one track, sent past aiortc's per-packet coroutines."""

    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender
        self.parameters: RTCRtpSendParameters | None = None
        self.retransmitted = 0
        self._sequence = random_sequence_number()
        self._origin = random32()
        self._rtx_sequence = random_sequence_number()
        self._extensions = HeaderExtensionsMap()
        self._payload_type = 0
        self._rtx_type: int | None = None
        #: sequence number % HISTORY_SIZE -> (sequence number, RTP header, payload)
        self._history: list[tuple[int, bytes, bytes] | None] = [None] * HISTORY_SIZE
        self._started = sender.send
        # NB: on the instance: RTCPeerConnection calls these through the sender it made.
        setattr(sender, "send", self._send_parameters)  # noqa: B010
        setattr(sender, "_retransmit", self._retransmit)  # noqa: B010

    async def _send_parameters(self, parameters: RTCRtpSendParameters) -> None:
        """aiortc starts the sender (its RTCP, and an RTP task that finds nothing to send)."""
        if self.parameters is None:
            self._extensions.configure(parameters)
            codec = parameters.codecs[0]
            assert codec.payloadType is not None  # negotiated: the answer has it
            self._payload_type = codec.payloadType
            for rtx in parameters.codecs:
                if rtx.mimeType.lower().endswith("/rtx") and (
                    rtx.parameters.get("apt") == codec.payloadType
                ):
                    self._rtx_type = rtx.payloadType
            self.parameters = parameters
        await self._started(parameters)

    @property
    def _ice(self) -> Any:
        """aioice's connection. NB: looked up each time: with BUNDLE, aiortc moves every
        sender after the first onto the first one's transports once the offer is applied."""
        return self.sender.transport.transport._connection

    @property
    def ready(self) -> bool:
        """Whether DTLS is up, aiortc has started the sender and ICE has chosen a pair."""
        return (
            self.parameters is not None
            and self.sender.transport.state == "connected"
            and self._ice._nominated.get(1) is not None
        )

    def backlog(self) -> int:
        """Bytes the asyncio transport holds because the socket would block."""
        pair = self._ice._nominated.get(1)
        transport = getattr(pair.protocol, "transport", None) if pair else None
        return transport.get_write_buffer_size() if transport is not None else 0

    def send(self, payloads: list[bytes], timestamp: int, send_time: int) -> None:
        """Send one frame's ``payloads`` (shared by every viewer) as consecutive packets.

        ``timestamp``: the frame's, in the codec clock (this stream adds its random
        origin); ``send_time``: abs-send-time, one value for the frame's packets, which
        leave within microseconds of each other.
        """
        assert self.parameters is not None
        sender, parameters = self.sender, self.parameters
        timestamp = (self._origin + timestamp) & 0xFFFFFFFF
        template = RtpPacket(
            payload_type=self._payload_type,
            sequence_number=self._sequence,
            timestamp=timestamp,
            ssrc=sender._ssrc,
        )
        template.extensions.abs_send_time = send_time
        template.extensions.mid = parameters.muxId
        header = bytearray(template.serialize(self._extensions))
        payload_type = self._payload_type
        protect = sender.transport._tx_srtp.protect
        sendto, address = self._route()
        history, sequence, last = self._history, self._sequence, len(payloads) - 1
        octets = 0
        for i, payload in enumerate(payloads):
            header[1] = payload_type | 0x80 if i == last else payload_type  # marker: frame end
            struct.pack_into("!H", header, 2, sequence)
            head = bytes(header)
            history[sequence % HISTORY_SIZE] = sequence, head, payload
            sendto(protect(head + payload), address)
            octets += len(payload)
            sequence = (sequence + 1) & 0xFFFF
        self._sequence = sequence
        # what aiortc's _run_rtp would have counted, for its sender reports
        sender._RTCRtpSender__packet_count += len(payloads)  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += octets  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__ntp_timestamp = _ntp_now()  # type: ignore[attr-defined]

    def _route(self) -> tuple[Callable[[bytes, Any], None], Any]:
        """``sendto`` and the address of the nominated pair: the datagram transport's own
        ``sendto`` when the pair is aioice's plain UDP protocol."""
        pair = self._ice._nominated[1]
        protocol, address = pair.protocol, pair.remote_addr
        transport = getattr(protocol, "transport", None)
        if isinstance(protocol, aioice.ice.StunProtocol) and transport is not None:
            return transport.sendto, address
        # any other protocol (a TURN relay: none is configured) keeps its own coroutine
        send: Callable[[bytes, Any], Awaitable[None]] = protocol.send_data
        return (lambda data, to: _background(send(data, to))), address

    async def _retransmit(self, sequence_number: int) -> None:
        """A NACK from the viewer: the packet again, from history, as RTX if negotiated."""
        kept = self._history[sequence_number % HISTORY_SIZE]
        if kept is None or kept[0] != sequence_number:
            return  # older than the history: the viewer waits for the next keyframe
        if not self.ready:
            return
        plain = kept[1] + kept[2]
        if self._rtx_type is not None:
            rtx = wrap_rtx(
                RtpPacket.parse(plain, self._extensions),
                payload_type=self._rtx_type,
                sequence_number=self._rtx_sequence,
                ssrc=self.sender._rtx_ssrc,
            )
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
            plain = rtx.serialize(self._extensions)
        sendto, address = self._route()
        sendto(self.sender.transport._tx_srtp.protect(plain), address)
        self.retransmitted += 1


def _ntp_now() -> int:
    """NTP time as aiortc's sender reports carry it (64-bit fixed point)."""
    return int((time.time() + _NTP_OFFSET) * (1 << 32))


#: sends in flight on a non-UDP pair: held, for asyncio keeps only weak references to tasks
_pending: set[asyncio.Future[None]] = set()


def _background(coroutine: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coroutine)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
