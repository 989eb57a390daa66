"""Pure builders: a resource's spec in, the manifests of its children out.

Nothing here talks to the API server, so every child can be unit-tested
without a cluster. Every child carries an ownerReference to its resource, so
deleting the resource garbage-collects it, and the same labels, so the
operator can find what it owns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import yaml

from kubecast_api import API_VERSION, WorkerConfig, WorkerIngest, WorkerPull, WorkerRestreamTarget
from kubecast_api.livestream import LiveStreamSpec, PlaylistType
from kubecast_api.profile import TranscodeProfileSpec
from kubecast_api.recording import RecordingSpec
from kubecast_operator.settings import (
    WORKER_ADMIN_PORT,
    WORKER_HTTP_PORT,
    WORKER_RTMP_PORT,
    WORKER_SRT_PORT,
    WORKER_WHIP_PORT,
    Settings,
)

MANAGED_BY = "kubecast-operator"
STREAM_KEY_FIELD = "streamKey"
CONFIG_HASH = "kubecast.dev/config-hash"
CONFIG_DIR = "/etc/kubecast/config"
KEY_DIR = "/etc/kubecast/stream-key"
#: The worker pod's volume of the stream key: its FailedMount Events say the Secret is missing.
STREAM_KEY_VOLUME = "stream-key"
RESTREAM_KEY_DIR = "/etc/kubecast/restream"  # /<target index>/<key>
STOP_TOKEN_DIR = "/etc/kubecast/stop-token"
STOP_TOKEN_FIELD = "token"
PULL_URL_DIR = "/etc/kubecast/pull-url"
PULL_URL_VOLUME = "pull-url"
MEDIA_DIR = "/var/lib/kubecast/media"
RECORDING_DIR = "/var/lib/kubecast/recording"
RECORDER_CONTAINER = "recorder"  # the recorder pod's one container


# --- names -----------------------------------------------------------------


def worker_name(stream: str) -> str:
    return f"{stream}-worker"


def config_name(stream: str) -> str:
    return f"{stream}-worker-config"


def generated_key_secret_name(stream: str) -> str:
    return f"{stream}-stream-key"


def ingest_service_name(stream: str) -> str:
    return f"{stream}-ingest"


def playback_service_name(stream: str) -> str:
    return f"{stream}-playback"


def recorder_name(recording: str) -> str:
    return f"{recording}-recorder"


def recording_claim_name(recording: str) -> str:
    return f"{recording}-data"


def stop_token_secret_name(recording: str) -> str:
    return f"{recording}-stop-token"


# --- shared pieces -----------------------------------------------------------


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        # NB: foreground deletion of the owner waits for its children.
        "blockOwnerDeletion": True,
    }


def labels(*, instance: str, component: str, stream: str | None = None) -> dict[str, str]:
    found = {
        "app.kubernetes.io/name": "kubecast",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if stream:
        found["kubecast.dev/stream"] = stream
    return found


def metadata(
    body: dict[str, Any], name: str, component: str, *, stream: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": labels(instance=body["metadata"]["name"], component=component, stream=stream),
        "ownerReferences": [owner_reference(body)],
    }


def restricted_security_context() -> dict[str, Any]:
    """Pod Security Standards 'restricted': non-root, read-only, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(spec: LiveStreamSpec, storage: WorkerStorage | None) -> dict[str, Any]:
    """The stream's CPU and memory, and the ephemeral storage its worker needs."""
    out: dict[str, Any] = {}
    for kind in ("requests", "limits"):
        values = getattr(spec.resources, kind).model_dump(exclude_none=True)
        if storage is not None:
            mi = storage.request_mi if kind == "requests" else storage.limit_mi
            if mi is not None:
                values["ephemeral-storage"] = f"{mi}Mi"
        if values:
            out[kind] = values
    return out


# --- local disk of media pods ---------------------------------------------------

#: kbit/s assumed for a passthrough rendition, whose bitrate is the source's and
#: not known in advance: above what OBS and the big platforms suggest for 1080p60.
PASSTHROUGH_KBITS = 20_000
#: Container overhead on top of the codec bitrates (MPEG-TS, the larger of ts and fmp4).
SEGMENT_OVERHEAD = 1.10
#: Headroom on the estimate: bitrate peaks, segments longer than segmentSeconds
#: (a passthrough source's own keyframes), playlists and temp files.
MEDIA_HEADROOM = 2
MEDIA_MIN_MI = 256
#: /tmp of media pods: the root filesystem is read-only and nothing of ours writes there.
TMP_SIZE_LIMIT_MI = 64
#: Container logs (the kubelet keeps 5 x 10Mi by default) and the writable layer.
EPHEMERAL_OVERHEAD_MI = 128


@dataclass(frozen=True)
class WorkerStorage:
    """The worker's local disk: its HLS output lives in an emptyDir ("media").

    A live playlist keeps a sliding window of segments, so the volume has a
    bound, computed from the ladder: the volume gets it as ``sizeLimit``, and
    the container requests (and is limited to) it plus /tmp and logs, so the
    scheduler places the worker where that much disk is free and a runaway
    worker is evicted before it fills the node.

    NB: an event playlist keeps every segment of a publish, by design (DVR from
    the start), so no bound holds: any sizeLimit or ephemeral-storage limit
    would evict the worker mid-event, and its playlist with it. It requests
    the same amount and has no limit; the node's own disk-pressure eviction
    is what remains.
    """

    media_mi: int
    bounded: bool

    @classmethod
    def of(cls, spec: LiveStreamSpec, profile: TranscodeProfileSpec) -> WorkerStorage:
        kbits = sum(
            PASSTHROUGH_KBITS
            if rendition.passthrough
            else (rendition.maxrate or rendition.video_bitrate or 0) + rendition.audio_bitrate
            for rendition in profile.renditions
        )
        # On disk: the window, the segment FFmpeg keeps past it
        # (hls_delete_threshold) and the one being written.
        seconds = (spec.outputs.hls.window_segments + 2) * profile.segment_seconds
        size = kbits * 1000 / 8 * SEGMENT_OVERHEAD * seconds * MEDIA_HEADROOM
        return cls(
            media_mi=max(MEDIA_MIN_MI, math.ceil(size / 2**20)),
            bounded=spec.outputs.hls.playlist_type != PlaylistType.EVENT,
        )

    @property
    def request_mi(self) -> int:
        return self.media_mi + TMP_SIZE_LIMIT_MI + EPHEMERAL_OVERHEAD_MI

    @property
    def limit_mi(self) -> int | None:
        return self.request_mi if self.bounded else None

    def media_volume(self) -> dict[str, Any]:
        empty_dir = {"sizeLimit": f"{self.media_mi}Mi"} if self.bounded else {}
        return {"name": "media", "emptyDir": empty_dir}


def tmp_volume() -> dict[str, Any]:
    return {"name": "tmp", "emptyDir": {"sizeLimit": f"{TMP_SIZE_LIMIT_MI}Mi"}}


#: The recorder writes to its claim; locally only /tmp, logs and the writable layer.
RECORDER_EPHEMERAL = {"ephemeral-storage": f"{TMP_SIZE_LIMIT_MI + EPHEMERAL_OVERHEAD_MI}Mi"}


# --- LiveStream children ----------------------------------------------------


def stream_key_secret_ref(body: dict[str, Any], spec: LiveStreamSpec) -> tuple[str, str] | None:
    """(Secret name, key) holding the stream key, or None for a pull stream."""
    push = spec.ingest.push
    if push is None:
        return None
    if push.stream_key_secret_ref is not None:
        return push.stream_key_secret_ref.name, push.stream_key_secret_ref.key
    return generated_key_secret_name(body["metadata"]["name"]), STREAM_KEY_FIELD


def generated_key_secret(body: dict[str, Any], *, key: str) -> dict[str, Any]:
    """The Secret with a random stream key, for a push stream that names none."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(body, generated_key_secret_name(name), "stream-key", stream=name),
        "type": "Opaque",
        "stringData": {STREAM_KEY_FIELD: key},
    }


def worker_config(
    body: dict[str, Any], spec: LiveStreamSpec, profile: TranscodeProfileSpec
) -> WorkerConfig:
    """The resolved config a worker runs from: the stream plus its profile."""
    key_ref = stream_key_secret_ref(body, spec)
    meta = body["metadata"]
    push = spec.ingest.push
    if push is not None and push.protocol == "srt":
        ingest = WorkerIngest(
            listen=f"0.0.0.0:{WORKER_SRT_PORT}",
            protocol="srt",
            latency_milliseconds=push.latency_milliseconds,
            stream_key_file=f"{KEY_DIR}/{key_ref[1]}" if key_ref else None,
            stream_key_secret=key_ref[0] if key_ref else None,
            service_url=f"srt://{ingest_service_name(meta['name'])}.{meta['namespace']}"
            f".svc.cluster.local:{WORKER_SRT_PORT}",
        )
    elif push is not None and push.protocol == "whip":
        ingest = WorkerIngest(
            listen=f"0.0.0.0:{WORKER_WHIP_PORT}",
            protocol="whip",
            app=push.app,
            stream_key_file=f"{KEY_DIR}/{key_ref[1]}" if key_ref else None,
            stream_key_secret=key_ref[0] if key_ref else None,
            service_url=f"http://{ingest_service_name(meta['name'])}.{meta['namespace']}"
            f".svc.cluster.local:{WORKER_WHIP_PORT}/whip/{push.app}",
        )
    elif push is not None:
        ingest = WorkerIngest(
            listen=f"0.0.0.0:{WORKER_RTMP_PORT}",
            app=push.app,
            stream_key_file=f"{KEY_DIR}/{key_ref[1]}" if key_ref else None,
            stream_key_secret=key_ref[0] if key_ref else None,
            # NB: the Service's name, not its external address: that one arrives
            # later (a load balancer) and must not roll the worker when it does.
            service_url=f"rtmp://{ingest_service_name(meta['name'])}.{meta['namespace']}"
            f".svc.cluster.local:{WORKER_RTMP_PORT}/{push.app}",
        )
    else:
        pull = spec.ingest.pull
        assert pull is not None
        # NB: a URL from a Secret reaches the worker only as a mounted file; the
        # ConfigMap (readable by whoever may read the stream's settings) says where.
        ref = pull.url_secret_ref
        ingest = WorkerIngest(
            pull=WorkerPull(url=pull.url, loop=pull.loop)
            if ref is None
            else WorkerPull(url_file=f"{PULL_URL_DIR}/{ref.key}", loop=pull.loop)
        )
    restream = [
        WorkerRestreamTarget(
            name=target.name,
            url=target.url,
            stream_key_file=f"{RESTREAM_KEY_DIR}/{index}/{target.stream_key_secret_ref.key}"
            if target.stream_key_secret_ref
            else None,
            rendition=target.rendition,
        )
        for index, target in enumerate(spec.restream)
    ]
    return WorkerConfig(
        stream=body["metadata"]["name"],
        namespace=body["metadata"]["namespace"],
        ingest=ingest,
        profile=profile,
        outputs=spec.outputs,
        reconnect_window_seconds=spec.reconnect_window_seconds,
        restream=restream,
        output_dir=MEDIA_DIR,
        http=f"0.0.0.0:{WORKER_HTTP_PORT}",
        admin=f"0.0.0.0:{WORKER_ADMIN_PORT}",
    )


def render_config(config: WorkerConfig) -> str:
    return yaml.safe_dump(config.to_api(), sort_keys=False)


def config_hash(rendered: str) -> str:
    return hashlib.sha256(rendered.encode()).hexdigest()[:16]


def worker_config_map(body: dict[str, Any], rendered: str) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(body, config_name(name), "worker-config", stream=name),
        "data": {"worker.yaml": rendered},
    }


def placement(settings: Settings) -> dict[str, Any]:
    """nodeSelector and tolerations of media pods, when the operator is given any."""
    out: dict[str, Any] = {}
    if settings.worker_node_selector:
        out["nodeSelector"] = dict(settings.worker_node_selector)
    if settings.worker_tolerations:
        out["tolerations"] = [dict(t) for t in settings.worker_tolerations]
    return out


def worker_deployment(
    body: dict[str, Any],
    spec: LiveStreamSpec,
    *,
    rendered: str,
    settings: Settings,
    profile: TranscodeProfileSpec | None = None,
) -> dict[str, Any]:
    """One worker pod per stream.

    ``Recreate``: a stream has one ingest endpoint; two workers side by side
    during a rolling update would race for the publisher.
    The pod template carries the config hash, so any change to the stream or
    its profile rolls the worker. The profile also sizes its disk
    (WorkerStorage); without one (only in tests) the media volume is unsized.
    """
    name = body["metadata"]["name"]
    pod_labels = labels(instance=name, component="worker", stream=name)
    key_ref = stream_key_secret_ref(body, spec)
    storage = None if profile is None else WorkerStorage.of(spec, profile)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_name(name)}},
        {"name": "media", "emptyDir": {}} if storage is None else storage.media_volume(),
        tmp_volume(),
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "media", "mountPath": MEDIA_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if key_ref:
        volumes.append(
            {
                "name": STREAM_KEY_VOLUME,
                "secret": {
                    "secretName": key_ref[0],
                    "items": [{"key": key_ref[1], "path": key_ref[1]}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": STREAM_KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": True})
    url_ref = spec.ingest.pull.url_secret_ref if spec.ingest.pull else None
    if url_ref is not None:
        volumes.append(
            {
                "name": PULL_URL_VOLUME,
                "secret": {
                    "secretName": url_ref.name,
                    "items": [{"key": url_ref.key, "path": url_ref.key}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": PULL_URL_VOLUME, "mountPath": PULL_URL_DIR, "readOnly": True})
    for index, target in enumerate(spec.restream):
        ref = target.stream_key_secret_ref
        if ref is None:
            continue
        # NB: optional: a missing target key must not keep the stream itself from
        # starting; the worker reports that target as failing instead.
        volumes.append(
            {
                "name": f"restream-key-{index}",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": ref.key}],
                    "defaultMode": 0o440,
                    "optional": True,
                },
            }
        )
        mounts.append(
            {
                "name": f"restream-key-{index}",
                "mountPath": f"{RESTREAM_KEY_DIR}/{index}",
                "readOnly": True,
            }
        )
    container: dict[str, Any] = {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.worker_image_pull_policy,
        "command": ["kubecast-worker"],
        # NB: the rendered config listens on 0.0.0.0, every address of the pod:
        # its IP for Services and probes, and localhost for `kubectl port-forward`.
        "args": ["run", "--config", f"{CONFIG_DIR}/worker.yaml"]
        + (["--whep"] if spec.outputs.webrtc.enabled else []),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KUBECAST_STREAM", "value": name},
        ],
        "ports": [
            ingest_port(spec),
            {"name": "http", "containerPort": WORKER_HTTP_PORT, "protocol": "TCP"},
            # /status and /metrics: for the operator and Prometheus, on no Service.
            {"name": "admin", "containerPort": WORKER_ADMIN_PORT, "protocol": "TCP"},
        ],
        # NB: the probes stay on the playback port: they check the listener that
        # Services send viewers to, and they say nothing but "ok".
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": _resources(spec, storage),
        "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(body, worker_name(name), "worker", stream=name),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {
                "matchLabels": {
                    "kubecast.dev/stream": name,
                    "app.kubernetes.io/component": "worker",
                }
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        CONFIG_HASH: config_hash(rendered),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(WORKER_ADMIN_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 15,
                    **placement(settings),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(
    body: dict[str, Any],
    *,
    name: str,
    component: str,
    port_name: str,
    port: int,
    exposure: Any,
    protocol: str = "TCP",
) -> dict[str, Any]:
    stream = body["metadata"]["name"]
    service_port: dict[str, Any] = {
        "name": port_name,
        "port": port,
        "targetPort": port_name,
        "protocol": protocol,
    }
    if exposure.node_port is not None:
        service_port["nodePort"] = exposure.node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(body, name, component, stream=stream),
        "spec": {
            "type": str(exposure.type),
            "selector": {"kubecast.dev/stream": stream, "app.kubernetes.io/component": "worker"},
            "ports": [service_port],
        },
    }


def ingest_port(spec: LiveStreamSpec) -> dict[str, Any]:
    """The worker's ingest port: RTMP on TCP 1935, SRT on UDP 9000, or WHIP on TCP 8889."""
    if spec.ingest.push is not None and spec.ingest.push.protocol == "srt":
        return {"name": "srt", "containerPort": WORKER_SRT_PORT, "protocol": "UDP"}
    if spec.ingest.push is not None and spec.ingest.push.protocol == "whip":
        return {"name": "whip", "containerPort": WORKER_WHIP_PORT, "protocol": "TCP"}
    return {"name": "rtmp", "containerPort": WORKER_RTMP_PORT, "protocol": "TCP"}


def ingest_service(body: dict[str, Any], spec: LiveStreamSpec) -> dict[str, Any]:
    port = ingest_port(spec)
    return _service(
        body,
        name=ingest_service_name(body["metadata"]["name"]),
        component="ingest",
        port_name=port["name"],
        port=port["containerPort"],
        protocol=port["protocol"],
        exposure=spec.ingest_service,
    )


def playback_service(body: dict[str, Any], spec: LiveStreamSpec) -> dict[str, Any]:
    return _service(
        body,
        name=playback_service_name(body["metadata"]["name"]),
        component="playback",
        port_name="http",
        port=WORKER_HTTP_PORT,
        exposure=spec.playback_service,
    )


# --- Recording children -------------------------------------------------------


def recording_claim(body: dict[str, Any], spec: RecordingSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(body, recording_claim_name(body["metadata"]["name"]), "recording"),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    return claim


def recorder_pod(
    body: dict[str, Any], spec: RecordingSpec, *, source: str, settings: Settings
) -> dict[str, Any]:
    """The recorder: pulls the stream from the worker's origin onto the claim.

    ``restartPolicy: OnFailure``: a recorder that crashes resumes the same
    recording (a discontinuity in the playlist) instead of starting over.
    """
    name = body["metadata"]["name"]
    args = [
        "record",
        "--source",
        source,
        "--out",
        RECORDING_DIR,
        "--formats",
        ",".join(str(f) for f in spec.formats),
        "--idle-timeout",
        str(spec.idle_timeout_seconds),
        # Every address of the pod: its IP for the operator, localhost for port-forward.
        "--admin",
        f"0.0.0.0:{WORKER_ADMIN_PORT}",
        "--stop-token-file",
        f"{STOP_TOKEN_DIR}/{STOP_TOKEN_FIELD}",
        # Its last /status, kept by the kubelet in the pod's status after it exits.
        "--termination-log",
        "/dev/termination-log",
    ]
    if spec.rendition:
        args += ["--rendition", spec.rendition]
    if spec.max_duration_seconds:
        args += ["--max-duration", str(spec.max_duration_seconds)]
    if spec.schedule.start == "NextLive":
        args += ["--wait-for-next-live"]
    if spec.schedule.start_time:
        args += ["--start-at", spec.schedule.start_time.isoformat()]
    if spec.schedule.end_time:
        args += ["--stop-at", spec.schedule.end_time.isoformat()]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(body, recorder_name(name), "recorder", stream=spec.stream_ref.name),
        "spec": {
            "restartPolicy": "OnFailure",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 60,
            **placement(settings),
            "securityContext": {
                "runAsNonRoot": True,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": RECORDER_CONTAINER,
                    "image": settings.worker_image,
                    "imagePullPolicy": settings.worker_image_pull_policy,
                    "command": ["kubecast-worker"],
                    "args": args,
                    "env": [
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                    ],
                    # Its only port: the recorder serves no media.
                    "ports": [
                        {"name": "admin", "containerPort": WORKER_ADMIN_PORT, "protocol": "TCP"}
                    ],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}},
                    "resources": {
                        "requests": dict(RECORDER_EPHEMERAL),
                        "limits": dict(RECORDER_EPHEMERAL),
                    },
                    "securityContext": restricted_security_context(),
                    "volumeMounts": [
                        {"name": "data", "mountPath": RECORDING_DIR},
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "stop-token", "mountPath": STOP_TOKEN_DIR, "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "data",
                    "persistentVolumeClaim": {"claimName": recording_claim_name(name)},
                },
                tmp_volume(),
                {
                    "name": "stop-token",
                    "secret": {
                        "secretName": stop_token_secret_name(name),
                        "items": [{"key": STOP_TOKEN_FIELD, "path": STOP_TOKEN_FIELD}],
                        "defaultMode": 0o440,
                    },
                },
            ],
        },
    }


def stop_token_secret(body: dict[str, Any], *, token: str) -> dict[str, Any]:
    """The token the recorder's ``POST /stop`` needs (``tokens``), for its pod to mount."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(body, stop_token_secret_name(name), "stop-token"),
        "type": "Opaque",
        "stringData": {STOP_TOKEN_FIELD: token},
    }


# --- NetworkPolicies ------------------------------------------------------------


def _tcp(port: int) -> dict[str, Any]:
    # NB: numbers, the container ports' own: every enforcer supports them, and
    # a named port would silently match nothing in an enforcer without support.
    return {"port": port, "protocol": "TCP"}


def _admin_peers(settings: Settings) -> list[dict[str, Any]]:
    """The operator's pods (namespace and pod labels together: both must match),
    and any peers the chart adds (``networkPolicy.adminFrom``, e.g. Prometheus)."""
    operator = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
        },
        "podSelector": {"matchLabels": dict(settings.operator_pod_labels)},
    }
    return [operator, *(dict(peer) for peer in settings.admin_from)]


def _network_policy(
    body: dict[str, Any],
    *,
    name: str,
    component: str,
    pods: dict[str, str],
    open_ports: list[dict[str, Any]],
    settings: Settings,
    stream: str | None = None,
) -> dict[str, Any]:
    ingress: list[dict[str, Any]] = []
    if open_ports:
        ingress.append({"ports": open_ports})  # no "from": anyone
    ingress.append({"from": _admin_peers(settings), "ports": [_tcp(WORKER_ADMIN_PORT)]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(body, name, component, stream=stream),
        "spec": {
            "podSelector": {"matchLabels": pods},
            # Ingress only: workers pull sources and restream out, recorders read
            # the playback Service; what leaves a pod is not this policy's concern.
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def stream_network_policy(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The worker's: ingest (RTMP, or SRT over UDP) and playback from anywhere, admin
    only from the operator."""
    name = body["metadata"]["name"]
    spec = body.get("spec") or {}
    push = (spec.get("ingest") or {}).get("push") or {}
    ingest = {
        "srt": {"port": WORKER_SRT_PORT, "protocol": "UDP"},
        "whip": _tcp(WORKER_WHIP_PORT),
    }.get(str(push.get("protocol")), _tcp(WORKER_RTMP_PORT))
    open_ports = [ingest, _tcp(WORKER_HTTP_PORT)]
    webrtc = push.get("protocol") == "whip" or (
        ((spec.get("outputs") or {}).get("webrtc") or {}).get("enabled")
    )
    if webrtc:
        # WebRTC media (ICE, DTLS, SRTP) comes to ephemeral UDP ports of the pod's own
        # address, which aioice cannot confine to a range: every UDP port.
        open_ports.append({"protocol": "UDP"})
    return _network_policy(
        body,
        name=worker_name(name),
        component="worker",
        pods={"kubecast.dev/stream": name, "app.kubernetes.io/component": "worker"},
        open_ports=open_ports,
        settings=settings,
        stream=name,
    )


def recorder_network_policy(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The recorder's: its one port, admin, only from the operator."""
    name = body["metadata"]["name"]
    return _network_policy(
        body,
        name=recorder_name(name),
        component="recorder",
        pods={"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "recorder"},
        open_ports=[],
        settings=settings,
    )
