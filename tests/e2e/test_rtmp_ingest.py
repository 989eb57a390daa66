"""The RTMP ingest front against real publishers: the ffmpeg CLI and PyAV.

Each test runs its own server on a free loopback port, in its own event loop. The FLV of
an accepted session is read the way the transcoder reads it: ``av.open(session.flv)`` in
a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import av
import pytest

from kubecast_worker.rtmp import PublishSession, RtmpIngestServer, amf0, messages
from kubecast_worker.rtmp.chunks import ChunkWriter

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI"),
]

KEY = "sk-7f3a9c1e5b2d4a60"
WRONG_KEY = "sk-guess-0123456789"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=50))


@asynccontextmanager
async def ingest(
    *, on_publish: Callable[[PublishSession], Awaitable[None] | None] | None = None, **tunables: Any
) -> AsyncIterator[tuple[RtmpIngestServer, list[PublishSession]]]:
    sessions: list[PublishSession] = []

    def remember(session: PublishSession) -> Awaitable[None] | None:
        sessions.append(session)
        return on_publish(session) if on_publish else None

    handshake_timeout = tunables.pop("handshake_timeout", 5.0)
    server = RtmpIngestServer(
        host="127.0.0.1",
        port=0,
        app="live",
        stream_key=KEY,
        on_publish=remember,
        logger=logging.getLogger("kubecast.test.rtmp"),
        handshake_timeout=handshake_timeout,
    )
    for name, value in tunables.items():
        setattr(server, name, value)
    await server.start()
    try:
        yield server, sessions
    finally:
        await server.stop()


def url(server: RtmpIngestServer, *, app: str = "live", key: str = KEY) -> str:
    return f"rtmp://127.0.0.1:{server.port}/{app}/{key}"


async def ffmpeg_publish(target: str, *, seconds: float, realtime: bool = True) -> int:
    """Publish the reference test signal; return ffmpeg's exit code."""
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]
    if realtime:
        args.append("-re")
    args += [
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "30",
        "-c:a", "aac", "-f", "flv", target,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), timeout=seconds + 20)


def decode_flv(session: PublishSession) -> dict[str, Any]:
    """What the transcoder would see: stream parameters, frame counts, media durations."""
    found: dict[str, Any] = {"video_frames": 0, "audio_frames": 0}
    times: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(session.flv, mode="r", format="flv") as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        found.update(
            video_codec=video.codec_context.name,
            size=(video.codec_context.width, video.codec_context.height),
            audio_codec=audio.codec_context.name,
            sample_rate=audio.codec_context.sample_rate,
        )
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                kind = packet.stream.type
                found[f"{kind}_frames"] += 1
                assert isinstance(frame, av.VideoFrame | av.AudioFrame)
                if frame.time is not None:
                    times[kind].append(frame.time)
    for name, seen in times.items():
        found[f"{name}_seconds"] = max(seen) - min(seen) if seen else 0.0
    return found


def decode_in_thread(results: list[asyncio.Future[dict[str, Any]]]) -> Callable[..., None]:
    def start(session: PublishSession) -> None:
        results.append(asyncio.ensure_future(asyncio.to_thread(decode_flv, session)))

    return start


async def until(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_ffmpeg_publisher_media_decodes_as_h264_and_aac_from_the_session_flv() -> None:
    async def scenario() -> None:
        decoded: list[asyncio.Future[dict[str, Any]]] = []
        async with ingest(on_publish=decode_in_thread(decoded)) as (server, sessions):
            assert await ffmpeg_publish(url(server), seconds=4) == 0
            (session,) = sessions
            await asyncio.wait_for(session.wait_closed(), 5)
            media = await asyncio.wait_for(decoded[0], 10)
            assert server.current is None
            assert server.counters.accepted == 1
            assert server.counters.protocol_errors == 0
        assert media["video_codec"] == "h264"
        assert media["size"] == (640, 360)
        assert media["audio_codec"] == "aac"
        assert media["sample_rate"] == 44100
        assert 3.7 <= media["video_seconds"] <= 4.2
        assert 3.7 <= media["audio_seconds"] <= 4.2
        assert 110 <= media["video_frames"] <= 121
        assert session.peer.startswith("127.0.0.1:")
        assert session.app == "live"
        assert session.bytes_received > 100_000
        assert session.metadata["width"] == 640
        assert session.close_reason == "publisher_left"

    run(scenario())


def test_wrong_stream_key_is_refused_counted_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with ingest() as (server, sessions):
            assert await ffmpeg_publish(url(server, key=WRONG_KEY), seconds=1) != 0
            await until(lambda: server.counters.refused_wrong_key == 1)
            assert sessions == []
            assert server.counters.accepted == 0
            assert server.counters.protocol_errors == 0

    run(scenario())
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "rtmp.refused"]
    assert [(r.levelname, r.reason) for r in refusals] == [("WARNING", "wrong_key")]  # type: ignore[attr-defined]
    assert refusals[0].peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert KEY not in caplog.text
    assert WRONG_KEY not in caplog.text


def test_unknown_app_is_refused_and_counted() -> None:
    async def scenario() -> None:
        async with ingest() as (server, sessions):
            assert await ffmpeg_publish(url(server, app="other"), seconds=1) != 0
            await until(lambda: server.counters.refused_unknown_app == 1)
            assert sessions == []
            assert server.counters.refused_wrong_key == 0

    run(scenario())


def test_second_publisher_is_refused_as_busy_while_the_first_keeps_going() -> None:
    async def scenario() -> None:
        decoded: list[asyncio.Future[dict[str, Any]]] = []
        async with ingest(on_publish=decode_in_thread(decoded)) as (server, sessions):
            first = asyncio.create_task(ffmpeg_publish(url(server), seconds=4))
            await until(lambda: server.current is not None)
            assert await ffmpeg_publish(url(server), seconds=1, realtime=False) != 0
            assert server.counters.refused_busy == 1
            assert server.current is sessions[0]
            assert await first == 0
            media = await asyncio.wait_for(decoded[0], 10)
            assert media["video_seconds"] >= 3.7

            # The slot is free again once the first publisher has left.
            await until(lambda: server.current is None)
            assert await ffmpeg_publish(url(server), seconds=0.5, realtime=False) == 0
            assert server.counters.accepted == 2
            assert (await asyncio.wait_for(decoded[1], 10))["video_frames"] >= 10

    run(scenario())


async def send_raw(port: int, data: bytes, *, then_close: bool = True) -> None:
    """Send bytes; then close, or wait until the server hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if not then_close:
        while await reader.read(65536):
            pass
    writer.close()
    await writer.wait_closed()


async def handshake_then(port: int, data: bytes) -> None:
    """Do a valid client handshake, then send ``data`` and wait for the server to hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x03" + os.urandom(1536))
    s0s1s2 = await reader.readexactly(1 + 2 * 1536)
    writer.write(s0s1s2[1:1537] + data)  # C2 echoes S1
    while await reader.read(65536):
        pass
    writer.close()
    await writer.wait_closed()


def test_garbage_on_the_port_is_counted_and_a_publisher_still_gets_in() -> None:
    noise = random.Random(1935).randbytes(8192)
    amf3_connect = ChunkWriter().encode(
        messages.Message(messages.COMMAND_AMF0, amf0.encode("connect", 1.0) + b"\x11\x0a", csid=3)
    )

    async def scenario() -> None:
        decoded: list[asyncio.Future[dict[str, Any]]] = []
        async with ingest(on_publish=decode_in_thread(decoded), handshake_timeout=1.0) as (
            server,
            _,
        ):
            port = server.port
            await asyncio.gather(
                send_raw(port, b"\xab" + noise, then_close=False),  # not RTMP at all
                send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", then_close=False),
                send_raw(port, b"\x03" + noise[:700]),  # handshake cut short
                send_raw(port, b"\x03" + noise[:10], then_close=False),  # slowloris
                handshake_then(port, amf3_connect),  # AMF3 where AMF0 belongs
                handshake_then(port, noise),  # chunk-level garbage
                send_raw(port, b""),  # a TCP health check: not an error
            )
            await until(lambda: server.counters.protocol_errors == 6)
            assert await ffmpeg_publish(url(server), seconds=1, realtime=False) == 0
            media = await asyncio.wait_for(decoded[0], 10)
            assert media["video_frames"] >= 25
            assert server.counters.protocol_errors == 6
            assert server.counters.accepted == 1

    run(scenario())


# NB: the PyAV publisher runs in its own process. PyAV 18.1 opens an output's network
# connection (avio_open, and the RTMP handshake and publish inside it) while holding the
# GIL, so an in-process server could never answer it: the event loop would wait for the
# GIL and the publisher for the server, forever.
PYAV_PUBLISHER = """
import sys
from fractions import Fraction

import av

target, seconds = sys.argv[1], float(sys.argv[2])
with av.open(target, "w", format="flv") as out:
    video = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "g": "30"})
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    audio = out.add_stream("aac", rate=44100, layout="mono")
    for i in range(int(seconds * 30)):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane, level in zip(frame.planes, (16 + 6 * (i % 30), 128, 128)):
            plane.update(bytes([level]) * plane.buffer_size)
        frame.pts, frame.time_base = i, Fraction(1, 30)
        out.mux(video.encode(frame))
    for i in range(int(seconds * 44100 / 1024)):
        samples = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        samples.planes[0].update(bytes(samples.planes[0].buffer_size))
        samples.sample_rate, samples.pts = 44100, i * 1024
        out.mux(audio.encode(samples))
    out.mux(video.encode(None))
    out.mux(audio.encode(None))
"""


async def pyav_publish(target: str, *, seconds: float) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PYAV_PUBLISHER, target, str(seconds)
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


def test_pyav_publisher_is_accepted_with_a_query_string_after_the_key() -> None:
    async def scenario() -> None:
        decoded: list[asyncio.Future[dict[str, Any]]] = []
        async with ingest(on_publish=decode_in_thread(decoded)) as (server, _):
            target = url(server, key=f"{KEY}?bandwidthtest=false")
            assert await pyav_publish(target, seconds=2) == 0
            media = await asyncio.wait_for(decoded[0], 10)
            assert server.counters.accepted == 1
        assert media["video_codec"] == "h264"
        assert media["size"] == (320, 240)
        assert media["audio_codec"] == "aac"
        assert media["video_frames"] == 60

    run(scenario())


def test_a_reader_that_stops_reading_drops_the_publisher_instead_of_buffering() -> None:
    async def scenario() -> None:
        async with ingest(flv_high_water=256 * 1024, reader_stall_timeout=0.5) as (
            server,
            sessions,
        ):  # nobody reads session.flv
            assert await ffmpeg_publish(url(server), seconds=20, realtime=False) != 0
            (session,) = sessions
            await asyncio.wait_for(session.wait_closed(), 5)
            assert session.close_reason == "reader_stalled"
            assert session.flv.buffered < 2 * 256 * 1024
            assert server.current is None
            assert server.counters.protocol_errors == 0

    run(scenario())


def test_the_consumer_can_drop_the_publisher_from_its_thread() -> None:
    after_close: list[int] = []
    reader_done = threading.Event()

    def read_a_little_then_close(session: PublishSession) -> None:
        def work() -> None:
            session.flv.read(65536)
            session.close()
            rest = 0
            while chunk := session.flv.read(65536):
                rest += len(chunk)  # what was already sent, then end of stream
            after_close.append(rest)
            reader_done.set()

        threading.Thread(target=work).start()

    async def scenario() -> None:
        async with ingest(on_publish=read_a_little_then_close) as (server, sessions):
            assert await ffmpeg_publish(url(server), seconds=10) != 0
            (session,) = sessions
            await asyncio.wait_for(session.wait_closed(), 5)
            assert await asyncio.to_thread(reader_done.wait, 5)
            assert session.close_reason == "closed_by_consumer"
            assert server.current is None
            assert server.counters.protocol_errors == 0

    run(scenario())
    assert len(after_close) == 1
