#!/usr/bin/env python3
"""Loopback doors into the local cluster's network namespace.

The whole local cluster (API server, node, pods, Services) lives inside one
network namespace that ``hack/cluster-up.sh`` creates, so that none of its
private-range addresses exists in the host's own namespace. This program is the
only way in from the host, and it only ever listens on loopback:

``--forward 127.0.0.1:PORT=HOST:PORT``
    a fixed TCP door: a connection to the host's loopback port is joined to
    HOST:PORT as seen from inside the namespace (the API server, a NodePort).
    PORT 0 picks a free port; the chosen ``listen=...`` pair is printed.

``--load-balancers``
    a bare-metal load balancer for Services of type LoadBalancer, in the spirit
    of ``minikube tunnel`` or cloud-provider-kind: every such Service gets its
    own loopback address from ``--lb-range`` (127.77.0.0/16), written to its
    ``status.loadBalancer.ingress``, and each of its ports there is joined
    to the Service's ClusterIP inside the namespace (kube-proxy does the rest,
    as it would for a cloud load balancer's traffic). TCP ports are joined per
    connection; UDP ports (SRT) per client address: each sender gets a socket of
    its own inside the namespace, so replies find their way back, and one that
    stays silent for ``UDP_IDLE_S`` is forgotten.

How it stays on loopback: listening sockets are made in the host namespace by
the main thread; outbound sockets are made by threads that have entered the
cluster's namespace with setns(2). A socket stays in the namespace it was made
in, so joining the two is plain copying.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

log = logging.getLogger("tunnel")
CLONE_NEWNET = 0x40000000
CHUNK = 256 * 1024


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Dialer:
    """Opens TCP connections from inside the namespace, for the asyncio side."""

    def __init__(self, netns: str) -> None:
        # A few threads: a connect that waits for a SYN timeout must not hold up the others.
        self.pool = ThreadPoolExecutor(4, "netns-dial", initializer=enter_netns, initargs=(netns,))

    async def open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(
            self.pool, partial(socket.create_connection, (host, port), timeout=10)
        )
        sock.setblocking(False)
        return await asyncio.open_connection(sock=sock)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still talk
    except (ConnectionError, OSError):
        writer.close()


async def join(
    dialer: Dialer, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways between an accepted client and HOST:PORT inside the namespace."""
    try:
        up_reader, up_writer = await dialer.open(host, port)
    except OSError as error:
        log.info("cannot reach %s:%s in the cluster: %s", host, port, error)
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()


async def listen(
    dialer: Dialer, listen_host: str, listen_port: int, host: str, port: int
) -> asyncio.Server:
    return await asyncio.start_server(
        lambda r, w: join(dialer, host, port, r, w), listen_host, listen_port, reuse_address=True
    )


# --- UDP -------------------------------------------------------------------------------

UDP_IDLE_S = 120.0


def _udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket connected to HOST:PORT; made in a dialing thread, so in the namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    return sock


class _Back(asyncio.DatagramProtocol):
    """The namespace side of one client's flow: what comes back goes to the client."""

    def __init__(self, door: UdpDoor, client: tuple[str, int]) -> None:
        self.door, self.client = door, client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.door.touch(self.client)
        if self.door.transport is not None:
            self.door.transport.sendto(data, self.client)


class UdpDoor(asyncio.DatagramProtocol):
    """One loopback UDP port joined to HOST:PORT inside the namespace."""

    def __init__(self, dialer: Dialer, host: str, port: int) -> None:
        self.dialer, self.host, self.port = dialer, host, port
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self.waiting: dict[tuple[str, int], list[bytes]] = {}  # datagrams while a flow opens
        self.seen: dict[tuple[str, int], float] = {}
        self.sweeper: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NB: asyncio's selector datagram transport is not an isinstance of
        # DatagramTransport, though it is one in all but name.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def touch(self, client: tuple[str, int]) -> None:
        self.seen[client] = asyncio.get_running_loop().time()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        client = (addr[0], addr[1])
        self.touch(client)
        if (flow := self.flows.get(client)) is not None:
            flow.sendto(data)
        elif client in self.waiting:
            self.waiting[client].append(data)
        else:
            self.waiting[client] = [data]
            asyncio.get_running_loop().create_task(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = await loop.run_in_executor(
                self.dialer.pool, partial(_udp_socket, self.host, self.port)
            )
            flow, _ = await loop.create_datagram_endpoint(lambda: _Back(self, client), sock=sock)
        except OSError as error:
            log.info("cannot reach udp %s:%s in the cluster: %s", self.host, self.port, error)
            self.waiting.pop(client, None)
            return
        self.flows[client] = flow
        for data in self.waiting.pop(client, []):
            flow.sendto(data)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(UDP_IDLE_S / 4)
            now = asyncio.get_running_loop().time()
            for client in [c for c, t in self.seen.items() if now - t > UDP_IDLE_S]:
                self.seen.pop(client, None)
                if (flow := self.flows.pop(client, None)) is not None:
                    flow.close()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for flow in self.flows.values():
            flow.close()
        if self.transport is not None:
            self.transport.close()


async def listen_udp(
    dialer: Dialer, listen_host: str, listen_port: int, host: str, port: int
) -> UdpDoor:
    door = UdpDoor(dialer, host, port)
    await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: door, local_addr=(listen_host, listen_port)
    )
    return door


# --- load balancers -----------------------------------------------------------------


@dataclass
class Balanced:
    """One LoadBalancer Service and the doors open for it."""

    address: str
    cluster_ip: str
    ports: tuple[tuple[int, str], ...]  # (port, protocol)
    servers: list[asyncio.Server | UdpDoor] = field(default_factory=list)


class LoadBalancers:
    """Gives LoadBalancer Services a loopback address and opens their ports there."""

    def __init__(self, *, dialer: Dialer, kubeconfig: str, netns: str, lb_range: str) -> None:
        self.dialer, self.kubeconfig, self.netns = dialer, kubeconfig, netns
        self.pool = list(ipaddress.ip_network(lb_range).hosts())[1:]  # .0.1 stays 127.0.0.1-like
        self.by_service: dict[str, Balanced] = {}

    def _free_address(self, wanted: str | None) -> str:
        taken = {b.address for b in self.by_service.values()}
        if wanted and wanted not in taken and ipaddress.ip_address(wanted) in self.pool:
            return wanted
        return next(str(a) for a in self.pool if str(a) not in taken)

    async def changed(self, kind: str, service: Any, api: Any) -> None:
        key = f"{service.metadata.namespace}/{service.metadata.name}"
        wanted = (
            kind != "DELETED"
            and service.spec.type == "LoadBalancer"
            and not service.spec.load_balancer_class
            and service.spec.cluster_ip not in (None, "", "None")
        )
        current = self.by_service.get(key)
        ports = tuple(
            sorted(
                (p.port, p.protocol or "TCP")
                for p in service.spec.ports or []
                if p.protocol in (None, "TCP", "UDP")
            )
        )
        if current and (
            not wanted or current.ports != ports or current.cluster_ip != service.spec.cluster_ip
        ):
            for server in current.servers:
                server.close()
            del self.by_service[key]
            log.info("closed %s at %s", key, current.address)
            if not wanted:
                return
        if not wanted or key in self.by_service:
            return
        ingress = (
            (service.status.load_balancer.ingress or []) if service.status.load_balancer else []
        )
        address = self._free_address(ingress[0].ip if ingress else None)
        entry = Balanced(address=address, cluster_ip=service.spec.cluster_ip, ports=ports)
        for port, protocol in ports:
            opener = listen_udp if protocol == "UDP" else listen
            try:
                entry.servers.append(
                    await opener(self.dialer, address, port, entry.cluster_ip, port)
                )
            except OSError as error:
                log.error(
                    "cannot listen on %s %s:%s for %s: %s", protocol, address, port, key, error
                )
        self.by_service[key] = entry
        log.info("opened %s at %s ports %s -> %s", key, address, ports, entry.cluster_ip)
        if not ingress or ingress[0].ip != address:
            body = {"status": {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "Proxy"}]}}}
            # NB: in a dialing thread: the API server is reached from inside the namespace.
            await asyncio.get_running_loop().run_in_executor(
                self.dialer.pool,
                partial(
                    api.patch_namespaced_service_status,
                    service.metadata.name,
                    service.metadata.namespace,
                    body,
                ),
            )

    def watch_forever(self, post: Callable[[str, Any, Any], None]) -> None:
        """Blocking: runs in its own thread, inside the namespace, and posts each change."""
        from kubernetes import client, config, watch

        enter_netns(self.netns)
        api = client.CoreV1Api(config.new_client_from_config(config_file=self.kubeconfig))
        while True:
            try:
                listed = api.list_service_for_all_namespaces()
                for item in listed.items:
                    post("ADDED", item, api)
                stream = watch.Watch().stream(
                    api.list_service_for_all_namespaces,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                )
                for event in stream:
                    post(event["type"], event["object"], api)
            except Exception as error:  # the API server restarts in some tests: start over
                log.info("service watch ended (%s); listing again", error)
                threading.Event().wait(1)


# --- main ---------------------------------------------------------------------------


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def main(args: argparse.Namespace) -> None:
    dialer = Dialer(args.netns)
    servers = []
    for spec in args.forward:
        left, _, right = spec.partition("=")
        lhost, lport = _hostport(left)
        if not ipaddress.ip_address(lhost).is_loopback:
            raise SystemExit(f"--forward {spec}: listen only on loopback")
        server = await listen(dialer, lhost, lport, *_hostport(right))
        bound = server.sockets[0].getsockname()
        print(f"listen={bound[0]}:{bound[1]} to={right}", flush=True)
        servers.append(server)
    if args.load_balancers:
        if not args.kubeconfig:
            raise SystemExit("--load-balancers needs --kubeconfig (the namespace's view)")
        balancers = LoadBalancers(
            dialer=dialer, kubeconfig=args.kubeconfig, netns=args.netns, lb_range=args.lb_range
        )
        loop = asyncio.get_running_loop()

        def post(kind: str, service: Any, api: Any) -> None:
            fut = asyncio.run_coroutine_threadsafe(balancers.changed(kind, service, api), loop)
            fut.add_done_callback(lambda f: f.exception() and log.error("%s", f.exception()))

        threading.Thread(target=balancers.watch_forever, args=(post,), daemon=True).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--netns", required=True, help="path of the namespace, e.g. /run/netns/NAME")
    p.add_argument("--forward", action="append", default=[], metavar="127.0.0.1:PORT=HOST:PORT")
    p.add_argument("--load-balancers", action="store_true")
    p.add_argument("--kubeconfig", help="kubeconfig valid inside the namespace")
    p.add_argument("--lb-range", default="127.77.0.0/16")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tunnel %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse(sys.argv[1:])))
