"""RTMP messages: their type ids, and the few that the ingest server sends.

Message layout follows Adobe's "RTMP Specification 1.0" (2012), sections 5.4 (protocol
control), 6.2 (user control) and 7 (commands).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from kubecast_worker.rtmp import amf0

# Protocol control messages (always chunk stream 2, message stream 0).
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2
ACKNOWLEDGEMENT: Final = 3
USER_CONTROL: Final = 4
WINDOW_ACK_SIZE: Final = 5
SET_PEER_BANDWIDTH: Final = 6
# Media and commands.
AUDIO: Final = 8
VIDEO: Final = 9
DATA_AMF3: Final = 15
COMMAND_AMF3: Final = 17
DATA_AMF0: Final = 18
COMMAND_AMF0: Final = 20
AGGREGATE: Final = 22

# User control events we act on.
STREAM_BEGIN: Final = 0
PING_REQUEST: Final = 6
PING_RESPONSE: Final = 7

# Chunk streams the server writes on: the ones FMS, nginx-rtmp and ffmpeg use, so that
# clients with hard-wired expectations are not surprised.
CONTROL_CSID: Final = 2
COMMAND_CSID: Final = 3
STATUS_CSID: Final = 5


@dataclass(frozen=True, slots=True)
class Message:
    """One reassembled RTMP message."""

    type_id: int
    payload: bytes
    timestamp: int = 0
    stream_id: int = 0
    csid: int = CONTROL_CSID


def set_chunk_size(size: int) -> Message:
    return Message(SET_CHUNK_SIZE, size.to_bytes(4, "big"))


def window_ack_size(size: int) -> Message:
    return Message(WINDOW_ACK_SIZE, size.to_bytes(4, "big"))


def set_peer_bandwidth(size: int, *, limit_type: int = 2) -> Message:
    """Limit type 2 is "dynamic", which is what FMS and nginx-rtmp send."""
    return Message(SET_PEER_BANDWIDTH, size.to_bytes(4, "big") + bytes((limit_type,)))


def acknowledgement(sequence: int) -> Message:
    return Message(ACKNOWLEDGEMENT, (sequence & 0xFFFFFFFF).to_bytes(4, "big"))


def user_control(event: int, value: int) -> Message:
    return Message(USER_CONTROL, event.to_bytes(2, "big") + (value & 0xFFFFFFFF).to_bytes(4, "big"))


def command(name: str, transaction_id: float, *args: Any, stream_id: int = 0) -> Message:
    csid = COMMAND_CSID if stream_id == 0 else STATUS_CSID
    payload = amf0.encode(name, transaction_id, *args)
    return Message(COMMAND_AMF0, payload, stream_id=stream_id, csid=csid)


def on_status(*, stream_id: int, level: str, code: str, description: str) -> Message:
    """A NetStream status event; ``level`` "error" makes ffmpeg and OBS give up."""
    info = {"level": level, "code": code, "description": description}
    return command("onStatus", 0, None, info, stream_id=stream_id)
