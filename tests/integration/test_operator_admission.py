"""The operator's ServiceAccount cannot turn its rights into another account's.

With `create pods` and `create secrets` in every namespace it serves, whoever
holds the operator's token could mint a token for any ServiceAccount there: a
Secret of type kubernetes.io/service-account-token (read back, or mounted), or
a pod or Deployment that runs as a more privileged account. The chart's RBAC
(no `get` on secrets) and its ValidatingAdmissionPolicy close both; this module
checks each refusal against the real kube-apiserver, acting as that
ServiceAccount (`kubectl --as`), and that what the operator really creates
(children.py) is still admitted. Nothing has to run: only admission is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubecast_api import LiveStreamSpec, RecordingSpec, TranscodeProfileSpec
from kubecast_operator import children
from kubecast_operator.settings import Settings

from . import operator_harness as harness
from .conftest import REPO_ROOT, SAMPLES_DIR, ControlPlane

CHART = REPO_ROOT / "charts" / "kubecast"
RELEASE = "adm"
ACCOUNT = f"{RELEASE}-kubecast"
POLICY = f"{RELEASE}-kubecast-operator-limits"


@pytest.fixture(scope="module")
def operator_account(control_plane: ControlPlane) -> Iterator[str]:
    """The chart's ServiceAccount, RBAC and admission policy (a default install), applied.

    Only those templates: the CRDs and the operator's pod are no part of what is tested.
    """
    cp = control_plane
    release_ns = f"kubecast-adm-{os.urandom(3).hex()}"
    cp.kubectl("create", "namespace", release_ns)
    rendered = subprocess.run(
        [str(cp.bin_dir / "helm"), "template", RELEASE, str(CHART), "-n", release_ns,
         "--kube-version", "1.34.0",
         "-s", "templates/serviceaccount.yaml", "-s", "templates/rbac.yaml",
         "-s", "templates/admission-policy.yaml"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    cp.kubectl("apply", "-n", release_ns, "-f", "-", input=rendered)
    user = f"system:serviceaccount:{release_ns}:{ACCOUNT}"
    yield user
    cp.kubectl("delete", "-n", release_ns, "-f", "-", "--wait=false", input=rendered, check=False)
    cp.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def as_operator(
    cp: ControlPlane, user: str, namespace: str, *args: str, manifest: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(
        f"--as={user}", "-n", namespace, *args,
        input=json.dumps(manifest) if manifest is not None else None, check=False,
    )  # fmt: skip


def create(
    cp: ControlPlane, user: str, namespace: str, manifest: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return as_operator(cp, user, namespace, "create", "-f", "-", manifest=manifest)


def token_secret(account: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"token-of-{account}",
            "annotations": {"kubernetes.io/service-account.name": account},
        },
        "type": "kubernetes.io/service-account-token",
    }


def operator_children(namespace: str) -> list[dict[str, Any]]:
    """What the operator creates for a push stream with the user's own key, and a recording."""
    stream = yaml.safe_load((SAMPLES_DIR / "livestream-push.yaml").read_text())
    stream["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    stream["spec"]["ingest"]["push"]["streamKeySecretRef"] = {"name": "studio-key"}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    profile = TranscodeProfileSpec.model_validate(
        yaml.safe_load((SAMPLES_DIR / "transcodeprofile-default.yaml").read_text())["spec"]
    )
    settings = Settings(worker_image="kubecast/worker:test")
    rendered = children.render_config(children.worker_config(stream, spec, profile))
    recording = yaml.safe_load((SAMPLES_DIR / "recording.yaml").read_text())
    recording["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000002")
    built = [
        children.generated_key_secret(stream, key="not-a-real-key"),
        children.worker_deployment(
            stream, spec, rendered=rendered, settings=settings, profile=profile
        ),
        children.recorder_pod(
            recording, RecordingSpec.model_validate(recording["spec"]),
            source="http://studio-playback:8080", settings=settings,
        ),
    ]  # fmt: skip
    for manifest in built:
        # No owner here (no LiveStream exists): the owner is no part of admission.
        manifest["metadata"].pop("ownerReferences", None)
    return built


def refused(proc: subprocess.CompletedProcess[str], words: str) -> bool:
    return proc.returncode != 0 and words in proc.stderr


def test_the_operator_cannot_read_secrets(
    control_plane: ControlPlane, operator_account: str, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("-n", namespace, "create", "secret", "generic", "studio-key",
               "--from-literal=streamKey=the-users-key")  # fmt: skip
    for args in (("get", "secret", "studio-key"), ("get", "secrets"), ("get", "secrets", "-A")):
        proc = as_operator(cp, operator_account, namespace, *args)
        assert proc.returncode != 0 and "Forbidden" in proc.stderr, proc
        assert "the-users-key" not in proc.stdout


def test_a_service_account_token_secret_is_refused_with_the_policy_message(
    control_plane: ControlPlane, operator_account: str, namespace: str
) -> None:
    cp = control_plane
    # The policy takes effect once the API server's admission has loaded it (its
    # informer: a moment after the apply, longer on a busy machine).

    def attempt() -> subprocess.CompletedProcess[str] | None:
        proc = create(cp, operator_account, namespace, token_secret())
        if proc.returncode == 0:  # admitted before the policy was in force: undo, retry
            cp.kubectl("-n", namespace, "delete", "secret", "token-of-default", check=False)
            return None
        return proc if "ValidatingAdmissionPolicy" in proc.stderr else None

    proc = harness.eventually("the admission policy in force", attempt, timeout=60)
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in proc.stderr
    assert (
        "the kubecast operator may create only Opaque Secrets (generated stream keys), "
        "not kubernetes.io/service-account-token" in proc.stderr
    )
    assert cp.kubectl("-n", namespace, "get", "secret", "token-of-default", check=False).returncode


def test_workloads_that_run_as_another_account_or_carry_a_token_are_refused(
    control_plane: ControlPlane, operator_account: str, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("-n", namespace, "create", "serviceaccount", "powerful")
    (worker,) = [m for m in operator_children(namespace) if m["kind"] == "Deployment"]
    worker["metadata"]["name"] = "as-another-account"

    other = json.loads(json.dumps(worker))
    other["spec"]["template"]["spec"]["serviceAccountName"] = "powerful"
    proc = harness.eventually(
        "the admission policy in force",
        lambda: (p := create(cp, operator_account, namespace, other)).returncode != 0
        and "ValidatingAdmissionPolicy" in p.stderr and p,
        timeout=60,
    )  # fmt: skip
    assert 'serviceAccountName must be unset or "default"' in proc.stderr, proc.stderr

    with_token = json.loads(json.dumps(worker))
    with_token["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    assert refused(
        create(cp, operator_account, namespace, with_token),
        "automountServiceAccountToken must be false",
    )
    projected = json.loads(json.dumps(worker))
    projected["spec"]["template"]["spec"]["volumes"].append({
        "name": "token",
        "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
    })  # fmt: skip
    assert refused(create(cp, operator_account, namespace, projected), "no projected token")
    host = json.loads(json.dumps(worker))
    host["spec"]["template"]["spec"]["hostPID"] = True
    assert refused(create(cp, operator_account, namespace, host), "host namespaces")

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "as-powerful"},
        "spec": {
            "serviceAccountName": "powerful",
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": "kubecast/worker:test"}],
        },
    }
    assert refused(create(cp, operator_account, namespace, pod), "serviceAccountName")
    # Anyone else is not bound by the policy: admin may.
    assert cp.kubectl("-n", namespace, "create", "--dry-run=server", "-f", "-",
                      input=json.dumps(other)).returncode == 0  # fmt: skip


def test_what_the_operator_really_creates_is_admitted(
    control_plane: ControlPlane, operator_account: str, namespace: str
) -> None:
    cp = control_plane
    # Wait until the policy is in force, so that "admitted" means admitted by it.
    harness.eventually(
        "the admission policy in force",
        lambda: refused(create(cp, operator_account, namespace, token_secret()),
                        "ValidatingAdmissionPolicy"),
        timeout=60,
    )  # fmt: skip
    for manifest in operator_children(namespace):
        proc = create(cp, operator_account, namespace, manifest)
        assert proc.returncode == 0, f"{manifest['kind']} refused:\n{proc.stderr}"
    # The worker's pods are created by the Deployment controller, not the operator.
    assert (
        as_operator(
            cp, operator_account, namespace, "get", "deployment", "studio-worker"
        ).returncode
        == 0
    )
