"""AMF0, the value encoding of RTMP commands and of FLV/RTMP metadata.

Only the AMF0 markers that publishers really send are supported. Anything else (an AMF3
switch, references, XML documents, typed objects) raises :class:`ProtocolError`, which
ends that one connection cleanly instead of crashing the worker.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from kubecast_worker.rtmp.errors import ProtocolError

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C

# Nesting is bounded so that a hostile peer cannot recurse us into a RecursionError.
MAX_DEPTH: Final = 32

_DOUBLE = struct.Struct(">d")


class _Undefined:
    """AMF0 ``undefined``: distinct from ``null`` (None), which commands also use."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()


class EcmaArray(dict[str, Any]):
    """A mapping that encodes as an ECMA array (the shape of ``onMetaData``), not an object."""


def encode(*values: Any) -> bytes:
    """Encode values one after the other, as in a command message body."""
    out = bytearray()
    for value in values:
        _encode_value(out, value)
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every value in ``data``; trailing partial values raise :class:`ProtocolError`.

    Objects decode to ``dict``, ECMA arrays to :class:`EcmaArray`, strict arrays to
    ``list``, dates to their milliseconds since the epoch (a float), ``undefined`` to
    :data:`UNDEFINED`.
    """
    view = memoryview(data)
    values: list[Any] = []
    offset = 0
    while offset < len(view):
        value, offset = decode_value(view, offset)
        values.append(value)
    return values


def decode_value(view: memoryview, offset: int, *, depth: int = 0) -> tuple[Any, int]:
    """Decode one value at ``offset``; return it and the offset just past it."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"AMF0 values nested deeper than {MAX_DEPTH} levels")
    marker = _take(view, offset, 1)[0]
    offset += 1
    if marker == NUMBER:
        return _DOUBLE.unpack(_take(view, offset, 8))[0], offset + 8
    if marker == BOOLEAN:
        return _take(view, offset, 1)[0] != 0, offset + 1
    if marker == STRING:
        return _decode_string(view, offset, length_size=2)
    if marker == LONG_STRING:
        return _decode_string(view, offset, length_size=4)
    if marker == OBJECT:
        obj: dict[str, Any] = {}
        return obj, _decode_properties(view, offset, obj, depth=depth, end_optional=False)
    if marker == ECMA_ARRAY:
        # NB: the count is only a hint (encoders get it wrong); the end marker decides.
        _take(view, offset, 4)
        array = EcmaArray()
        return array, _decode_properties(view, offset + 4, array, depth=depth, end_optional=True)
    if marker == STRICT_ARRAY:
        count = int.from_bytes(_take(view, offset, 4), "big")
        offset += 4
        # Every element takes at least one byte: refuse impossible counts up front.
        if count > len(view) - offset:
            raise ProtocolError("AMF0 strict array claims more elements than bytes remain")
        items = []
        for _ in range(count):
            item, offset = decode_value(view, offset, depth=depth + 1)
            items.append(item)
        return items, offset
    if marker == NULL:
        return None, offset
    if marker == UNDEFINED_MARKER:
        return UNDEFINED, offset
    if marker == DATE:
        millis = _DOUBLE.unpack(_take(view, offset, 8))[0]
        _take(view, offset + 8, 2)  # the time zone, which the spec says to ignore
        return millis, offset + 10
    if marker == OBJECT_END:
        raise ProtocolError("AMF0 object-end marker outside of an object")
    raise ProtocolError(f"unsupported AMF0 marker 0x{marker:02x}")


def _take(view: memoryview, offset: int, size: int) -> memoryview:
    if offset + size > len(view):
        raise ProtocolError("truncated AMF0 value")
    return view[offset : offset + size]


def _decode_string(view: memoryview, offset: int, *, length_size: int) -> tuple[str, int]:
    length = int.from_bytes(_take(view, offset, length_size), "big")
    offset += length_size
    raw = _take(view, offset, length)
    return bytes(raw).decode("utf-8", errors="replace"), offset + length


def _decode_properties(
    view: memoryview, offset: int, into: dict[str, Any], *, depth: int, end_optional: bool
) -> int:
    while True:
        if end_optional and offset == len(view):
            return offset  # some encoders leave the end marker off ECMA arrays
        key, offset = _decode_string(view, offset, length_size=2)
        if not key and _take(view, offset, 1)[0] == OBJECT_END:
            return offset + 1
        into[key], offset = decode_value(view, offset, depth=depth + 1)


def _encode_value(out: bytearray, value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0 values nested deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):  # NB: before int, since bool is an int
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, int | float):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += len(raw).to_bytes(2, "big")
        else:
            out.append(LONG_STRING)
            out += len(raw).to_bytes(4, "big")
        out += raw
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY)
        out += len(value).to_bytes(4, "big")
        _encode_properties(out, value, depth)
    elif isinstance(value, Mapping):
        out.append(OBJECT)
        _encode_properties(out, value, depth)
    elif isinstance(value, list | tuple):
        out.append(STRICT_ARRAY)
        out += len(value).to_bytes(4, "big")
        for item in value:
            _encode_value(out, item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _encode_properties(out: bytearray, mapping: Mapping[str, Any], depth: int) -> None:
    for key, item in mapping.items():
        raw = str(key).encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("AMF0 property names are limited to 65535 bytes")
        out += len(raw).to_bytes(2, "big") + raw
        _encode_value(out, item, depth + 1)
    out += b"\x00\x00" + bytes((OBJECT_END,))
