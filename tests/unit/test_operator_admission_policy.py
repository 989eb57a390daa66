"""What children.py builds stays inside the chart's admission policy on the operator.

The policy (charts/kubecast/templates/admission-policy.yaml) refuses the
operator's ServiceAccount any pod that runs as another account, mounts an API
token or uses another kind of volume. A child that changes (a new volume, say)
must change the policy too; this finds out without a cluster, and
tests/integration/test_operator_admission.py with the real API server.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_chart_render import _helm, of_kind, render
from test_operator_children import RESTREAM, SETTINGS, body, profile

from kubecast_api import LiveStreamSpec, RecordingSpec
from kubecast_operator import children


def _policy_volume_kinds() -> set[str]:
    (policy,) = of_kind(render(), "ValidatingAdmissionPolicy")
    (rule,) = [
        v["expression"] for v in policy["spec"]["validations"] if "volumes.all" in v["expression"]
    ]
    return set(re.findall(r"has\(v\.(\w+)\)", rule))


def _pod_specs() -> list[dict[str, Any]]:
    stream = body("livestream-push.yaml")
    stream["spec"]["ingest"]["push"]["streamKeySecretRef"] = {"name": "studio-key"}
    stream["spec"]["restream"] = RESTREAM
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    worker = children.worker_deployment(
        stream, spec, rendered=rendered, settings=SETTINGS, profile=profile()
    )
    recording = body("recording.yaml")
    recorder = children.recorder_pod(
        recording, RecordingSpec.model_validate(recording["spec"]), source="http://x:8080",
        settings=SETTINGS,
    )  # fmt: skip
    return [worker["spec"]["template"]["spec"], recorder["spec"]]


@pytest.mark.usefixtures(_helm.__name__)
def test_worker_and_recorder_pods_are_what_the_policy_admits() -> None:
    allowed = _policy_volume_kinds()
    assert allowed == {"configMap", "secret", "emptyDir", "persistentVolumeClaim"}
    for pod in _pod_specs():
        assert pod["automountServiceAccountToken"] is False
        assert pod.get("serviceAccountName", "default") == "default"
        assert "serviceAccount" not in pod
        for volume in pod["volumes"]:
            kinds = set(volume) - {"name"}
            assert kinds <= allowed, f"volume {volume['name']}: {kinds} is refused by the policy"
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        for container in pod["containers"] + pod.get("initContainers", []):
            assert not (container.get("securityContext") or {}).get("privileged")


def test_the_generated_key_secret_is_opaque() -> None:
    secret = children.generated_key_secret(body("livestream-push.yaml"), key="k")
    assert secret["type"] == "Opaque"
