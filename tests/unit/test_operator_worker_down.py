"""While the kubelet restarts a killed worker, the stream's status says so.

The worker cannot report its own SIGKILL or OOM kill, and while it is down (up to
5 minutes of CrashLoopBackOff) the operator reaches nobody: the pod's container
status is the only witness. Pod documents as the kubelet writes them.
"""

from __future__ import annotations

from typing import Any

from kubecast_operator import streams


def pod(state: dict[str, Any], *, ready: bool = False, restarts: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"name": "e2e-worker-7d9f-abcde"},
        "status": {"containerStatuses": [{
            "name": "worker", "ready": ready, "restartCount": restarts, "state": state,
            "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
                                         "finishedAt": "2026-12-02T02:12:10Z"}},
        }]},
    }  # fmt: skip


def test_a_worker_in_crash_loop_back_off_is_explained() -> None:
    back_off = "back-off 40s restarting failed container=worker pod=e2e-worker-7b5_live(55ec)"
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}}
    message = streams.worker_down([pod(waiting)])
    assert message == (
        "the worker container ended with exit code 137 (Error); the kubelet restarts it:"
        " CrashLoopBackOff, back-off 40s restarting failed container=worker"
    )


def test_a_worker_that_just_ended_is_explained_by_that_exit_not_the_one_before() -> None:
    ended = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    assert streams.worker_down([pod(ended)]) == (
        "the worker container ended with exit code 137 (OOMKilled); the kubelet restarts it"
    )
    first = pod(ended, restarts=0)
    first["status"]["containerStatuses"][0]["lastState"] = {}
    assert "OOMKilled" in (streams.worker_down([first]) or "")


def test_a_restarted_worker_not_yet_ready_is_explained() -> None:
    running = {"running": {"startedAt": "2026-12-02T02:12:11Z"}}
    assert streams.worker_down([pod(running)]) == (
        "the worker container ended with exit code 137 (Error); restarted, starting"
    )


def test_nothing_to_explain_on_a_first_start_or_once_ready() -> None:
    first = pod({"waiting": {"reason": "ContainerCreating"}}, restarts=0)
    first["status"]["containerStatuses"][0]["lastState"] = {}
    assert streams.worker_down([first]) is None
    assert streams.worker_down([pod({"running": {}}, ready=True)]) is None
    assert streams.worker_down([]) is None
