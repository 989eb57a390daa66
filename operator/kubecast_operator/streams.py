"""LiveStream: resolve references, apply children, and compute status.

Split in two on purpose: ``reconcile`` (blocking API calls, run in a thread)
gathers what exists, and ``compute_status`` (pure) turns those observations
into the status a user reads. Status is computed from what is observed now,
never from memory of what the operator did.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import pydantic
from kubernetes.client.rest import ApiException

from kubecast_api import LiveStreamSpec, LiveStreamStatus, WorkerConfig, describe_error, redact
from kubecast_api.profile import TranscodeProfileSpec
from kubecast_operator import children, conditions, copies, pod_problems, worker_client
from kubecast_operator import kube as kube_mod
from kubecast_operator.kube import Kube
from kubecast_operator.settings import (
    WORKER_HTTP_PORT,
    WORKER_RTMP_PORT,
    WORKER_SRT_PORT,
    WORKER_WHIP_PORT,
    Settings,
)


@dataclass
class Observation:
    """Everything the status of one LiveStream is computed from."""

    spec: LiveStreamSpec | None = None
    problem: tuple[str, str] | None = None  # (reason, message) that blocks the worker
    profile_name: str | None = None
    config_hash: str | None = None
    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    ingest_service: dict[str, Any] | None = None
    playback_service: dict[str, Any] | None = None
    node_address: str | None = None
    worker: dict[str, Any] | None = None  # the worker's /status document
    worker_error: str | None = None
    webrtc_renditions: list[str] = field(default_factory=list)  # what WHEP may offer


def new_stream_key() -> str:
    # 32 random bytes: unguessable, and URL-safe so it fits in an RTMP URL.
    return secrets.token_urlsafe(32)


def resolve_profile(
    kube: Kube, namespace: str, name: str
) -> tuple[TranscodeProfileSpec | None, tuple[str, str] | None]:
    return profile_of(kube.get("TranscodeProfile", namespace, name), namespace, name)


def profile_of(
    body: dict[str, Any] | None, namespace: str, name: str
) -> tuple[TranscodeProfileSpec | None, tuple[str, str] | None]:
    if body is None:
        return None, (
            "ProfileNotFound",
            f"TranscodeProfile {name!r} not found in namespace {namespace!r};"
            " create it or fix spec.profileRef",
        )
    try:
        return TranscodeProfileSpec.model_validate(body.get("spec") or {}), None
    except pydantic.ValidationError as error:
        return None, (
            "ProfileInvalid",
            f"TranscodeProfile {name!r} is invalid: "
            + describe_error(error, prefix="spec").replace("\n", "; "),
        )


@dataclass
class Watched:
    """What the operator's watches hold of one stream's world (handlers' kopf indexes).

    Read instead of asking the API server on every pass: at a thousand streams,
    per-stream GETs and LISTs were most of the operator's requests.
    """

    profile: dict[str, Any] | None = None
    deployment: dict[str, Any] | None = None
    ingest_service: dict[str, Any] | None = None
    playback_service: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)


def read_watched(kube: Kube, namespace: str, name: str, profile: str | None) -> Watched:
    """The same, asked of the API server (for a caller without watches)."""
    return Watched(
        profile=kube.get("TranscodeProfile", namespace, profile) if profile else None,
        deployment=kube.get("Deployment", namespace, children.worker_name(name)),
        ingest_service=kube.get("Service", namespace, children.ingest_service_name(name)),
        playback_service=kube.get("Service", namespace, children.playback_service_name(name)),
        pods=kube.list(
            "Pod",
            namespace,
            label_selector=f"kubecast.dev/stream={name},app.kubernetes.io/component=worker",
        ),
    )


@dataclass
class Applied:
    """What this process applied to one stream's children, kept by the stream's loop.

    A child is applied again only when its rendered manifest changed, when the
    watch saw it deleted or its spec changed by someone else, or at the resync
    (``Settings.resync_seconds``): an idle stream costs no write. A new process
    starts empty, so it applies everything once and converges as before.
    """

    digests: dict[str, str] = field(default_factory=dict)  # child -> manifest digest
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # as the apply returned
    shown: set[str] = field(default_factory=set)  # children the watch has shown since
    #: A child the API server refused (e.g. no Service IP left): retried at this time.
    retry_at: float | None = None
    #: The worker config rendered last, and the digest of the config it came from.
    rendered: tuple[bytes, str] | None = None


def reconcile(
    kube: Kube,
    body: dict[str, Any],
    settings: Settings,
    watched: Watched | None = None,
    applied: Applied | None = None,
    *,
    resync: bool = True,
) -> Observation:
    """Bring the stream's children in line with its spec; report what exists.

    ``watched``: the watches' copy of its children (None: read them from the API
    server); ``applied``: this process's memory of what it applied (None: apply all).
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    seen = Observation()
    try:
        spec = seen.spec = LiveStreamSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        seen.problem = ("SpecInvalid", describe_error(error, prefix="spec").replace("\n", "; "))
        return seen
    seen.profile_name = spec.profile_ref.name
    if watched is None:
        watched = read_watched(kube, namespace, name, spec.profile_ref.name)

    if not meta.get("deletionTimestamp"):
        _ensure_children(kube, body, spec, settings, seen, watched, applied, resync=resync)

    seen.deployment = seen.deployment or watched.deployment
    seen.pods = watched.pods
    seen.problem = seen.problem or _worker_pod_problem(kube, body, spec, seen.pods)
    seen.ingest_service = seen.ingest_service or watched.ingest_service
    seen.playback_service = seen.playback_service or watched.playback_service
    if "NodePort" in (spec.ingest_service.type, spec.playback_service.type):
        seen.node_address = settings.public_host or _node_address(kube)
    return seen


def _ensure_children(
    kube: Kube,
    body: dict[str, Any],
    spec: LiveStreamSpec,
    settings: Settings,
    seen: Observation,
    watched: Watched | None = None,
    applied: Applied | None = None,
    *,
    resync: bool = True,
) -> None:
    meta = body["metadata"]
    namespace = meta["namespace"]
    key_ref = children.stream_key_secret_ref(body, spec)
    if key_ref and spec.ingest.push and spec.ingest.push.stream_key_secret_ref is None:
        # create, never apply: re-applying would replace the key under the publisher.
        # NB: not watched (the operator may only create Secrets): once this process
        # knows it exists, it asks again only at the resync.
        secret = f"Secret/{key_ref[0]}"
        if applied is None or resync or secret not in applied.digests:
            kube.create(children.generated_key_secret(body, key=new_stream_key()))
            if applied is not None:
                applied.digests[secret] = "created"
    # NB: a user's key Secret is never read (the operator may not get secrets);
    # the worker pod's mount of it tells whether it exists (see pod_problems).

    if watched is None:
        profile, problem = resolve_profile(kube, namespace, spec.profile_ref.name)
    else:
        profile, problem = profile_of(watched.profile, namespace, spec.profile_ref.name)
    seen.problem = seen.problem or problem
    seen.webrtc_renditions = profile.webrtc_renditions() if profile else []
    w = watched or Watched()
    for manifest, current, field_name in (
        (children.ingest_service(body, spec), w.ingest_service, "ingest_service"),
        (children.playback_service(body, spec), w.playback_service, "playback_service"),
    ):
        try:
            setattr(seen, field_name, _apply(kube, manifest, current, applied, resync=resync))
        except ApiException as error:
            # E.g. "failed to allocate a serviceIP: range is full", or a quota: the
            # stream says which Service and the API server's reason, and the loop
            # retries it later rather than on every poll.
            seen.problem = seen.problem or (
                "ServiceNotCreated",
                f"Service {manifest['metadata']['name']!r} could not be created or updated:"
                f" {kube_mod.describe(error)}",
            )
            if applied is not None:
                applied.retry_at = time.monotonic() + SERVICE_RETRY_SECONDS
    if settings.network_policies:
        # Before the worker, so that its admin port is never open to all.
        _apply(kube, children.stream_network_policy(body, settings), None, applied,
               resync=resync, watched=False)  # fmt: skip
    if profile is None or seen.problem:
        return  # keep a running worker as it is; it needs a valid config to change
    rendered = _render(children.worker_config(body, spec, profile), applied)
    seen.config_hash = children.config_hash(rendered)
    _apply(kube, children.worker_config_map(body, rendered), None, applied, resync=resync,
           watched=False)  # fmt: skip
    seen.deployment = _apply(
        kube,
        children.worker_deployment(
            body, spec, rendered=rendered, settings=settings, profile=profile
        ),
        w.deployment,
        applied,
        resync=resync,
    )


def _render(config: WorkerConfig, applied: Applied | None) -> str:
    """The worker config's YAML, rendered again only when the config changed.

    NB: PyYAML's emitter is pure Python, and rendering on every pass was 15 % of the
    operator's CPU while a thousand streams converged (py-spy). libyaml's emitter
    folds long strings elsewhere, which would change the config hash (and restart
    every worker) on an operator upgrade; pydantic's JSON is fast, so the digest
    of that says whether the text can be reused.
    """
    digest = hashlib.blake2b(config.model_dump_json().encode(), digest_size=16).digest()
    if applied is not None and applied.rendered and applied.rendered[0] == digest:
        return applied.rendered[1]
    rendered = children.render_config(config)
    if applied is not None:
        applied.rendered = (digest, rendered)
    return rendered


#: How soon a child the API server refused is tried again.
SERVICE_RETRY_SECONDS = 15.0


def _apply(
    kube: Kube,
    manifest: dict[str, Any],
    current: dict[str, Any] | None,
    applied: Applied | None,
    *,
    resync: bool,
    watched: bool = True,
) -> dict[str, Any] | None:
    """Server-side apply ``manifest`` unless ``applied`` says it is in place already.

    ``current``: the watch's copy (``watched``), or None when the watch has none.
    Returns the freshest copy of the object known.
    """
    if applied is None:
        return kube.apply(manifest)
    key = f"{manifest['kind']}/{manifest['metadata']['name']}"
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    last = applied.objects.get(key)
    if current is not None and last is not None and _uid(current) == _uid(last):
        applied.shown.add(key)
    changed_by_others = watched and (
        (current is None and key in applied.shown)  # deleted since we applied it
        or (current is not None and last is not None and _uid(current) != _uid(last))
        or (current is not None and _generation(current) > _generation(last))  # spec edited
    )
    if not (resync or last is None or applied.digests.get(key) != digest or changed_by_others):
        return _newer(current, last)
    # NB: what the apply returns is kept slim (copies.py): whole, the four children
    # of 500 streams were 28 MB, mostly managedFields and pod templates (--heap).
    result = copies.slim(kube.apply(manifest), manifest["kind"])
    applied.digests[key], applied.objects[key] = digest, result
    applied.shown.discard(key)
    return (
        _newer(current, result)
        if current is not None and _uid(current) == _uid(result)
        else (result)
    )


def _uid(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("uid")


def _generation(obj: dict[str, Any] | None) -> int:
    return int(((obj or {}).get("metadata") or {}).get("generation") or 0)


def _newer(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """The copy with the later resourceVersion (etcd's revision: a number)."""
    if a is None or b is None:
        return a or b

    def version(obj: dict[str, Any]) -> int:
        try:
            return int(obj["metadata"].get("resourceVersion") or 0)
        except ValueError:
            return 0

    return a if version(a) >= version(b) else b


def _worker_pod_problem(
    kube: Kube, body: dict[str, Any], spec: LiveStreamSpec, pods: list[dict[str, Any]]
) -> tuple[str, str] | None:
    """Why the worker pod cannot start, as the kubelet reported it; None while it can."""
    namespace = body["metadata"]["namespace"]
    key_ref = children.stream_key_secret_ref(body, spec)
    user_key = bool(spec.ingest.push and spec.ingest.push.stream_key_secret_ref)
    # The user's Secrets the pod mounts, which the operator never reads itself.
    mounted: list[tuple[str, str, str, str]] = []  # volume, Secret, reason, field to fix
    if key_ref and user_key:
        mounted.append(
            (children.STREAM_KEY_VOLUME, key_ref[0], "StreamKeySecretNotFound",
             "spec.ingest.push.streamKeySecretRef")
        )  # fmt: skip
    if spec.ingest.pull and spec.ingest.pull.url_secret_ref:
        mounted.append(
            (children.PULL_URL_VOLUME, spec.ingest.pull.url_secret_ref.name,
             "PullUrlSecretNotFound", "spec.ingest.pull.urlSecretRef")
        )  # fmt: skip
    for pod in filter(pod_problems.waiting, pods):
        if mounted:
            events = kube.list(
                "Event", namespace, field_selector=pod_problems.failed_mount_selector(pod)
            )
            for volume, secret, reason, field in mounted:
                what = pod_problems.secret_mount_problem(
                    events, volume=volume, secret=secret, namespace=namespace
                )
                if what:
                    return (reason, f"{what}; create it or fix {field}")
        if config := pod_problems.container_config_problem(pod):
            return ("WorkerConfigError", f"the worker cannot start: {config}")
    return None


#: A node's address for NodePort URLs, and when it was read: one LIST of nodes a
#: minute for all streams, not one per stream and pass.
_node_cache: tuple[float, str | None] = (-math.inf, None)
NODE_CACHE_SECONDS = 60.0


def _node_address(kube: Kube) -> str | None:
    global _node_cache
    read_at, address = _node_cache
    if time.monotonic() - read_at < NODE_CACHE_SECONDS:
        return address
    address = _first_node_address(kube)
    _node_cache = (time.monotonic(), address)
    return address


def _first_node_address(kube: Kube) -> str | None:
    for node in kube.list("Node"):
        addresses = {a["type"]: a["address"] for a in node.get("status", {}).get("addresses", [])}
        for kind in ("ExternalIP", "InternalIP", "Hostname"):
            if addresses.get(kind):
                return addresses[kind]
    return None


# --- status -------------------------------------------------------------------


def service_url(
    service: dict[str, Any] | None,
    *,
    scheme: str,
    port: int,
    node_address: str | None,
) -> str | None:
    """How a client outside the pod reaches a Service, best address first."""
    if service is None:
        return None
    meta, spec = service["metadata"], service.get("spec", {})
    ingress = (service.get("status", {}).get("loadBalancer") or {}).get("ingress") or []
    if spec.get("type") == "LoadBalancer" and ingress:
        host = ingress[0].get("ip") or ingress[0].get("hostname")
        return f"{scheme}://{host}:{port}"
    if spec.get("type") in ("NodePort", "LoadBalancer") and node_address:
        node_port = next(
            (p.get("nodePort") for p in spec.get("ports", []) if p.get("nodePort")), None
        )
        if node_port:
            return f"{scheme}://{node_address}:{node_port}"
    return f"{scheme}://{meta['name']}.{meta['namespace']}.svc.cluster.local:{port}"


def _worker_figures(worker: dict[str, Any], playback_base: str | None) -> dict[str, Any]:
    """Map the worker's /status document onto LiveStream status fields.

    The worker names its fields after the LiveStream status already
    (camelCase), so this mostly selects; URLs become absolute here because only
    the operator knows how players reach the worker.
    """
    source = worker.get("input") or {}
    out: dict[str, Any] = {}
    if source:
        bitrate = source.get("bitrateKbps")
        out["input"] = {
            **{
                k: source.get(k)
                for k in (
                    "videoCodec",
                    "audioCodec",
                    "width",
                    "height",
                    "resolution",
                    "fps",
                )
            },
            "bitrateKbps": round(bitrate) if bitrate is not None else None,
            "publisher": _redacted(source.get("publisher")),
        }
    renditions = []
    for r in worker.get("renditions") or []:
        dropped = r.get("state") == "Dropped"
        relative = r.get("playbackUrl")
        renditions.append(
            {
                "name": r.get("name"),
                "state": "Dropped" if dropped else "Active",
                "reason": r.get("reason"),
                "width": r.get("width"),
                "height": r.get("height"),
                "bitrateKbps": round(r["bitrateKbps"])
                if r.get("bitrateKbps") is not None
                else None,
                "playbackUrl": f"{playback_base}/{relative.lstrip('/')}"
                if relative and playback_base and "://" not in relative
                else relative,
            }
        )
    out["renditions"] = renditions
    out["restream"] = [
        {
            "name": t.get("name"),
            "state": t.get("state"),
            "message": _redacted(t.get("lastError")),
            "restarts": t.get("restarts"),
        }
        for t in worker.get("restream") or []
    ]
    out["droppedFrames"] = worker.get("droppedFrames")
    out["encodeSpeed"] = worker.get("encodeSpeed")
    counters = (worker.get("ingest") or {}).get("counters") or {}
    out["refusedPublishes"] = sum(
        int(counters.get(k) or 0)
        for k in (
            "refused_wrong_key",
            "refused_unknown_app",
            "refused_busy",
            "refused_rate_limited",
        )
    )
    return out


def _redacted(message: Any) -> str | None:
    """A worker's message as status and Events may show it: credentials masked.

    NB: the worker masks them already; this holds for a worker that did not
    (another version), as the operator is what writes them where many can read.
    """
    return redact.text(str(message)) if message else None


def worker_restarts(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """What the kubelet says about restarts of the worker container, from the pods.

    A crash the worker could not report itself (SIGKILL, OOM) shows up only here.
    """
    restarts, last = 0, None
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            restarts += int(container.get("restartCount") or 0)
            ended = (container.get("lastState") or {}).get("terminated")
            if ended and (
                last is None or str(ended.get("finishedAt")) > str(last.get("finishedAt"))
            ):
                last = ended
    if not pods:
        return {}
    out: dict[str, Any] = {"workerRestarts": restarts}
    if last:
        out["lastWorkerExit"] = (
            f"exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})"
            f" at {last.get('finishedAt')}"
        )
    return out


def missing_restream_keys(seen: Observation) -> list[str]:
    """Restream targets whose key the worker cannot read, named with their Secret.

    Their volumes are optional (a missing target key must not stop the stream),
    so the kubelet mounts them empty; the worker finds the file missing and
    says so in its /status (restream.py).
    """
    if seen.spec is None:
        return []
    refs = {t.name: t.stream_key_secret_ref for t in seen.spec.restream}
    missing = []
    for target in (seen.worker or {}).get("restream") or []:
        ref = refs.get(str(target.get("name")))
        if ref and str(target.get("lastError") or "").startswith(RESTREAM_KEY_UNREADABLE):
            missing.append(
                f"{target.get('name')}: Secret {ref.name!r} not found or has no key {ref.key!r}"
            )
    return missing


def worker_down(pods: list[dict[str, Any]]) -> str | None:
    """Why the worker does not answer, when the kubelet knows: its container ended
    and is being restarted (a SIGKILL, an OOM kill). None for a first start."""

    def how(ended: dict[str, Any]) -> str:
        return f"exit code {ended.get('exitCode')} ({ended.get('reason') or 'Error'})"

    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            state = container.get("state") or {}
            if ended := state.get("terminated"):  # just now; lastState is an older one
                return f"the worker container ended with {how(ended)}; the kubelet restarts it"
            last = (container.get("lastState") or {}).get("terminated")
            if not last:
                continue
            if waiting := state.get("waiting"):
                # e.g. "back-off 40s restarting failed container=worker pod=<name>_<ns>(<uid>)"
                said = str(waiting.get("message") or "").split(" pod=", 1)[0]
                detail = ", ".join(part for part in (waiting.get("reason"), said) if part)
                return (
                    f"the worker container ended with {how(last)}; the kubelet restarts it:"
                    f" {detail}"
                )
            if not container.get("ready"):
                return f"the worker container ended with {how(last)}; restarted, starting"
    return None


def rollout_condition(seen: Observation) -> dict[str, Any]:
    """Progressing: True while the worker pod does not yet run the current config.

    The current config is the one this pass rendered from the spec and the
    profile (its hash is on the pod template, children.CONFIG_HASH); what runs
    is the hash on the pod that serves. A Recreate rollout stops the old pod
    before the new one starts, so for a while no pod serves at all.
    """
    if seen.config_hash is None:  # nothing valid to roll out (see Ready)
        reason, message = seen.problem or ("NoConfig", "no worker config rendered yet")
        return conditions.condition("Progressing", False, reason, message)
    wanted = seen.config_hash[:12]
    serving = worker_client.serving_pod(seen.pods)
    running = ((serving or {}).get("metadata", {}).get("annotations") or {}).get(
        children.CONFIG_HASH
    )
    older = [
        p
        for p in seen.pods
        if (p["metadata"].get("annotations") or {}).get(children.CONFIG_HASH) != seen.config_hash
        and not p["metadata"].get("deletionTimestamp")
    ]
    if serving is None:
        return conditions.condition(
            "Progressing", True, "RollingOut", f"starting a worker pod with config {wanted}"
        )
    if running != seen.config_hash:
        return conditions.condition(
            "Progressing",
            True,
            "RollingOut",
            f"rolling out config {wanted}; the serving pod runs {str(running)[:12]}",
        )
    if older:
        return conditions.condition(
            "Progressing", True, "RollingOut", f"config {wanted} serves; older pods are stopping"
        )
    return conditions.condition(
        "Progressing", False, "RolledOut", f"the worker pod runs the current config {wanted}"
    )


def outputs_condition(seen: Observation) -> dict[str, Any]:
    """OutputsReady: whether the worker produces every output the spec asks for.

    DASH (spec.outputs.dash) is produced once the worker has written its manifest;
    until then, while the stream is live, the condition says it is missing (and
    dashUrl stays unset: a URL that answers 404 is worse than none). A restream
    target that keeps failing, or whose key Secret is missing, makes it False too;
    HLS playback goes on either way.
    """
    spec = seen.spec
    worker = seen.worker or {}
    if (
        spec is not None
        and spec.outputs.dash.enabled
        and worker.get("playbackUrl")
        and not worker.get("dashUrl")
    ):
        return conditions.condition(
            "OutputsReady",
            False,
            "DashNotProduced",
            "the worker serves HLS but no DASH manifest yet (spec.outputs.dash); a worker"
            " image older than this operator does not produce DASH",
        )
    missing = missing_restream_keys(seen)
    if missing:
        return conditions.condition(
            "OutputsReady",
            False,
            "RestreamKeySecretNotFound",
            "restream key missing for " + "; ".join(missing),
        )
    failing = [
        f"{t.get('name')}: {_redacted(t.get('lastError')) or 'failing'}"
        for t in (seen.worker or {}).get("restream") or []
        if t.get("state") == "Retrying"
    ]
    if failing:
        return conditions.condition(
            "OutputsReady", False, "RestreamFailing", "retrying " + "; ".join(failing)
        )
    return conditions.condition("OutputsReady", True, "OutputsServed", "every requested output")


#: Counters that appear, at 0, when the first worker pod does: not a write on their own.
_COUNTERS = ("workerRestarts", "refusedPublishes")


def same_status(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """True when writing ``status`` over ``previous`` would tell a user nothing new.

    ``lastLiveTime`` moves on every poll of a live stream and is written with the
    next real change. A counter that appears at 0 (the worker pod exists, nothing
    restarted yet) waits for one too: on its own it was a status write of every
    stream whose pod existed a poll before its worker answered (a watch of 20
    streams' status showed it).
    """
    return _essential(previous) == _essential(status)


def _essential(status: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in status.items() if k != "lastLiveTime" and not (k in _COUNTERS and v == 0)
    }


def only_figures_changed(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """True when the two statuses differ only in figures that move on every poll.

    Bitrates, speed and frame counters change every poll while a stream is live;
    writing each of them would cost the API server one write per stream per poll.
    The operator writes those at a slower pace and everything else at once.
    """
    return _without_figures(previous) == _without_figures(status)


def _without_figures(status: dict[str, Any]) -> dict[str, Any]:
    rest = {
        k: v
        for k, v in status.items()
        if k not in ("lastLiveTime", "droppedFrames", "encodeSpeed", "input", "renditions")
    }
    source = status.get("input") or {}
    rest["input"] = {k: v for k, v in source.items() if k not in ("bitrateKbps", "fps")}
    rest["renditions"] = [
        {k: v for k, v in r.items() if k != "bitrateKbps"} for r in status.get("renditions") or []
    ]
    return rest


#: How the worker's restream says it found no key file (workers/kubecast_worker/restream.py).
RESTREAM_KEY_UNREADABLE = "cannot read the target's key file"

WORKER_PHASES = {"live": "Live", "reconnecting": "Reconnecting", "idle": "Idle", "error": "Error"}


def compute_status(
    body: dict[str, Any], seen: Observation, *, now: str | None = None
) -> dict[str, Any]:
    """The LiveStream's status, from observation only."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    generation = meta.get("generation")
    at = now or conditions.now()

    protocol = seen.spec.ingest.push.protocol if seen.spec and seen.spec.ingest.push else None
    srt = protocol == "srt"
    scheme, port = {
        "srt": ("srt", WORKER_SRT_PORT),
        "whip": ("http", WORKER_WHIP_PORT),
    }.get(str(protocol), ("rtmp", WORKER_RTMP_PORT))
    ingest_base = service_url(
        seen.ingest_service, scheme=scheme, port=port, node_address=seen.node_address
    )
    playback_base = service_url(
        seen.playback_service, scheme="http", port=WORKER_HTTP_PORT, node_address=seen.node_address
    )
    status: dict[str, Any] = {"observedGeneration": generation}
    if seen.spec and seen.spec.ingest.push and ingest_base:
        # SRT has no app: publishers add ?passphrase=<stream key> to this URL.
        app = seen.spec.ingest.push.app
        status["ingestUrl"] = (
            ingest_base if srt else f"{ingest_base}/whip/{app}" if protocol == "whip"
            else f"{ingest_base}/{app}"
        )  # fmt: skip
        key_ref = children.stream_key_secret_ref(body, seen.spec)
        status["streamKeySecret"] = key_ref[0] if key_ref else None
    if playback_base:
        status["playbackUrl"] = f"{playback_base}/master.m3u8"
        # The worker says when its first still exists; its path is always the same.
        if (seen.worker or {}).get("thumbnailUrl"):
            status["thumbnailUrl"] = f"{playback_base}/thumbnail.jpg"
        active = [
            r.get("name")
            for r in (seen.worker or {}).get("renditions") or []
            if r.get("state") != "Dropped"
        ]
        offered = [r for r in active if r in seen.webrtc_renditions]
        if seen.spec and seen.spec.outputs.webrtc.enabled and offered:
            status["whepUrl"] = f"{playback_base}/whep/{offered[0]}"
        if (seen.worker or {}).get("dashUrl"):
            status["dashUrl"] = f"{playback_base}/manifest.mpd"

    ready_deployment = bool((seen.deployment or {}).get("status", {}).get("availableReplicas"))
    worker_state = (seen.worker or {}).get("state")
    if meta.get("deletionTimestamp"):
        phase = "Terminating"
    elif seen.problem:
        phase = "Error"
    elif seen.worker is not None:
        phase = WORKER_PHASES.get(str(worker_state), "Pending")
    else:
        phase = "Pending"
    status["phase"] = phase

    rollout = rollout_condition(seen)
    if seen.problem:
        ready = conditions.condition("Ready", False, *seen.problem)
    elif seen.worker is not None and rollout["status"] == "True":
        # NB: the pod that answered runs an older config: the worker is up,
        # but not the one this generation of the spec asks for.
        ready = conditions.condition("Ready", False, "ConfigRollingOut", rollout["message"])
    elif seen.worker is not None and not seen.worker.get("ready"):
        detail = _redacted(seen.worker.get("lastError")) or "the worker is starting its ingest"
        ready = conditions.condition("Ready", False, "WorkerNotReady", detail)
    elif seen.worker is not None:
        ready = conditions.condition(
            "Ready", True, "WorkerRunning", "the worker answers and accepts publishers"
        )
    elif seen.deployment is None:
        ready = conditions.condition("Ready", False, "WorkerNotCreated", "creating the worker")
    else:
        detail = seen.worker_error or "waiting for the worker pod"
        reason = "WorkerUnreachable" if ready_deployment else "WorkerStarting"
        ready = conditions.condition("Ready", False, reason, detail)
    live = worker_state == "live"
    ingest = conditions.condition(
        "IngestConnected",
        live or (None if seen.worker is None else False),
        {"live": "PublisherConnected", "reconnecting": "PublisherLost"}.get(
            str(worker_state), "NoPublisher"
        ),
        (f"publisher {_redacted(seen.worker.get('publisher'))}" if live and seen.worker else ""),
    )
    transcoding = conditions.condition(
        "Transcoding",
        live or (None if seen.worker is None else False),
        "LadderRunning" if live else "NotLive",
    )
    status["conditions"] = conditions.merge(
        previous.get("conditions"),
        [ready, rollout, ingest, transcoding, outputs_condition(seen)],
        generation=generation,
        at=at,
    )
    if seen.worker is not None:
        status.update(_worker_figures(seen.worker, playback_base))
    message = seen.problem[1] if seen.problem else (seen.worker or {}).get("lastError")
    if message is None and seen.worker is None:
        message = worker_down(seen.pods)
    status["message"] = _redacted(message)
    status["lastLiveTime"] = at if live else previous.get("lastLiveTime")
    status.update(worker_restarts(seen.pods))
    # One schema: what we write must be what the CRD describes.
    return LiveStreamStatus.model_validate(
        {k: v for k, v in status.items() if v is not None}
    ).to_api()
