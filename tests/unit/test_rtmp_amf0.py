"""AMF0: what publishers send must round-trip; what they must not send must fail cleanly."""

from __future__ import annotations

import math
import struct

import pytest

from kubecast_worker.rtmp import amf0
from kubecast_worker.rtmp.errors import ProtocolError


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -1.5,
        1e300,
        True,
        False,
        "",
        "live",
        "ünïcödé ✓",
        "x" * 70_000,  # a long string
        None,
        {"app": "live", "flashVer": "FMLE/3.0", "tcUrl": "rtmp://h/live", "fpad": False},
        {"nested": {"deeper": {"list": [1.0, "two", None, {"k": True}]}}},
        [],
        [1.0, [2.0, [3.0]]],
    ],
)
def test_values_survive_an_encode_decode_round_trip(value: object) -> None:
    assert amf0.decode(amf0.encode(value)) == [value]


def test_a_command_decodes_to_its_values_in_order() -> None:
    payload = amf0.encode("publish", 5.0, None, "key", "live")
    assert amf0.decode(payload) == ["publish", 5.0, None, "key", "live"]


def test_ecma_arrays_and_undefined_keep_their_kind() -> None:
    metadata = amf0.EcmaArray(width=640.0, height=360.0, encoder="Lavf")
    decoded = amf0.decode(amf0.encode(metadata, amf0.UNDEFINED))
    assert isinstance(decoded[0], amf0.EcmaArray)
    assert decoded[0] == metadata
    assert decoded[1] is amf0.UNDEFINED


def test_integers_encode_as_numbers() -> None:
    assert amf0.encode(3) == b"\x00" + struct.pack(">d", 3.0)


def test_known_bytes_decode_as_the_spec_says() -> None:
    # "_result", 1.0, {"code": "x"} exactly as FMS puts it on the wire.
    raw = (
        b"\x02\x00\x07_result"
        b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
        b"\x03\x00\x04code\x02\x00\x01x\x00\x00\x09"
    )
    assert amf0.decode(raw) == ["_result", 1.0, {"code": "x"}]


def test_dates_decode_to_milliseconds() -> None:
    raw = b"\x0b" + struct.pack(">d", 1_569_000_000_000.0) + b"\x00\x00"
    (millis,) = amf0.decode(raw)
    assert math.isclose(millis, 1_569_000_000_000.0)


def test_an_ecma_array_without_its_end_marker_is_accepted() -> None:
    # Some encoders leave the end marker off onMetaData; it is at the end of the message.
    raw = b"\x08\x00\x00\x00\x01" + b"\x00\x05width" + amf0.encode(640.0)
    assert amf0.decode(raw) == [{"width": 640.0}]


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"\x11\x0a\x0b\x01", "unsupported AMF0 marker 0x11"),  # an AMF3 switch
        (b"\x07\x00\x01", "unsupported AMF0 marker 0x07"),  # a reference
        (b"\x0f\x00\x00\x00\x00", "unsupported AMF0 marker 0x0f"),  # XML document
        (b"\xff", "unsupported AMF0 marker 0xff"),
        (b"\x09", "object-end marker outside"),
        (b"\x00\x3f\xf0", "truncated"),  # a number cut short
        (b"\x02\x00\x10abc", "truncated"),  # a string longer than the message
        (b"\x03\x00\x01k", "truncated"),  # an object without a value for its key
        (b"\x03\x00\x01k\x05", "truncated"),  # an object without an end marker
        (b"\x0a\xff\xff\xff\xff\x05", "more elements than bytes"),
    ],
)
def test_malformed_input_raises_a_protocol_error(raw: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        amf0.decode(raw)


def test_hostile_nesting_is_refused_before_the_stack_is() -> None:
    raw = b"\x0a\x00\x00\x00\x01" * 10_000 + b"\x05"
    with pytest.raises(ProtocolError, match="nested deeper"):
        amf0.decode(raw)


def test_values_amf0_cannot_express_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes"):
        amf0.encode(b"raw")
