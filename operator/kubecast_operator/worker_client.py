"""Reading what a worker sees: its ``/status`` JSON over HTTP, on the admin port.

Workers never talk to the Kubernetes API, by design: the operator polls them
and is the only writer of status. A worker that does not answer is reported,
not guessed at.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pydantic

from kubecast_api import describe_error
from kubecast_api.worker_status import RecorderStatus, WorkerStatus
from kubecast_operator.settings import WORKER_ADMIN_PORT, WORKER_HTTP_PORT


class WorkerUnreachable(Exception):
    """The worker did not answer /status (not started, crashed, or network), or
    answered a document this operator does not know (a version skew)."""


async def fetch_status(
    session: aiohttp.ClientSession,
    address: str,
    *,
    port: int = WORKER_ADMIN_PORT,
    timeout: float = 2.0,
    model: type[WorkerStatus] | type[RecorderStatus] = WorkerStatus,
) -> dict[str, Any]:
    """The pod's ``/status``, checked against the contract (kubecast_api.worker_status)."""
    url = f"http://{address}:{port}/status"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            response.raise_for_status()
            doc: dict[str, Any] = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise WorkerUnreachable(f"{url}: {error or type(error).__name__}") from error
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
