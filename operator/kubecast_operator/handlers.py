"""kopf wiring: which events wake which reconcile loop. Kept thin on purpose.

Shape: one kopf *daemon* per LiveStream, TranscodeProfile and Recording runs a
level-based loop (apply children, observe, write status), as the kopf
maintainer advises for polling (nolar/kopf#1170). Watch events on the resources
and on everything they own only *wake* those loops. There are no
create/update handlers, so kopf never stores a ``last-handled-configuration``
annotation that would double each object's size (nolar/kopf#800), and an
operator restarted mid-reconcile simply converges again (server-side apply).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import kopf

from kubecast_api import GROUP, VERSION
from kubecast_operator import kube as kube_mod
from kubecast_operator import metrics, profiles, recordings, streams, worker_client
from kubecast_operator.children import MANAGED_BY
from kubecast_operator.kube import Kube
from kubecast_operator.settings import Settings

STREAMS = (GROUP, VERSION, "livestreams")
PROFILES = (GROUP, VERSION, "transcodeprofiles")
RECORDINGS = (GROUP, VERSION, "recordings")
OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Re-establish watches well before a dead connection could go unnoticed
    # (nolar/kopf#787, #1276): the server closes them, or the client gives up.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    # Back off on API errors, HTTP 429 included (nolar/kopf#1011).
    settings.networking.error_backoffs = [1, 2, 5, 10, 20, 30]
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.INFO
    # Leadership comes from a Lease (see leader.py), not from kopf peering.
    settings.peering.standalone = True
    # Filter the children's watches on the server: without this, kopf would
    # stream every Pod, Service and Deployment of the cluster to us.
    selector = ",".join(f"{k}={v}" for k, v in OWNED.items())
    for resource in (("apps", "v1", "deployments"), ("v1", "services"), ("v1", "pods")):
        settings.watching.label_selectors[resource] = selector
    # NB: every write goes through the leader's fence (cli.py): one that no
    # longer leads raises NotLeading instead of writing. kopf.event and kopf.warn
    # are only ever called after such a write succeeded.
    memo.kube = Kube(fence=memo.get("fence"))
    memo.settings = Settings.from_env()
    recordings.signer(memo)  # a bad KUBECAST_SIGNING_KEY_FILE stops the start, not a recording
    memo.http = aiohttp.ClientSession()
    memo.wakeups = {}  # (kind, namespace, name) -> asyncio.Event
    memo.stream_profiles = {}  # (namespace, stream) -> profile name
    memo.stream_phases = {}  # (kind, namespace, stream) -> phase last written


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.http.close()


def _wake(memo: kopf.Memo, kind: str, namespace: str | None, name: str | None) -> None:
    event = memo.wakeups.get((kind, namespace, name))
    if event is not None:
        event.set()


async def _sleep(memo: kopf.Memo, key: tuple[str, str, str], stopped: Any, seconds: float) -> bool:
    """Sleep until woken by an event, stopped, or ``seconds`` pass; True if woken.

    The wake is consumed here, so a loop that reconciles in full only when woken
    must use the answer: it can no longer see the event set.
    """
    wake = memo.wakeups.setdefault(key, asyncio.Event())
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    woken = wake.is_set()
    wake.clear()
    return woken


# --- LiveStream -----------------------------------------------------------------


@kopf.on.event(*STREAMS)
async def stream_changed(
    type: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    namespace, name = meta["namespace"], meta["name"]
    _wake(memo, "LiveStream", namespace, name)
    profile = (body.get("spec") or {}).get("profileRef", {}).get("name")
    previous = memo.stream_profiles.get((namespace, name))
    if type == "DELETED":
        memo.stream_profiles.pop((namespace, name), None)
    else:
        memo.stream_profiles[(namespace, name)] = profile
    for changed in {profile, previous} - {None}:
        _wake(memo, "TranscodeProfile", namespace, changed)
        if type == "DELETED" or changed != profile:
            # A profile waiting to be deleted may have just lost its last user.
            await asyncio.to_thread(profiles.release_if_unused, memo.kube, namespace, changed)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("v1", "services", labels=OWNED)
@kopf.on.event("v1", "pods", labels=OWNED)
def child_changed(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    for owner in meta.get("ownerReferences") or []:
        _wake(memo, owner.get("kind"), meta["namespace"], owner.get("name"))
    # NB: a worker pod is owned by its ReplicaSet, not by the stream: without
    # this, a pod that gets its IP or turns Ready would wait for the next resync
    # (up to 30 s of Pending after the worker already listens).
    labels = meta.get("labels") or {}
    if labels.get("app.kubernetes.io/component") == "worker" and labels.get("kubecast.dev/stream"):
        _wake(memo, "LiveStream", meta["namespace"], labels["kubecast.dev/stream"])


@kopf.daemon(*STREAMS, cancellation_timeout=5.0)
async def run_stream(
    body: kopf.Body,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    kube: Kube = memo.kube
    settings: Settings = memo.settings
    key = ("LiveStream", meta["namespace"], meta["name"])
    memo.wakeups.setdefault(key, asyncio.Event()).set()  # first pass: reconcile at once
    seen: streams.Observation | None = None
    last_full = 0.0
    last_written = 0.0
    last_generation = None
    woken = False
    while not stopped:
        wake = memo.wakeups[key]
        snapshot = copy.deepcopy(dict(body))
        full = (
            woken
            or wake.is_set()
            or seen is None
            or snapshot["metadata"].get("generation") != last_generation
            or time.monotonic() - last_full > settings.resync_seconds
        )
        wake.clear()
        try:
            if full:
                started = time.monotonic()
                seen = await asyncio.to_thread(streams.reconcile, kube, snapshot, settings)
                metrics.RECONCILE_SECONDS.labels("LiveStream").observe(time.monotonic() - started)
                metrics.RECONCILES.labels("LiveStream", "ok").inc()
                last_full, last_generation = (
                    time.monotonic(),
                    snapshot["metadata"].get("generation"),
                )
            assert seen is not None
            await _poll_worker(memo, seen)
            figures_due = time.monotonic() - last_written >= settings.status_figures_seconds
            if await _write_stream_status(kube, snapshot, seen, logger, figures_due=figures_due):
                last_written = time.monotonic()
        except Exception as error:  # keep the loop alive: the next pass retries
            metrics.RECONCILES.labels("LiveStream", "error").inc()
            logger.warning("reconcile failed, will retry: %s", kube_mod.describe(error))
            seen = None
            await _report_failure(kube, snapshot, error)
        if seen is not None:
            memo.stream_phases[key] = (body.get("status") or {}).get("phase") or "Pending"
            metrics.count_phases(memo.stream_phases.values())
        # Woken by a child's event (a deleted Service, a pod that got its IP): the
        # next pass reconciles in full, not just a poll of the worker.
        woken = await _sleep(memo, key, stopped, settings.poll_seconds)
    memo.wakeups.pop(key, None)
    memo.stream_phases.pop(key, None)
    metrics.count_phases(memo.stream_phases.values())


async def _poll_worker(memo: kopf.Memo, seen: streams.Observation) -> None:
    seen.worker, seen.worker_error = None, None
    address = worker_client.pod_address(seen.pods)
    if address is None:
        return
    try:
        seen.worker = await worker_client.fetch_status(memo.http, address)
    except worker_client.WorkerUnreachable as error:
        metrics.WORKER_POLL_ERRORS.labels("LiveStream").inc()
        seen.worker_error = str(error)


async def _write_stream_status(
    kube: Kube,
    body: dict[str, Any],
    seen: streams.Observation,
    logger: kopf.Logger,
    *,
    figures_due: bool = True,
) -> bool:
    """Write the status if it changed; only-figures changes wait for ``figures_due``."""
    previous = body.get("status") or {}
    status = streams.compute_status(body, seen)
    if _same(previous, status):
        return False
    if not figures_due and streams.only_figures_changed(previous, status):
        return False
    meta = body["metadata"]
    await asyncio.to_thread(
        kube.patch_status,
        "LiveStream",
        meta["namespace"],
        meta["name"],
        _with_removals(previous, status),
    )
    metrics.STATUS_WRITES.labels("LiveStream").inc()
    old_phase, new_phase = previous.get("phase"), status.get("phase")
    if old_phase != new_phase:
        kind = "Warning" if new_phase == "Error" else "Normal"
        kopf.event(
            cast(kopf.Body, body),
            type=kind,
            reason=str(new_phase),
            message=status.get("message") or f"stream is {new_phase}",
        )
        logger.info("phase %s -> %s", old_phase, new_phase)
    refused_before = previous.get("refusedPublishes") or 0
    refused_now = status.get("refusedPublishes") or 0
    if refused_now > refused_before:
        kopf.warn(
            cast(kopf.Body, body),
            reason="PublishRefused",
            message=f"{refused_now - refused_before} publish attempt(s) refused"
            " (wrong stream key, unknown app, already live, or rate-limited)",
        )
    return True


async def _report_failure(kube: Kube, body: dict[str, Any], error: Exception) -> None:
    """Put a reconcile failure (e.g. a permission the operator lacks) into status.

    Best effort: when the API server itself is the problem, this fails too and
    the operator log is all there is.
    """
    seen = streams.Observation(problem=("ReconcileError", kube_mod.describe(error)))
    try:
        seen.spec = streams.LiveStreamSpec.model_validate(body.get("spec") or {})
        status = streams.compute_status(body, seen)
        meta = body["metadata"]
        await asyncio.to_thread(
            kube.patch_status, "LiveStream", meta["namespace"], meta["name"], status
        )
    except Exception:
        pass


def _same(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    return {k: v for k, v in previous.items() if k != "lastLiveTime"} == {
        k: v for k, v in status.items() if k != "lastLiveTime"
    }


def _with_removals(previous: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Merge patch that also clears fields no longer observed (null deletes)."""
    return {**{k: None for k in previous if k not in status}, **status}


# --- TranscodeProfile -------------------------------------------------------------


@kopf.on.event(*PROFILES)
async def profile_changed(
    type: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    namespace, name = meta["namespace"], meta["name"]
    _wake(memo, "TranscodeProfile", namespace, name)
    # A changed profile rolls every stream that uses it (their config hash changes).
    for (ns, stream), profile in list(memo.stream_profiles.items()):
        if ns == namespace and profile == name:
            _wake(memo, "LiveStream", ns, stream)
    if type != "DELETED" and meta.get("deletionTimestamp"):
        await asyncio.to_thread(profiles.release_if_unused, memo.kube, namespace, name)


@kopf.daemon(*PROFILES, cancellation_timeout=5.0)
async def run_profile(
    body: kopf.Body,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    async def step() -> None:
        await asyncio.to_thread(profiles.reconcile, memo.kube, copy.deepcopy(dict(body)))

    await _reconcile_loop(
        "TranscodeProfile", meta, stopped, memo, logger, step, every=memo.settings.resync_seconds
    )


# --- Recording -------------------------------------------------------------------


@kopf.on.event(*RECORDINGS)
async def recording_changed(
    type: str,
    body: kopf.Body,
    meta: kopf.Meta,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    _wake(memo, "Recording", meta["namespace"], meta["name"])
    if type != "DELETED" and meta.get("deletionTimestamp"):
        await recordings.finalize(memo, copy.deepcopy(dict(body)), logger)


@kopf.daemon(*RECORDINGS, cancellation_timeout=5.0)
async def run_recording(
    body: kopf.Body,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    async def step() -> None:
        await recordings.step(memo, copy.deepcopy(dict(body)), logger)

    await _reconcile_loop(
        "Recording", meta, stopped, memo, logger, step, every=memo.settings.poll_seconds
    )


async def _reconcile_loop(
    kind: str,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    step: Callable[[], Awaitable[None]],
    *,
    every: float,
) -> None:
    """Run ``step`` until stopped: when woken by an event, or every ``every`` seconds.

    A failed pass is counted and logged, and the next pass retries it.
    """
    key = (kind, meta["namespace"], meta["name"])
    while not stopped:
        try:
            await step()
            metrics.RECONCILES.labels(kind, "ok").inc()
        except Exception as error:
            metrics.RECONCILES.labels(kind, "error").inc()
            logger.warning("reconcile failed, will retry: %s", kube_mod.describe(error))
        await _sleep(memo, key, stopped, every)
