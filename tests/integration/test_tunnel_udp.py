"""hack/tunnel.py's UDP door, against a UDP server inside a network namespace.

What an SRT publisher on the host needs from the tunnel: datagrams from each
client reach the server inside the namespace from a socket of their own, and the
server's replies come back to that client, not to another one. The namespace is
made here (``ip netns add``), with only its loopback up, and removed after.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from . import netns

pytestmark = pytest.mark.integration

tunnel = netns._load_tunnel()


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"kubecast-udp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_each_udp_client_gets_its_own_flow_and_its_own_replies(namespace: str) -> None:
    # The server, inside the namespace: answers each datagram with who sent it.
    server = netns.call(namespace, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    netns.call(namespace, server.bind, ("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(5)

    async def main() -> list[tuple[int, bytes]]:
        door = await tunnel.listen_udp(tunnel.Dialer(namespace), "127.0.0.1", 0, "127.0.0.1", port)
        listen = door.transport.get_extra_info("sockname")
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        loop = asyncio.get_running_loop()

        def serve(n: int) -> None:
            for _ in range(n):
                data, sender = server.recvfrom(2048)
                server.sendto(data + f" via {sender[1]}".encode(), sender)

        serving = loop.run_in_executor(None, serve, 4)
        for round_ in range(2):
            for i, c in enumerate(clients):
                c.sendto(f"client{i} round{round_}".encode(), listen)
        got = []
        for i, c in enumerate(clients):
            c.settimeout(5)
            for _ in range(2):
                data = (await loop.run_in_executor(None, c.recvfrom, 2048))[0]
                got.append((i, data))
        await serving
        door.close()
        for c in clients:
            c.close()
        return got

    try:
        got = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        server.close()
    via: dict[int, set[str]] = {}
    for i, data in got:
        text = data.decode()
        assert text.startswith(f"client{i} "), got  # a reply reaches the one who asked
        via.setdefault(i, set()).add(text.rsplit(" via ", 1)[1])
    # One namespace-side socket per client, kept across its datagrams.
    assert all(len(ports) == 1 for ports in via.values()), via
    assert via[0] != via[1], via
