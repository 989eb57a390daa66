"""Reaching into the local cluster's network namespace from a test.

The cluster (API server, node, pods, ClusterIPs) lives in a network namespace
of its own; the host has none of its addresses. A test that must talk to a pod
IP or a ClusterIP does it from a thread that entered that namespace: setns(2)
moves only the calling thread, and a socket stays in the namespace it was made
in, so nothing in the host's own namespace ever sends to a private address.

``private_namespace`` makes a namespace of a test's own (the WebRTC tests: aioice
never offers 127.0.0.1, so their peers need an address that exists only there).
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _load_tunnel() -> Any:
    """hack/tunnel.py, the one place that knows how to enter the namespace."""
    spec = importlib.util.spec_from_file_location("kubecast_tunnel", TUNNEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NB: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TUNNEL = Path(__file__).resolve().parents[2] / "hack" / "tunnel.py"
_enter: Callable[[str], None] = _load_tunnel().enter_netns


def call(path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh thread inside the namespace at ``path``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _enter(path)
            result.append(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller's thread
            errors.append(error)

    thread = threading.Thread(target=target, name="in-netns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def http_get(path: str, url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET ``url`` from inside the namespace; returns (status, body)."""

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    return call(path, get)


@contextlib.contextmanager
def private_namespace(name: str, address: str) -> Iterator[str]:
    """A network namespace with loopback and one more address, ``address`` (/24), that
    exists only there; yields its path for ``nsenter --net=``; deleted afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["link", "set", "lo", "up"],
            # NB: a veth pair, not a dummy: this kernel may lack the dummy module.
            ["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
            ["addr", "add", f"{address}/24", "dev", "veth0"],
            ["link", "set", "veth0", "up"],
            ["link", "set", "veth1", "up"],
        ):
            subprocess.run(["ip", "-n", name, *command], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
