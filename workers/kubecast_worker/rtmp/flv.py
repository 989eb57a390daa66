"""FLV, rebuilt from RTMP messages.

RTMP audio, video and data messages carry exactly the bodies of FLV tags (the FLV and
RTMP specs share them), so turning a publish session into an FLV file is a matter of
writing the FLV header and wrapping each message in an 11-byte tag header with its
timestamp. FFmpeg's flv demuxer then reads it as if it were a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from kubecast_worker.rtmp import amf0
from kubecast_worker.rtmp.errors import ProtocolError

TAG_AUDIO: Final = 8
TAG_VIDEO: Final = 9
TAG_SCRIPT: Final = 18

_FLAG_AUDIO: Final = 0x04
_FLAG_VIDEO: Final = 0x01
_TAG_HEADER_SIZE: Final = 11

# How @setDataFrame and onMetaData look in AMF0: string marker, 16-bit length, text.
SET_DATA_FRAME: Final = amf0.encode("@setDataFrame")
ON_METADATA: Final = amf0.encode("onMetaData")


def header(*, audio: bool = True, video: bool = True) -> bytes:
    """The FLV file header, followed by the first (zero) PreviousTagSize."""
    flags = (_FLAG_AUDIO if audio else 0) | (_FLAG_VIDEO if video else 0)
    return b"FLV\x01" + bytes((flags,)) + (9).to_bytes(4, "big") + bytes(4)


def tag(tag_type: int, timestamp: int, body: bytes) -> bytes:
    """One FLV tag and the PreviousTagSize that follows it."""
    timestamp &= 0xFFFFFFFF
    size = len(body)
    return b"".join(
        (
            bytes((tag_type,)),
            size.to_bytes(3, "big"),
            (timestamp & 0xFFFFFF).to_bytes(3, "big"),
            bytes((timestamp >> 24,)),  # FLV keeps the top 8 bits of 32 apart
            bytes(3),  # stream id, always 0
            body,
            (_TAG_HEADER_SIZE + size).to_bytes(4, "big"),
        )
    )


def metadata_body(payload: bytes) -> bytes | None:
    """The FLV script-tag body for an RTMP data message, or None if it is not metadata.

    Publishers send ``@setDataFrame, onMetaData, {...}``; a file holds
    ``onMetaData, {...}``. The raw bytes are kept so that nothing is lost in a re-encode.
    """
    if payload.startswith(SET_DATA_FRAME):
        payload = payload[len(SET_DATA_FRAME) :]
    return payload if payload.startswith(ON_METADATA) else None


def decode_metadata(body: bytes) -> dict[str, Any]:
    """The onMetaData properties (width, framerate, videocodecid, ...); {} if unreadable.

    Metadata is advisory, so a value we cannot decode is not worth dropping a stream for.
    """
    try:
        values = amf0.decode(body)
    except ProtocolError:
        return {}
    if len(values) >= 2 and isinstance(values[1], dict):
        return dict(values[1])
    return {}


def flags_from_metadata(metadata: dict[str, Any]) -> tuple[bool, bool]:
    """Which of (audio, video) the header should announce.

    The demuxer waits for every announced stream while probing, so announcing audio for a
    video-only publisher would delay the start; without metadata we announce both.
    """
    audio = "audiocodecid" in metadata
    video = "videocodecid" in metadata
    return (audio, video) if audio or video else (True, True)


def split_aggregate(payload: bytes, timestamp: int) -> Iterator[tuple[int, int, bytes]]:
    """The (tag type, timestamp, body) of each FLV tag packed in an aggregate message.

    Sub-tag timestamps are rebased so the first one lands on the aggregate's own.
    """
    view = memoryview(payload)
    offset = 0
    base: int | None = None
    while offset < len(view):
        if offset + _TAG_HEADER_SIZE > len(view):
            raise ProtocolError("truncated tag header in an aggregate message")
        tag_type = view[offset]
        size = int.from_bytes(view[offset + 1 : offset + 4], "big")
        sub_ts = int.from_bytes(view[offset + 4 : offset + 7], "big") | (view[offset + 7] << 24)
        body_start = offset + _TAG_HEADER_SIZE
        if body_start + size + 4 > len(view):
            raise ProtocolError("truncated tag body in an aggregate message")
        if base is None:
            base = sub_ts
        yield (
            tag_type,
            (timestamp + sub_ts - base) & 0xFFFFFFFF,
            bytes(view[body_start : body_start + size]),
        )
        offset = body_start + size + 4
