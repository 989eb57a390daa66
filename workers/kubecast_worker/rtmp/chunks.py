"""RTMP chunk streams: how messages are cut into chunks on the wire, and put back together.

The parser is sans-IO (bytes in, messages out) so it can be tested byte by byte without
sockets. It applies Set Chunk Size and Abort itself, because the very next chunk on the
wire may depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kubecast_worker.rtmp import messages
from kubecast_worker.rtmp.errors import ProtocolError
from kubecast_worker.rtmp.messages import Message

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF  # 31 bits: the top bit of Set Chunk Size must be zero
MAX_MESSAGE_SIZE: Final = 0xFFFFFF  # the message-length field has 24 bits
EXTENDED: Final = 0xFFFFFF  # this timestamp value means "the real one follows in 4 bytes"
# Chunk stream ids go up to 65599, and each one a peer opens costs us its state (about
# 230 bytes): 65536 of them, for 14 bytes of header each, held 15 MB per connection, and
# an unauthenticated peer may hold 32 connections for the handshake timeout. Publishers
# use a handful (ffmpeg's are 2 to 8); nginx-rtmp allows 32 (its max_streams).
MAX_CHUNK_STREAMS: Final = 64

_HEADER_SIZES: Final = (11, 7, 3, 0)


@dataclass(slots=True)
class _ChunkStream:
    """What a chunk stream remembers so that later chunk headers can leave it out."""

    timestamp: int = 0  # of the message in progress, or of the last one
    ts_field: int = 0  # the raw 24-bit field of the last type 0/1/2 header
    delta: int = 0  # what a type 3 header that starts a new message adds
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    partial: bytearray | None = None  # the message being reassembled


class ChunkParser:
    """Reassembles messages from the bytes a peer sends.

    ``max_message_size`` bounds one message; ``max_pending_bytes`` bounds the sum of all
    half-received messages, since a peer may interleave many chunk streams;
    ``max_chunk_streams`` bounds how many chunk streams there are. All turn an oversized
    or hostile stream into a :class:`ProtocolError` instead of memory growth.
    """

    def __init__(
        self, *, max_message_size: int = MAX_MESSAGE_SIZE, max_pending_bytes: int | None = None
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_pending_bytes = max_pending_bytes or 2 * max_message_size
        self.max_chunk_streams = MAX_CHUNK_STREAMS
        self._buffer = bytearray()
        self._pos = 0  # parsed up to here
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0

    @property
    def buffered(self) -> int:
        """Bytes received that do not make a whole chunk yet."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        """Take bytes from the wire; return the messages they complete, in order."""
        self.append(data)
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    def append(self, data: bytes) -> None:
        """Take bytes from the wire, to be parsed by :meth:`next_message`."""
        if self._pos and self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive.

        One message at a time, so that the caller can act on a message (a publish that
        raises ``max_message_size``) before the bytes after it are parsed.
        """
        while True:
            parsed = self._parse_chunk(self._pos)
            if parsed is None:
                if self._pos > 64 * 1024:  # now and then, not per chunk: it moves memory
                    del self._buffer[: self._pos]
                    self._pos = 0
                return None
            self._pos, message = parsed
            if message is not None:
                self._apply_control(message)
                return message

    def _parse_chunk(self, pos: int) -> tuple[int, Message | None] | None:
        """Parse one chunk at ``pos``; None when the buffer does not hold all of it yet.

        Nothing is committed to the chunk stream's state until the whole chunk is there,
        so a chunk split across reads is simply parsed again from its start.
        """
        buf = self._buffer
        end = len(buf)
        if pos >= end:
            return None
        fmt, csid = buf[pos] >> 6, buf[pos] & 0x3F
        p = pos + 1
        if csid == 0:
            if p + 1 > end:
                return None
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:
            if p + 2 > end:
                return None
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2
        header_size = _HEADER_SIZES[fmt]
        if p + header_size > end:
            return None

        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise ProtocolError(
                    f"chunk stream {csid} starts with a type {fmt} chunk header instead of 0"
                )
            if len(self._streams) >= self.max_chunk_streams:
                raise ProtocolError(f"more than {self.max_chunk_streams} chunk streams")
            stream = _ChunkStream()
        in_progress = stream.partial is not None
        if in_progress and fmt != 3:
            raise ProtocolError(
                f"type {fmt} chunk header on chunk stream {csid} before its message ended"
            )

        ts_field = stream.ts_field
        length, type_id, stream_id = stream.length, stream.type_id, stream.stream_id
        if fmt <= 2:
            ts_field = int.from_bytes(buf[p : p + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3 : p + 6], "big")
            type_id = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
        p += header_size

        ts_value = ts_field
        if ts_field == EXTENDED:
            # NB: type 3 chunks repeat the extended timestamp when the header they stand
            # for had one (spec 5.3.1.3; ffmpeg and librtmp write it so).
            if p + 4 > end:
                return None
            ts_value = int.from_bytes(buf[p : p + 4], "big")
            p += 4

        if not in_progress and length > self.max_message_size:
            raise ProtocolError(
                f"message of {length} bytes exceeds the limit of {self.max_message_size}"
            )
        received = len(stream.partial) if stream.partial is not None else 0
        take = min(self.chunk_size, length - received)
        if p + take > end:
            return None
        if self._pending + take > self.max_pending_bytes:
            raise ProtocolError("too many bytes in unfinished messages")

        # The whole chunk is here: commit.
        self._streams[csid] = stream
        if not in_progress:
            if fmt == 0:
                stream.timestamp = ts_value
            else:
                stream.timestamp = (stream.timestamp + ts_value) & 0xFFFFFFFF
            # NB: after a type 0 header the "delta" a type 3 header repeats is the absolute
            # timestamp field; that is how ffmpeg both writes and reads it.
            stream.delta = ts_value
            if fmt != 3:
                stream.ts_field = ts_field
            stream.length, stream.type_id, stream.stream_id = length, type_id, stream_id
            stream.partial = bytearray()
        assert stream.partial is not None
        stream.partial += buf[p : p + take]
        self._pending += take
        p += take
        if len(stream.partial) < length:
            return p, None
        payload = bytes(stream.partial)
        self._pending -= len(payload)
        stream.partial = None
        return p, Message(type_id, payload, stream.timestamp, stream_id, csid)

    def _apply_control(self, message: Message) -> None:
        if message.type_id == messages.SET_CHUNK_SIZE:
            if len(message.payload) < 4:
                raise ProtocolError("short Set Chunk Size message")
            size = int.from_bytes(message.payload[:4], "big") & MAX_CHUNK_SIZE
            if size < 1:
                raise ProtocolError("Set Chunk Size to zero")
            self.chunk_size = size
        elif message.type_id == messages.ABORT:
            if len(message.payload) < 4:
                raise ProtocolError("short Abort message")
            stream = self._streams.get(int.from_bytes(message.payload[:4], "big"))
            if stream is not None and stream.partial is not None:
                self._pending -= len(stream.partial)
                stream.partial = None


class ChunkWriter:
    """Cuts outgoing messages into chunks.

    Every message starts with a full (type 0) header: the server sends a handful of small
    messages, so header compression would buy nothing and cost a second state machine.
    """

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE

    def encode(self, message: Message) -> bytes:
        timestamp = message.timestamp & 0xFFFFFFFF
        extended = timestamp >= EXTENDED
        out = bytearray(_basic_header(0, message.csid))
        out += (EXTENDED if extended else timestamp).to_bytes(3, "big")
        out += len(message.payload).to_bytes(3, "big")
        out.append(message.type_id)
        out += message.stream_id.to_bytes(4, "little")
        ext = timestamp.to_bytes(4, "big") if extended else b""
        out += ext
        payload = memoryview(message.payload)
        out += payload[: self.chunk_size]
        continuation = _basic_header(3, message.csid) + ext
        for start in range(self.chunk_size, len(payload), self.chunk_size):
            out += continuation
            out += payload[start : start + self.chunk_size]
        return bytes(out)


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes(((fmt << 6) | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 64 <= csid <= 65599:
        return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))
    raise ValueError(f"chunk stream id {csid} is out of range 2..65599")
