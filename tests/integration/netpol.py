"""Probing NetworkPolicy on the local cluster's real node, with real TCP between real pods.

The CNI bridge enforces no policy; kube-router's network policy controller does
(hack/cluster-up.sh, docs/local-cluster.md). These helpers start pods from the
worker image (it has Python, so no other image is needed) and try TCP connections
from inside one pod to another pod's address, the way any client in the cluster
would connect. Reuse them for any policy: make a probe pod with the labels (and in
the namespace) that a policy should let in or keep out, then ask ``connect``.

    probe = netpol.Probe.start(cp, namespace, "client", labels={"role": "client"})
    outcome, seconds = netpol.wait_for(probe, ip, 8080, "refused")
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from . import operator_harness as harness
from .conftest import REPO_ROOT, ControlPlane

# kube-router answers a connection its policies refuse with ICMP port-unreachable
# (REJECT), which the client sees as "refused", like a port nobody listens on:
# a test of a policy has a listener on the port, and shows it open to someone.
Outcome = Literal["open", "blocked", "refused"]
CONNECT_TIMEOUT_S = 2.0

# Prints one word: open (handshake done), refused (RST, e.g. REJECT or no
# listener), blocked (no answer within the timeout: dropped).
_CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("blocked")
except OSError as error:
    print("blocked" if error.errno == 113 else f"error {error}")  # 113: no route (ICMP reject)
"""

# TCP servers that accept and close: enough to tell a handshake from a refusal.
_LISTEN = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    sel.register(socket.create_server(("0.0.0.0", int(port)), backlog=64), selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        key.fileobj.accept()[0].close()
"""


def worker_image() -> str:
    """The worker image `make images` builds (the chart's default, as containerd names it)."""
    chart = yaml.safe_load((REPO_ROOT / "charts" / "kubecast" / "Chart.yaml").read_text())
    return f"docker.io/kubecast/worker:{chart['appVersion']}"


@dataclass
class Probe:
    """A running pod that can listen on a port and connect to others."""

    cp: ControlPlane
    namespace: str
    name: str

    @classmethod
    def start(
        cls,
        cp: ControlPlane,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str],
        listen: tuple[int, ...] = (),
        image: str | None = None,
    ) -> Probe:
        """Create the pod (listening on the TCP ports ``listen``) and wait until it runs."""
        command = (
            ["python", "-c", _LISTEN, *map(str, listen)]
            if listen
            else ["python", "-c", "import time; time.sleep(10**6)"]
        )
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "main", "image": image or worker_image(),
                    "imagePullPolicy": "IfNotPresent", "command": command,
                    "securityContext": {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }  # fmt: skip
        cp.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod))
        probe = cls(cp, namespace, name)
        harness.eventually(f"pod {name} running", lambda: probe.ip(), timeout=120)
        return probe

    def ip(self) -> str | None:
        doc = harness.get_json(self.cp.kubectl, "-n", self.namespace, "pod", self.name)
        if not doc or doc["status"].get("phase") != "Running":
            return None
        statuses = doc["status"].get("containerStatuses") or []
        if not all(s.get("ready") for s in statuses):
            return None
        ip: str | None = doc["status"].get("podIP")
        return ip

    def connect(self, host: str, port: int) -> Outcome:
        """One TCP connection from inside this pod to ``host:port``."""
        proc = self.cp.kubectl(
            "-n", self.namespace, "exec", self.name, "--",
            "python", "-c", _CONNECT, host, str(port), str(CONNECT_TIMEOUT_S),
        )  # fmt: skip
        word = proc.stdout.strip()
        assert word in ("open", "blocked", "refused"), f"probe from {self.name}: {word!r}"
        return word  # type: ignore[return-value]


def wait_for(
    probe: Probe, host: str, port: int, want: Outcome | set[Outcome], timeout: float = 60
) -> tuple[Outcome, float]:
    """Connect until the outcome is ``want``; returns it and the seconds it took.

    kube-router applies a policy change within seconds (it syncs on the watch
    event), not at once: a test waits for the new state, and then asserts it holds.
    """
    wanted = {want} if isinstance(want, str) else want
    start = time.monotonic()
    seen: list[Outcome] = []

    def reached() -> Outcome | None:
        outcome = probe.connect(host, port)
        seen.append(outcome)
        return outcome if outcome in wanted else None

    try:
        outcome = harness.eventually(
            f"{probe.name} -> {host}:{port} {sorted(wanted)}",
            reached, timeout=timeout, interval=0.5,
        )  # fmt: skip
    except AssertionError as error:
        raise AssertionError(f"{error}\noutcomes seen, last 10: {seen[-10:]}") from None
    return outcome, time.monotonic() - start


def netns_rules(cp: ControlPlane) -> tuple[str, list[str]]:
    """The filter table and the ipset names inside the cluster's network namespace."""
    prefix = ["nsenter", f"--net={cp.netns}", "--"]
    rules = subprocess.run(
        [*prefix, "iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout
    sets = subprocess.run(
        [*prefix, "ipset", "list", "-n"], capture_output=True, text=True, check=True
    ).stdout.split()
    return rules, sets
