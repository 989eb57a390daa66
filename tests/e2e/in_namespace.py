"""Talking to a worker that runs in a test's network namespace (the WebRTC tests):
its /status and /metrics, read from a thread inside that namespace (tests/integration/netns.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import WorkerProcess, launch_configured_worker, until

from tests.integration import netns


@contextmanager
def whep_worker(
    namespace: str,
    address: str,
    directory: Path,
    *,
    key: str,
    protocol: str = "whip",
    **config: Any,
) -> Iterator[WorkerProcess]:
    """A worker that takes WHIP (or RTMP: ``protocol="rtmp"``) publishers and offers
    WHEP, listening on ``address`` inside the namespace, stopped after the block.
    ``config``: more launch_configured_worker arguments (``profile=...``)."""
    ingest = {"listen": f"{address}:0"} | ({"protocol": protocol} if protocol != "rtmp" else {})
    worker = launch_configured_worker(
        directory,
        key=key,
        ingest=ingest,
        http=f"{address}:0",
        admin=f"{address}:0",
        wrap=["nsenter", f"--net={namespace}", "--"],
        args=["--whep"],
        **config,
    )
    try:
        yield worker
    finally:
        worker.stop()


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


def audio_packets(metrics: Metrics, since: dict[str, float] | None = None) -> dict[str, float]:
    """kubecast_whep_audio_packets_total by origin (publisher, encoded), less ``since``."""
    counted = {"publisher": 0.0, "encoded": 0.0}
    for (name, labels), value in metrics.items():
        if name == "kubecast_whep_audio_packets_total":
            counted[dict(labels)["origin"]] = value
    return {origin: n - (since or {}).get(origin, 0.0) for origin, n in counted.items()}


def whep_viewers(metrics: Metrics) -> dict[str, float]:
    return {
        dict(labels)["rendition"]: value
        for (name, labels), value in metrics.items()
        if name == "kubecast_whep_viewers"
    }
