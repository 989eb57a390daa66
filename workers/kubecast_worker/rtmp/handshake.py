"""The RTMP handshake, server side.

We speak the plain ("simple") handshake of the RTMP 1.0 spec, section 5.2: S1 carries a
zero version field, which tells clients that also know the Flash-Player-9 digest variant
(ffmpeg, librtmp and thus OBS) to skip digest validation. Publishers do not need the
digest; only old Flash players insisted on it for playback.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Final

from kubecast_worker.rtmp.errors import ProtocolError, SilentPeer

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read C0+C1, answer S0+S1+S2, read C2.

    Raises :class:`SilentPeer` when the peer closes before sending anything,
    :class:`ProtocolError` when the first byte is not RTMP's version 3 (HTTP requests,
    TLS hellos and random bytes fail here, at the first byte), and
    ``asyncio.IncompleteReadError`` when the peer leaves halfway. The caller applies the
    timeout, so a peer trickling bytes cannot hold the connection open.
    """
    c0 = await reader.read(1)
    if not c0:
        raise SilentPeer()
    if c0[0] != RTMP_VERSION:
        raise ProtocolError(f"not an RTMP handshake (version byte 0x{c0[0]:02x}, expected 0x03)")
    c1 = await reader.readexactly(HANDSHAKE_SIZE)
    uptime = int(time.monotonic() * 1000) & 0xFFFFFFFF
    s1 = uptime.to_bytes(4, "big") + bytes(4) + os.urandom(HANDSHAKE_SIZE - 8)
    # S2 echoes C1; clients compare it loosely or not at all.
    writer.write(bytes((RTMP_VERSION,)) + s1 + c1)
    await writer.drain()
    # C2 should echo S1, but digest-speaking clients fill it differently; nothing in it
    # matters to a server that does not do the digest, so it is read and dropped.
    await reader.readexactly(HANDSHAKE_SIZE)
