"""Recording: a claim and a recorder pod per recording, status from the recorder.

The recorder serves ``/status`` (state, duration, bytes, segments, files) and
``POST /stop`` (finish: end the playlist, write the MP4) on its admin port.
``/stop`` takes the Recording's stop token (``tokens``), which the operator
derives, hands to the pod in a Secret, and sends as a bearer token. Deleting a
Recording that is still recording first asks the recorder to finish, through
the finalizer ``kubecast.dev/finalize-recording``, so the MP4 is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import kopf
import pydantic

from kubecast_api import RecordingSpec, RecordingStatus, describe_error
from kubecast_api.worker_status import RecorderStatus
from kubecast_operator import children, conditions, metrics, tokens, worker_client
from kubecast_operator.children import RECORDER_CONTAINER
from kubecast_operator.kube import Kube
from kubecast_operator.settings import WORKER_ADMIN_PORT, WORKER_HTTP_PORT, Settings

FINALIZER = "kubecast.dev/finalize-recording"
FINALIZE_TIMEOUT_S = 120
RECORDER_PHASES = {
    "waiting": "Waiting",
    "recording": "Recording",
    "finalizing": "Finalizing",
    "interrupted": "Waiting",  # its pod stopped mid-recording; the next pod resumes it
    "completed": "Completed",
    "failed": "Failed",
}


def source_url(namespace: str, stream: str) -> str:
    service = children.playback_service_name(stream)
    return f"http://{service}.{namespace}.svc.cluster.local:{WORKER_HTTP_PORT}"


def compute_status(
    body: dict[str, Any],
    *,
    recorder: dict[str, Any] | None,
    problem: tuple[str, str] | None,
    pod_phase: str | None,
    exited: tuple[dict[str, Any] | None, str] | None = None,
    pod_gone: bool = False,
) -> dict[str, Any]:
    """The Recording's status, from what can be observed now.

    ``recorder``: its /status, while it answers. ``exited``: once it does not,
    what the kubelet kept of its last exit (``recorder_exit``): its own last
    /status from the termination message, and how it ended. ``pod_gone``: no pod
    at all; a finished recording keeps the facts it finished with, and says that
    nothing backs them any more.
    """
    meta = body["metadata"]
    previous = body.get("status") or {}
    generation = meta.get("generation")
    status: dict[str, Any] = {"observedGeneration": generation}
    if problem:
        phase = "Failed" if problem[0] == "SpecInvalid" else "Waiting"
        found = conditions.condition("Ready", False, *problem)
        status["message"] = problem[1]
    elif recorder is not None:
        phase = RECORDER_PHASES.get(str(recorder.get("state")), "Waiting")
        found = conditions.condition("Ready", True, "RecorderRunning")
        status.update(_figures(recorder))
    elif exited is not None:
        last, how = exited
        if last is not None:
            phase = RECORDER_PHASES.get(str(last.get("state")), "Waiting")
            status.update(_figures(last))
        else:  # it said nothing: killed before it could (SIGKILL, OOM)
            phase = "Failed" if pod_phase == "Failed" else "Waiting"
        found = conditions.condition("Ready", False, "RecorderExited", how)
        status["message"] = status.get("message") or how
    elif pod_gone and previous.get("phase") in ("Completed", "Failed"):
        # NB: not a copy of the last status: the phase and the files are what the
        # recording ended with (facts), the condition says the pod is gone.
        phase = previous["phase"]
        keep = ("files", "startTime", "endTime", "durationSeconds", "segments", "message")
        status.update({k: previous[k] for k in keep if k in previous})
        found = conditions.condition(
            "Ready",
            False,
            "RecorderGone",
            "the recorder pod is gone; files as the recorder reported them when it finished",
        )
    else:
        phase = "Failed" if pod_phase == "Failed" else "Waiting"
        found = conditions.condition(
            "Ready", False, "RecorderStarting", "waiting for the recorder pod"
        )
    status["phase"] = phase
    status["conditions"] = conditions.merge(
        previous.get("conditions"), [found], generation=generation
    )
    return RecordingStatus.model_validate(
        {k: v for k, v in status.items() if v is not None}
    ).to_api()


def _figures(recorder: dict[str, Any]) -> dict[str, Any]:
    """Status fields from a recorder's /status document (live or its last word)."""
    return {
        "files": [
            {
                "name": f["name"],
                "format": f["format"],
                "sizeBytes": f.get("size_bytes", 0),
                "durationSeconds": f.get("duration_seconds"),
            }
            for f in recorder.get("files") or []
        ],
        "startTime": recorder.get("start_time"),
        "endTime": recorder.get("end_time"),
        "durationSeconds": recorder.get("duration_seconds"),
        "segments": recorder.get("segments"),
        "message": recorder.get("last_error"),
    }


def recorder_exit(pod: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str] | None:
    """What the kubelet kept of the recorder container's last exit, if it exited.

    (its last /status from the termination message, or None; how it ended). The
    current state when it has ended, else the last one while it is restarted.
    """
    for container in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        state = container.get("state") or {}
        ended = state.get("terminated") or (
            (container.get("lastState") or {}).get("terminated")
            if not state.get("running")
            else None
        )
        if not ended:
            continue
        how = (
            f"the recorder exited with code {ended.get('exitCode')}"
            f" ({ended.get('reason') or 'Error'}) at {ended.get('finishedAt')}"
        )
        if (pod or {}).get("metadata", {}).get("deletionTimestamp"):
            how += "; its pod is being deleted, and a new one resumes the recording"
        elif ended.get("exitCode") and pod and pod["status"].get("phase") not in ("Failed",):
            how += "; the kubelet restarts it, and the recording resumes"
        last = None
        with contextlib.suppress(ValueError):  # pydantic's ValidationError is one
            last = RecorderStatus.model_validate_json(ended.get("message") or "").model_dump()
        return last, how
    return None


def signer(memo: kopf.Memo) -> tokens.Signer:
    """The operator's one signing key, read on first use."""
    found: tokens.Signer | None = memo.get("signer")
    if found is None:
        found = memo["signer"] = tokens.Signer.from_file(memo.settings.signing_key_file)
    return found


def stop_token(signer: tokens.Signer, body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return signer.recording_token(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])


def ensure_children(
    kube: Kube, body: dict[str, Any], settings: Settings, signer: tokens.Signer
) -> tuple[tuple[str, str] | None, dict[str, Any] | None]:
    """(problem, recorder pod) after making sure the claim and pod exist."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = RecordingSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        return ("SpecInvalid", describe_error(error, prefix="spec").replace("\n", "; ")), None
    kube.add_finalizer("Recording", namespace, name, FINALIZER)
    stream = spec.stream_ref.name
    if kube.get("LiveStream", namespace, stream) is None:
        return (
            "StreamNotFound",
            f"LiveStream {stream!r} not found in namespace"
            f" {namespace!r}; create it or fix spec.streamRef",
        ), None
    kube.apply(children.recording_claim(body, spec))
    if settings.network_policies:
        kube.apply(children.recorder_network_policy(body, settings))
    pod = kube.get("Pod", namespace, children.recorder_name(name))
    finished = (body.get("status") or {}).get("phase") in ("Completed", "Failed")
    if pod is None and not finished:
        # create, never apply: the token is the same every time (derived, not random),
        # and the operator may not read Secrets to compare. 409 means it is there.
        kube.create(children.stop_token_secret(body, token=stop_token(signer, body)))
        # Pods are immutable: create once; a changed spec applies to the next recording.
        kube.create(
            children.recorder_pod(
                body, spec, source=source_url(namespace, stream), settings=settings
            )
        )
        pod = kube.get("Pod", namespace, children.recorder_name(name))
    return None, pod


async def poll_recorder(
    http: aiohttp.ClientSession,
    pod: dict[str, Any] | None,
    last: worker_client.LastAnswer,
    logger: kopf.Logger | None = None,
) -> dict[str, Any] | None:
    """The recorder's /status, or None when it does not answer (``last`` forgives
    one late poll of the same run, as for a stream's worker)."""
    address = worker_client.pod_address([pod]) if pod is not None else None
    if pod is None or address is None:
        last.forget()
        return None
    answer: dict[str, Any] | worker_client.WorkerUnreachable
    try:
        answer = await worker_client.fetch_status(
            http, address, port=worker_client.admin_port(pod), model=RecorderStatus
        )
    except worker_client.WorkerUnreachable as error:
        metrics.WORKER_POLL_ERRORS.labels("Recording").inc()
        answer = error
    run = worker_client.WorkerRun.of(pod, container=RECORDER_CONTAINER)
    reading = last.judge(run, answer, now=time.monotonic())
    if reading.forgiven:
        metrics.WORKER_POLLS_FORGIVEN.labels("Recording").inc()
    elif reading.error and logger is not None:
        logger.debug("recorder not answering: %s", reading.error)
    return reading.worker


async def step(
    memo: kopf.Memo,
    body: dict[str, Any],
    logger: kopf.Logger,
    last: worker_client.LastAnswer,
) -> None:
    """One pass: children, a poll of the recorder, status. ``last``: the recorder's
    last answer, kept by the Recording's loop, so that one late poll is forgiven as a
    stream's is (worker_client.LastAnswer) instead of clearing the figures and back."""
    kube: Kube = memo.kube
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    problem, pod = await asyncio.to_thread(ensure_children, kube, body, memo.settings, signer(memo))
    recorder = await poll_recorder(memo.http, pod, last, logger)
    status = compute_status(
        body,
        recorder=recorder,
        problem=problem,
        pod_phase=(pod or {}).get("status", {}).get("phase"),
        exited=recorder_exit(pod) if recorder is None else None,
        pod_gone=pod is None,
    )
    previous = body.get("status") or {}
    if status != previous:
        # NB: a merge patch keeps what it does not mention: fields no longer
        # observed (a gone recorder's figures) are cleared with nulls.
        removals = {k: None for k in previous if k not in status}
        await asyncio.to_thread(
            kube.patch_status, "Recording", meta["namespace"], meta["name"], {**removals, **status}
        )
        metrics.STATUS_WRITES.labels("Recording").inc()
        if status.get("phase") != previous.get("phase"):
            kopf.event(
                cast(kopf.Body, body),
                type="Warning" if status["phase"] == "Failed" else "Normal",
                reason=status["phase"],
                message=status.get("message") or f"recording is {status['phase']}",
            )
    await _expire(kube, body, status)


async def _expire(kube: Kube, body: dict[str, Any], status: dict[str, Any]) -> None:
    days = ((body.get("spec") or {}).get("retention") or {}).get("days")
    ended = status.get("endTime")
    if not days or status.get("phase") != "Completed" or not ended:
        return
    if datetime.fromisoformat(ended.replace("Z", "+00:00")) + timedelta(days=days) < datetime.now(
        UTC
    ):
        meta = body["metadata"]
        await asyncio.to_thread(kube.delete, "Recording", meta["namespace"], meta["name"])


async def finalize(memo: kopf.Memo, body: dict[str, Any], logger: kopf.Logger) -> None:
    """Ask a running recorder to finish, record its last status, then let go."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if FINALIZER not in (meta.get("finalizers") or []):
        return
    key = (namespace, name)
    finalizing: set[tuple[str, str]] = memo.setdefault("finalizing", set())
    if key in finalizing:
        return
    finalizing.add(key)
    kube: Kube = memo.kube
    try:
        pod = await asyncio.to_thread(kube.get, "Pod", namespace, children.recorder_name(name))
        address = worker_client.pod_address([pod]) if pod else None
        if address:
            token = stop_token(signer(memo), body)
            port = worker_client.admin_port(pod) if pod else None
            recorder = await _stop_and_wait(memo.http, address, logger, token=token, port=port)
            if recorder is not None:
                status = compute_status(body, recorder=recorder, problem=None, pod_phase=None)
                await asyncio.to_thread(kube.patch_status, "Recording", namespace, name, status)
                # The Event outlives the Recording: it is how a user learns what was kept.
                files = ", ".join(
                    f"{f['name']} ({f['sizeBytes']} bytes, {f.get('durationSeconds') or 0:.1f} s)"
                    for f in status.get("files") or []
                )
                kopf.event(
                    cast(kopf.Body, body),
                    type="Normal",
                    reason="Finalized",
                    message=f"recording {status.get('phase')}: {files or 'no files'}",
                )
        await asyncio.to_thread(kube.remove_finalizer, "Recording", namespace, name, FINALIZER)
        logger.info("recording finalized before deletion")
    finally:
        finalizing.discard(key)


async def _stop_and_wait(
    http: aiohttp.ClientSession,
    address: str,
    logger: kopf.Logger,
    *,
    token: str,
    port: int | None = None,
) -> dict[str, Any] | None:
    port = port or WORKER_ADMIN_PORT
    try:
        async with http.post(
            f"http://{address}:{port}/stop",
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            response.raise_for_status()
    except (aiohttp.ClientError, TimeoutError) as error:
        logger.warning("could not ask the recorder to stop: %s", error)
        return None
    deadline = time.monotonic() + FINALIZE_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(worker_client.WorkerUnreachable):
            last = await worker_client.fetch_status(http, address, port=port, model=RecorderStatus)
        if last and last.get("state") in ("completed", "failed"):
            return last
        await asyncio.sleep(1)
    logger.warning("recorder did not finish within %ss", FINALIZE_TIMEOUT_S)
    return last
