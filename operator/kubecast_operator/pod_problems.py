"""Why a worker pod does not start, in the kubelet's words, mapped to what a user can fix.

The operator never reads a user's Secret (it has no ``get`` on secrets: with
``create pods`` that would let it read any ServiceAccount token). Whether the
stream key Secret exists is what the kubelet finds out when it mounts it; the
kubelet reports a failure as a ``FailedMount`` Event on the pod, which stays
Pending with its container waiting in ContainerCreating:

    MountVolume.SetUp failed for volume "stream-key" : secret "studio-key" not found
    MountVolume.SetUp failed for volume "stream-key" : references non-existent secret key: streamKey

A Secret referenced from the environment instead fails later, as the
container's waiting reason ``CreateContainerConfigError`` with the message in
the pod status (``secret "x" not found``, ``couldn't find key k in Secret ns/x``).
"""

from __future__ import annotations

import re
from typing import Any

FAILED_MOUNT = "FailedMount"
_MOUNT = re.compile(r'MountVolume\.SetUp failed for volume "(?P<volume>[^"]+)"\s*:\s*(?P<why>.*)')
_NOT_FOUND = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_NO_KEY = re.compile(r"references non-existent secret key: (?P<key>\S+)")


def waiting(pod: dict[str, Any]) -> bool:
    """A pod whose containers have not started: the one whose mounts may have failed."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return False
    return not any(
        (c.get("state") or {}).get("running") for c in status.get("containerStatuses") or []
    )


def failed_mount_selector(pod: dict[str, Any]) -> str:
    """The field selector of the kubelet's FailedMount Events about this very pod."""
    meta = pod["metadata"]
    return (
        f"involvedObject.kind=Pod,involvedObject.name={meta['name']},"
        f"involvedObject.uid={meta.get('uid', '')},reason={FAILED_MOUNT}"
    )


def secret_mount_problem(
    events: list[dict[str, Any]], *, volume: str, secret: str, namespace: str
) -> str | None:
    """What is wrong with ``secret``, from FailedMount Events for ``volume``; None if nothing.

    The newest Event wins: the kubelet retries the mount, so a Secret created
    meanwhile without the key changes the reason.
    """
    newest = sorted(
        (e for e in events if e.get("reason") == FAILED_MOUNT),
        key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
    )
    for event in reversed(newest):
        match = _MOUNT.search(str(event.get("message") or ""))
        if not match or match["volume"] != volume:
            continue
        why = match["why"].strip()
        if _NOT_FOUND.search(why):
            return f"Secret {secret!r} not found in namespace {namespace!r}"
        if key := _NO_KEY.search(why):
            return f"Secret {secret!r} has no key {key['key']!r} in namespace {namespace!r}"
        return f"the kubelet cannot mount Secret {secret!r} in namespace {namespace!r}: {why}"
    return None


def container_config_problem(pod: dict[str, Any]) -> str | None:
    """The kubelet's message when a container cannot be configured (a missing env Secret)."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (container.get("state") or {}).get("waiting") or {}
        if state.get("reason") == "CreateContainerConfigError":
            return str(state.get("message") or "CreateContainerConfigError")
    return None
