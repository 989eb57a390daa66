"""TranscodeProfile: validate it, count its users, protect it while in use.

Deleting a profile that streams still use is *deferred*, the way Kubernetes
protects a PersistentVolumeClaim in use: the profile carries the finalizer
``kubecast.dev/in-use-protection``, stays Terminating while any LiveStream
references it (status says which), and goes away once none does. Streams
never lose their ladder under them, and ``kubectl delete`` still means delete.
"""

from __future__ import annotations

from typing import Any

import pydantic

from kubecast_api import TranscodeProfileSpec, describe_error
from kubecast_operator import conditions
from kubecast_operator.kube import Kube

IN_USE_FINALIZER = "kubecast.dev/in-use-protection"


def users(kube: Kube, namespace: str, name: str) -> list[str]:
    """The streams that use the profile, asked of the API server (the operator reads
    them from its watch instead: handlers.profile_users)."""
    return sorted(
        s["metadata"]["name"]
        for s in kube.list("LiveStream", namespace)
        if (s.get("spec") or {}).get("profileRef", {}).get("name") == name
    )


def compute_status(body: dict[str, Any], used_by: list[str]) -> dict[str, Any]:
    meta = body["metadata"]
    generation = meta.get("generation")
    ladder = None
    try:
        spec = TranscodeProfileSpec.model_validate(body.get("spec") or {})
        ladder = ",".join(r.name for r in spec.renditions)
        valid = conditions.condition("Valid", True, "Validated", "the ladder can be used")
    except pydantic.ValidationError as error:
        valid = conditions.condition(
            "Valid", False, "Invalid", describe_error(error, prefix="spec").replace("\n", "; ")
        )
    found = [valid]
    if meta.get("deletionTimestamp"):
        found.append(
            conditions.condition(
                "Deleting",
                True,
                "InUse" if used_by else "Unused",
                f"waiting until no LiveStream uses it: {', '.join(used_by)}" if used_by else "",
            )
        )
    previous = (body.get("status") or {}).get("conditions")
    return {
        "observedGeneration": generation,
        "conditions": conditions.merge(previous, found, generation=generation),
        "usedBy": len(used_by),
        "usedByStreams": used_by,
        **({"ladder": ladder} if ladder else {}),
    }


def reconcile(kube: Kube, body: dict[str, Any], used_by: list[str] | None = None) -> None:
    """``used_by``: its users as the caller knows them (None: ask the API server)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if not meta.get("deletionTimestamp") and IN_USE_FINALIZER not in (meta.get("finalizers") or []):
        kube.add_finalizer("TranscodeProfile", namespace, name, IN_USE_FINALIZER)
    if used_by is None:
        used_by = users(kube, namespace, name)
    status = compute_status(body, used_by)
    if _differs(body.get("status") or {}, status):
        kube.patch_status("TranscodeProfile", namespace, name, status)


def release_if_unused(
    kube: Kube, namespace: str, name: str, used_by: list[str] | None = None
) -> bool:
    """Let a deleted profile go once no stream uses it; True when released."""
    body = kube.get("TranscodeProfile", namespace, name)
    if body is None or not body["metadata"].get("deletionTimestamp"):
        return False
    if used_by is None:
        used_by = users(kube, namespace, name)
    status = compute_status(body, used_by)
    if _differs(body.get("status") or {}, status):
        kube.patch_status("TranscodeProfile", namespace, name, status)
    if used_by:
        return False
    kube.remove_finalizer("TranscodeProfile", namespace, name, IN_USE_FINALIZER)
    return True


def _differs(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    return any(previous.get(k) != v for k, v in status.items())
