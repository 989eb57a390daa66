"""ICE for the worker's WebRTC peers (WHIP publishers, WHEP viewers): which addresses.

No STUN or TURN server is contacted: aiortc's default asks a public STUN server,
which a cluster may not reach and which the worker has no need of when its
address is reachable as it is (see docs/webrtc.md for NAT and TURN).

The host candidates are the worker's bind address when it is a specific one, or
every non-loopback interface when it is 0.0.0.0 (aioice never offers 127.0.0.1).
The UDP ports are ephemeral: aioice has no port range.
"""

from __future__ import annotations

import logging

import aioice.ice
from aiortc import RTCConfiguration

ANY = ("", "0.0.0.0", "::")


def configuration() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


def only_addresses(host: str) -> None:
    """Host candidates on ``host`` alone, when the worker binds a specific address.

    NB: aioice gathers on every interface and has no option for fewer, so this
    replaces its module's address lookup, for the whole process: a worker serves
    one stream, and binds all its listeners to the one address (``--bind-host``).
    """
    # aioice logs every candidate pair's state change at INFO; its warnings stay.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if host in ANY:
        return
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [host]
