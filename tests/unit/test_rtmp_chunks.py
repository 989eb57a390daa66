"""The chunk parser puts messages back together whatever the chunking on the wire."""

from __future__ import annotations

import pytest

from kubecast_worker.rtmp import messages
from kubecast_worker.rtmp.chunks import ChunkParser, ChunkWriter
from kubecast_worker.rtmp.errors import ProtocolError
from kubecast_worker.rtmp.messages import Message


def video(payload: bytes, *, timestamp: int = 0, csid: int = 6, stream_id: int = 1) -> Message:
    return Message(messages.VIDEO, payload, timestamp, stream_id, csid)


def feed_bytewise(parser: ChunkParser, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


def header(fmt: int, csid: int, *fields: bytes) -> bytes:
    assert 2 <= csid <= 63
    return bytes(((fmt << 6) | csid,)) + b"".join(fields)


def u24(value: int) -> bytes:
    return value.to_bytes(3, "big")


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 1000, 70_000])
def test_messages_of_any_size_survive_the_default_chunking(size: int) -> None:
    message = video(bytes(range(256)) * (size // 256) + bytes(size % 256), timestamp=40)
    wire = ChunkWriter().encode(message)
    assert ChunkParser().feed(wire) == [message]


def test_bytes_arriving_one_at_a_time_make_the_same_messages() -> None:
    writer = ChunkWriter()
    sent = [video(b"a" * 300, timestamp=0), video(b"b" * 5, timestamp=33, csid=4)]
    wire = b"".join(writer.encode(m) for m in sent)
    assert feed_bytewise(ChunkParser(), wire) == sent


def test_a_set_chunk_size_applies_to_the_chunks_right_after_it() -> None:
    writer = ChunkWriter()
    wire = writer.encode(messages.set_chunk_size(4096))
    writer.chunk_size = 4096
    big = video(b"\x17" * 10_000, timestamp=1)
    wire += writer.encode(big)
    parser = ChunkParser()
    got = feed_bytewise(parser, wire)
    assert got[-1] == big
    assert parser.chunk_size == 4096
    # and back down again
    wire = writer.encode(messages.set_chunk_size(100))
    writer.chunk_size = 100
    small_chunks = video(b"\x27" * 1000, timestamp=2)
    assert parser.feed(wire + writer.encode(small_chunks))[-1] == small_chunks
    assert parser.chunk_size == 100


@pytest.mark.parametrize("timestamp", [0xFFFFFE, 0xFFFFFF, 0x01000000, 0xFFFFFFFF])
def test_extended_timestamps_survive_across_continuation_chunks(timestamp: int) -> None:
    message = video(b"x" * 500, timestamp=timestamp)  # four chunks of 128
    wire = ChunkWriter().encode(message)
    assert feed_bytewise(ChunkParser(), wire) == [message]


def test_compressed_headers_reuse_and_add_deltas() -> None:
    wire = (
        # type 0: ts 1000, length 3, video, stream 1
        header(0, 6, u24(1000), u24(3), b"\x09", (1).to_bytes(4, "little"))
        + b"AAA"
        # type 1: delta 33, new length 2, audio
        + header(1, 6, u24(33), u24(2), b"\x08")
        + b"BB"
        # type 2: delta 20, same length and type
        + header(2, 6, u24(20))
        + b"CC"
        # type 3 starting a new message: the last delta (20) again
        + header(3, 6)
        + b"DD"
    )
    got = [(m.type_id, m.timestamp, m.stream_id, m.payload) for m in ChunkParser().feed(wire)]
    assert got == [
        (9, 1000, 1, b"AAA"),
        (8, 1033, 1, b"BB"),
        (8, 1053, 1, b"CC"),
        (8, 1073, 1, b"DD"),
    ]


def test_a_type_3_right_after_a_type_0_repeats_its_timestamp_field_as_the_delta() -> None:
    # That is how ffmpeg writes (and reads) two messages 1000 ms apart.
    wire = (
        header(0, 4, u24(1000), u24(1), b"\x08", (1).to_bytes(4, "little"))
        + b"a"
        + header(3, 4)
        + b"b"
    )
    assert [m.timestamp for m in ChunkParser().feed(wire)] == [1000, 2000]


def test_an_extended_delta_in_a_type_1_header_is_added() -> None:
    wire = (
        header(0, 4, u24(5), u24(1), b"\x08", (1).to_bytes(4, "little"))
        + b"a"
        + header(1, 4, u24(0xFFFFFF), u24(1), b"\x08", (0x01000000).to_bytes(4, "big"))
        + b"b"
    )
    assert [m.timestamp for m in ChunkParser().feed(wire)] == [5, 5 + 0x01000000]


@pytest.mark.parametrize("csid", [64, 319, 320, 65599])
def test_two_and_three_byte_chunk_stream_ids_are_understood(csid: int) -> None:
    message = video(b"y" * 300, csid=csid)
    wire = ChunkWriter().encode(message)
    assert ChunkParser().feed(wire) == [message]


def test_interleaved_chunk_streams_reassemble_separately() -> None:
    writer = ChunkWriter()
    a = writer.encode(video(b"A" * 256, csid=6))  # two chunks each
    b = writer.encode(Message(messages.AUDIO, b"B" * 256, 0, 1, 4))
    # first chunk of a, first chunk of b, rest of a, rest of b
    a1, a2 = a[: 12 + 128], a[12 + 128 :]
    b1, b2 = b[: 12 + 128], b[12 + 128 :]
    got = ChunkParser().feed(a1 + b1 + a2 + b2)
    assert [(m.csid, m.payload) for m in got] == [(6, b"A" * 256), (4, b"B" * 256)]


def test_an_abort_drops_the_half_received_message() -> None:
    writer = ChunkWriter()
    first_chunk = writer.encode(video(b"Z" * 300))[: 12 + 128]
    abort = writer.encode(Message(messages.ABORT, (6).to_bytes(4, "big")))
    fresh = writer.encode(video(b"ok"))
    got = ChunkParser().feed(first_chunk + abort + fresh)
    assert [m.payload for m in got] == [(6).to_bytes(4, "big"), b"ok"]


def test_a_chunk_stream_must_start_with_a_full_header() -> None:
    with pytest.raises(ProtocolError, match="starts with a type 1"):
        ChunkParser().feed(header(1, 5, u24(0), u24(1), b"\x08") + b"a")


def test_a_new_header_in_the_middle_of_a_message_is_refused() -> None:
    writer = ChunkWriter()
    first_chunk = writer.encode(video(b"Z" * 300))[: 12 + 128]
    with pytest.raises(ProtocolError, match="before its message ended"):
        ChunkParser().feed(first_chunk + writer.encode(video(b"again")))


def test_an_oversized_message_is_refused_from_its_header() -> None:
    parser = ChunkParser(max_message_size=64 * 1024)
    wire = header(0, 3, u24(0), u24(64 * 1024 + 1), b"\x14", bytes(4))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        parser.feed(wire)


def test_many_half_messages_cannot_pile_up() -> None:
    parser = ChunkParser(max_message_size=1000, max_pending_bytes=1000)
    writer = ChunkWriter()
    wire = b"".join(writer.encode(video(b"q" * 900, csid=c))[: 12 + 128] for c in range(3, 20))
    with pytest.raises(ProtocolError, match="unfinished messages"):
        parser.feed(wire)


def test_a_zero_chunk_size_is_refused() -> None:
    with pytest.raises(ProtocolError, match="zero"):
        ChunkParser().feed(ChunkWriter().encode(messages.set_chunk_size(0)))


def test_a_peer_cannot_open_thousands_of_chunk_streams() -> None:
    # Found by tests/faults: 65536 chunk streams of empty messages (14 bytes each on the
    # wire) held 15 MB per connection before this limit.
    parser = ChunkParser()
    streams = [ChunkWriter().encode(Message(99, b"", csid=c)) for c in range(64, 64 + 64)]
    assert len(parser.feed(b"".join(streams))) == 64  # as many as the limit: fine
    assert len(parser.feed(streams[0])) == 1  # and they stay usable
    with pytest.raises(ProtocolError, match="more than 64 chunk streams"):
        parser.feed(ChunkWriter().encode(Message(99, b"", csid=1000)))
