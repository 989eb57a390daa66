"""Start and stop the real operator as a process, for tests.

The operator runs inside the cluster's network namespace (``nsenter --net``),
where pod IPs and ClusterIPs exist; the host has none of them. That is the
process a developer iterates on; the end-to-end tests run the operator image
as a real pod instead (``helm install``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import netns

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process with its output in a log file, stopped by process group."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as sink:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# Media pods of operator-only tests go to the kwok nodes: nothing runs there,
# so the tests see what the operator does, not what a worker does.
ON_KWOK = {
    "KUBECAST_WORKER_NODE_SELECTOR": json.dumps({"type": "kwok"}),
    "KUBECAST_WORKER_TOLERATIONS": json.dumps(
        [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
    ),
}


def in_netns(env: dict[str, str]) -> list[str]:
    """The command prefix that runs a program inside the cluster's network namespace."""
    return ["nsenter", f"--net={env['KUBECAST_NETNS_PATH']}", "--"]


def operator(
    env: dict[str, str],
    workdir: Path,
    name: str = "operator",
    *,
    kwok: bool = True,
    args: tuple[str, ...] = (),
    **settings: str,
) -> tuple[Process, int]:
    """An operator process inside the cluster's namespace; returns it and its metrics port.

    ``kwok``: put the streams' media pods on the kwok nodes (see ON_KWOK).
    ``args``: more command-line flags (e.g. ``--no-leader-election``).
    """
    metrics_port = free_port()
    proc_env = {
        **env,
        "KUBECONFIG": env["KUBECONFIG_NETNS"],
        "KUBECAST_POLL_SECONDS": "1",
        "KUBECAST_RESYNC_SECONDS": "10",
        "KUBECAST_PUBLIC_HOST": "127.0.0.1",
        **(ON_KWOK if kwok else {}),
        **settings,
    }
    argv = [
        *in_netns(env),
        str(BIN / "kubecast-operator"),
        "--metrics-port",
        str(metrics_port),
        "--liveness-port",
        str(free_port()),
        "--lease-namespace",
        "default",
        *args,
    ]
    return Process(argv, env=proc_env, log=workdir / f"{name}.log").start(), metrics_port


def get_json(kubectl: Callable[..., Any], *args: str) -> dict[str, Any] | None:
    proc = kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def scrape(env: dict[str, str], port: int) -> str:
    """GET /metrics of a process inside the cluster's namespace (real HTTP)."""
    status, body = netns.http_get(env["KUBECAST_NETNS_PATH"], f"http://127.0.0.1:{port}/metrics")
    assert status == 200, f"/metrics answered {status}"
    return body.decode()


def eventually(
    what: str,
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.5,
    logs: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    tail = "\n".join((logs() if logs else "").splitlines()[-40:])
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{tail}")
