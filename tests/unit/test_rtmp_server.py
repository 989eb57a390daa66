"""The ingest server, driven over loopback by a scripted RTMP client.

The scripted client reaches what ffmpeg and OBS do not show us directly: the exact reply
sequence, query strings on keys, pings, acknowledgements, and shutdown with a live
publisher. The real clients are in tests/e2e/test_rtmp_ingest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kubecast_worker.rtmp import PublishSession, RtmpIngestServer, amf0, flv, messages
from kubecast_worker.rtmp.chunks import ChunkParser, ChunkWriter
from kubecast_worker.rtmp.messages import Message
from kubecast_worker.rtmp.throttle import WrongKeyLimit

pytestmark = pytest.mark.timeout(30)

KEY = "unit-key-5e1f"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=20))


class ScriptedClient:
    """Speaks RTMP the way ffmpeg does, one message at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = ChunkParser()
        self.chunks = ChunkWriter()
        self.inbox: list[Message] = []

    @classmethod
    async def connect(cls, port: int, *, source: str = "127.0.0.1") -> ScriptedClient:
        """Connect from ``source``: any 127.x.y.z is this machine, as another address."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"\x03" + os.urandom(1536))
        s0s1s2 = await reader.readexactly(1 + 2 * 1536)
        assert s0s1s2[0] == 3
        assert s0s1s2[5:9] == bytes(4)  # a zero version: the plain handshake
        writer.write(s0s1s2[1:1537])
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        self.writer.write(self.chunks.encode(message))

    def command(self, name: str, transaction: float, *args: Any, stream_id: int = 0) -> None:
        self.send(messages.command(name, transaction, *args, stream_id=stream_id))

    async def receive(self, want: Callable[[Message], bool]) -> Message:
        """The first message (old or new) that ``want`` accepts; the rest stay in the inbox."""
        while True:
            for message in self.inbox:
                if want(message):
                    self.inbox.remove(message)
                    return message
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "server closed the connection"
            self.inbox += self.parser.feed(data)

    async def result(self, name: str = "_result", transaction: float | None = None) -> list[Any]:
        """The next command called ``name`` (answering ``transaction``, if given)."""

        def wanted(message: Message) -> bool:
            if message.type_id != messages.COMMAND_AMF0:
                return False
            values = amf0.decode(message.payload)
            return values[0] == name and transaction in (None, values[1])

        return amf0.decode((await self.receive(wanted)).payload)

    async def publish(self, *, app: str = "live", name: str = KEY) -> list[Any]:
        """connect .. publish as ffmpeg does it; returns the onStatus values."""
        self.command("connect", 1.0, {"app": app, "type": "nonprivate", "tcUrl": "rtmp://x/"})
        await self.result(transaction=1.0)
        self.command("releaseStream", 2.0, None, name)
        self.command("FCPublish", 3.0, None, name)
        self.command("createStream", 4.0, None)
        stream_id = (await self.result(transaction=4.0))[3]
        self.command("publish", 5.0, None, name, "live", stream_id=int(stream_id))
        return await self.result("onStatus")

    async def closed_by_server(self) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), 5):
                pass
        except ConnectionError:
            pass
        return True


@asynccontextmanager
async def ingest(
    on_publish: Callable[[PublishSession], Awaitable[None] | None] | None = None,
    *,
    wrong_key_limit: WrongKeyLimit | None = None,
    **tunables: Any,
) -> AsyncIterator[tuple[RtmpIngestServer, list[PublishSession]]]:
    sessions: list[PublishSession] = []

    def remember(session: PublishSession) -> Awaitable[None] | None:
        sessions.append(session)
        return on_publish(session) if on_publish else None

    server = RtmpIngestServer(
        host="127.0.0.1",
        port=0,
        app="live",
        stream_key=KEY,
        on_publish=remember,
        wrong_key_limit=wrong_key_limit,
    )
    for name, value in tunables.items():
        setattr(server, name, value)
    await server.start()
    try:
        yield server, sessions
    finally:
        await server.stop()


def test_connect_gets_the_reply_sequence_publishers_expect() -> None:
    async def scenario() -> None:
        async with ingest() as (server, _):
            client = await ScriptedClient.connect(server.port)
            client.command("connect", 1.0, {"app": "live", "tcUrl": "rtmp://x/live"})
            result = await client.result()
            kinds = [m.type_id for m in client.inbox]
            assert kinds[:3] == [
                messages.WINDOW_ACK_SIZE,
                messages.SET_PEER_BANDWIDTH,
                messages.SET_CHUNK_SIZE,
            ]
            assert result[1] == 1.0
            assert result[3]["code"] == "NetConnection.Connect.Success"
            client.command("createStream", 4.0, None)
            assert (await client.result())[1:] == [4.0, None, 1.0]
            client.writer.close()

    run(scenario())


def test_a_key_with_a_query_string_and_an_app_with_one_are_accepted() -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            status = await client.publish(app="live?token=t", name=f"{KEY}?bandwidthtest=true")
            assert status[3]["code"] == "NetStream.Publish.Start"
            assert server.counters.accepted == 1
            assert sessions == [server.current]
            client.writer.close()

    run(scenario())


@pytest.mark.parametrize("name", ["", "?" + KEY, KEY + "x", KEY[:-1], KEY.upper()])
def test_near_misses_of_the_key_are_refused_as_denied(name: str) -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            status = await client.publish(name=name)
            assert status[3]["level"] == "error"
            # Denied, not BadName: GStreamer shows BadName as "stream already exists".
            assert status[3]["code"] == "NetStream.Publish.Denied"
            assert "stream key" in status[3]["description"]
            assert await client.closed_by_server()
            assert server.counters.refused_wrong_key == 1
            assert sessions == []

    run(scenario())


def test_a_second_publisher_is_told_the_stream_is_taken() -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            first = await ScriptedClient.connect(server.port)
            assert (await first.publish())[3]["code"] == "NetStream.Publish.Start"
            second = await ScriptedClient.connect(server.port)
            status = await second.publish()
            assert status[3]["level"] == "error"
            assert status[3]["code"] == "NetStream.Publish.BadName"  # "already exists"
            assert "Another publisher is live" in status[3]["description"]
            assert await second.closed_by_server()
            assert len(sessions) == 1
            first.writer.close()

    run(scenario())


def test_media_metadata_pings_and_acks_while_publishing() -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            await client.publish()
            (session,) = sessions
            client.send(messages.window_ack_size(1000))
            metadata = amf0.EcmaArray(width=320.0, height=240.0, videocodecid=7.0)
            client.send(
                Message(
                    messages.DATA_AMF0,
                    amf0.encode("@setDataFrame", "onMetaData", metadata),
                    stream_id=1,
                    csid=4,
                )
            )
            frames = [bytes([0x17, 1]) + os.urandom(700) for _ in range(3)]
            for i, frame in enumerate(frames):
                client.send(Message(messages.VIDEO, frame, 33 * i, 1, 6))
            client.send(Message(messages.VIDEO, b"", 99, 1, 6))  # empty: dropped
            client.send(messages.user_control(messages.PING_REQUEST, 1234))
            pong = messages.user_control(messages.PING_RESPONSE, 1234)
            assert await client.receive(lambda m: m.payload == pong.payload)
            ack = await client.receive(lambda m: m.type_id == messages.ACKNOWLEDGEMENT)
            assert int.from_bytes(ack.payload, "big") >= 1000

            client.command("FCUnpublish", 6.0, None, KEY)
            client.command("deleteStream", 7.0, None, 1.0)
            await asyncio.wait_for(session.wait_closed(), 5)
            assert session.close_reason == "publisher_left"
            assert session.metadata == metadata
            assert session.bytes_received == sum(map(len, frames))
            expected = flv.header(audio=False, video=True) + flv.tag(
                flv.TAG_SCRIPT, 0, amf0.encode("onMetaData", metadata)
            )
            expected += b"".join(flv.tag(flv.TAG_VIDEO, 33 * i, f) for i, f in enumerate(frames))
            assert await asyncio.to_thread(session.flv.read, -1) == expected
            assert server.current is None

    run(scenario())


def test_unpublish_ends_the_media_at_once_and_leaves_the_hang_up_to_the_publisher() -> None:
    # GStreamer's rtmp2sink sends FCUnpublish + deleteStream at end of stream, then closes;
    # a server that closes first makes it report "connection closed remotely" and fail.
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            await client.publish()
            (session,) = sessions
            client.send(Message(messages.VIDEO, bytes([0x17, 1]) + os.urandom(100), 0, 1, 6))
            client.command("FCUnpublish", 6.0, None, KEY)
            client.command("deleteStream", 7.0, None, 1.0)
            media = await asyncio.wait_for(asyncio.to_thread(session.flv.read, -1), 1)
            assert media.startswith(b"FLV")  # the reader has seen the end of the media
            with pytest.raises(TimeoutError):  # and the socket is still ours to close
                await asyncio.wait_for(client.reader.read(65536), 0.5)
            client.writer.close()
            await asyncio.wait_for(session.wait_closed(), 2)
            assert session.close_reason == "publisher_left"
            assert server.counters.protocol_errors == 0

    run(scenario())


def test_a_publisher_that_sends_media_right_behind_publish_is_not_cut_off() -> None:
    # Before publish only small messages are allowed; a keyframe pipelined in the same TCP
    # segment as the publish command must be judged by the publishing limit.
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            client.command("connect", 1.0, {"app": "live"})
            client.command("createStream", 2.0, None)
            client.command("publish", 3.0, None, KEY, "live", stream_id=1)
            keyframe = bytes([0x17, 1]) + os.urandom(200_000)
            client.send(Message(messages.VIDEO, keyframe, 0, 1, 6))
            client.command("deleteStream", 4.0, None, 1.0)
            await client.writer.drain()
            await until_published(sessions)
            await asyncio.wait_for(sessions[0].wait_closed(), 5)
            assert sessions[0].bytes_received == len(keyframe)
            assert server.counters.protocol_errors == 0

    run(scenario())


async def until_published(sessions: list[PublishSession]) -> None:
    async with asyncio.timeout(5):
        while not sessions:
            await asyncio.sleep(0.01)


def test_stopping_the_server_drops_a_live_publisher_without_calling_it_an_error() -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            client = await ScriptedClient.connect(server.port)
            await client.publish()
            await server.stop()
            assert sessions[0].closed
            assert sessions[0].close_reason == "server_stopping"
            assert await client.closed_by_server()
            assert server.counters.protocol_errors == 0

    run(scenario())


def test_a_peer_that_never_reads_its_ping_replies_cannot_grow_our_write_buffer() -> None:
    # Found by tests/faults: a peer that sends pings and reads none of the replies had
    # them pile up in our write buffer (4 MB in 4 s on one connection, before publish);
    # now the server stops reading from a peer that does not read. Small socket buffers
    # on both ends, so that the kernel does not absorb the first megabytes.
    async def scenario() -> None:
        async with ingest(handshake_timeout=3.0) as (server, _):
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"\x03" + os.urandom(1536))
            writer.write((await reader.readexactly(1 + 2 * 1536))[1:1537])
            (connection,) = server._connections
            transport = connection._writer.transport
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            pings = ChunkWriter().encode(messages.user_control(messages.PING_REQUEST, 1))
            largest = 0

            async def watch() -> None:
                nonlocal largest
                while True:
                    largest = max(largest, transport.get_write_buffer_size())
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            with contextlib.suppress(ConnectionError, TimeoutError):
                for _ in range(64 * 1024 * 1024 // (len(pings) * 10_000)):
                    writer.write(pings * 10_000)
                    await asyncio.wait_for(writer.drain(), 10)
            watcher.cancel()
            assert largest < 1024 * 1024, f"{largest} bytes of unsent replies"
            async with asyncio.timeout(5):
                while server._connections:  # closed at the handshake timeout
                    await asyncio.sleep(0.05)
            assert server.counters.protocol_errors == 1
            writer.transport.abort()

    run(scenario())


def test_commands_before_connect_and_play_requests_are_protocol_errors() -> None:
    async def scenario() -> None:
        async with ingest() as (server, _):
            early = await ScriptedClient.connect(server.port)
            early.command("publish", 1.0, None, KEY, "live")
            viewer = await ScriptedClient.connect(server.port)
            viewer.command("connect", 1.0, {"app": "live"})
            await viewer.result()
            viewer.command("play", 2.0, None, KEY)
            assert await early.closed_by_server()
            assert await viewer.closed_by_server()
            assert server.counters.protocol_errors == 2
            assert server.counters.accepted == 0

    run(scenario())


def test_a_consumer_that_fails_drops_its_publisher_and_the_next_one_gets_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    async def consumer(session: PublishSession) -> None:
        calls.append(session.peer)
        if len(calls) == 1:
            raise RuntimeError("transcoder failed to start")
        await session.wait_closed()

    async def scenario() -> None:
        async with ingest(on_publish=consumer) as (server, sessions):
            first = await ScriptedClient.connect(server.port)
            await first.publish()
            await asyncio.wait_for(sessions[0].wait_closed(), 5)
            assert sessions[0].close_reason == "closed_by_consumer"
            assert await first.closed_by_server()
            second = await ScriptedClient.connect(server.port)
            assert (await second.publish())[3]["code"] == "NetStream.Publish.Start"
            second.writer.close()
            await asyncio.wait_for(sessions[1].wait_closed(), 5)
        assert server.counters.accepted == 2

    run(scenario())
    assert "transcoder failed to start" in caplog.text


def test_an_empty_stream_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        RtmpIngestServer(host="127.0.0.1", port=0, app="live", stream_key="", on_publish=print)


def test_wrong_keys_from_one_address_shut_it_out_for_the_backoff_but_no_one_else() -> None:
    async def refused(server: RtmpIngestServer, source: str) -> None:
        client = await ScriptedClient.connect(server.port, source=source)
        status = await client.publish(name="a-guess")
        assert status[3]["code"] == "NetStream.Publish.Denied"
        assert await client.closed_by_server()

    async def scenario() -> None:
        limit = WrongKeyLimit(attempts=3, window=60, backoff=2.0)
        async with ingest(wrong_key_limit=limit) as (server, sessions):
            for _ in range(3):
                await refused(server, "127.0.0.1")
            assert server.throttle.blocked_for("127.0.0.1") > 0
            # The guesser's next connection is closed at accept, before the handshake,
            # even with the right key.
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await ScriptedClient.connect(server.port)
            assert server.counters.refused_rate_limited == 1
            assert server.counters.refused_wrong_key == 3
            # A publisher from another address gets in meanwhile.
            other = await ScriptedClient.connect(server.port, source="127.0.0.2")
            status = await other.publish()
            assert status[3]["code"] == "NetStream.Publish.Start"
            other.writer.close()
            await until_ended(server)
            # After the back-off, the right key from the limited address works again.
            while server.throttle.blocked_for("127.0.0.1") > 0:
                await asyncio.sleep(0.1)
            again = await ScriptedClient.connect(server.port)
            status = await again.publish()
            assert status[3]["code"] == "NetStream.Publish.Start"
            assert server.counters.accepted == 2 and len(sessions) == 2
            again.writer.close()

    run(scenario())


def test_rate_limited_connections_are_counted_not_logged_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        limit = WrongKeyLimit(attempts=1, window=60, backoff=60)
        async with ingest(wrong_key_limit=limit) as (server, _):
            client = await ScriptedClient.connect(server.port)
            await client.publish(name="a-guess")
            assert await client.closed_by_server()
            for _ in range(20):
                with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                    await ScriptedClient.connect(server.port)
            assert server.counters.refused_rate_limited == 20

    with caplog.at_level(logging.INFO):
        run(scenario())
    limited = [r for r in caplog.records if getattr(r, "event", None) == "rtmp.rate_limited"]
    assert len(limited) == 1
    assert limited[0].getMessage() == (
        "rtmp address refused for 60 s after 1 wrong stream key(s) within 60 s"
    )
    assert "a-guess" not in caplog.text


async def until_ended(server: RtmpIngestServer) -> None:
    while server.current is not None:
        await asyncio.sleep(0.02)
