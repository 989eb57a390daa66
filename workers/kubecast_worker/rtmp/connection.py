"""One RTMP connection: handshake, the connect/publish conversation, then media.

The connection speaks the protocol; whether an app, a key or a second publisher is
acceptable is decided by its :class:`Admission` (the server), which also counts and logs
the decision. Exceptions leaving :meth:`RtmpConnection.run` say how the peer misbehaved;
a publisher that simply leaves makes ``run`` return normally.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

from kubecast_worker.rtmp import amf0, flv, handshake, messages
from kubecast_worker.rtmp.chunks import MAX_MESSAGE_SIZE, ChunkParser, ChunkWriter
from kubecast_worker.rtmp.errors import ProtocolError
from kubecast_worker.rtmp.messages import Message
from kubecast_worker.rtmp.session import PublishSession

READ_SIZE = 64 * 1024
# Before publish only small commands are legitimate (a connect is a few hundred bytes);
# the full 16 MiB a message header can announce is allowed to a publisher only.
COMMAND_PHASE_MAX_MESSAGE = 64 * 1024
# What we ask of the peer: ack every 2.5 MB (the value FMS, nginx-rtmp and ffmpeg use).
WINDOW_SIZE = 2_500_000
OUT_CHUNK_SIZE = 4096
# Unsent replies (pings, createStream, acknowledgements) beyond which we wait for the peer
# to read them before reading more from it: a peer that asks and never reads would
# otherwise grow our write buffer by what it sends (5 MB in 3 s on one connection, in
# tests/unit/test_rtmp_server.py).
OUT_BUFFER_LIMIT = 256 * 1024
CLOSE_TIMEOUT = 2.0
_KNOWN_COMMANDS = frozenset(
    {"createStream", "publish", "releaseStream", "FCPublish", "FCUnpublish", "deleteStream",
     "closeStream", "play", "play2", "_checkbw", "getStreamLength"}
)  # fmt: skip


class Refused(Exception):
    """The peer was told no (app, key, or busy) and the connection ends.

    The admission already counted and logged the decision; ``reason`` is for callers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Admission(Protocol):
    def check_app(self, *, peer: str, app: str) -> str | None:
        """None to accept the app, else the refusal reason."""

    def open_session(
        self, *, connection: RtmpConnection, app: str, stream_key: str
    ) -> PublishSession | str:
        """A new session for an accepted publish, else the refusal reason."""

    def session_started(self, session: PublishSession) -> None:
        """Publish.Start went out; hand the session to its consumer."""

    def session_ended(self, session: PublishSession) -> None:
        """The publisher is gone; the slot is free again."""


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float  # for the handshake, and again for connect..publish
    idle_timeout: float  # a publisher silent this long is gone (think half-open TCP)
    reader_stall_timeout: float  # a reader that takes nothing this long drops the publisher
    flv_high_water: int  # stop reading the socket above this many unread FLV bytes
    max_message_size: int = MAX_MESSAGE_SIZE


def normalize_app(app: Any) -> str:
    """``live``, ``/live/`` and ``live?token=x`` are all the app ``live``."""
    if not isinstance(app, str):
        return ""
    return app.split("?", 1)[0].strip("/")


def format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address or "unknown")


class RtmpConnection:
    def __init__(
        self,
        *,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        admission: Admission,
        limits: Limits,
    ) -> None:
        self.peer = peer
        self.phase = "handshake"  # then "connect" (connect..publish), then "media"
        self.session: PublishSession | None = None
        self.end_reason: str | None = None
        self.dropped = False  # by us (drop()), so what follows is not the peer's fault
        self._reader = reader
        self._writer = writer
        self._admission = admission
        self._limits = limits
        self._parser = ChunkParser(max_message_size=COMMAND_PHASE_MAX_MESSAGE)
        self._chunks_out = ChunkWriter()
        self._app: str | None = None
        self._next_stream_id = 1
        self._stream_id = 0  # the message stream being published
        self._flv_started = False
        self._unpublished = False  # FCUnpublish/deleteStream came: waiting for the peer to close
        self._ack_window = 0  # set by the peer's Window Acknowledgement Size
        self._bytes_in = 0
        self._unacked = 0

    async def run(self) -> None:
        async with asyncio.timeout(self._limits.handshake_timeout):
            await handshake.accept(self._reader, self._writer)
        self.phase = "connect"
        loop = asyncio.get_running_loop()
        # One deadline for the whole conversation up to publish, so that a peer trickling
        # valid commands (slowloris) cannot keep a connection slot forever.
        deadline = loop.time() + self._limits.handshake_timeout
        while self.end_reason is None:
            if self.session is None:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise TimeoutError()
            else:
                timeout = CLOSE_TIMEOUT if self._unpublished else self._limits.idle_timeout
            try:
                data = await asyncio.wait_for(self._reader.read(READ_SIZE), timeout)
            except TimeoutError:
                if self.session is None:
                    raise
                self._end("publisher_left" if self._unpublished else "idle_timeout")
                break
            except ConnectionError:
                if self.session is None and self.end_reason is None:
                    raise
                self._end("publisher_left" if self._unpublished else "connection_lost")
                break
            if not data:
                if self.session is None and self.end_reason is None:
                    raise ProtocolError("connection closed before publishing")
                self._end("publisher_left")
                break
            self._bytes_in += len(data)
            self._parser.append(data)
            while self.end_reason is None and (message := self._parser.next_message()) is not None:
                await self._on_message(message)
            self._acknowledge(len(data))
            if self._writer.transport.get_write_buffer_size() > OUT_BUFFER_LIMIT:
                # Stop reading until the peer reads; before publish, within the deadline.
                wait = max(0.0, deadline - loop.time()) if self.session is None else None
                await self._flush(wait)
            if self.session is not None and self.end_reason is None:
                await self._keep_up_with_reader(self.session)

    def drop(self, reason: str) -> None:
        """End the connection now (on the loop): the consumer or the server wants it gone."""
        self.dropped = True
        self._end(reason)
        if self.session is not None:
            self.session.flv.finish()  # wakes a pending drained()
        self._writer.transport.abort()  # wakes a pending read()

    async def close(self, *, graceful: bool) -> None:
        """Close the socket (flushing a refusal when ``graceful``) and end the session."""
        transport = self._writer.transport
        if graceful and not transport.is_closing():
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError):
                transport.abort()
        else:
            transport.abort()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        session = self.session
        if session is not None and not session.closed:
            if session.close_reason is None:
                session.close_reason = self.end_reason or "protocol_error"
            # NB: free the slot before waking wait_closed(), so a waiter can republish.
            self._admission.session_ended(session)
            session._mark_closed(session.close_reason)

    # -- messages ---------------------------------------------------------------------------

    async def _on_message(self, message: Message) -> None:
        kind = message.type_id
        if kind in (messages.AUDIO, messages.VIDEO):
            self._on_media(kind, message.timestamp, message.payload, message.stream_id)
        elif kind == messages.DATA_AMF0:
            self._on_data(message.payload, message.timestamp, message.stream_id)
        elif kind == messages.DATA_AMF3:
            # AMF3 data messages carry a format byte before plain AMF0 values.
            self._on_data(message.payload[1:], message.timestamp, message.stream_id)
        elif kind == messages.COMMAND_AMF0:
            await self._on_command(message.payload, message.stream_id)
        elif kind == messages.COMMAND_AMF3:
            await self._on_command(message.payload[1:], message.stream_id)
        elif kind == messages.AGGREGATE:
            self._on_aggregate(message)
        elif kind == messages.WINDOW_ACK_SIZE and len(message.payload) >= 4:
            self._ack_window = int.from_bytes(message.payload[:4], "big")
        elif (
            kind == messages.USER_CONTROL
            and len(message.payload) >= 6
            and int.from_bytes(message.payload[:2], "big") == messages.PING_REQUEST
        ):
            value = int.from_bytes(message.payload[2:6], "big")
            self._send(messages.user_control(messages.PING_RESPONSE, value))
        # Everything else (Acknowledgement, Set Peer Bandwidth, and the Set Chunk Size and
        # Abort the parser applied already) needs nothing from us.

    def _on_media(self, kind: int, timestamp: int, payload: bytes, stream_id: int) -> None:
        if self.session is None or stream_id != self._stream_id or not payload:
            return  # NB: empty audio/video messages exist (OBS at start); FLV has no use for them
        self.session.bytes_received += len(payload)
        self._emit(kind, timestamp, payload)  # RTMP message types 8/9 are FLV tag types 8/9

    def _on_data(self, payload: bytes, timestamp: int, stream_id: int) -> None:
        if self.session is None or stream_id != self._stream_id:
            return
        body = flv.metadata_body(payload)
        if body is None:
            return  # onTextData, onCuePoint...: not needed downstream
        self.session.metadata = flv.decode_metadata(body)
        self._emit(flv.TAG_SCRIPT, timestamp, body)

    def _on_aggregate(self, message: Message) -> None:
        if self.session is None or message.stream_id != self._stream_id:
            return
        for tag_type, timestamp, body in flv.split_aggregate(message.payload, message.timestamp):
            if tag_type in (flv.TAG_AUDIO, flv.TAG_VIDEO):
                self._on_media(tag_type, timestamp, body, message.stream_id)
            elif tag_type == flv.TAG_SCRIPT:
                self._on_data(body, timestamp, message.stream_id)

    def _emit(self, tag_type: int, timestamp: int, body: bytes) -> None:
        assert self.session is not None
        pipe = self.session.flv
        if not self._flv_started:
            # The header waits for the first tag so that it can announce only the streams
            # the metadata (usually the first tag) says exist.
            audio, video = flv.flags_from_metadata(self.session.metadata)
            pipe.feed(flv.header(audio=audio, video=video))
            self._flv_started = True
        pipe.feed(flv.tag(tag_type, timestamp, body))

    # -- commands ---------------------------------------------------------------------------

    async def _on_command(self, payload: bytes, stream_id: int) -> None:
        values = amf0.decode(payload)
        if not values or not isinstance(values[0], str):
            raise ProtocolError("command message without a command name")
        name = values[0]
        transaction = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[2:]  # args[0] is the command object, usually null
        if name == "connect":
            await self._on_connect(transaction, args)
            return
        if self._app is None:
            # NB: only names we know go into the log line; the rest is the peer's free text.
            shown = repr(name) if name in _KNOWN_COMMANDS else "a command"
            raise ProtocolError(f"{shown} before connect")
        if name == "createStream":
            stream = self._next_stream_id
            self._next_stream_id += 1
            self._send(messages.command("_result", transaction, None, float(stream)))
        elif name == "publish":
            await self._on_publish(args, stream_id)
        elif name in ("releaseStream", "FCPublish"):
            # Adobe leftovers that publishers send before publishing; they only want an
            # answer (FMS sends one, ffmpeg and librtmp ignore it).
            if transaction:
                self._send(messages.command("_result", transaction, None, amf0.UNDEFINED))
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.session is not None and not self._unpublished:
                # The media ends now; the socket stays open until the peer closes it (at
                # most CLOSE_TIMEOUT). NB: closing it first made GStreamer's rtmp2sink,
                # which sends these at end of stream and then hangs up, end every publish
                # with "Connection error: connection closed remotely" and exit status 1.
                self._unpublished = True
                self.session.flv.finish()
        elif name in ("play", "play2"):
            raise ProtocolError("play requested on the ingest port, which only takes publishers")
        # Anything else (_checkbw, getStreamLength, ...) is harmless and ignored.

    async def _on_connect(self, transaction: float, args: list[Any]) -> None:
        if self._app is not None:
            raise ProtocolError("second connect on one connection")
        properties = args[0] if args and isinstance(args[0], dict) else {}
        app = normalize_app(properties.get("app"))
        refusal = self._admission.check_app(peer=self.peer, app=app)
        if refusal is not None:
            info = {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": "Unknown application; check the app part of the ingest URL.",
            }
            self._send(messages.command("_error", transaction, None, info))
            await self._flush()
            raise Refused(refusal)
        self._app = app
        self._send(
            messages.window_ack_size(WINDOW_SIZE),
            messages.set_peer_bandwidth(WINDOW_SIZE),
            messages.set_chunk_size(OUT_CHUNK_SIZE),
            messages.command(
                "_result",
                transaction,
                {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                {
                    "level": "status",
                    "code": "NetConnection.Connect.Success",
                    "description": "Connection succeeded.",
                    "objectEncoding": 0.0,
                },
            ),
        )
        await self._flush()

    async def _on_publish(self, args: list[Any], stream_id: int) -> None:
        assert self._app is not None
        if self.session is not None:
            raise ProtocolError("second publish on one connection")
        name = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        # OBS and ffmpeg pass anything after "?" in the key field through (bandwidth tests,
        # tokens for other services); the key is what comes before it.
        key = name.split("?", 1)[0]
        result = self._admission.open_session(connection=self, app=self._app, stream_key=key)
        if isinstance(result, str):
            # NB: publishers tell their user what the code means, not the description:
            # GStreamer shows BadName as "stream already exists" and Denied as "publish
            # denied", and librtmp (OBS) gives up on Denied. So BadName only when busy.
            if result == "busy":
                code = "NetStream.Publish.BadName"
                description = (
                    "Another publisher is live on this stream; try again when it has stopped."
                )
            else:
                code = "NetStream.Publish.Denied"
                description = "Stream key refused; check the stream key."
            self._send(
                messages.on_status(
                    stream_id=stream_id, level="error", code=code, description=description
                )
            )
            await self._flush()
            raise Refused(result)
        self.session = result
        self._stream_id = stream_id
        self.phase = "media"
        self._parser.max_message_size = self._limits.max_message_size
        self._parser.max_pending_bytes = 2 * self._limits.max_message_size
        self._send(
            messages.user_control(messages.STREAM_BEGIN, stream_id),
            messages.on_status(
                stream_id=stream_id,
                level="status",
                code="NetStream.Publish.Start",
                description="Publishing.",
            ),
        )
        await self._flush()
        self._admission.session_started(result)

    # -- flow -------------------------------------------------------------------------------

    async def _keep_up_with_reader(self, session: PublishSession) -> None:
        """Apply backpressure while the FLV reader is behind; drop it if it stopped.

        Waiting here stops us reading the socket, so TCP pushes the backlog back to the
        publisher, whose own congestion handling (OBS drops frames at GOP boundaries)
        does better than we could by cutting tags out of the middle of a GOP. A reader
        that takes nothing at all for ``reader_stall_timeout`` is not coming back, and
        holding the publisher would only hide that, so the publisher is dropped.
        """
        pipe = session.flv
        high = self._limits.flv_high_water
        if pipe.buffered > high:
            while not (pipe.finished or pipe.closed):
                before = pipe.read_total
                low = high // 2
                if await pipe.drained(low_water=low, timeout=self._limits.reader_stall_timeout):
                    break
                if pipe.read_total == before:
                    self._end("reader_stalled")
                    return
        if pipe.closed:
            self._end("reader_closed")

    def _acknowledge(self, received: int) -> None:
        self._unacked += received
        if self._ack_window and self._unacked >= self._ack_window:
            self._send(messages.acknowledgement(self._bytes_in))
            self._unacked = 0

    def _send(self, *outgoing: Message) -> None:
        parts = []
        for message in outgoing:
            parts.append(self._chunks_out.encode(message))
            if message.type_id == messages.SET_CHUNK_SIZE:
                # Applies to every chunk after this message, on all chunk streams.
                self._chunks_out.chunk_size = int.from_bytes(message.payload, "big")
        self._writer.write(b"".join(parts))

    async def _flush(self, timeout: float | None = None) -> None:
        """Wait until the peer has taken what we wrote (``timeout``: the handshake's)."""
        if timeout is None:
            timeout = self._limits.handshake_timeout
        await asyncio.wait_for(self._writer.drain(), timeout)

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
