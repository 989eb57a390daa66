"""The operator's own Prometheus metrics (workers export theirs separately)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "kubecast_operator_reconciles_total",
    "Reconcile passes, by resource kind and result (ok, error).",
    ["resource", "result"],
)
RECONCILE_SECONDS = Histogram(
    "kubecast_operator_reconcile_duration_seconds",
    "Time spent applying and observing one object's children.",
    ["resource"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STREAMS_BY_PHASE = Gauge(
    "kubecast_operator_streams",
    "LiveStreams by phase, as last written to their status.",
    ["phase"],
)
WORKER_POLL_ERRORS = Counter(
    "kubecast_operator_worker_poll_errors_total",
    "Polls of a worker's /status that failed (unreachable, bad answer).",
    ["resource"],
)
WORKER_POLLS_FORGIVEN = Counter(
    "kubecast_operator_worker_polls_forgiven_total",
    "Missed polls read as the same worker's answer just before (one in a row at most).",
    ["resource"],
)
LEADER = Gauge(
    "kubecast_operator_leader",
    "1 while this replica leads (holds the Lease, or runs without leader election), else 0.",
)
STATUS_WRITES = Counter(
    "kubecast_operator_status_writes_total",
    "Status patches written, by resource kind.",
    ["resource"],
)

PHASES = ("Pending", "Idle", "Live", "Reconnecting", "Error", "Terminating")


def count_phases(phases: Iterable[str]) -> None:
    tally = Tally(phases)
    for phase in PHASES:
        STREAMS_BY_PHASE.labels(phase).set(tally.get(phase, 0))
