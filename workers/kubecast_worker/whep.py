"""WHEP playback (the IETF WHEP draft): WebRTC viewers of a rendition, on the playback port.

    POST   /whep/<rendition>        an SDP offer (recvonly video, H.264; audio, Opus)
                                    → 201 Created, Location, the SDP answer
    DELETE /whep/<rendition>/<id>   ends the viewer's session
    PATCH  /whep/<rendition>/<id>   405: no trickle ICE
    OPTIONS                         CORS preflight (origin.WHEP_CORS)

Viewers share their rendition's one encode: the rendition thread hands each
H.264 packet it encoded to ``WhepHub.tap`` (before the HLS muxer sees it), the hub
packetises it for RTP once (aiortc's ``H264Encoder.pack``: packetisation only, never
an encode), and ``whep_send.RtpStream`` sends those payloads to each viewer in one
synchronous loop: a header per packet, SRTP, ``sendto``. So a viewer costs its
headers, SRTP and the datagrams, never an x264 encode nor a packetisation. aiortc's
``RTCRtpSender`` still runs each viewer's RTCP (sender reports, NACK, PLI).

If this aiortc lacks the internals ``whep_send`` relies on, a viewer gets aiortc's
own path instead (``PacketTrack``: ``recv()`` returns the ``av.Packet`` and
``RTCRtpSender`` packs it per viewer), which works the same for more CPU (about 1.5 times
the event loop's per viewer: docs/benchmarks.md).

A new viewer starts at the next keyframe once it is connected (within one GOP: the
ladder forces one every ``gopSeconds``); a viewer whose queue overflows (on the fast
path: its socket's buffer, a stalled link) drops to the next keyframe again rather
than send a broken picture.
Keyframe requests (PLI, FIR) are not forwarded: the encoder's GOP is fixed.

``/metrics`` reads ``WhepHub.counts()``: viewers per rendition now, sessions
started and ended (by reason), offers refused (by reason), and skips to a keyframe.

Audio: a viewer whose offer receives Opus gets the session's audio as Opus packets
shared like the video's. A WHIP publisher's Opus is passed on as it arrived
(``opus_packet``, from whip.OpusTap): no decode, no encode. Any other publisher's
audio (RTMP's AAC, SRT's, WHIP's G.711) is encoded to Opus once (``audio_tap``, in
the ingest thread, only while someone listens). ``/metrics`` counts the packets by
where they came from (``kubecast_whep_audio_packets_total{origin}``).
A rendition with B-frames would send frames out of presentation order, which
WebRTC receivers do not expect: WHEP wants a rendition without them (the
``ultrafast`` preset, or one made for WebRTC; docs/webrtc.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import aiortc
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.codec.context import CodecContext
from av.packet import Packet

from kubecast_worker import webrtc_ice, whep_send

#: Opus as WebRTC has it: 48 kHz stereo, 20 ms frames.
OPUS_RATE, OPUS_FRAME, OPUS_BITRATE = 48000, 960, 96000
OPUS_TIME_BASE = Fraction(1, OPUS_RATE)
#: Packets a viewer may have waiting (about 2 s at 30 fps) before it skips to a keyframe.
VIEWER_QUEUE = 60
#: Viewers per worker at most; more get 503 (each costs RTP and SRTP on the event loop).
DEFAULT_MAX_VIEWERS = 200
#: Seconds after a publisher's last Opus packet that its audio counts as passed on:
#: until then the decoded audio is not encoded again, so no viewer hears it twice.
PASSTHROUGH_HOLD = 1.0


@dataclass
class Encoded:
    """One encoded frame of a rendition (or Opus packet), for all its viewers."""

    packet: Packet
    #: its RTP payloads and timestamp (codec clock): packetised once (whep_send.packetise)
    payloads: list[bytes]
    timestamp: int
    #: abs-send-time for this delivery's packets
    send_time: int


class Feed(Protocol):
    """A viewer's video or audio: what the hub offers frames to."""

    skipped: int
    sent: int

    @property
    def retransmitted(self) -> int:
        """Packets sent again for the viewer's NACKs (0 on aiortc's path: it does not say)."""
        ...

    def offer(self, frame: Encoded, *, key: bool) -> None: ...
    def end(self) -> None: ...


class FastFeed:
    """The fast path: ``frame``'s shared payloads, straight to SRTP and the ICE pair."""

    def __init__(self, track: IdleTrack, stream: whep_send.RtpStream) -> None:
        self.track, self.stream = track, stream
        self.keyed = False
        self.skipped = 0
        self.sent = 0

    def offer(self, frame: Encoded, *, key: bool) -> None:
        """On the loop: send ``frame`` now, once this viewer is connected and has had a
        keyframe."""
        if not self.stream.ready:
            self.keyed = False  # not yet (or no longer) connected: start at a keyframe
            return
        if not self.keyed:
            if not key:
                return
            self.keyed = True
        if self.stream.backlog() > whep_send.MAX_BUFFERED:
            self.skipped += 1
            self.keyed = False  # the socket has stalled: start again at the next keyframe
            return
        self.stream.send(frame.payloads, frame.timestamp, frame.send_time)
        self.sent += 1

    @property
    def retransmitted(self) -> int:
        return self.stream.retransmitted

    def end(self) -> None:
        self.track.end()


class IdleTrack(MediaStreamTrack):
    """The fast path's track: aiortc's RTP task waits on it, for ``RtpStream`` sends the
    packets; it ends with the viewer, so that aiortc's task ends too."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    def end(self) -> None:
        self._ended.set()

    async def recv(self) -> Packet:
        await self._ended.wait()
        raise MediaStreamError


class PacketTrack(MediaStreamTrack):
    """aiortc's own path: a track whose ``recv()`` gives encoded packets (H.264 or Opus),
    which aiortc packs, per viewer, and does not encode."""

    def __init__(self, kind: str = "video") -> None:
        super().__init__()
        self.kind = kind
        self.keyed = False
        self.skipped = 0
        self.sent = 0
        self.retransmitted = 0
        self._queue: asyncio.Queue[Packet | None] = asyncio.Queue(VIEWER_QUEUE)

    def offer(self, frame: Encoded, *, key: bool) -> None:
        """On the loop: queue ``frame`` once this viewer has had a keyframe."""
        if not self.keyed:
            if not key:
                return
            self.keyed = True
        try:
            self._queue.put_nowait(frame.packet)
        except asyncio.QueueFull:
            self.skipped += 1
            self.keyed = False  # start again at the next keyframe
            while not self._queue.empty():
                self._queue.get_nowait()

    def end(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def recv(self) -> Packet:
        packet = await self._queue.get()
        if packet is None or self.readyState != "live":
            raise MediaStreamError
        self.sent += 1
        return packet


#: Why an offer was refused, for /metrics (a fixed set: never the rendition asked for,
#: which is whatever a client typed).
REFUSALS = ("not_playing", "full", "bad_offer")


@dataclass
class WhepCounts:
    """What /metrics shows of the viewers: a copy, taken on the loop."""

    viewers: dict[str, int]
    started: dict[str, int]
    #: (rendition, reason) -> sessions ended
    ended: dict[tuple[str, str], int]
    refused: dict[str, int]
    #: rendition -> times a viewer's queue overflowed and it waited for a keyframe again
    keyframe_skips: dict[str, int]
    #: rendition -> video packets sent again because a viewer reported them lost (NACK)
    retransmits: dict[str, int]
    #: origin -> Opus packets handed to listeners: "publisher" (a WHIP publisher's own,
    #: passed on) or "encoded" (the decoded audio encoded once for WHEP)
    audio_packets: dict[str, int]


@dataclass
class Viewer:
    id: str
    peer: str
    rendition: str
    pc: RTCPeerConnection
    track: Feed
    audio: Feed | None = None
    started_at: float = field(default_factory=time.time)


class WhepHub:
    """The viewers of every rendition, and the packets they share."""

    def __init__(
        self,
        *,
        host: str,
        offered: list[str],
        renditions: Callable[[], list[str]],
        max_viewers: int = DEFAULT_MAX_VIEWERS,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        #: the renditions the profile offers to WebRTC; ``renditions()``: those live now
        self.offered = offered
        self._renditions = renditions
        self.max_viewers = max_viewers
        self._log = log or logging.getLogger("kubecast.whep")
        self._loop: asyncio.AbstractEventLoop | None = None
        #: rendition -> viewers; changed on the loop only, read by rendition threads
        self._viewers: dict[str, dict[str, Viewer]] = {}
        self.served = 0
        self._started: dict[str, int] = {}
        self._ended: dict[tuple[str, str], int] = {}
        self._refused = dict.fromkeys(REFUSALS, 0)
        #: skips of viewers that have left; live viewers' are added in counts()
        self._skips: dict[str, int] = {}
        self._retransmits: dict[str, int] = {}
        #: the one Opus encoder (and its resampler), while anyone listens; ingest thread
        self._opus: tuple[AudioResampler, Any] | None = None
        #: monotonic time until which a publisher's own Opus is arriving (opus_packet)
        self._passthrough_until = 0.0
        self._audio_packets = {"publisher": 0, "encoded": 0}
        #: viewers who receive audio; kept on the loop, read by the ingest thread
        self.listening = 0
        #: rendition -> its RTP packetiser (aiortc's H264Encoder; pack() only)
        self._packetisers: dict[str, Any] = {}
        self._warned_plain = False
        self._closing: set[asyncio.Future[None]] = set()
        webrtc_ice.only_addresses(host)

    @property
    def viewers(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    def counts(self) -> WhepCounts:
        """On the loop (the admin port's /metrics handler): a copy for one scrape.

        Every rendition a viewer may join has a viewer count, 0 included, so that a
        dashboard shows the rendition before anyone watches it.
        """
        viewers = dict.fromkeys(self._renditions(), 0)
        skips, retransmits = dict(self._skips), dict(self._retransmits)
        for rendition, those in self._viewers.items():
            if those or rendition in viewers:
                viewers[rendition] = len(those)
            for viewer in those.values():
                skips[rendition] = skips.get(rendition, 0) + viewer.track.skipped
                retransmits[rendition] = retransmits.get(rendition, 0) + viewer.track.retransmitted
        return WhepCounts(
            viewers=viewers,
            started=dict(self._started),
            ended=dict(self._ended),
            refused=dict(self._refused),
            keyframe_skips=skips,
            retransmits=retransmits,
            audio_packets=dict(self._audio_packets),
        )

    def add_routes(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()  # built on the loop: origin.start()
        app.router.add_post("/whep/{rendition}", self._post)
        app.router.add_delete("/whep/{rendition}/{id}", self._delete)
        app.router.add_patch("/whep/{rendition}/{id}", self._patch)

    async def stop(self) -> None:
        for viewers in list(self._viewers.values()):
            for viewer in list(viewers.values()):
                await self._close(viewer, "server_stopping")

    # -- the rendition threads' side -------------------------------------------------------

    def tap(self, rendition: str, packets: list[Packet], extradata: bytes | None) -> None:
        """From a rendition thread, before its muxer: hand ``packets`` to its viewers.

        NB: copied here, in the calling thread, because the muxer rewrites a packet's
        timestamps as soon as this returns. Nothing is copied for a rendition nobody
        watches.
        """
        if not self._viewers.get(rendition) or self._loop is None:
            return
        items = []
        for packet in packets:
            data = bytes(packet)
            key = bool(packet.is_keyframe)
            if key and extradata and not _has_sps(data):
                data = bytes(extradata) + data  # a global-header encoder: SPS and PPS first
            items.append((data, packet.pts, packet.time_base, key))
        if items:
            self._loop.call_soon_threadsafe(self._deliver, rendition, items)

    def audio_tap(self, frame: AudioFrame) -> None:
        """From the ingest thread: encode the session's audio to Opus once, for every viewer.

        Only while a viewer listens and the publisher's own Opus is not being passed on
        (``opus_packet``); a new encoder starts when the first one joins.
        """
        if self._loop is None or time.monotonic() < self._passthrough_until or not self.listening:
            self._opus = None
            return
        if self._opus is None:
            codec = CodecContext.create("libopus", "w")
            codec.sample_rate, codec.layout, codec.format = OPUS_RATE, "stereo", "s16"
            codec.bit_rate = OPUS_BITRATE
            codec.time_base = OPUS_TIME_BASE
            resampler = AudioResampler(
                format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_FRAME
            )
            self._opus = (resampler, codec)
        resampler, codec = self._opus
        items = []
        for chunk in resampler.resample(frame):
            for packet in codec.encode(chunk):
                items.append((bytes(packet), packet.pts, packet.time_base))
        if items:
            self._loop.call_soon_threadsafe(self._deliver_audio, items, "encoded")

    def opus_packet(self, data: bytes, timestamp: int) -> None:
        """On the loop (whip.OpusTap): one Opus packet of a WHIP publisher, as it arrived,
        for every listener; ``timestamp`` at 48 kHz, from the session's first packet."""
        self._passthrough_until = time.monotonic() + PASSTHROUGH_HOLD
        if self._listeners():
            self._deliver_audio([(data, timestamp, OPUS_TIME_BASE)], "publisher")

    def _listeners(self) -> list[Viewer]:
        return [v for viewers in self._viewers.values() for v in viewers.values() if v.audio]

    def _deliver_audio(self, items: list[tuple[bytes, Any, Any]], origin: str) -> None:
        listeners = self._listeners()
        send_time = whep_send.abs_send_time(time.time())
        for data, pts, time_base in items:
            frame = _encoded(data, pts, time_base, None, send_time)
            for viewer in listeners:
                self._offer(viewer, viewer.audio, frame, key=True)
        if listeners:
            self._audio_packets[origin] += len(items)

    def _deliver(self, rendition: str, items: list[tuple[bytes, Any, Any, bool]]) -> None:
        viewers = list(self._viewers.get(rendition, {}).values())
        if not viewers:
            return
        packetiser = self._packetisers.get(rendition)
        if packetiser is None:
            packetiser = self._packetisers[rendition] = whep_send.h264_packetiser()
        send_time = whep_send.abs_send_time(time.time())
        for data, pts, time_base, key in items:
            # one frame for every viewer: packetised once; aiortc's pack() only reads it
            frame = _encoded(data, pts, time_base, packetiser, send_time)
            for viewer in viewers:
                self._offer(viewer, viewer.track, frame, key=key)

    def _offer(self, viewer: Viewer, feed: Feed | None, frame: Encoded, *, key: bool) -> None:
        """One viewer's part of a delivery: a viewer the send fails for is ended, not the
        others' deliveries."""
        if feed is None:
            return
        try:
            feed.offer(frame, key=key)
        except Exception:
            self._log.warning("whep send failed", exc_info=True, extra={"peer": viewer.peer})
            if viewer.id in self._viewers.get(viewer.rendition, {}):
                closing = asyncio.ensure_future(self._close(viewer, "send_failed"))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

    # -- HTTP ------------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        rendition = request.match_info["rendition"]
        if rendition not in self._renditions():
            return self._refuse("not_playing", 404, "no such rendition (or it is not live)\n")
        if self.viewers >= self.max_viewers:
            return self._refuse("full", 503, "this worker has as many WebRTC viewers as it takes\n")
        if request.content_type != "application/sdp":
            return self._refuse("bad_offer", 415, "the offer must be application/sdp\n")
        offer = await request.text()
        if "m=video" not in offer or "H264/90000" not in offer:
            return self._refuse("bad_offer", 400, "the offer must receive H.264 video\n")
        peer = request.remote or "unknown"
        pc = RTCPeerConnection(webrtc_ice.configuration())
        # NB: the transceiver before the offer, so that the offer's video section takes it
        # with its H.264-only preference: codecs are negotiated as the offer is applied,
        # and a preference set afterwards would leave the sender labelling H.264 as VP8.
        track, transceiver = self._feed(pc, "video")
        audio = None
        if "m=audio" in offer and "opus/48000" in offer.lower():
            audio, _ = self._feed(pc, "audio")
        transceiver.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() == "video/h264"
                and c.parameters.get("packetization-mode") == "1"
            ]
        )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate
        except (ValueError, AssertionError) as e:
            await pc.close()
            return self._refuse("bad_offer", 400, f"cannot answer the offer: {e}\n")
        viewer = Viewer(
            id=secrets.token_urlsafe(16),
            peer=peer,
            rendition=rendition,
            pc=pc,
            track=track,
            audio=audio,
        )

        @pc.on("connectionstatechange")
        async def changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(viewer, f"connection_{pc.connectionState}")

        self._viewers.setdefault(rendition, {})[viewer.id] = viewer
        self.listening += viewer.audio is not None
        self.served += 1
        self._started[rendition] = self._started.get(rendition, 0) + 1
        self._log.info(
            "whep viewer joined",
            extra={"peer": peer, "rendition": rendition, "viewers": self.viewers},
        )
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whep/{rendition}/{viewer.id}", "ETag": f'"{viewer.id}"'},
        )

    async def _delete(self, request: web.Request) -> web.Response:
        viewers = self._viewers.get(request.match_info["rendition"], {})
        viewer = viewers.get(request.match_info["id"])
        if viewer is None:
            return _text(404, "no such session\n")
        await self._close(viewer, "viewer_left")
        return web.Response(status=200)

    def _feed(self, pc: RTCPeerConnection, kind: str) -> tuple[Feed, Any]:
        """A sendonly transceiver of ``kind``, and the feed that sends on it: the fast path
        (whep_send) when this aiortc has what it needs, else aiortc's own."""
        idle = IdleTrack(kind)
        transceiver = pc.addTransceiver(idle, direction="sendonly")
        if whep_send.supported(transceiver.sender):
            return FastFeed(idle, whep_send.RtpStream(transceiver.sender)), transceiver
        if not self._warned_plain:
            self._warned_plain = True
            self._log.warning(
                "whep: this aiortc lacks what the fast send path uses; viewers cost more",
                extra={"aiortc": aiortc.__version__},
            )
        plain = PacketTrack(kind)
        transceiver.sender.replaceTrack(plain)
        return plain, transceiver

    def _refuse(self, reason: str, status: int, text: str) -> web.Response:
        self._refused[reason] += 1
        return _text(status, text)

    async def _patch(self, request: web.Request) -> web.Response:
        return _text(405, "trickle ICE and ICE restarts are not supported\n", {"Allow": "DELETE"})

    async def _close(self, viewer: Viewer, reason: str) -> None:
        viewers = self._viewers.get(viewer.rendition, {})
        if viewers.pop(viewer.id, None) is None:
            return
        self.listening -= viewer.audio is not None
        ended = (viewer.rendition, reason)
        self._ended[ended] = self._ended.get(ended, 0) + 1
        self._skips[viewer.rendition] = self._skips.get(viewer.rendition, 0) + viewer.track.skipped
        self._retransmits[viewer.rendition] = (
            self._retransmits.get(viewer.rendition, 0) + viewer.track.retransmitted
        )
        viewer.track.end()
        if viewer.audio is not None:
            viewer.audio.end()
        self._log.info(
            f"whep viewer left: {reason}",
            extra={
                "peer": viewer.peer,
                "rendition": viewer.rendition,
                "seconds": round(time.time() - viewer.started_at, 3),
                "skipped_to_keyframe": viewer.track.skipped,
                "frames_sent": viewer.track.sent,
                "viewers": self.viewers,
            },
        )
        await viewer.pc.close()


def _encoded(data: bytes, pts: Any, time_base: Any, packetiser: Any, send_time: int) -> Encoded:
    packet = Packet(data)
    packet.pts, packet.time_base = pts, time_base
    payloads, timestamp = whep_send.packetise(packet, packetiser)
    return Encoded(packet, payloads, timestamp, send_time)


def _has_sps(data: bytes) -> bool:
    """Whether Annex B ``data`` has a sequence parameter set (NAL type 7)."""
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        if data[i + 3] & 0x1F == 7:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)
