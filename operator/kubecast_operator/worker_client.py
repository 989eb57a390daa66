"""Reading what a worker sees: its ``/status`` JSON over HTTP, on the admin port.

Workers never talk to the Kubernetes API, by design: the operator polls them
and is the only writer of status. A worker that does not answer is reported,
not guessed at; one missed poll of a worker that answered the poll before is
forgiven (``LastAnswer``), two in a row are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pydantic

from kubecast_api import describe_error
from kubecast_api.worker_status import RecorderStatus, WorkerStatus
from kubecast_operator.children import CONFIG_HASH
from kubecast_operator.settings import WORKER_ADMIN_PORT, WORKER_HTTP_PORT

#: Seconds a poll of /status may take: a worker that answers later has missed it.
POLL_TIMEOUT_SECONDS = 2.0


class WorkerUnreachable(Exception):
    """The worker did not answer /status (not started, crashed, or network), or
    answered a document this operator does not know (a version skew).

    ``late``: the poll ran out of time or lost its connection midway, which a
    worker that is there but slow to answer also causes; not so a refused
    connection (nothing listens), an error status or an unknown document.
    """

    def __init__(self, message: str, *, late: bool = False) -> None:
        super().__init__(message)
        self.late = late


def _late(error: Exception) -> bool:
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, no route: nobody there
        return False
    return isinstance(error, TimeoutError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)


async def fetch_status(
    session: aiohttp.ClientSession,
    address: str,
    *,
    port: int = WORKER_ADMIN_PORT,
    timeout: float = POLL_TIMEOUT_SECONDS,
    model: type[WorkerStatus] | type[RecorderStatus] = WorkerStatus,
) -> dict[str, Any]:
    """The pod's ``/status``, checked against the contract (kubecast_api.worker_status)."""
    url = f"http://{address}:{port}/status"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            response.raise_for_status()
            doc: dict[str, Any] = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        message = f"{url}: {error or type(error).__name__}"
        raise WorkerUnreachable(message, late=_late(error)) from error
    try:
        model.model_validate(doc)
    except pydantic.ValidationError as error:
        raise WorkerUnreachable(
            f"{url} answered a status this operator does not understand (are the worker and"
            f" operator images the same version?): {describe_error(error)}"
        ) from error
    return doc


def serving_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest running pod, the one a Recreate rollout leaves serving."""
    running = [
        p
        for p in pods
        if p.get("status", {}).get("phase") == "Running"
        and p["status"].get("podIP")
        and not p["metadata"].get("deletionTimestamp")
    ]
    running.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
    return running[0] if running else None


def pod_address(pods: list[dict[str, Any]]) -> str | None:
    """IP of ``serving_pod``: the pod whose /status the operator reads."""
    pod = serving_pod(pods)
    return pod["status"]["podIP"] if pod else None


def admin_port(pod: dict[str, Any]) -> int:
    """Where the pod answers /status: its port named ``admin``.

    NB: a recorder pod made by an operator before the admin port existed serves
    /status on its ``http`` port; pods are immutable, so it keeps doing so until
    its recording ends, and the operator still has to read it.
    """
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == "admin":
                return int(port["containerPort"])
    return WORKER_HTTP_PORT


@dataclass(frozen=True)
class WorkerRun:
    """One run of one worker process: its pod, the config it runs, and the start of
    its container. An answer of /status is this run's, and no other's."""

    pod_uid: str
    pod_name: str
    config_hash: str | None
    container_restarts: int
    container_running: bool

    @classmethod
    def of(cls, pod: dict[str, Any], container: str = "worker") -> WorkerRun:
        meta = pod.get("metadata") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        found: dict[str, Any] = next((c for c in statuses if c.get("name") == container), {})
        return cls(
            pod_uid=str(meta.get("uid") or ""),
            pod_name=str(meta.get("name") or ""),
            config_hash=(meta.get("annotations") or {}).get(CONFIG_HASH),
            container_restarts=int(found.get("restartCount") or 0),
            container_running="running" in (found.get("state") or {}),
        )


@dataclass(frozen=True)
class Reading:
    """What one poll says about the worker: its /status document, or why there is none."""

    worker: dict[str, Any] | None
    error: str | None = None
    forgiven: bool = False  # a missed poll, read as the answer before it (LastAnswer)


class LastAnswer:
    """The worker's last answer, and the rule for a poll that gets none.

    A poll that times out says that one HTTP request took longer than
    ``POLL_TIMEOUT_SECONDS``, under load as often as not (a thousand workers
    polled by one event loop). Read as "the worker is unreachable", a single slow
    answer turns a healthy stream Pending and back two seconds later: a status
    write and an Event each way, for nothing that changed.

    So the first miss after an answer is read as that answer, and only when it
    was late (``WorkerUnreachable.late``: a refused connection or an error status
    is the worker's state, not its pace), and only while

    - it is the same run that answered (``WorkerRun``: same pod UID and name, same
      config hash, the same container start, still running). Whatever the kubelet
      reports changed (the pod gone, deleted or replaced, the container ended or
      restarted, a new config) counts at once, as before;
    - that answer is at most ``max_age`` seconds old: one poll interval and one
      timeout after it, with as much again for a busy event loop.

    The second miss in a row, or any miss without a fresh answer before it, is
    reported (``WorkerUnreachable``), as every miss was before.

    NB: this is not status copied from memory. Every status is a sample of the
    worker at most one poll interval old; the grace lets one sample be up to two
    intervals old, from the same process, and only while nothing the kubelet
    reports contradicts it. A worker that stopped answering shows as unreachable
    one poll later than before (about ``poll_seconds + POLL_TIMEOUT_SECONDS``),
    never later; an answer from an older pod, config or container is never used.
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._run: WorkerRun | None = None
        self._doc: dict[str, Any] | None = None
        self._at = 0.0
        self._missed = 0

    def forget(self) -> None:
        """No pod serves: nothing it said before applies to the next one."""
        self._run, self._doc, self._missed = None, None, 0

    def judge(
        self, run: WorkerRun, answer: dict[str, Any] | WorkerUnreachable, *, now: float
    ) -> Reading:
        """The reading of one poll of ``run``: its ``answer``, or the exception of a miss."""
        if not isinstance(answer, WorkerUnreachable):
            self._run, self._doc, self._at, self._missed = run, answer, now, 0
            return Reading(answer)
        held = self._doc
        same_run = run == self._run and run.container_running
        fresh = now - self._at <= self.max_age
        self._missed += 1
        if held is not None and answer.late and same_run and self._missed == 1 and fresh:
            return Reading(held, forgiven=True)
        self._doc = None  # missed twice, or another run: the old answer is nobody's now
        return Reading(None, error=str(answer))
