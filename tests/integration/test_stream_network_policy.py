"""The operator's own NetworkPolicies, enforced on the real node (kube-router).

With ``networkPolicy.enabled=true`` the operator gives each stream's worker a policy:
ingest and playback open to everyone, the admin port (/status, /metrics) only to the
operator's pods. Here the whole chart runs as real pods, and a pod that is neither
the operator nor the worker tries the worker's three ports with real TCP.

That the stream reaches Idle at all shows the operator's way in: its status comes
from the operator pod reading the worker's admin port through the policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from . import netpol
from . import operator_harness as harness
from . import release as rel
from .conftest import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "TranscodeProfile",
    "metadata": {"name": "small"},
    "spec": {
        "gopSeconds": 1,
        "segmentSeconds": 1,
        "renditions": [
            {"name": "180p", "width": 320, "height": 180, "videoBitrate": 300, "fps": 25,
             "preset": "ultrafast"},
        ],
    },
}  # fmt: skip
STREAM = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "LiveStream",
    "metadata": {"name": "guarded"},
    "spec": {"ingest": {"push": {"app": "live"}}, "profileRef": {"name": "small"}},
}


@pytest.fixture(scope="module")
def with_policies(
    control_plane: ControlPlane, kubecast_crds: list[str], kubecast_images: dict[str, str]
) -> Iterator[rel.Release]:
    installed = rel.install(control_plane, **{"networkPolicy.enabled": "true"})
    yield installed
    rel.uninstall(installed)


def test_the_admin_port_is_for_the_operator_only(
    control_plane: ControlPlane, namespace: str, with_policies: rel.Release
) -> None:
    cp = control_plane
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, STREAM]))
    logs = with_policies.logs
    harness.eventually(
        "the stream Idle: its status read by the operator through the policy",
        lambda: (
            (harness.get_json(cp.kubectl, "-n", namespace, "livestream", "guarded") or {})
            .get("status", {})
            .get("phase")
            == "Idle"
        ),
        timeout=180,
        logs=lambda: logs(namespace),
    )
    policy: dict[str, Any] | None = harness.get_json(
        cp.kubectl, "-n", namespace, "networkpolicy", "guarded-worker"
    )
    assert policy is not None
    assert policy["metadata"]["ownerReferences"][0]["name"] == "guarded"
    pod = rel.worker_pod(cp, namespace, "guarded")
    assert pod is not None
    worker_ip = pod["status"]["podIP"]

    stranger = netpol.Probe.start(cp, namespace, "stranger", labels={"role": "viewer"})
    # Ingest and playback are for everyone...
    assert netpol.wait_for(stranger, worker_ip, 8080, "open")[0] == "open"
    assert stranger.connect(worker_ip, 1935) == "open"
    # ... the admin port is not (the worker listens there: the operator just read it).
    assert netpol.wait_for(stranger, worker_ip, 9090, "refused")[0] == "refused"
    for _ in range(3):
        assert stranger.connect(worker_ip, 9090) == "refused"

    # The operator keeps reading it: the stream's status stays current, not Unknown.
    def current() -> bool:
        doc = harness.get_json(cp.kubectl, "-n", namespace, "livestream", "guarded") or {}
        ready = next(
            (c for c in doc.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {}
        )
        return doc.get("status", {}).get("phase") == "Idle" and ready.get("status") != "Unknown"

    harness.eventually("the status still read through the policy", current, timeout=30)
    # Deleting the stream removes its policy with it.
    cp.kubectl("-n", namespace, "delete", "livestream", "guarded", "--wait=true", timeout=120)
    harness.eventually(
        "the policy gone with its stream",
        lambda: (
            harness.get_json(cp.kubectl, "-n", namespace, "networkpolicy", "guarded-worker") is None
        ),
        timeout=60,
    )
