"""What the operator keeps of an object it watched or applied: only what it reads.

At a thousand streams the operator holds about five thousand children at once:
in the watches' indexes, and in each stream's memory of what it applied last
(``streams.Applied``), as parsed JSON (an applied Deployment: 10 KB on the wire,
17 KB in Python). Most of that is never read: ``managedFields`` (a third of a Pod,
more of an applied Deployment), a Deployment's pod template, a ConfigMap's data.

Each copy keeps ``metadata`` without managedFields (uid, resourceVersion,
generation, labels and owners are read), ``status``, and of ``spec`` what is read:
a Deployment's replicas, selector and pod template metadata (the config hash); a
Pod's node and container ports; all of a Service's. A ConfigMap's ``data`` goes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _deployment_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    # The pod template's metadata (its config hash), not its containers and volumes.
    template = spec.get("template") or {}
    return {
        "replicas": spec.get("replicas"),
        "selector": spec.get("selector"),
        "template": {"metadata": template.get("metadata")},
    }


def _pod_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    # Where it runs and its ports (worker_client.admin_port); not its volumes and env.
    return {
        "nodeName": spec.get("nodeName"),
        "containers": [
            {"name": c.get("name"), "ports": c.get("ports")} for c in spec.get("containers") or []
        ],
    }


#: kind -> the part of its spec kept (a kind not named here keeps all of its spec)
_SPECS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "Deployment": _deployment_spec,
    "Pod": _pod_spec,
}
#: top-level fields dropped: a ConfigMap's content (the worker config, ours anyway)
_DROPPED = ("data", "binaryData")


def slim(obj: Mapping[str, Any], kind: str | None = None) -> dict[str, Any]:
    """A copy of ``obj`` that keeps only what the operator reads (see the module).

    NB: shallow: the parts kept are shared with ``obj``, which nothing mutates.
    """
    kind = kind or obj.get("kind")
    found = {k: v for k, v in obj.items() if k not in _DROPPED}
    metadata = obj.get("metadata") or {}
    found["metadata"] = {k: v for k, v in metadata.items() if k != "managedFields"}
    keep = _SPECS.get(kind or "")
    if keep is not None and "spec" in obj:
        found["spec"] = keep(obj.get("spec") or {})
    return found
