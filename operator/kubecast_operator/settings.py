"""Operator settings, from the environment (the Helm chart sets these)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

#: The playback port: media, the player page, probes (what playback Services expose).
WORKER_HTTP_PORT = 8080
WORKER_RTMP_PORT = 1935
#: SRT ingest (UDP), for push streams with protocol srt.
WORKER_SRT_PORT = 9000
#: WHIP signalling (HTTP), for push streams with protocol whip; the WebRTC media
#: itself goes to ephemeral UDP ports of the pod's own address.
WORKER_WHIP_PORT = 8889
#: The admin port of workers and recorders: /status, /metrics, the recorder's
#: POST /stop. No Service exposes it; the operator reads the pod IP directly.
WORKER_ADMIN_PORT = 9090


@dataclass(frozen=True)
class Settings:
    #: Image of the media worker (ingest, ladder, packager, origin, recorder).
    worker_image: str = "kubecast/worker:0.1.0"
    worker_image_pull_policy: str = "IfNotPresent"
    #: Host name or address that publishers and players use to reach NodePort
    #: Services (a node's address, a DNS name). Unset: the first node's address.
    public_host: str | None = None
    #: Seconds between two polls of a worker's /status.
    poll_seconds: float = 2.0
    #: At most one status write per this many seconds when only the live figures
    #: (bitrates, speed, dropped frames) changed; state changes are written at once.
    status_figures_seconds: float = 10.0
    #: Seconds between two full re-applies of a stream's children (self-healing of
    #: what no watch shows: its ConfigMap, its key Secret). Between two, a child is
    #: applied when its manifest changed or its watch saw it deleted or edited.
    resync_seconds: float = 300.0
    #: Namespaces to watch; empty means all.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: Where media pods (workers, recorders) may run: a nodeSelector and
    #: tolerations, e.g. for nodes kept for video (GPU, fast NICs).
    worker_node_selector: dict[str, str] = field(default_factory=dict)
    worker_tolerations: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    #: File holding the key that signs each Recording's stop token (a mounted
    #: Secret of the chart). Unset: a random key for this process only.
    signing_key_file: str | None = None
    #: Create a NetworkPolicy per LiveStream and Recording: ingest and playback
    #: open, the admin port only from the operator's pods (and ``admin_from``).
    network_policies: bool = False
    #: Where the operator's pods run and their labels, for those policies.
    operator_namespace: str | None = None
    operator_pod_labels: dict[str, str] = field(default_factory=dict)
    #: More NetworkPolicy peers allowed to the admin port (e.g. Prometheus).
    admin_from: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        namespaces = tuple(n for n in env.get("KUBECAST_NAMESPACES", "").split(",") if n)
        found = cls(
            worker_image=env.get("KUBECAST_WORKER_IMAGE", cls.worker_image),
            worker_image_pull_policy=env.get(
                "KUBECAST_WORKER_IMAGE_PULL_POLICY", cls.worker_image_pull_policy
            ),
            public_host=env.get("KUBECAST_PUBLIC_HOST") or None,
            poll_seconds=float(env.get("KUBECAST_POLL_SECONDS", cls.poll_seconds)),
            resync_seconds=float(env.get("KUBECAST_RESYNC_SECONDS", cls.resync_seconds)),
            status_figures_seconds=float(
                env.get("KUBECAST_STATUS_FIGURES_SECONDS", cls.status_figures_seconds)
            ),
            namespaces=namespaces,
            worker_node_selector=_json(env, "KUBECAST_WORKER_NODE_SELECTOR", dict),
            worker_tolerations=tuple(_json(env, "KUBECAST_WORKER_TOLERATIONS", list)),
            signing_key_file=env.get("KUBECAST_SIGNING_KEY_FILE") or None,
            network_policies=_flag(env, "KUBECAST_NETWORK_POLICIES"),
            operator_namespace=env.get("KUBECAST_OPERATOR_NAMESPACE") or None,
            operator_pod_labels=_json(env, "KUBECAST_OPERATOR_POD_LABELS", dict),
            admin_from=tuple(_json(env, "KUBECAST_ADMIN_FROM", list)),
        )
        if found.network_policies and not (found.operator_namespace and found.operator_pod_labels):
            # NB: an empty podSelector would admit every pod of the operator's namespace.
            raise ValueError(
                "KUBECAST_NETWORK_POLICIES needs KUBECAST_OPERATOR_NAMESPACE and"
                " KUBECAST_OPERATOR_POD_LABELS, the operator pods' namespace and labels (JSON)"
            )
        return found


def _flag(env: dict[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be true or false, got {env[name]!r}")


def _json(env: dict[str, str], name: str, kind: type) -> Any:
    """A JSON value from the environment; a wrong one stops the operator with its name."""
    text = env.get(name, "").strip()
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{name} is not JSON: {error}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value
