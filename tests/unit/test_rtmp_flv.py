"""FLV rebuilt from RTMP messages, and the pipe that carries it to a reader thread."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time

import pytest

from kubecast_worker.rtmp import amf0, flv
from kubecast_worker.rtmp.pipe import FlvPipe


def split_flv(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, timestamp, body) of each tag of an FLV file."""
    offset = int.from_bytes(data[5:9], "big") + 4
    tags = []
    while offset < len(data):
        size = int.from_bytes(data[offset + 1 : offset + 4], "big")
        ts = int.from_bytes(data[offset + 4 : offset + 7], "big") | data[offset + 7] << 24
        tags.append((data[offset], ts, data[offset + 11 : offset + 11 + size]))
        offset += 11 + size + 4
    return tags


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_tags_rebuilt_from_their_bodies_match_what_ffmpeg_writes() -> None:
    original = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10",
         "-f", "lavfi", "-i", "sine", "-t", "0.5", "-c:v", "libx264", "-preset",
         "ultrafast", "-c:a", "aac", "-f", "flv", "pipe:1"],
        check=True, capture_output=True, timeout=30,
    ).stdout  # fmt: skip
    rebuilt = original[:13] + b"".join(flv.tag(*t) for t in split_flv(original))
    assert rebuilt == original


def test_a_timestamp_past_24_bits_keeps_its_top_byte() -> None:
    tag = flv.tag(flv.TAG_VIDEO, 0x12345678, b"\x17")
    assert tag[4:8] == b"\x34\x56\x78\x12"
    assert split_flv(flv.header() + tag) == [(9, 0x12345678, b"\x17")]


def test_set_data_frame_becomes_a_plain_on_metadata_tag() -> None:
    props = amf0.EcmaArray(width=640.0, audiocodecid=10.0)
    body = flv.metadata_body(amf0.encode("@setDataFrame", "onMetaData", props))
    assert body == amf0.encode("onMetaData", props)
    assert flv.decode_metadata(body) == {"width": 640.0, "audiocodecid": 10.0}
    assert flv.metadata_body(amf0.encode("onCuePoint", {})) is None


def test_the_header_announces_only_the_streams_the_metadata_names() -> None:
    assert flv.flags_from_metadata({"videocodecid": 7.0}) == (False, True)
    assert flv.flags_from_metadata({}) == (True, True)
    assert flv.header(audio=False, video=True)[4] == 0x01


def test_an_aggregate_message_splits_into_rebased_tags() -> None:
    payload = flv.tag(8, 500, b"a1") + flv.tag(9, 520, b"v1")
    assert list(flv.split_aggregate(payload, 1000)) == [(8, 1000, b"a1"), (9, 1020, b"v1")]


def test_a_reader_thread_gets_every_byte_in_order_then_end_of_stream() -> None:
    pipe = FlvPipe()
    received = bytearray()

    def read_all() -> None:
        while chunk := pipe.read(7):
            assert len(chunk) <= 7
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    sent = b"".join(bytes([i]) * (i + 1) for i in range(200))
    for i in range(0, len(sent), 50):
        pipe.feed(sent[i : i + 50])
    pipe.finish()
    reader.join(timeout=5)
    assert bytes(received) == sent
    assert pipe.read(10) == b""
    assert pipe.read_total == len(sent)


def test_a_blocked_read_returns_end_of_stream_when_the_session_ends() -> None:
    pipe = FlvPipe()
    threading.Timer(0.1, pipe.finish).start()
    started = time.monotonic()
    assert pipe.read(100) == b""
    assert time.monotonic() - started < 2


def test_a_reader_that_closes_drops_the_backlog_and_reads_nothing_more() -> None:
    pipe = FlvPipe()
    pipe.feed(b"x" * 100)
    pipe.close()
    assert pipe.closed
    assert pipe.read(10) == b""
    pipe.feed(b"more")
    assert pipe.buffered == 0


def test_drained_waits_for_a_reader_thread_and_times_out_without_one() -> None:
    async def scenario() -> None:
        pipe = FlvPipe()
        pipe.feed(b"x" * 1000)
        assert not await pipe.drained(low_water=100, timeout=0.1)  # nobody reads
        threading.Timer(0.1, lambda: pipe.read(950)).start()
        assert await pipe.drained(low_water=100, timeout=5)
        assert pipe.buffered == 50

    asyncio.run(scenario())
