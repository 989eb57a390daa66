"""WHIP ingest (RFC 9725): publishers that speak WebRTC (browsers, OBS 30+, GStreamer's whipsink).

The worker's ingest port, when ``ingest.protocol`` is ``whip``, is an HTTP server
of its own (not the playback port, which viewers and a CDN reach; not the admin
port, which only the operator does): the ingest Service exposes it as it exposes
the RTMP port, and a publisher that has the stream key reaches it there.

    POST   /whip/<app>        Authorization: Bearer <stream key>, an SDP offer
                              → 201 Created, Location, the SDP answer
    DELETE /whip/<app>/<id>   ends the session (the Location of the POST)
    PATCH  /whip/<app>/<id>   405: no trickle ICE; the answer carries every candidate
    OPTIONS                   CORS preflight, for a publishing page on another origin

Refusals are counted like the RTMP front's (the same counter names): a wrong or
missing key is 401 (``refused_wrong_key``, limited per address like RTMP's, then
429 ``refused_rate_limited``), another app 404 (``refused_unknown_app``), a second
publisher while one is live 409 (``refused_busy``), an offer that is no SDP or has
no video 400/415 (``protocol_errors``). The key is compared in constant time and
never logged.

The media: aiortc (on the event loop) terminates ICE, DTLS and SRTP, depacketises
and decodes H.264 or VP8 video and Opus audio in its own decoder threads. Its
decoded frames are handed to the session's ingest thread through a queue
(``FrameQueue``, read by ``ingest_frames.FrameSource``), and from there they take
the same path as an RTMP publisher's: the ladder, the packager. Nothing is re-muxed.

Opus audio is also kept as it arrived, for WHEP viewers (``opus_sink``): aiortc
hands its tracks' readers decoded frames only, so ``OpusTap`` takes the place of
the audio receiver's decoder queue and passes on each Opus packet the jitter buffer
releases (in order, without duplicates, RTX unwrapped, its timestamp counted from
0) before the decoder thread sees it. Viewers then hear the publisher's own Opus,
not a second encode of its decoded audio; the cost is aiortc's audio prefetch
(4 packets, 80 ms), the same delay the decoded path has.

A publisher that leaves without DELETE ends its session when its peer connection
fails or closes (ICE consent, a DTLS close), or when no media arrives for
``media_timeout`` seconds (a killed browser sends nothing at all: ICE consent
would take about 30 s to notice, the media timeout notices first).

ICE: see webrtc_ice.py (no STUN or TURN; host candidates on the listen address;
ephemeral UDP ports), and docs/webrtc.md for what that means in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import queue
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kubecast_worker import webrtc_ice
from kubecast_worker.front_counters import IngestCounters
from kubecast_worker.rtmp.throttle import WrongKeyLimit, WrongKeyThrottle

#: Seconds without a decoded frame after which a publisher is taken as gone.
DEFAULT_MEDIA_TIMEOUT = 5.0
#: Decoded frames waiting for the ingest thread; past this the newest are dropped
#: (about 5 s of 30 fps video and 50/s Opus): a stuck pipeline must not grow memory.
QUEUE_FRAMES = 400
#: Seconds a peer connection may take from the answer to ICE + DTLS connected.
CONNECT_TIMEOUT = 15.0
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
    "Access-Control-Max-Age": "86400",
}

Kind = Literal["video", "audio"]
#: Where a WHIP publisher's Opus packets go as they arrive: (packet, RTP timestamp at
#: 48 kHz, counted from the session's first); called on the event loop.
OpusSink = Callable[[bytes, int], None]
#: What the queue carries: a decoded frame with its kind and arrival time, or END.
END = None


class FrameQueue:
    """Decoded frames from the event loop to the session's ingest thread.

    ``put`` runs on the loop, ``get`` in the ingest thread (queue.Queue is both
    thread-safe and non-blocking to put into). ``END`` ends the stream.
    """

    def __init__(self, *, video_codec: str, has_audio: bool, audio_codec: str = "opus") -> None:
        self.video_codec = video_codec
        self.has_audio = has_audio
        self.audio_codec = audio_codec
        self.dropped = 0
        #: set by the reader when nothing came for its media timeout (why the session ends)
        self.silent = False
        self._queue: queue.Queue[tuple[Kind, Any, float] | None] = queue.Queue(QUEUE_FRAMES)
        self._ended = False

    def put(self, kind: Kind, frame: Any) -> None:
        if self._ended:
            return
        try:
            self._queue.put_nowait((kind, frame, time.time()))
        except queue.Full:
            self.dropped += 1

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        while True:  # END must get in: make room for it
            try:
                self._queue.put_nowait(END)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def get(self, timeout: float) -> tuple[Kind, Any, float] | None:
        """The next item, ``END`` at the end; raises ``queue.Empty`` after ``timeout``."""
        return self._queue.get(timeout=timeout)


class OpusTap(queue.Queue[Any]):
    """An aiortc audio receiver's decoder queue that also gives ``sink`` each Opus packet.

    aiortc's receiver puts ``(codec, JitterFrame)`` here on the event loop, and its
    decoder thread gets them; ``None`` ends the thread. An Opus frame from the jitter
    buffer is exactly one RTP payload, which is one Opus packet (RFC 7587).
    """

    def __init__(self, sink: OpusSink) -> None:
        super().__init__()
        self.sink = sink

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            if codec.name.lower() == "opus" and frame.data:
                self.sink(frame.data, frame.timestamp)
        super().put(item, block, timeout)

    @staticmethod
    def install(pc: RTCPeerConnection, sink: OpusSink) -> bool:
        """Put a tap in place of ``pc``'s audio decoder queue, before its media starts.

        NB: aiortc's private attribute (the receiver hands it to its decoder thread when
        the connection is up, so swapping it now is safe). Without it, False: the
        viewers get the decoded audio encoded again, as for an RTMP publisher.
        """
        receiver = next((t.receiver for t in pc.getTransceivers() if t.kind == "audio"), None)
        name = "_RTCRtpReceiver__decoder_queue"
        if receiver is None or not isinstance(getattr(receiver, name, None), queue.Queue):
            return False
        setattr(receiver, name, OpusTap(sink))
        return True


@dataclass
class WhipSession:
    """One accepted publisher: its peer connection and the frames it sends."""

    id: str
    peer: str
    pc: RTCPeerConnection
    frames: FrameQueue
    media_timeout: float
    started_at: float = field(default_factory=time.time)
    close_reason: str | None = None
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)
    _readers: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _on_end: Any = field(default=None, repr=False)

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def close(self, reason: str = "closed_by_consumer") -> None:
        """End the session (on the event loop): the frames end, the connection closes."""
        if self._closing is not None:
            return
        if reason == "closed_by_consumer" and self.frames.silent:
            reason = "no_media"  # the ingest thread gave up on it: say so
        self.close_reason = reason
        self.frames.end()
        for reader in self._readers:
            reader.cancel()
        self._closing = asyncio.ensure_future(self.pc.close())
        if self._on_end is not None:
            self._on_end(self)


class WhipIngest:
    """The WHIP front: one publisher at a time, with the right key, on ``host:port``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        app: str,
        stream_key: str,
        wrong_key_limit: WrongKeyLimit | None = None,
        media_timeout: float = DEFAULT_MEDIA_TIMEOUT,
        opus_sink: OpusSink | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if not stream_key:
            raise ValueError("stream_key is empty; an empty key would let anyone publish")
        self.host, self.port, self.app = host, port, app.strip("/")
        self.media_timeout = media_timeout
        self.opus_sink = opus_sink
        self._warned_no_tap = False
        self.counters = IngestCounters()
        self.throttle = WrongKeyThrottle(wrong_key_limit or WrongKeyLimit())
        self.current: WhipSession | None = None
        self._key = stream_key.encode("utf-8")
        self._log = log or logging.getLogger("kubecast.whip")
        self._accepted: asyncio.Queue[WhipSession] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._pending: set[RTCPeerConnection] = set()
        webrtc_ice.only_addresses(host)

    @property
    def url(self) -> str:
        """Where publishers POST their offer (no key: it travels in the header)."""
        return f"http://{self.host}:{self.port}/whip/{self.app}"

    def rotate_key(self, stream_key: str) -> None:
        """Accept ``stream_key`` from the next publish on; a live publisher stays."""
        if not stream_key:
            raise ValueError("stream_key is empty; an empty key would let anyone publish")
        self._key = stream_key.encode("utf-8")

    async def start(self) -> None:
        app = web.Application(middlewares=[_cors])
        app.router.add_post("/whip/{app}", self._post)
        app.router.add_delete("/whip/{app}/{id}", self._delete)
        app.router.add_patch("/whip/{app}/{id}", self._patch)
        app.router.add_route("OPTIONS", "/whip/{tail:.*}", _preflight)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self.current is not None:
            self.current.close("server_stopping")
        for pc in list(self._pending):
            await pc.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def accept(self) -> WhipSession:
        """The next accepted publisher (its answer sent, its media on the way)."""
        return await self._accepted.get()

    # -- HTTP ------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        peer = _peer(request)
        host = request.remote or peer
        if (wait := self.throttle.blocked_for(host)) > 0:
            self.counters.refused_rate_limited += 1
            return _text(429, "too many wrong stream keys\n", {"Retry-After": str(int(wait) + 1)})
        if request.match_info["app"] != self.app:
            self.counters.refused_unknown_app += 1
            # NB: the attempted app is not logged: a key pasted into the path is still a key.
            self._log.warning(
                "whip publish refused: unknown app",
                extra={"peer": peer, "reason": "unknown_app", "expected_app": self.app},
            )
            return _text(404, "unknown app\n")
        if not self._key_matches(request):
            self.counters.refused_wrong_key += 1
            self._log.warning(
                "whip publish refused: wrong stream key",
                extra={"peer": peer, "reason": "wrong_key"},
            )
            if self.throttle.wrong_key(host):
                limit = self.throttle.limit
                self._log.warning(
                    f"whip address refused for {limit.backoff:g} s after {limit.attempts}"
                    f" wrong stream key(s) within {limit.window:g} s",
                    extra={"peer": peer, "reason": "rate_limited", "backoff_s": limit.backoff},
                )
            return _text(401, "wrong or missing stream key\n", {"WWW-Authenticate": "Bearer"})
        self.throttle.right_key(host)
        if self.current is not None:
            self.counters.refused_busy += 1
            self._log.warning(
                "whip publish refused: another publisher is live",
                extra={"peer": peer, "reason": "busy", "live_peer": self.current.peer},
            )
            return _text(409, "another publisher is live\n")
        if request.content_type != "application/sdp":
            self.counters.protocol_errors += 1
            return _text(415, "the offer must be application/sdp\n")
        offer = await request.text()
        if "m=video" not in offer:
            self.counters.protocol_errors += 1
            return _text(400, "the offer has no video; kubecast needs video\n")
        try:
            session, answer = await self._answer(offer, peer=peer)
        except (ValueError, AssertionError) as e:  # what aiortc raises for an offer it cannot take
            self.counters.protocol_errors += 1
            self._log.warning("whip offer refused", extra={"peer": peer, "reason": str(e)})
            return _text(400, f"cannot answer the offer: {e}\n")
        if self.current is not None:  # another offer won the race while we answered
            session.close("busy")
            self.counters.refused_busy += 1
            return _text(409, "another publisher is live\n")
        self.current = session
        self.counters.accepted += 1
        self._log.info(
            "whip publisher accepted",
            extra={"peer": peer, "video": session.frames.video_codec,
                   "audio": session.frames.has_audio},
        )  # fmt: skip
        self._accepted.put_nowait(session)
        location = f"/whip/{self.app}/{session.id}"
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": location, "ETag": f'"{session.id}"'},
        )

    async def _delete(self, request: web.Request) -> web.Response:
        session = self.current
        if (
            session is None
            or request.match_info["app"] != self.app
            or not hmac.compare_digest(request.match_info["id"].encode(), session.id.encode())
        ):
            return _text(404, "no such session\n")
        session.close("publisher_left")
        return web.Response(status=200)

    async def _patch(self, request: web.Request) -> web.Response:
        # RFC 9725 §4.3.1: a session without trickle ICE or ICE restart answers 405.
        return _text(405, "trickle ICE and ICE restarts are not supported\n", {"Allow": "DELETE"})

    def _key_matches(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # Constant time, so the answer's timing does not leak how much of a guess was right.
        given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._key)

    # -- WebRTC ----------------------------------------------------------------------

    def _tap_opus(self, pc: RTCPeerConnection, sink: OpusSink) -> None:
        """Hand the publisher's Opus packets to WHEP as they arrive; warn once if we can't."""
        if OpusTap.install(pc, sink) or self._warned_no_tap:
            return
        self._warned_no_tap = True
        self._log.warning(
            "this aiortc has no audio decoder queue to tap: WHEP viewers get the"
            " publisher's audio decoded and encoded to Opus again"
        )

    async def _answer(self, offer: str, *, peer: str) -> tuple[WhipSession, str]:
        pc = RTCPeerConnection(webrtc_ice.configuration())
        self._pending.add(pc)
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate
        except BaseException:
            self._pending.discard(pc)
            await pc.close()
            raise
        self._pending.discard(pc)
        video = next((t for t in pc.getTransceivers() if t.kind == "video"), None)
        codec = _negotiated_codec(pc.localDescription.sdp, "video") or "unknown"
        audio = _negotiated_codec(pc.localDescription.sdp, "audio")
        frames = FrameQueue(
            video_codec=codec.lower(),
            has_audio=audio is not None,
            audio_codec=(audio or "none").lower(),
        )
        session = WhipSession(
            id=secrets.token_urlsafe(16),
            peer=peer,
            pc=pc,
            frames=frames,
            media_timeout=self.media_timeout,
            _on_end=self._ended,
        )
        assert video is not None, "no video transceiver"
        if self.opus_sink is not None and frames.audio_codec == "opus":
            self._tap_opus(pc, self.opus_sink)
        for track in tracks:
            session._readers.append(asyncio.create_task(_read(track, session)))

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                session.close(f"connection_{pc.connectionState}")

        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT, _connected_or_close, session)
        return session, pc.localDescription.sdp

    def _ended(self, session: WhipSession) -> None:
        if self.current is session:
            self.current = None
        expected = session.close_reason in ("publisher_left", "closed_by_consumer", "busy",
                                            "server_stopping")  # fmt: skip
        self._log.log(
            logging.INFO if expected else logging.WARNING,
            f"whip publisher gone: {session.close_reason}",
            extra={
                "peer": session.peer,
                "reason": session.close_reason,
                "duration_s": round(time.time() - session.started_at, 3),
                "frames_dropped": session.frames.dropped,
            },
        )


async def _read(track: MediaStreamTrack, session: WhipSession) -> None:
    """Decoded frames of one track into the session's queue, until the track ends."""
    kind: Kind = "video" if track.kind == "video" else "audio"
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        session.frames.put(kind, frame)


def _connected_or_close(session: WhipSession) -> None:
    if not session.closed and session.pc.connectionState != "connected":
        session.close("connect_timeout")


def _negotiated_codec(sdp: str, kind: str) -> str | None:
    """The first codec of the answer's ``kind`` section: what the publisher will send."""
    section = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            section = line.startswith(f"m={kind}")
        elif section and line.startswith("a=rtpmap:"):
            name = line.split(" ", 1)[1].split("/", 1)[0]
            if name.lower() not in ("rtx", "red", "ulpfec"):
                return name
    return None


def _peer(request: web.Request) -> str:
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return request.remote or "unknown"
    host, port = peername[0], peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


@web.middleware
async def _cors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as e:
        e.headers.update(CORS)
        raise
    response.headers.update(CORS)
    return response
