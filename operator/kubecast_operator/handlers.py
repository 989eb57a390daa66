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
import concurrent.futures
import copy
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiohttp
import kopf
import kubernetes.client

from kubecast_api import GROUP, VERSION
from kubecast_operator import (
    children,
    copies,
    diffbase,
    metrics,
    profiles,
    recordings,
    streams,
    worker_client,
)
from kubecast_operator import kube as kube_mod
from kubecast_operator.children import MANAGED_BY
from kubecast_operator.kube import Kube
from kubecast_operator.settings import Settings

STREAMS = (GROUP, VERSION, "livestreams")
PROFILES = (GROUP, VERSION, "transcodeprofiles")
RECORDINGS = (GROUP, VERSION, "recordings")
OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY}
#: Threads for the reconciles' blocking API calls (and HTTP connections to the API server).
RECONCILE_THREADS = 16
#: Threads for status writes, apart from the reconciles: when a thousand streams are
#: created at once, a stream's first status must not wait behind every stream's applies.
STATUS_THREADS = 4
#: Connections of kopf's own client to the API server for its short requests (finalizers,
#: Events, listings); each watch holds one more of its own (``kopf_connections``).
KOPF_REQUEST_CONNECTIONS = 32
#: Watches kopf keeps per namespace: LiveStreams, TranscodeProfiles, Recordings, and the
#: Deployments, Services and Pods they own; one to spare.
KOPF_WATCHES_PER_NAMESPACE = 7
T = TypeVar("T")


def kopf_connections(namespaces: list[str]) -> int:
    """The limit of kopf's connections to the API server; 0: none (kopf's default).

    Why a limit: kopf's client opens a new TLS connection for every request made
    while the others are busy, and keeps it. A thousand streams created at once
    are a thousand finalizer patches and Events at once: 964 connections at 500
    streams (bench/operator.py --heap), each with asyncio's 256 KiB TLS read
    buffer (120 MB), and a TLS handshake apiece on both sides. The watches hold
    a connection each for as long as they run, so they get theirs on top of the
    requests'. A namespace pattern ("team-*") watches an unknown number of
    namespaces: then there is no limit, as in kopf, rather than starved watches.
    """
    if any(c in namespace for namespace in namespaces for c in "*?[!"):
        return 0
    return KOPF_REQUEST_CONNECTIONS + KOPF_WATCHES_PER_NAMESPACE * max(1, len(namespaces))


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (the Kubernetes client's kubeconfig or service account),
    with a session whose connections are limited (``kopf_connections``)."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=memo.get("kopf_connections", 0), ssl=info.as_ssl_context()
        ),
        headers=info.as_http_headers(),
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


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
    settings.persistence.diffbase_storage = diffbase.LeanDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.INFO
    # Leadership comes from a Lease (see leader.py), not from kopf peering.
    settings.peering.standalone = True
    # Filter the children's watches on the server: without this, kopf would
    # stream every Pod, Service and Deployment of the cluster to us.
    selector = ",".join(f"{k}={v}" for k, v in OWNED.items())
    for resource in (("apps", "v1", "deployments"), ("v1", "services"), ("v1", "pods")):
        settings.watching.label_selectors[resource] = selector
    # One pool of its own for the blocking API calls of reconciles, sized for a
    # thousand streams: the default executor (6 threads on 2 cores) also carries
    # everything else that runs in a thread.
    memo.pool = concurrent.futures.ThreadPoolExecutor(RECONCILE_THREADS, "reconcile")
    memo.status_pool = concurrent.futures.ThreadPoolExecutor(STATUS_THREADS, "status")
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = RECONCILE_THREADS + STATUS_THREADS
    # NB: every write goes through the leader's fence (cli.py): one that no
    # longer leads raises NotLeading instead of writing. kopf.event and kopf.warn
    # are only ever called after such a write succeeded.
    memo.kube = Kube(kubernetes.client.ApiClient(configuration), fence=memo.get("fence"))
    logging.getLogger("kopf.objects").addFilter(_quiet_event_handlers)
    memo.settings = Settings.from_env()
    recordings.signer(memo)  # a bad KUBECAST_SIGNING_KEY_FILE stops the start, not a recording
    # NB: no limit on connections to workers (aiohttp's default is 100): with a
    # thousand workers a poll could wait for a free one inside its 2 s timeout, and
    # each poll of a worker past the 100th opened a new connection.
    memo.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    memo.wakeups = {}  # (kind, namespace, name) -> asyncio.Event
    memo.stream_profiles = {}  # (namespace, stream) -> profile name
    memo.stream_phases = {}  # (kind, namespace, stream) -> phase last written
    memo.stream_generations = {}  # (namespace, stream) -> (generation, deleting) last seen
    memo.profile_generations = {}  # (namespace, profile) -> (generation, deleting) last seen
    memo.child_versions = {}  # uid of a watched child -> resourceVersion last seen


def _quiet_event_handlers(record: logging.LogRecord) -> bool:
    """Drop kopf's "Handler 'child_changed' succeeded." lines: one per watch event,
    thousands a minute at a thousand streams, and they say nothing."""
    return not (
        record.levelno == logging.INFO
        and record.getMessage().startswith("Handler '")
        and record.getMessage().endswith("_changed' succeeded.")
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.http.close()
    memo.pool.shutdown(wait=False, cancel_futures=True)
    memo.status_pool.shutdown(wait=False, cancel_futures=True)


async def _blocking(memo: kopf.Memo, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking API call in the reconciles' own thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(memo.pool, functools.partial(call, *args, **kwargs))


async def _write_status(memo: kopf.Memo, kind: str, namespace: str, name: str, status: Any) -> None:
    """Patch a status in the status writes' own threads (``STATUS_THREADS``)."""
    loop = asyncio.get_running_loop()
    write = functools.partial(memo.kube.patch_status, kind, namespace, name, status)
    await loop.run_in_executor(memo.status_pool, write)


# --- the watches' copies (kopf indexes): read instead of GET and LIST -------------
# kopf fills them from the watches it runs anyway, and starts no handler before
# they hold the initial listing. Each keeps one slim copy per object.


@kopf.index("apps", "v1", "deployments", labels=OWNED)
def owned_deployments(body: kopf.Body, **_: Any) -> Any:
    return {_key(body): copies.slim(body, "Deployment")}


@kopf.index("v1", "services", labels=OWNED)
def owned_services(body: kopf.Body, **_: Any) -> Any:
    return {_key(body): copies.slim(body, "Service")}


@kopf.index("v1", "pods", labels={**OWNED, "app.kubernetes.io/component": "worker"})
def worker_pods(body: kopf.Body, **_: Any) -> Any:
    stream = body.metadata.labels.get("kubecast.dev/stream")
    return {(body.metadata.namespace, stream): copies.slim(body, "Pod")} if stream else None


@kopf.index(*PROFILES)
def profile_bodies(body: kopf.Body, **_: Any) -> Any:
    return {_key(body): copies.slim(body, "TranscodeProfile")}


@kopf.index(*STREAMS)
def profile_users(body: kopf.Body, **_: Any) -> Any:
    profile = (body.spec.get("profileRef") or {}).get("name")
    return {(body.metadata.namespace, profile): body.metadata.name} if profile else None


def _key(body: kopf.Body) -> tuple[str | None, str | None]:
    return body.metadata.namespace, body.metadata.name


def _one(index: kopf.Index[Any, Any], key: Any) -> Any:
    return next(iter(index.get(key) or ()), None)


def _watched(
    indexes: dict[str, Any], namespace: str, name: str, profile: str | None
) -> streams.Watched:
    return streams.Watched(
        profile=_one(indexes["profile_bodies"], (namespace, profile)) if profile else None,
        deployment=_one(indexes["owned_deployments"], (namespace, children.worker_name(name))),
        ingest_service=_one(
            indexes["owned_services"], (namespace, children.ingest_service_name(name))
        ),
        playback_service=_one(
            indexes["owned_services"], (namespace, children.playback_service_name(name))
        ),
        pods=list(indexes["worker_pods"].get((namespace, name)) or ()),
    )


def _users(index: kopf.Index[Any, Any], namespace: str, profile: str) -> list[str]:
    return sorted(index.get((namespace, profile)) or ())


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
    type: str,
    body: kopf.Body,
    meta: kopf.Meta,
    memo: kopf.Memo,
    **indexes: Any,
) -> None:
    profile_bodies, profile_users = indexes["profile_bodies"], indexes["profile_users"]
    namespace, name = meta["namespace"], meta["name"]
    generation = (meta.get("generation"), bool(meta.get("deletionTimestamp")))
    if type == "DELETED" or memo.stream_generations.get((namespace, name)) != generation:
        # NB: not on a change of status or metadata alone: the operator's own status
        # writes come back as such events, and must not wake a full pass.
        _wake(memo, "LiveStream", namespace, name)
    profile = (body.get("spec") or {}).get("profileRef", {}).get("name")
    previous = memo.stream_profiles.get((namespace, name))
    if type == "DELETED":
        memo.stream_profiles.pop((namespace, name), None)
        memo.stream_generations.pop((namespace, name), None)
    else:
        memo.stream_profiles[(namespace, name)] = profile
        memo.stream_generations[(namespace, name)] = generation
    if type != "DELETED" and profile == previous:
        return  # its profile's users are the same
    for changed in {profile, previous} - {None}:
        _wake(memo, "TranscodeProfile", namespace, changed)
        deleting = (_one(profile_bodies, (namespace, changed)) or {}).get("metadata", {})
        if (type == "DELETED" or changed != profile) and deleting.get("deletionTimestamp"):
            # A profile waiting to be deleted may have just lost its last user.
            await _blocking(
                memo, profiles.release_if_unused, memo.kube, namespace, changed,
                _users(profile_users, namespace, changed),
            )  # fmt: skip


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("v1", "services", labels=OWNED)
@kopf.on.event("v1", "pods", labels=OWNED)
def child_changed(type: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    # NB: when a watch must start over (its resource version expired: 410 Gone),
    # kopf lists every child again and replays each as an event. At a thousand
    # streams that woke every stream for a full pass at once, and the reconciles'
    # threads held the GIL long enough for the worker polls to time out together.
    # A version already seen is no change.
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    if type == "DELETED":
        memo.child_versions.pop(uid, None)
    elif version is not None and memo.child_versions.get(uid) == version:
        return
    else:
        memo.child_versions[uid] = version
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
    **indexes: Any,  # kopf passes every index by its name
) -> None:
    kube: Kube = memo.kube
    settings: Settings = memo.settings
    key = ("LiveStream", meta["namespace"], meta["name"])
    memo.wakeups.setdefault(key, asyncio.Event()).set()  # first pass: reconcile at once
    seen: streams.Observation | None = None
    applied = streams.Applied()  # this process's memory: nothing applied yet
    # The first pass applies everything anyway. The first resync comes one to two
    # periods later, at a point of the period fixed by the stream's uid: a thousand
    # streams created by one `kubectl apply` would otherwise all resync in the same
    # minute, and their 5,000 writes would keep the polls of every worker waiting.
    last_resync = time.monotonic() + settings.resync_seconds * resync_phase(meta.get("uid"))
    last_written = 0.0
    written: dict[str, Any] = {}  # the status this loop wrote last
    # One missed poll is forgiven (worker_client.LastAnswer), for at most one poll
    # interval and one timeout past the answer, twice that on a busy event loop.
    last_answer = worker_client.LastAnswer(
        max_age=2 * (settings.poll_seconds + worker_client.POLL_TIMEOUT_SECONDS)
    )
    last_generation = None
    woken = False
    while not stopped:
        wake = memo.wakeups[key]
        now = time.monotonic()
        resync = now - last_resync > settings.resync_seconds
        retry = applied.retry_at is not None and now >= applied.retry_at
        full = (
            woken
            or wake.is_set()
            or seen is None
            or body.get("metadata", {}).get("generation") != last_generation
            or resync
            or retry
        )
        wake.clear()
        # A full pass reads the body in a thread, while the watch may bring a new one:
        # it gets a copy of its own. NB: kopf replaces the body's raw dict on each event
        # and mutates none, so an idle pass (most of them: a poll of the worker) reads a
        # shallow copy, which holds the body of now; deep copies of a thousand bodies
        # every poll interval were 15 % of the steady state's profile.
        snapshot = copy.deepcopy(dict(body)) if full else dict(body)
        try:
            if full:
                started = time.monotonic()
                applied.retry_at = None
                profile = ((snapshot.get("spec") or {}).get("profileRef") or {}).get("name")
                watched = _watched(indexes, meta["namespace"], meta["name"], profile)
                seen = await _blocking(
                    memo, streams.reconcile, kube, snapshot, settings, watched, applied,
                    resync=resync,
                )  # fmt: skip
                metrics.RECONCILE_SECONDS.labels("LiveStream").observe(time.monotonic() - started)
                metrics.RECONCILES.labels("LiveStream", "ok").inc()
                last_generation = snapshot["metadata"].get("generation")
                if resync:
                    last_resync = time.monotonic()
            assert seen is not None
            await _poll_worker(memo, seen, last_answer)
            figures_due = time.monotonic() - last_written >= settings.status_figures_seconds
            if await _write_stream_status(
                memo, snapshot, seen, logger, figures_due=figures_due, written=written
            ):
                last_written = time.monotonic()
        except Exception as error:  # keep the loop alive: the next pass retries
            metrics.RECONCILES.labels("LiveStream", "error").inc()
            logger.warning("reconcile failed, will retry: %s", kube_mod.describe(error))
            seen = None
            applied = streams.Applied()  # what a failed pass applied is not known
            written.clear()  # nor which status is in place: _report_failure writes one
            await _report_failure(memo, snapshot, error)
        phase = (body.get("status") or {}).get("phase") or "Pending"
        if seen is not None and memo.stream_phases.get(key) != phase:
            # NB: only on a change: the tally is of every stream, and an idle pass of
            # each of a thousand streams made it a million steps a second.
            memo.stream_phases[key] = phase
            metrics.count_phases(memo.stream_phases.values())
        # Woken by a child's event (a deleted Service, a pod that got its IP): the
        # next pass reconciles in full, not just a poll of the worker.
        woken = await _sleep(memo, key, stopped, settings.poll_seconds)
    memo.wakeups.pop(key, None)
    memo.stream_phases.pop(key, None)
    metrics.count_phases(memo.stream_phases.values())


def resync_phase(uid: str | None) -> float:
    """Where in the resync period a stream's resyncs fall: a stable fraction in [0, 1)."""
    digest = hashlib.blake2b((uid or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


async def _poll_worker(
    memo: kopf.Memo, seen: streams.Observation, last: worker_client.LastAnswer
) -> None:
    """Poll the serving pod's /status into ``seen``; ``last`` judges a missed poll."""
    seen.worker, seen.worker_error = None, None
    pod = worker_client.serving_pod(seen.pods)
    if pod is None:
        last.forget()
        return
    answer: dict[str, Any] | worker_client.WorkerUnreachable
    try:
        answer = await worker_client.fetch_status(memo.http, pod["status"]["podIP"])
    except worker_client.WorkerUnreachable as error:
        metrics.WORKER_POLL_ERRORS.labels("LiveStream").inc()
        answer = error
    reading = last.judge(worker_client.WorkerRun.of(pod), answer, now=time.monotonic())
    if reading.forgiven:
        metrics.WORKER_POLLS_FORGIVEN.labels("LiveStream").inc()
    seen.worker, seen.worker_error = reading.worker, reading.error


async def _write_stream_status(
    memo: kopf.Memo,
    body: dict[str, Any],
    seen: streams.Observation,
    logger: kopf.Logger,
    *,
    figures_due: bool = True,
    written: dict[str, Any] | None = None,
) -> bool:
    """Write the status if it changed; only-figures changes wait for ``figures_due``.

    ``written``: the status this loop wrote last, updated here. Until the watch
    brings that write back, ``body`` still holds the one before: from it, the same
    status would be written a second time, its phase change announced twice, and
    every condition would look new (lastTransitionTime is kept from the status in
    place). A thousand streams created at once each wrote their first status twice
    and posted 1.8 "Pending" Events. So the status in place is, as far as this loop
    knows, the one it wrote.
    """
    previous = body.get("status") or {}
    last = written or previous
    status = streams.compute_status({**body, "status": last}, seen)
    if streams.same_status(previous, status) or streams.same_status(last, status):
        return False
    if not figures_due and streams.only_figures_changed(last, status):
        return False
    last = dict(last)  # `written` changes below
    meta = body["metadata"]
    await _write_status(
        memo, "LiveStream", meta["namespace"], meta["name"],
        _with_removals({**previous, **last}, status),
    )  # fmt: skip
    metrics.STATUS_WRITES.labels("LiveStream").inc()
    if written is not None:
        written.clear()
        written.update(status)
    old_phase, new_phase = last.get("phase"), status.get("phase")
    if old_phase != new_phase:
        kind = "Warning" if new_phase == "Error" else "Normal"
        kopf.event(
            cast(kopf.Body, body),
            type=kind,
            reason=str(new_phase),
            message=status.get("message") or f"stream is {new_phase}",
        )
        logger.info("phase %s -> %s", old_phase, new_phase)
    refused_before = last.get("refusedPublishes") or 0
    refused_now = status.get("refusedPublishes") or 0
    if refused_now > refused_before:
        kopf.warn(
            cast(kopf.Body, body),
            reason="PublishRefused",
            message=f"{refused_now - refused_before} publish attempt(s) refused"
            " (wrong stream key, unknown app, already live, or rate-limited)",
        )
    return True


async def _report_failure(memo: kopf.Memo, body: dict[str, Any], error: Exception) -> None:
    """Put a reconcile failure (e.g. a permission the operator lacks) into status.

    Best effort: when the API server itself is the problem, this fails too and
    the operator log is all there is.
    """
    seen = streams.Observation(problem=("ReconcileError", kube_mod.describe(error)))
    try:
        seen.spec = streams.LiveStreamSpec.model_validate(body.get("spec") or {})
        status = streams.compute_status(body, seen)
        meta = body["metadata"]
        await _write_status(memo, "LiveStream", meta["namespace"], meta["name"], status)
    except Exception:
        pass


def _with_removals(previous: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Merge patch that also clears fields no longer observed (null deletes)."""
    return {**{k: None for k in previous if k not in status}, **status}


# --- TranscodeProfile -------------------------------------------------------------


@kopf.on.event(*PROFILES)
async def profile_changed(
    type: str,
    body: kopf.Body,
    meta: kopf.Meta,
    memo: kopf.Memo,
    **indexes: Any,
) -> None:
    profile_users = indexes["profile_users"]
    namespace, name = meta["namespace"], meta["name"]
    generation = (meta.get("generation"), bool(meta.get("deletionTimestamp")))
    if type == "DELETED" or memo.profile_generations.get((namespace, name)) != generation:
        # NB: not on its own status writes (its usedBy count moves with every new
        # stream): waking all its streams for those would be a full pass of each.
        _wake(memo, "TranscodeProfile", namespace, name)
        # A changed profile rolls every stream that uses it (their config hash changes).
        for stream in _users(profile_users, namespace, name):
            _wake(memo, "LiveStream", namespace, stream)
    if type == "DELETED":
        memo.profile_generations.pop((namespace, name), None)
    else:
        memo.profile_generations[(namespace, name)] = generation
    if type != "DELETED" and meta.get("deletionTimestamp"):
        await _blocking(
            memo, profiles.release_if_unused, memo.kube, namespace, name,
            _users(profile_users, namespace, name),
        )  # fmt: skip


@kopf.daemon(*PROFILES, cancellation_timeout=5.0)
async def run_profile(
    body: kopf.Body,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **indexes: Any,
) -> None:
    async def step() -> None:
        used_by = _users(indexes["profile_users"], meta["namespace"], meta["name"])
        await _blocking(memo, profiles.reconcile, memo.kube, copy.deepcopy(dict(body)), used_by)

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
    settings: Settings = memo.settings
    last_answer = worker_client.LastAnswer(
        max_age=2 * (settings.poll_seconds + worker_client.POLL_TIMEOUT_SECONDS)
    )

    async def step() -> None:
        await recordings.step(memo, copy.deepcopy(dict(body)), logger, last_answer)

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
