"""One missed /status poll leaves a stream as it was; a worker that stops answering
is reported within two polls (worker_client.LastAnswer).

The real operator process against the real kube-apiserver. The stream's worker pod
runs on a kwok node, which only pretends to run it; its fake pod IP is routed to
the cluster namespace's loopback for this test, where a /status endpoint of the
test's own answers as an idle, ready worker does, and misses the polls it is told
to miss (it holds the request past the operator's 2 s timeout, as a worker busy
under load would, then drops it). What is asserted is what a user sees: the
stream's phase, its Ready condition and its Events.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from kubecast_operator import worker_client
from kubecast_operator.settings import WORKER_ADMIN_PORT

from . import netns
from . import operator_harness as harness
from .conftest import SAMPLES_DIR, ControlPlane

pytestmark = pytest.mark.integration
POLL_S = 1.0  # KUBECAST_POLL_SECONDS of operator_harness
#: Two polls that each time out, with room for a loaded machine and the status write.
TWO_MISSES_S = 2 * (POLL_S + worker_client.POLL_TIMEOUT_SECONDS) + 6
IDLE_WORKER = {
    "stream": "grace",
    "state": "idle",
    "ready": True,
    "ingest": {"mode": "push", "url": "rtmp://0.0.0.0:1935/live", "counters": {}},
}
STREAM = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "LiveStream",
    "metadata": {"name": "grace"},
    "spec": {"ingest": {"push": {"app": "live"}}, "profileRef": {"name": "default"}},
}


class WorkerEndpoint:
    """``GET /status`` at one pod IP inside the cluster's namespace, told when to miss."""

    def __init__(self, cp: ControlPlane, address: str) -> None:
        self.cp, self.address = cp, address
        self.lock = threading.Lock()
        self.to_miss = 0  # polls still to miss; -1: miss every one
        self.answered = 0
        self.missed = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the operator's session uses

            def do_GET(self) -> None:  # http.server's name
                if endpoint.take_miss():
                    time.sleep(worker_client.POLL_TIMEOUT_SECONDS + 1.5)
                    self.close_connection = True  # no answer: the poll has timed out
                    return
                body = json.dumps(IDLE_WORKER).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with endpoint.lock:
                    endpoint.answered += 1

            def log_message(self, *_: Any) -> None:
                pass

        # NB: the socket is made (and bound) in a thread inside the namespace, and
        # stays there: the host's own network never sees this address.
        self.server = netns.call(
            cp.netns, ThreadingHTTPServer, (address, WORKER_ADMIN_PORT), Handler
        )
        self.server.daemon_threads = True

    def take_miss(self) -> bool:
        with self.lock:
            if self.to_miss == 0:
                return False
            if self.to_miss > 0:
                self.to_miss -= 1
            self.missed += 1
            return True

    def miss(self, polls: int) -> None:
        """Miss the next ``polls`` polls (-1: every one from now on)."""
        with self.lock:
            self.to_miss = polls

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.answered, self.missed

    @classmethod
    @contextlib.contextmanager
    def serving(cls, cp: ControlPlane, address: str) -> Iterator[WorkerEndpoint]:
        route = ["ip", "route", "replace", "local", f"{address}/32", "dev", "lo", "table", "local"]
        subprocess.run([*harness.in_netns(cp.env), *route], check=True, timeout=30)
        endpoint = cls(cp, address)
        thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield endpoint
        finally:
            endpoint.server.shutdown()
            endpoint.server.server_close()
            # Back to what hack/cluster-up.sh made: nothing answers at a kwok pod IP.
            subprocess.run([*harness.in_netns(cp.env), "ip", "route", "del", *route[3:]],
                           timeout=30)  # fmt: skip


@pytest.fixture
def operator(
    control_plane: ControlPlane,
    kubecast_crds: list[str],
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[harness.Process, int]]:
    # Only the test's own namespace: the poll counters are per resource kind, and
    # streams other tests left behind (their namespaces still going) would add to them.
    proc, metrics_port = harness.operator(
        control_plane.env, tmp_path_factory.mktemp("grace"), args=("--namespace", namespace)
    )
    yield proc, metrics_port
    proc.stop()


def stream_status(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    found = harness.get_json(cp.kubectl, "-n", namespace, "livestream", "grace") or {}
    return found.get("status") or {}


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def phase_events(cp: ControlPlane, namespace: str) -> dict[str, int]:
    """The stream's phase changes so far, by phase entered (one Event per change)."""
    events = harness.get_json(
        cp.kubectl, "-n", namespace, "events", "--field-selector",
        "involvedObject.kind=LiveStream,involvedObject.name=grace",
    ) or {}  # fmt: skip
    found: dict[str, int] = {}
    for event in events.get("items") or []:
        found[event["reason"]] = found.get(event["reason"], 0) + int(event.get("count") or 1)
    return found


def poll_counters(env: dict[str, str], port: int) -> tuple[float, float]:
    """The operator's (failed, forgiven) polls of LiveStream workers, from /metrics."""
    text = harness.scrape(env, port)

    def value(name: str) -> float:
        line = next(
            (x for x in text.splitlines() if x.startswith(name + '{resource="LiveStream"}')), ""
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    return (
        value("kubecast_operator_worker_poll_errors_total"),
        value("kubecast_operator_worker_polls_forgiven_total"),
    )


def test_one_missed_poll_changes_nothing_and_a_worker_that_stops_answering_goes_pending(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    cp, (op, metrics_port) = control_plane, operator
    logs = op.output
    profile = yaml.safe_load((SAMPLES_DIR / "transcodeprofile-default.yaml").read_text())
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([profile, STREAM]))

    def pod_ip() -> str | None:
        pods = harness.get_json(
            cp.kubectl, "-n", namespace, "pods", "-l",
            "kubecast.dev/stream=grace,app.kubernetes.io/component=worker",
        ) or {}  # fmt: skip
        running = [p for p in pods.get("items") or [] if p["status"].get("phase") == "Running"]
        return running[0]["status"].get("podIP") if running else None

    address = harness.eventually("the worker pod running, with an IP", pod_ip, 90, logs=logs)
    with WorkerEndpoint.serving(cp, address) as endpoint:
        harness.eventually(
            "phase Idle", lambda: stream_status(cp, namespace).get("phase") == "Idle",
            timeout=60, logs=logs,
        )  # fmt: skip
        time.sleep(3 * POLL_S)  # a few answers in a row
        before = stream_status(cp, namespace)
        events_before = phase_events(cp, namespace)
        failed0, forgiven0 = poll_counters(cp.env, metrics_port)

        # One poll missed, then the worker answers again.
        answered0, _ = endpoint.counts()
        endpoint.miss(1)
        harness.eventually(
            "one poll missed and three answered after it",
            lambda: endpoint.counts()[1] == 1 and endpoint.counts()[0] >= answered0 + 3,
            timeout=30, logs=logs,
        )  # fmt: skip
        time.sleep(1)  # a write, had there been one, is in by now
        after = stream_status(cp, namespace)
        assert after["phase"] == "Idle"
        assert ready_condition(after) == ready_condition(before), "Ready flipped and back"
        assert ready_condition(after)["status"] == "True"
        assert phase_events(cp, namespace) == events_before, "a phase change was announced"
        failed1, forgiven1 = poll_counters(cp.env, metrics_port)
        assert (failed1 - failed0, forgiven1 - forgiven0) == (1, 1), "the operator saw the miss"

        # The worker stops answering: reported on the second miss in a row.
        endpoint.miss(-1)
        stopped = time.monotonic()
        gone = harness.eventually(
            "phase Pending, Ready False: WorkerUnreachable",
            lambda: (s := stream_status(cp, namespace)).get("phase") == "Pending"
            and ready_condition(s).get("reason") == "WorkerUnreachable" and s,
            timeout=3 * TWO_MISSES_S, logs=logs,
        )  # fmt: skip
        took = time.monotonic() - stopped
        failed2, forgiven2 = poll_counters(cp.env, metrics_port)
        assert forgiven2 - forgiven1 == 1, "only the first miss in a row is forgiven"
        assert failed2 - failed1 >= 2
        assert took < TWO_MISSES_S, f"unreachable reported {took:.1f} s after the last answer"
        assert "/status" in ready_condition(gone)["message"]  # the poll's own error
        assert phase_events(cp, namespace).get("Pending", 0) == events_before.get("Pending", 0) + 1

        # Answering again, it is Idle again.
        endpoint.miss(0)
        harness.eventually(
            "phase Idle again", lambda: stream_status(cp, namespace).get("phase") == "Idle",
            timeout=30, logs=logs,
        )  # fmt: skip
