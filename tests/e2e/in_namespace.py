"""Talking to a worker that runs in a test's network namespace (the WebRTC tests):
its /status and /metrics, read from a thread inside that namespace (tests/integration/netns.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from conftest import WorkerProcess, until

from tests.integration import netns


def status(worker: WorkerProcess, namespace: str) -> dict[str, Any]:
    code, body = netns.http_get(namespace, worker.admin_url("/status"))
    assert code == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def wait_state(worker: WorkerProcess, namespace: str, state: str, timeout: float = 30) -> float:
    """Wait for ``state``; returns when it was seen (time.monotonic())."""
    until(
        lambda: status(worker, namespace)["state"] == state or worker.process.poll() is not None,
        timeout=timeout,
        what=f"state {state}",
        every=0.2,
    )
    assert worker.process.poll() is None, "\n".join(worker.raw[-30:])
    return time.monotonic()


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(worker: WorkerProcess, namespace: str) -> Metrics:
    """The worker's /metrics, as Prometheus parses it: (sample name, its labels but the
    stream's) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    code, body = netns.http_get(namespace, worker.admin_url("/metrics"))
    assert code == 200, body
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k != "stream")): (
            sample.value
        )
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def whep_viewers(metrics: Metrics) -> dict[str, float]:
    return {
        dict(labels)["rendition"]: value
        for (name, labels), value in metrics.items()
        if name == "kubecast_whep_viewers"
    }
