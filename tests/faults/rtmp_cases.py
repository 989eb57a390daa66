"""Malformed RTMP sessions from a seeded generator, and the client that plays them.

A :class:`Case` is what one TCP connection sends: optionally a real handshake first, then
bytes, pauses and byte-by-byte trickles. ``end`` says what the client does afterwards:
``"eof"`` half-closes (the worker must notice and hang up) and ``"wait"`` keeps the
socket open, so that only the worker can end it (it must, by itself: on a refusal or a
protocol error at once, for a stall at its handshake timeout). Either way the client
waits for the worker to hang up, within a bound; a session it never hangs up is a hang.

Same seed, same cases: ``generate(seed, count)`` is the whole corpus.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kubecast_worker.rtmp import amf0, messages
from kubecast_worker.rtmp.chunks import ChunkWriter
from kubecast_worker.rtmp.messages import Message

HANDSHAKE = 1536


@dataclass
class Send:
    data: bytes


@dataclass
class Trickle:
    """Send ``data`` one byte at a time, every ``every`` seconds (slowloris)."""

    data: bytes
    every: float


Action = Send | Trickle


@dataclass
class Case:
    category: str
    actions: list[Action]
    end: Literal["eof", "wait"] = "eof"
    handshake: bool = True  # a real C0+C1, read S0+S1+S2, then C2
    c2: bytes | None = None  # None: echo S1, as clients do
    prompt: bool = False  # the worker must hang up within PROMPT seconds, no timeout
    refusal: str | None = None  # the refusal the worker counts for it (wrong_key...)
    read: bool = True  # read what the worker sends (False: a peer that never reads)


@dataclass
class Outcome:
    case: Case
    closed_by_worker: bool
    seconds: float  # from connect until the worker hung up (or the bound)
    hung: bool = False
    connect_failed: str | None = None  # the worker's port did not take the connection


# -- message builders ----------------------------------------------------------------------


def chunked(message: Message, chunk_size: int = 128) -> bytes:
    writer = ChunkWriter()
    writer.chunk_size = chunk_size
    return writer.encode(message)


def command(payload: bytes, *, csid: int = 3, stream_id: int = 0, amf3: bool = False) -> Message:
    kind = messages.COMMAND_AMF3 if amf3 else messages.COMMAND_AMF0
    return Message(kind, (b"\x00" if amf3 else b"") + payload, csid=csid, stream_id=stream_id)


def connect_payload(app: str = "live") -> bytes:
    return amf0.encode(
        "connect",
        1.0,
        {
            "app": app,
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
            "tcUrl": f"rtmp://127.0.0.1:1935/{app}",
        },
    )


def conversation(*, app: str = "live", key: str, chunk_size: int = 128) -> bytes:
    """What ffmpeg sends after the handshake, up to and including publish, cut into
    ``chunk_size`` chunks (announcing that size is the caller's business)."""
    out = b""
    for message in (
        command(connect_payload(app)),
        command(amf0.encode("releaseStream", 2.0, None, key)),
        command(amf0.encode("FCPublish", 3.0, None, key)),
        command(amf0.encode("createStream", 4.0, None)),
        command(amf0.encode("publish", 5.0, None, key, "live"), csid=4, stream_id=1),
    ):
        out += chunked(message, chunk_size)
    return out


def header0(
    csid: int, *, length: int, type_id: int, timestamp: int = 0, stream_id: int = 0
) -> bytes:
    """A type 0 chunk header (and a 1- to 3-byte basic header as ``csid`` needs)."""
    return (
        basic(0, csid)
        + min(timestamp, 0xFFFFFF).to_bytes(3, "big")
        + length.to_bytes(3, "big")
        + bytes((type_id,))
        + stream_id.to_bytes(4, "little")
        + (timestamp.to_bytes(4, "big") if timestamp >= 0xFFFFFF else b"")
    )


def basic(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes(((fmt << 6) | csid,))
    if csid <= 319:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


# -- the generator -------------------------------------------------------------------------

Maker = Callable[[random.Random, str], Case]


def _short_c0c1(rng: random.Random, wrong_key: str) -> Case:
    data = b"\x03" + rng.randbytes(rng.randrange(0, HANDSHAKE))
    return Case("handshake: short C0/C1", [Send(data)], handshake=False)


def _wrong_version(rng: random.Random, wrong_key: str) -> Case:
    version = rng.choice([0, 1, 2, 4, 6, 8, 0x16, ord("G"), ord("P"), 0xFF, rng.randrange(256)])
    if version == 3:
        version = 0x06  # RTMPE
    data = bytes((version,)) + rng.randbytes(rng.choice([0, 1, HANDSHAKE, 2 * HANDSHAKE]))
    return Case("handshake: wrong version byte", [Send(data)], end="wait", handshake=False,
                prompt=True)  # fmt: skip


def _garbage_c2(rng: random.Random, wrong_key: str) -> Case:
    size = rng.choice([HANDSHAKE, HANDSHAKE, rng.randrange(0, HANDSHAKE)])
    after = [Send(rng.randbytes(rng.randrange(0, 4096)))] if size == HANDSHAKE else []
    if size == HANDSHAKE and rng.random() < 0.5:
        after = [Send(conversation(key=wrong_key))]  # C2 is not checked: this gets refused
        return Case("handshake: garbage C2", after, c2=rng.randbytes(size), end="wait",
                    prompt=True, refusal="wrong_key")  # fmt: skip
    return Case("handshake: garbage C2", after, c2=rng.randbytes(size))


def _chunk_size(rng: random.Random, wrong_key: str) -> Case:
    value = rng.choice([0, 0x80000000, 0x7FFFFFFF, 0xFFFFFFFF, 1, 2, 127, 65536,
                        rng.randrange(1 << 32)])  # fmt: skip
    if rng.random() < 0.1:
        # A Set Chunk Size with a short payload.
        data = header0(2, length=rng.randrange(0, 4), type_id=messages.SET_CHUNK_SIZE)
        return Case("chunk size: 0, 2^31-1, short", [Send(data + b"\x00\x00\x00")], end="eof")
    data = chunked(Message(messages.SET_CHUNK_SIZE, value.to_bytes(4, "big")))
    size = value & 0x7FFFFFFF
    if size == 0:
        return Case("chunk size: 0, 2^31-1, short", [Send(data + rng.randbytes(64))],
                    end="wait", prompt=True)  # fmt: skip
    # The rest of the conversation in chunks of that size (the worker must follow).
    rest = conversation(key=wrong_key, chunk_size=size)
    if rng.random() < 0.5:
        return Case("chunk size: 0, 2^31-1, short", [Send(data + rest)], end="wait",
                    prompt=True, refusal="wrong_key")  # fmt: skip
    return Case("chunk size: 0, 2^31-1, short",
                [Send(data + rest[: rng.randrange(len(rest))])])  # fmt: skip


def _bad_amf0(rng: random.Random, wrong_key: str) -> Case:
    depth = rng.choice([33, 100, 1000, 20000])
    nested = rng.choice(
        [
            b"\x03" + b"\x00\x01a\x03" * depth,  # objects in objects
            b"\x0a\x00\x00\x00\x01" * depth,  # strict arrays in strict arrays
            b"\x08\x00\x00\x00\x01\x00\x01a" * depth,  # ECMA arrays
        ]
    )
    name = amf0.encode("connect", 1.0)
    payload = rng.choice(
        [
            bytes((rng.choice([0x04, 0x07, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0xFF]),))
            + rng.randbytes(rng.randrange(0, 64)),  # markers we do not speak
            b"\x02" + rng.randrange(8, 0xFFFF).to_bytes(2, "big") + b"conn",  # truncated string
            b"\x0c\xff\xff\xff\xff" + b"connect",  # long string claiming 4 GiB
            name + b"\x02\x00",  # a truncated string length
            name + b"\x00\x3f\xf0",  # a truncated number
            name + b"\x0b" + bytes(8),  # a date without its time zone
            name + b"\x0a\xff\xff\xff\xff\x05",  # strict array claiming 4 billion items
            name + b"\x03\x00\x03app\x02\x00\x04live",  # object without its end marker
            name + b"\x09",  # object end outside an object
            name + nested[: min(len(nested), 60000)],  # deep nesting
            amf0.encode(1.0, "connect"),  # a command name that is not a string
            b"",  # an empty command
            name + rng.randbytes(rng.randrange(1, 512)),  # random values after the name
            rng.randbytes(rng.randrange(1, 512)),  # random bytes
        ]
    )
    message = command(payload, amf3=rng.random() < 0.2)
    return Case("AMF0: bad markers, truncated, nested", [Send(chunked(message))], end="eof")


def _truncated(rng: random.Random, wrong_key: str) -> Case:
    whole = conversation(key=wrong_key)
    kind = rng.random()
    if kind < 0.4:
        data = whole[: rng.randrange(1, len(whole))]  # cut anywhere, headers included
    elif kind < 0.7:
        length = rng.randrange(1, 65536)
        data = header0(3, length=length, type_id=messages.COMMAND_AMF0)
        data += rng.randbytes(rng.randrange(0, min(length, 128)))
    else:
        # Longer than any command may be before publish: refused on its header.
        length = rng.randrange(64 * 1024 + 1, 1 << 24)
        return Case("truncated / oversized messages",
                    [Send(header0(3, length=length, type_id=messages.COMMAND_AMF0))],
                    end="wait", prompt=True)  # fmt: skip
    return Case("truncated / oversized messages", [Send(data)])


def _unknown_csid(rng: random.Random, wrong_key: str) -> Case:
    csid = rng.choice([rng.randrange(2, 64), rng.randrange(64, 320), rng.randrange(320, 65600)])
    fmt = rng.choice([1, 2, 3])
    if rng.random() < 0.7:
        # A continuation header on a chunk stream that never had a type 0 header.
        data = basic(fmt, csid) + rng.randbytes((7, 3, 0)[fmt - 1] + rng.randrange(0, 64))
        return Case("unknown chunk stream ids", [Send(data)], end="wait", prompt=True)
    # Full headers on odd chunk streams, with unknown message types, then a refused publish.
    data = b""
    for _ in range(rng.randrange(1, 50)):
        length = rng.randrange(0, 129)  # one chunk each
        type_id = rng.choice([0, 7, 10, 13, 16, 19, 21, 23, 99, 255])
        data += header0(rng.randrange(2, 65600), length=length, type_id=type_id)
        data += rng.randbytes(length)
    return Case("unknown chunk stream ids", [Send(data + conversation(key=wrong_key))],
                end="wait", prompt=True, refusal="wrong_key")  # fmt: skip


def _refused_key(rng: random.Random, wrong_key: str) -> Case:
    key = rng.choice([wrong_key, "", "x", wrong_key + "?token=1", "\u00e9" * 40,
                      rng.randbytes(20).hex()])  # fmt: skip
    return Case("publish: wrong key", [Send(conversation(key=key or wrong_key))], end="wait",
                prompt=True, refusal="wrong_key")  # fmt: skip


def _refused_app(rng: random.Random, wrong_key: str) -> Case:
    app = rng.choice(["other", "", "live2", "LIVE", "app/live", rng.randbytes(8).hex()])
    return Case("connect: unknown app", [Send(conversation(app=app, key=wrong_key))],
                end="wait", prompt=True, refusal="unknown_app")  # fmt: skip


def _mutated(rng: random.Random, wrong_key: str) -> Case:
    data = bytearray(conversation(key=wrong_key))
    for _ in range(rng.randrange(1, 8)):
        what, at = rng.random(), rng.randrange(len(data))
        if what < 0.5:
            data[at] = rng.randrange(256)
        elif what < 0.75:
            del data[at : at + rng.randrange(1, 16)]
        else:
            data[at:at] = rng.randbytes(rng.randrange(1, 16))
    return Case("mutated publish conversations", [Send(bytes(data))])


def _many_chunk_streams(rng: random.Random, wrong_key: str) -> Case:
    # Empty messages of an unknown type, each on a chunk stream of its own.
    first = rng.randrange(64, 1000)
    data = b"".join(header0(c, length=0, type_id=99) for c in range(first, first + 5000))
    return Case("many chunk streams", [Send(data)], end="wait", prompt=True)


def _reply_flood(rng: random.Random, wrong_key: str) -> Case:
    """Pings (each one asks for a reply) from a peer that never reads the replies."""
    pings = chunked(messages.user_control(messages.PING_REQUEST, rng.randrange(1 << 32)))
    return Case("reply flood, never reading", [Send(pings * 500_000)], end="wait", read=False)


def _trickle_handshake(rng: random.Random, wrong_key: str) -> Case:
    return Case("slowloris: 1 byte / 300 ms", [Trickle(b"\x03" + os.urandom(2 * HANDSHAKE), 0.3)],
                end="wait", handshake=False)  # fmt: skip


def _trickle_connect(rng: random.Random, wrong_key: str) -> Case:
    return Case("slowloris: 1 byte / 300 ms", [Trickle(conversation(key=wrong_key), 0.3)],
                end="wait")  # fmt: skip


FAST: list[tuple[Maker, int]] = [
    (_short_c0c1, 6),
    (_wrong_version, 6),
    (_garbage_c2, 6),
    (_chunk_size, 10),
    (_bad_amf0, 16),
    (_truncated, 10),
    (_unknown_csid, 10),
    (_refused_key, 6),
    (_refused_app, 6),
    (_mutated, 24),
    (_many_chunk_streams, 1),
]
SLOW: list[Maker] = [_trickle_handshake, _trickle_connect, _reply_flood]


def generate(seed: int, count: int, *, slow: int, wrong_key: str) -> list[Case]:
    """``count`` fast cases by weight, and ``slow`` ones (slowloris, floods), from ``seed``.

    A slow case lasts until the worker's handshake timeout."""
    rng = random.Random(seed)
    makers = [maker for maker, _ in FAST]
    weights = [weight for _, weight in FAST]
    cases = [rng.choices(makers, weights)[0](rng, wrong_key) for _ in range(count)]
    cases += [SLOW[i % len(SLOW)](rng, wrong_key) for i in range(slow)]
    return cases


# -- the client ----------------------------------------------------------------------------


async def play(port: int, case: Case, *, bound: float) -> Outcome:
    """Play ``case`` against 127.0.0.1:``port``; wait up to ``bound`` s for the hang-up."""
    started = time.monotonic()
    closed = asyncio.Event()

    async def drain(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass  # a reset is a hang-up too
        closed.set()

    drainer: asyncio.Task[Any] | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(bound):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:
                return Outcome(case, False, time.monotonic() - started, connect_failed=repr(exc))
            try:
                if case.handshake:
                    writer.write(b"\x03" + os.urandom(HANDSHAKE))
                    s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE)
                    writer.write(case.c2 if case.c2 is not None else s0s1s2[1 : 1 + HANDSHAKE])
                if case.read:
                    drainer = asyncio.create_task(drain(reader))
                for action in case.actions:
                    if closed.is_set():
                        break
                    if isinstance(action, Send):
                        writer.write(action.data)
                        await writer.drain()
                    else:
                        for i in range(len(action.data)):
                            if closed.is_set():
                                break
                            writer.write(action.data[i : i + 1])
                            await writer.drain()
                            await asyncio.sleep(action.every)
                if case.end == "eof" and not closed.is_set() and writer.can_write_eof():
                    writer.write_eof()
                if drainer is None:
                    drainer = asyncio.create_task(drain(reader))
            except (OSError, asyncio.IncompleteReadError):
                closed.set()  # the worker hung up while we were still talking
            await closed.wait()
    except TimeoutError:
        seconds = time.monotonic() - started
        if writer is None:
            return Outcome(case, False, seconds, connect_failed="connect timed out")
        return Outcome(case, False, seconds, hung=True)
    finally:
        if drainer is not None:
            drainer.cancel()
        if writer is not None:
            writer.transport.abort()
    return Outcome(case, True, time.monotonic() - started)
