"""One missed /status poll of a worker that answered is forgiven; two in a row are not.

At a thousand streams one poll in many takes longer than its 2 s timeout, and read
as "unreachable" each turned an idle stream Pending and back (docs/benchmarks.md,
"Operator at scale"). What a user reads in status is checked through
``compute_status``; pods are documents as the kubelet writes them.
"""

from __future__ import annotations

import asyncio
import copy
import socket
from typing import Any

import aiohttp
import pytest

from kubecast_api import LiveStreamSpec
from kubecast_operator import streams, worker_client
from kubecast_operator.children import CONFIG_HASH
from kubecast_operator.worker_client import LastAnswer, WorkerRun, WorkerUnreachable

POLL_S = 2.0
MAX_AGE_S = 2 * (POLL_S + worker_client.POLL_TIMEOUT_SECONDS)
IDLE = {
    "stream": "s",
    "state": "idle",
    "ready": True,
    "ingest": {"mode": "push", "url": "rtmp://0.0.0.0:1935/live", "counters": {}},
}
MISS = WorkerUnreachable("http://10.245.0.7:9090/status: TimeoutError", late=True)


def pod(
    *, uid: str = "uid-1", config: str = "abc", restarts: int = 0, state: str = "running"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"s-worker-{uid}",
            "uid": uid,
            "annotations": {CONFIG_HASH: config},
            "creationTimestamp": "2026-12-02T14:00:00Z",
        },
        "status": {
            "phase": "Running",
            "podIP": "10.245.0.7",
            "containerStatuses": [{
                "name": "worker", "ready": state == "running", "restartCount": restarts,
                "state": {state: {}},
            }],
        },
    }  # fmt: skip


def run(**changes: Any) -> WorkerRun:
    return WorkerRun.of(pod(**changes))


def answered(at: float = 0.0) -> LastAnswer:
    last = LastAnswer(max_age=MAX_AGE_S)
    assert last.judge(run(), IDLE, now=at) == worker_client.Reading(IDLE)
    return last


def test_one_missed_poll_reads_as_the_answer_before_it() -> None:
    last = answered()
    reading = last.judge(run(), MISS, now=POLL_S + 2.0)
    assert reading.worker == IDLE and reading.error is None and reading.forgiven


def test_the_second_miss_in_a_row_is_reported_with_the_poll_error() -> None:
    last = answered()
    last.judge(run(), MISS, now=4.0)
    reading = last.judge(run(), MISS, now=8.0)
    assert reading.worker is None and not reading.forgiven
    assert reading.error == str(MISS)
    # and it stays reported until the worker answers again
    assert last.judge(run(), MISS, now=12.0).worker is None
    assert last.judge(run(), IDLE, now=14.0).worker == IDLE


def test_an_answer_between_two_misses_earns_a_new_grace() -> None:
    last = answered()
    assert last.judge(run(), MISS, now=4.0).forgiven
    assert last.judge(run(), IDLE, now=6.0).worker == IDLE
    assert last.judge(run(), MISS, now=10.0).forgiven


def test_a_miss_of_another_pod_or_config_or_container_start_is_reported_at_once() -> None:
    for other in (
        run(uid="uid-2"),  # the pod was replaced
        run(config="def"),  # a new config
        run(restarts=1),  # the kubelet restarted the container (a kill, an OOM)
        run(state="terminated"),  # the container ended; not restarted yet
        run(state="waiting"),  # CrashLoopBackOff
    ):
        last = answered()
        reading = last.judge(other, MISS, now=4.0)
        assert reading.worker is None and reading.error == str(MISS), other


def test_a_refused_connection_or_an_error_answer_is_reported_at_once() -> None:
    # Nothing listens on the port (the process died), or the worker answered that
    # it is broken: that is its state, not its pace.
    for error in (
        WorkerUnreachable("http://10.245.0.7:9090/status: Connection refused"),
        WorkerUnreachable("http://10.245.0.7:9090/status: 500, message='Internal'"),
    ):
        assert answered().judge(run(), error, now=4.0).worker is None


def test_fetch_status_says_which_misses_were_late() -> None:
    """Against real sockets: a listener that never answers (late), a closed port (not)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]

    async def miss(port: int) -> WorkerUnreachable:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(WorkerUnreachable) as caught:
                await worker_client.fetch_status(session, "127.0.0.1", port=port, timeout=0.5)
            return caught.value

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts connections; nothing ever answers
        assert asyncio.run(miss(silent.getsockname()[1])).late is True
    refused = asyncio.run(miss(closed_port))
    assert refused.late is False and "cannot connect" in str(refused).lower(), refused


def test_a_miss_after_no_pod_served_is_reported_at_once() -> None:
    last = answered()
    last.forget()  # the pod went away (deleted, evicted, not Running)
    assert last.judge(run(), MISS, now=4.0).worker is None


def test_a_first_poll_that_misses_is_reported() -> None:
    assert LastAnswer(max_age=MAX_AGE_S).judge(run(), MISS, now=0.0).worker is None


def test_an_answer_older_than_the_grace_is_not_used() -> None:
    # e.g. the loop was held up by a failing reconcile between the two polls
    last = answered(at=0.0)
    assert last.judge(run(), MISS, now=MAX_AGE_S + 0.1).worker is None


def test_what_the_user_reads_idle_through_one_miss_unreachable_on_the_second() -> None:
    """The same LiveStream status before and after one miss (nothing to write, no
    Event); the second miss says WorkerUnreachable with the poll's error."""
    body = {
        "metadata": {"name": "s", "namespace": "ns", "generation": 1},
        "spec": {"ingest": {"push": {"app": "live"}}, "profileRef": {"name": "default"}},
    }
    serving = pod()
    seen = streams.Observation(
        spec=LiveStreamSpec.model_validate(body["spec"]),
        config_hash="abc",
        deployment={"status": {"availableReplicas": 1}},
        pods=[serving],
    )
    last = LastAnswer(max_age=MAX_AGE_S)

    def status_after(answer: dict[str, Any] | WorkerUnreachable, now: float) -> dict[str, Any]:
        reading = last.judge(WorkerRun.of(serving), answer, now=now)
        seen.worker, seen.worker_error = reading.worker, reading.error
        status = streams.compute_status(body, seen, now="2026-12-02T14:00:00Z")
        body["status"] = copy.deepcopy(status)
        return status

    before = status_after(IDLE, 0.0)
    assert before["phase"] == "Idle"
    assert status_after(MISS, 4.0) == before
    after = status_after(MISS, 8.0)
    ready = next(c for c in after["conditions"] if c["type"] == "Ready")
    assert after["phase"] == "Pending"
    assert (ready["status"], ready["reason"]) == ("False", "WorkerUnreachable")
    assert "TimeoutError" in ready["message"]
