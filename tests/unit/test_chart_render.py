"""The chart as rendered by `helm template`: probes, PodDisruptionBudget, storage, spread.

These need a helm binary: the one hack/build-binaries.sh built (found with its
--print-bindir, which builds nothing), else KUBECAST_HELM or helm on PATH. Without
one they are skipped; `make binaries` builds it. tests/integration/test_helm_chart.py
installs the chart for real.

NB: `--kube-version` on every call: a helm built without its release ldflags
takes the cluster for Kubernetes v1.20 and refuses the chart's kubeVersion.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubecast"
KUBE_VERSION = "1.34.0"


def _find_helm() -> str | None:
    if os.environ.get("KUBECAST_HELM"):
        return os.environ["KUBECAST_HELM"]
    try:
        bin_dir = subprocess.run(
            [str(REPO / "hack" / "build-binaries.sh"), "--print-bindir"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        bin_dir = ""
    if bin_dir and (Path(bin_dir) / "helm").is_file():
        return str(Path(bin_dir) / "helm")
    return shutil.which("helm")


@pytest.fixture(autouse=True)
def _helm() -> None:
    # NB: looked up when a test runs, not at import: under `make test` the
    # binaries are built after collection (tests/integration/conftest.py).
    if _find_helm() is None:
        pytest.skip("no helm binary: run `make binaries`")


def helm_template(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    helm = _find_helm()
    assert helm is not None
    command = [helm, "template", "kc", str(chart), "-n", "kubecast-system"]
    return subprocess.run(
        [*command, "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def render(*args: str) -> list[dict[str, Any]]:
    proc = helm_template(*args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render_chart(chart: Path, *args: str) -> list[dict[str, Any]]:
    """``render`` of another copy of the chart (one a test changed)."""
    proc = helm_template(*args, chart=chart)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]
    return pod


def test_liveness_and_readiness_probes_differ() -> None:
    (container,) = operator_pod(render())["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert live["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "healthz"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert ports["healthz"] == 8081
    # What kube-score's pod-probes-identical compares: path and port.
    assert live["httpGet"]["path"] != ready["httpGet"]["path"]
    # The operator serves both where the probes look (--liveness-port).
    assert "--liveness-port=8081" in container["args"]


def test_pod_disruption_budget_renders_only_when_enabled() -> None:
    assert of_kind(render(), "PodDisruptionBudget") == []
    assert of_kind(render("--set", "replicaCount=2"), "PodDisruptionBudget") == []

    docs = render("--set", "replicaCount=2", "--set", "podDisruptionBudget.enabled=true")
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    (deployment,) = of_kind(docs, "Deployment")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == "kubecast-system"
    assert pdb["spec"] == {
        "selector": deployment["spec"]["selector"],
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    # It selects the operator's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["--set", "podDisruptionBudget.minAvailable=1"], {"minAvailable": 1}),
        (["--set-string", "podDisruptionBudget.minAvailable=50%"], {"minAvailable": "50%"}),
        (["--set-string", "podDisruptionBudget.maxUnavailable=50%"], {"maxUnavailable": "50%"}),
        (["--set", "podDisruptionBudget.maxUnavailable=2"], {"maxUnavailable": 2}),
    ],
    ids=["min-1", "min-50%", "max-50%", "max-2"],
)
def test_pod_disruption_budget_takes_the_values_given(
    values: list[str], expected: dict[str, Any]
) -> None:
    docs = render("--set", "replicaCount=3", "--set", "podDisruptionBudget.enabled=true", *values)
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    # minAvailable, when set, is used instead of maxUnavailable (never both:
    # the API server refuses a budget with both).
    policy = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
    assert policy == expected


def test_pod_disruption_budget_with_one_replica_lets_drains_through() -> None:
    docs = render("--set", "podDisruptionBudget.enabled=true")
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "podDisruptionBudget.minAvailable=1"], "minAvailable=1 with replicaCount=1"),
        (
            ["--set", "replicaCount=2", "--set", "podDisruptionBudget.minAvailable=2"],
            "minAvailable=2 with replicaCount=2",
        ),
        (
            ["--set", "replicaCount=3", "--set-string", "podDisruptionBudget.minAvailable=100%"],
            "minAvailable=100% with replicaCount=3",
        ),
        (
            ["--set-string", "podDisruptionBudget.minAvailable=50%"],
            "minAvailable=50% with replicaCount=1",
        ),
        (
            ["--set", "replicaCount=2", "--set", "podDisruptionBudget.maxUnavailable=0"],
            "maxUnavailable=0 would keep every operator pod from being evicted",
        ),
        (
            ["--set", "replicaCount=2", "--set-string", "podDisruptionBudget.maxUnavailable=0%"],
            "maxUnavailable=0% would keep",
        ),
        (
            ["--set-string", "podDisruptionBudget.maxUnavailable=one"],
            "/podDisruptionBudget/maxUnavailable",
        ),
    ],
    ids=["min-1-of-1", "min-2-of-2", "min-100%", "min-50%-of-1", "max-0", "max-0%", "schema"],
)
def test_a_budget_that_would_block_every_drain_is_refused(values: list[str], message: str) -> None:
    proc = helm_template("--set", "podDisruptionBudget.enabled=true", *values)
    assert proc.returncode != 0, f"helm rendered {values}"
    assert message in proc.stderr


def test_operator_requests_and_limits_ephemeral_storage() -> None:
    pod = operator_pod(render())
    (container,) = pod["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"]["ephemeral-storage"] == "64Mi"
    assert resources["limits"]["ephemeral-storage"] == "256Mi"
    (tmp,) = [v for v in pod["spec"]["volumes"] if v["name"] == "tmp"]
    # The limit covers the pod's emptyDir too (the kubelet sums them).
    assert tmp["emptyDir"] == {"sizeLimit": "64Mi"}
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_replicas_prefer_different_nodes_unless_affinity_is_given() -> None:
    assert "affinity" not in operator_pod(render())["spec"]

    pod = operator_pod(render("--set", "replicaCount=2"))
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()

    given = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    pod = operator_pod(
        render(
            "--set",
            "replicaCount=2",
            "--set-json",
            "affinity=" + json.dumps(given),
        )
    )
    assert pod["spec"]["affinity"] == given


def _env(container: dict[str, Any], namespace: str = "kubecast-system") -> dict[str, str]:
    """The container's environment as the kubelet would set it (fieldRefs resolved)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    return env


def test_the_operator_gets_its_signing_key_from_a_secret_of_the_chart() -> None:
    from kubecast_operator.settings import Settings

    docs = render()
    (secret,) = [
        s for s in of_kind(docs, "Secret") if s["metadata"]["name"].endswith("signing-key")
    ]
    assert len(base64.b64decode(secret["data"]["key"])) >= 32
    pod = operator_pod(docs)["spec"]
    (container,) = pod["containers"]
    settings = Settings.from_env(_env(container))
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    assert settings.signing_key_file == f"{mount['mountPath']}/key" and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-key")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    # A Secret of the user's instead: the chart makes none.
    docs = render("--set", "operator.signingKey.existingSecret=my-key")
    assert [s for s in of_kind(docs, "Secret") if "signing-key" in s["metadata"]["name"]] == []
    pod = operator_pod(docs)["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-key")
    assert volume["secret"]["secretName"] == "my-key"


def test_the_network_policy_option_turns_on_the_operators_per_stream_policies() -> None:
    from kubecast_operator.settings import Settings

    (container,) = operator_pod(render())["spec"]["containers"]
    assert not Settings.from_env(_env(container)).network_policies
    prometheus = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    docs = render(
        "--set", "networkPolicy.enabled=true",
        "--set-json", f"networkPolicy.adminFrom=[{json.dumps(prometheus)}]",
    )  # fmt: skip
    pod = operator_pod(docs)
    settings = Settings.from_env(_env(pod["spec"]["containers"][0]))
    assert settings.network_policies and settings.operator_namespace == "kubecast-system"
    # The labels the workers' policies admit are the operator pods' own.
    assert settings.operator_pod_labels.items() <= pod["metadata"]["labels"].items()
    assert settings.operator_pod_labels["app.kubernetes.io/component"] == "operator"
    assert settings.admin_from == (prometheus,)
    (role,) = of_kind(docs, "ClusterRole")[:1]
    assert {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["create", "patch"],
    } in role["rules"]


def _rules(role: dict[str, Any]) -> dict[str, set[str]]:
    return {
        f"{group or 'core'}/{resource}": set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_the_operator_may_create_secrets_but_never_read_one() -> None:
    for values in ([], ["--set", "operator.watchNamespaces={live}"]):
        docs = render(*values)
        for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
            verbs = _rules(role).get("core/secrets", set())
            assert verbs <= {"create"}, f"{role['metadata']['name']}: secrets {verbs}"
    (cluster_role,) = of_kind(render(), "ClusterRole")
    assert _rules(cluster_role)["core/secrets"] == {"create"}
    assert _rules(cluster_role)["core/events"] == {"create", "list"}


def test_the_admission_policy_binds_the_operator_service_account_only() -> None:
    docs = render("--set", "serviceAccount.name=streamer")
    (policy,) = of_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (condition,) = policy["spec"]["matchConditions"]
    assert "'system:serviceaccount:kubecast-system:streamer'" in condition["expression"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    resources = {r for rule in policy["spec"]["matchConstraints"]["resourceRules"]
                 for r in rule["resources"]}  # fmt: skip
    assert {"secrets", "pods", "deployments", "replicasets"} <= resources
    off = render("--set", "rbac.admissionPolicy=false")
    assert of_kind(off, "ValidatingAdmissionPolicy") == []
