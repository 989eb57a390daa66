"""The Helm chart: lint, render, refuse bad values, install, least privilege, uninstall.

The chart is installed into the real local cluster with the images built here,
and its operator runs as a real pod on the real node, as the chart's
ServiceAccount: it has exactly the rights the chart grants, not admin's. A token
of that ServiceAccount (``kubectl create token``) checks what it may not do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecast_api.resources import KINDS
from kubecast_operator import cli
from kubecast_operator.settings import Settings

from . import operator_harness as harness
from .conftest import CRD_DIR, HACK, REPO_ROOT, SAMPLES_DIR, ControlPlane

CHART = REPO_ROOT / "charts" / "kubecast"
KUBE_VERSION = "1.34.0"
CRD_NAMES = [f"{k.plural}.kubecast.dev" for k in KINDS]

# Every optional feature on, and a namespaced install.
EDGE_VALUES: dict[str, Any] = {
    "replicaCount": 2,
    "fullnameOverride": "streams",
    "image": {
        "repository": "registry.example.com/kubecast/operator",
        "digest": "sha256:" + "0123456789abcdef" * 4,
        "pullPolicy": "Always",
    },
    "worker": {
        "image": {
            "repository": "registry.example.com/kubecast/worker",
            "tag": "0.1.0-rc.1",
            "pullPolicy": "Always",
        },
        "nodeSelector": {"kubecast.dev/media": "true"},
        "tolerations": [{"key": "media", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {
        "watchNamespaces": ["team-a", "team-b"],
        "publicHost": "live.example.com",
        "pollSeconds": 0.5,
        "resyncSeconds": 15,
        "logFormat": "plain",
        "verbose": True,
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
    },
    "serviceAccount": {"name": "kubecast-sa", "annotations": {"example.com/role": "streaming"}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "defaultProfile": {"namespaces": ["team-a", "team-b"]},
    "priorityClassName": "system-cluster-critical",
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
}

# What the operator may do in the namespaces it serves: pinned here so that a
# change to the chart's RBAC is a deliberate change to this table too.
NAMESPACED_RULES = [
    ("", "configmaps", "create patch"),
    ("", "persistentvolumeclaims", "create patch"),
    ("", "services", "get list watch create patch"),
    ("apps", "deployments", "get list watch create patch"),
    ("networking.k8s.io", "networkpolicies", "create patch"),
    ("", "pods", "get list watch create"),
    ("", "secrets", "create"),
    ("", "events", "create list"),
    ("kubecast.dev", "livestreams", "get list watch patch"),
    ("kubecast.dev", "transcodeprofiles", "get list watch patch"),
    ("kubecast.dev", "recordings", "get list watch patch delete"),
    ("kubecast.dev", "livestreams/status", "patch"),
    ("kubecast.dev", "transcodeprofiles/status", "patch"),
    ("kubecast.dev", "recordings/status", "patch"),
    ("kubecast.dev", "livestreams/finalizers", "update"),
    ("kubecast.dev", "recordings/finalizers", "update"),
]
CLUSTER_RULES = [("apiextensions.k8s.io", "customresourcedefinitions", "list watch")]
NODES = [("", "nodes", "list")]
NAMESPACES = [("", "namespaces", "list watch")]
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


# --- helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    """The helm binary built by hack/build-binaries.sh (no cluster needed)."""
    build = subprocess.run(
        [str(HACK / "build-binaries.sh")], capture_output=True, text=True, timeout=3 * 60 * 60
    )
    if build.returncode != 0:
        pytest.fail(f"hack/build-binaries.sh failed:\n{build.stderr[-3000:]}", pytrace=False)
    helm = Path(build.stdout.strip().splitlines()[-1]) / "helm"
    assert helm.exists(), f"no helm in {helm.parent}"
    return helm


def helm(
    helm_bin: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, timeout=180, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(helm_bin: Path, *args: str, namespace: str = "kubecast-system") -> list[dict[str, Any]]:
    out = helm(
        helm_bin,
        "template",
        "kc",
        str(CHART),
        "-n",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *args,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = find(docs, kind, name)
    return found


def rules_of(role: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(apiGroup, resource, "verb ...") per resource, in the chart's order."""
    return [
        (group, resource, " ".join(rule["verbs"]))
        for rule in role["rules"]
        if not rule.get("resourceNames")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]


def container_env(deployment: dict[str, Any], namespace: str) -> dict[str, str]:
    """The operator container's env as the kubelet would resolve it."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for var in container["env"]:
        if "valueFrom" not in var:
            env[var["name"]] = var.get("value", "")  # NB: the API server drops value: ""
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            raise AssertionError(f"cannot resolve env {var}")
    return env


# --- lint and render --------------------------------------------------------------


def test_chart_lints_clean_with_default_and_edge_values(helm_bin: Path, tmp_path: Path) -> None:
    for extra in ([], ["-f", values_file(tmp_path, EDGE_VALUES)]):
        proc = helm(
            helm_bin, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *extra
        )
        assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_default_install_renders_a_restricted_operator_that_the_cli_understands(
    helm_bin: Path,
) -> None:
    docs = render(helm_bin)
    kinds = sorted(d["kind"] for d in docs)
    expected = "ClusterRole ClusterRoleBinding Deployment Lease Role RoleBinding Secret Service"
    assert kinds == sorted(
        [*expected.split(), "ServiceAccount", "TranscodeProfile", *["CustomResourceDefinition"] * 3,
         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    )  # fmt: skip

    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "kubecast/operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    pod_namespace = next(e for e in container["env"] if e["name"] == "POD_NAMESPACE")
    assert pod_namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    # The real CLI parses the chart's args, and settings read the chart's env.
    args = cli.parse_args(container["args"])
    assert (args.metrics_port, args.liveness_port) == (8080, 8081)
    assert args.leader_election is True and args.log_format == "json"
    settings = Settings.from_env(container_env(deployment, "kubecast-system"))
    # The chart's defaults are the operator's, but for the key it mounts to sign stop tokens.
    assert settings == Settings(signing_key_file="/etc/kubecast/signing-key/key")
    assert one(docs, "Secret")["metadata"]["name"] == "kc-kubecast-signing-key"

    # Cluster-wide install: one ClusterRole with everything, the Lease in a Role.
    cluster_role = one(docs, "ClusterRole")
    assert rules_of(cluster_role) == CLUSTER_RULES + NODES + NAMESPACED_RULES
    lease_role = one(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "kubecast-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["kubecast-operator"],
            "verbs": ["get", "patch"],
        },
    ]
    assert one(docs, "Lease")["metadata"]["name"] == "kubecast-operator"
    for role in find(docs, "ClusterRole") + find(docs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert {"escalate", "bind", "impersonate"}.isdisjoint(rule["verbs"])

    profile = one(docs, "TranscodeProfile")
    assert profile["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert profile["metadata"]["namespace"] == "kubecast-system"


def test_chart_crds_are_the_crds_in_the_repository(helm_bin: Path) -> None:
    # Templates of the release (so `helm upgrade` upgrades them), not crds/.
    assert helm(helm_bin, "show", "crds", str(CHART)).stdout.strip() == ""
    docs = render(helm_bin)
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        plain = yaml.safe_load(path.read_text())
        crd = rendered.pop(plain["metadata"]["name"])
        assert crd["spec"] == plain["spec"], f"differs from {path.name}"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered == {}, "the chart has CRDs that crds/ does not"
    # The GitOps path: `helm template` carries them, before any object of their kinds.
    kinds = [d["kind"] for d in docs]
    last_crd = max(i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")
    assert kinds.index("TranscodeProfile") > last_crd
    assert not [d for d in render(helm_bin, "--set", "crds.enabled=false")
                if d["kind"] == "CustomResourceDefinition"]  # fmt: skip


def test_every_optional_feature_and_a_namespaced_install_render(
    helm_bin: Path, tmp_path: Path
) -> None:
    docs = render(helm_bin, "-f", values_file(tmp_path, EDGE_VALUES), namespace="media")

    deployment = one(docs, "Deployment", "streams")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/kubecast/operator@sha256:" + (
        "0123456789abcdef" * 4
    )
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "kubecast-sa"
    assert pod["priorityClassName"] == "system-cluster-critical"
    env = container_env(deployment, "media")
    settings = Settings.from_env(env)
    assert settings.worker_image == "registry.example.com/kubecast/worker:0.1.0-rc.1"
    assert settings.worker_image_pull_policy == "Always"
    assert settings.public_host == "live.example.com"
    assert (settings.poll_seconds, settings.resync_seconds) == (0.5, 15.0)
    assert settings.namespaces == ("team-a", "team-b")
    # Media pods land where the values say.
    assert settings.worker_node_selector == {"kubecast.dev/media": "true"}
    assert settings.worker_tolerations == (
        {"key": "media", "operator": "Exists", "effect": "NoSchedule"},
    )
    assert env["EXTRA"] == "1"
    args = cli.parse_args(container["args"])
    assert args.verbose and args.log_format == "plain"

    # Namespaced: full rights only in the watched namespaces; cluster-wide only
    # reads kopf needs (no nodes: publicHost is set).
    assert rules_of(one(docs, "ClusterRole", "streams")) == CLUSTER_RULES + NAMESPACES
    roles = {r["metadata"]["namespace"]: r for r in find(docs, "Role", "streams")}
    assert sorted(roles) == ["team-a", "team-b"]
    assert all(rules_of(r) == NAMESPACED_RULES for r in roles.values())
    bindings = find(docs, "RoleBinding", "streams")
    assert all(b["subjects"][0]["namespace"] == "media" for b in bindings)
    assert one(docs, "Role", "streams-leader-election")["metadata"]["namespace"] == "media"

    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = one(docs, "Service", "streams-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"

    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    (ingress,) = policy["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {"metrics", "healthz"}
    assert ingress["from"] == EDGE_VALUES["networkPolicy"]["metricsFrom"]

    profiles = find(docs, "TranscodeProfile")
    assert sorted(p["metadata"]["namespace"] for p in profiles) == ["team-a", "team-b"]


BAD_VALUES = [
    pytest.param(
        ["--set-string", "replicaCount=two"],
        "at '/replicaCount': got string, want integer",
        id="replicas-not-an-integer",
    ),
    pytest.param(
        ["--set", "image.pullPolicy=Sometimes"],
        "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        id="unknown-pull-policy",
    ),
    pytest.param(
        ["--set", "operator.pollSeconds=-1"],
        "at '/operator/pollSeconds': exclusiveMinimum",
        id="negative-poll-seconds",
    ),
    pytest.param(
        ["--set", "operator.resyncSeconds=0"],
        "at '/operator/resyncSeconds': exclusiveMinimum",
        id="zero-resync-seconds",
    ),
    pytest.param(
        ["--set", "replicas=2"],
        "additional properties 'replicas' not allowed",
        id="misspelled-key",
    ),
    pytest.param(
        ["--set", "operator.watchNamespaces={Team_A}"],
        "at '/operator/watchNamespaces/0': 'Team_A' does not match pattern",
        id="bad-namespace-name",
    ),
    pytest.param(
        ["--set", "operator.publicHost=http://live.example.com"],
        "at '/operator/publicHost'",
        id="public-host-with-scheme",
    ),
    pytest.param(
        ["--set", "worker.image.digest=sha256:abc"],
        "at '/worker/image/digest'",
        id="short-digest",
    ),
    pytest.param(
        ["--set", "operator.logFormat=xml"],
        "at '/operator/logFormat': value must be one of 'json', 'plain'",
        id="unknown-log-format",
    ),
    pytest.param(
        ["--set", "replicaCount=2", "--set", "operator.leaderElection=false"],
        "replicaCount > 1 needs operator.leaderElection=true",
        id="replicas-without-leader-election",
    ),
    pytest.param(
        ["--set", "operator.healthPort=8080"],
        "operator.metricsPort and operator.healthPort must differ",
        id="same-ports",
    ),
    pytest.param(
        ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"],
        "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true",
        id="service-monitor-without-service",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES)
def test_bad_values_are_refused_with_a_message_naming_the_value(
    helm_bin: Path, args: list[str], message: str
) -> None:
    proc = helm(
        helm_bin, "template", "kc", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False
    )
    assert proc.returncode != 0, f"helm accepted {args}"
    assert message in proc.stderr, proc.stderr


# --- install into the real control plane ------------------------------------------


def service_account_kubeconfig(
    cp: ControlPlane, path: Path, *, account: str, namespace: str
) -> Path:
    """A kubeconfig that authenticates as ``namespace/account`` with a fresh token."""
    token = cp.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    admin = json.loads(cp.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    (cluster,) = admin["clusters"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    return path


class OperatorPod:
    """The chart's operator, running as a pod; its log is what the tests read."""

    def __init__(self, cp: ControlPlane, namespace: str, release: str) -> None:
        self.cp, self.namespace, self.selector = (
            cp,
            namespace,
            f"app.kubernetes.io/instance={release}",
        )

    def output(self) -> str:
        proc = self.cp.kubectl(
            "-n", self.namespace, "logs", "-l", self.selector, "--tail=-1", check=False
        )
        return proc.stdout + proc.stderr

    def stop(self) -> None:
        """Nothing to do: ``helm uninstall`` ends the pod."""


def operator_from_deployment(
    cp: ControlPlane, *, release_namespace: str, name: str, kubeconfig: Path, workdir: Path
) -> OperatorPod:
    """Wait until the chart's operator pod runs and is ready; the handle reads its log."""
    del kubeconfig, workdir  # the pod has its own ServiceAccount token and no local files
    deployment = harness.get_json(cp.kubectl, "-n", release_namespace, "deployment", name)
    assert deployment is not None, f"the chart made no Deployment {name}"
    op = OperatorPod(
        cp, release_namespace, deployment["metadata"]["labels"]["app.kubernetes.io/instance"]
    )
    cp.kubectl(
        "-n", release_namespace, "rollout", "status", f"deployment/{name}", "--timeout=120s",
        timeout=150,
    )  # fmt: skip
    return op


def as_account(cp: ControlPlane, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cp.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_no_permission_problems(op: OperatorPod, account: str) -> None:
    """No RBAC denial in the operator's log.

    The API server names the user in an RBAC denial ("User \"<account>\" cannot
    ..."); kopf says "Not enough permissions". Other 403s, such as writes into a
    namespace being deleted by another test, are no RBAC matter.
    """
    log = op.output()
    for sign in (account, "not enough permissions"):
        assert sign not in log.lower(), f"the operator hit a missing permission:\n{log[-3000:]}"


def status_of(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    doc = harness.get_json(cp.kubectl, "-n", namespace, kind, name) or {}
    status: dict[str, Any] = doc.get("status") or {}
    return status


def leftovers(cp: ControlPlane, release: str, namespace: str) -> list[str]:
    """Objects the release made that still exist (pods of its Deployment included)."""
    selector = f"app.kubernetes.io/instance={release}"
    namespaced = cp.kubectl(
        "-n",
        namespace,
        "get",
        "-o",
        "name",
        "-l",
        selector,
        "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,leases,"
        "configmaps,secrets,networkpolicies",
    ).stdout.split()
    cluster = cp.kubectl(
        "get", "-o", "name", "-l", selector, "clusterroles,clusterrolebindings"
    ).stdout.split()
    releases = cp.kubectl(
        "-n", namespace, "get", "secrets", "-o", "name", "-l", f"owner=helm,name={release}"
    ).stdout.split()
    return namespaced + cluster + releases


@pytest.fixture
def release_namespace(control_plane: ControlPlane, helm_bin: Path) -> Iterator[str]:
    """The namespace to install into, enforcing the "restricted" Pod Security Standard.

    Releases a failed test left behind are uninstalled, so that their cluster-wide
    RBAC does not outlive the test.
    """
    name = f"kubecast-{os.urandom(3).hex()}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, RESTRICTED)
    yield name
    env = control_plane.env
    for release in helm(helm_bin, "list", "-n", name, "-q", env=env, check=False).stdout.split():
        helm(helm_bin, "uninstall", release, "-n", name, env=env, check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_installed_chart_runs_the_operator_with_only_the_rights_it_grants(
    control_plane: ControlPlane,
    kubecast_images: dict[str, str],
    helm_bin: Path,
    namespace: str,
    release_namespace: str,
    tmp_path: Path,
) -> None:
    cp, release = control_plane, "kc"
    install = [
        "install", release, str(CHART), "-n", release_namespace,
        "--set", f"defaultProfile.namespaces={{{namespace}}}",
        "--set", "operator.publicHost=127.0.0.1",
        "--set", "operator.pollSeconds=1",
        "--set", "operator.resyncSeconds=10",
    ]  # fmt: skip
    # NB: the release installs the CRDs, or takes them over when another test
    # applied crds/ already (--take-ownership): either way the same schema.
    if cp.kubectl("get", "crd", CRD_NAMES[0], check=False).returncode == 0:
        install.append("--take-ownership")
    notes = helm(helm_bin, *install, env=cp.env).stdout
    # NOTES.txt walks the user to a first stream, its key and its URLs.
    for step in (
        f"kubectl -n {namespace} apply -f -",
        f"kubectl -n {namespace} get secret studio-stream-key",
        "{.status.ingestUrl}",
        "{.status.playbackUrl}",
    ):
        assert step in notes, f"NOTES lack {step!r}:\n{notes}"
    cp.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES)
    )
    # The chart's default profile, in the namespace where the stream will live.
    assert harness.get_json(cp.kubectl, "-n", namespace, "transcodeprofile", "default")

    kubeconfig = service_account_kubeconfig(
        cp, tmp_path / "operator.kubeconfig", account=f"{release}-kubecast",
        namespace=release_namespace,
    )  # fmt: skip
    account = f"system:serviceaccount:{release_namespace}:{release}-kubecast"
    op = operator_from_deployment(
        cp, release_namespace=release_namespace, name=f"{release}-kubecast",
        kubeconfig=kubeconfig, workdir=tmp_path,
    )  # fmt: skip
    try:
        # Streams and their workers are fine in a "restricted" namespace too.
        cp.kubectl("label", "namespace", namespace, RESTRICTED)
        cp.apply((SAMPLES_DIR / "livestream-push.yaml").read_text(), "-n", namespace)

        def reconciled() -> dict[str, Any] | None:
            status = status_of(cp, namespace, "livestream", "studio")
            return status if status.get("ingestUrl") and status.get("phase") else None

        status = harness.eventually("the stream's status", reconciled, timeout=60, logs=op.output)
        # Pending until the worker pod answers, then Idle (it runs for real).
        assert status["phase"] in ("Pending", "Idle")
        assert status["ingestUrl"].startswith("rtmp://127.0.0.1:")
        assert status["streamKeySecret"] == "studio-stream-key"
        for kind, name in (
            ("deployment", "studio-worker"),
            ("configmap", "studio-worker-config"),
            ("secret", "studio-stream-key"),
            ("service", "studio-ingest"),
            ("service", "studio-playback"),
        ):
            child = harness.get_json(cp.kubectl, "-n", namespace, kind, name)
            assert child is not None, f"no {kind} {name}"
            assert child["metadata"]["ownerReferences"][0]["name"] == "studio"
        profile = harness.eventually(
            "the chart's profile in use",
            lambda: (
                (s := status_of(cp, namespace, "transcodeprofile", "default")).get("usedBy") == 1
                and s
            ),
            logs=op.output,
        )
        assert any(c["type"] == "Valid" and c["status"] == "True" for c in profile["conditions"])
        lease = harness.get_json(cp.kubectl, "-n", release_namespace, "lease", "kubecast-operator")
        assert lease is not None and lease["spec"].get("holderIdentity"), "no leader"
        events = json.loads(
            cp.kubectl(
                "-n", namespace, "get", "events", "-o", "json",
                "--field-selector", "involvedObject.kind=LiveStream,involvedObject.name=studio",
            ).stdout
        )["items"]  # fmt: skip
        assert any(e["reason"] == "Pending" for e in events), "no Event was posted"

        # Pod Security admission let the operator's and the worker's pods in.
        def pods(where: str, selector: str) -> str:
            return cp.kubectl("-n", where, "get", "pods", "-l", selector, "-o", "name").stdout

        selector = f"app.kubernetes.io/instance={release}"
        harness.eventually("the operator's pod", lambda: pods(release_namespace, selector))
        harness.eventually("a worker pod", lambda: pods(namespace, "kubecast.dev/stream=studio"))
        assert_no_permission_problems(op, account)

        # What the chart did not grant is refused to the same identity.
        for args in (
            ("auth", "can-i", "delete", "nodes"),
            ("auth", "can-i", "list", "secrets", "-A"),
            ("auth", "can-i", "delete", "livestreams", "-n", namespace),
            ("auth", "can-i", "create", "clusterroles"),
            ("auth", "can-i", "patch", "leases/another-lease", "-n", release_namespace),
        ):
            proc = as_account(cp, kubeconfig, *args)
            assert proc.stdout.strip() == "no", f"{' '.join(args)}: {proc.stdout}{proc.stderr}"
        escalate = as_account(
            cp, kubeconfig, "create", "clusterrole", "kubecast-escalate", "--verb=*",
            "--resource=*",
        )  # fmt: skip
        assert escalate.returncode != 0 and "forbidden" in escalate.stderr, escalate.stderr
        read_secrets = as_account(cp, kubeconfig, "-n", namespace, "get", "secrets")
        assert read_secrets.returncode != 0 and "forbidden" in read_secrets.stderr

        # Deleting works with the chart's rights too (kopf and in-use finalizers).
        cp.kubectl("-n", namespace, "delete", "livestream", "studio", "--timeout=60s")
        cp.kubectl("-n", namespace, "delete", "transcodeprofile", "default", "--timeout=60s")
        assert_no_permission_problems(op, account)
    finally:
        op.stop()

    helm(helm_bin, "uninstall", release, "-n", release_namespace, "--wait", env=cp.env)
    harness.eventually(
        "no objects of the release left", lambda: not leftovers(cp, release, release_namespace),
        timeout=60,
    )  # fmt: skip
    # CRDs stay (crds.keep), and with them everyone's streams.
    assert cp.kubectl("get", "crd", *CRD_NAMES, check=False).returncode == 0


def test_namespaced_install_confines_the_operator_to_its_namespaces(
    control_plane: ControlPlane,
    kubecast_crds: list[str],
    kubecast_images: dict[str, str],
    helm_bin: Path,
    namespace: str,
    release_namespace: str,
    tmp_path: Path,
) -> None:
    cp, release = control_plane, "confined"
    other = f"{namespace[:50]}-other"
    cp.kubectl("create", "namespace", other)
    try:
        helm(
            helm_bin, "install", release, str(CHART), "-n", release_namespace,
            "--set", "crds.enabled=false",
            "--set", f"operator.watchNamespaces={{{namespace}}}",
            "--set", f"defaultProfile.namespaces={{{namespace}}}",
            "--set", "operator.publicHost=127.0.0.1",
            "--set", "operator.pollSeconds=1",
            env=cp.env,
        )  # fmt: skip
        kubeconfig = service_account_kubeconfig(
            cp, tmp_path / "operator.kubeconfig", account=f"{release}-kubecast",
            namespace=release_namespace,
        )  # fmt: skip
        account = f"system:serviceaccount:{release_namespace}:{release}-kubecast"
        for args in (
            ("create", "deployments", "-n", other),
            ("get", "secrets", "-n", other),
            ("list", "nodes"),
        ):
            proc = as_account(cp, kubeconfig, "auth", "can-i", *args)
            assert proc.stdout.strip() == "no", f"can-i {' '.join(args)}: {proc.stdout}"
        assert (
            as_account(
                cp, kubeconfig, "auth", "can-i", "create", "deployments", "-n", namespace
            ).stdout.strip()
            == "yes"
        )

        op = operator_from_deployment(
            cp, release_namespace=release_namespace, name=f"{release}-kubecast",
            kubeconfig=kubeconfig, workdir=tmp_path,
        )  # fmt: skip
        try:
            sample = (SAMPLES_DIR / "livestream-push.yaml").read_text()
            cp.apply(sample, "-n", namespace)
            cp.apply(sample, "-n", other)
            harness.eventually(
                "the watched namespace's stream reconciled",
                lambda: status_of(cp, namespace, "livestream", "studio").get("phase"),
                logs=op.output,
            )
            assert status_of(cp, other, "livestream", "studio") == {}
            assert harness.get_json(cp.kubectl, "-n", other, "deployment", "studio-worker") is None
            assert_no_permission_problems(op, account)
            cp.kubectl("-n", namespace, "delete", "livestream", "studio", "--timeout=60s")
            cp.kubectl("-n", namespace, "delete", "transcodeprofile", "default", "--timeout=60s")
        finally:
            op.stop()
        helm(helm_bin, "uninstall", release, "-n", release_namespace, "--wait", env=cp.env)
        harness.eventually(
            "no objects of the release left",
            lambda: not leftovers(cp, release, release_namespace),
            timeout=60,
        )
        roles = cp.kubectl("-n", namespace, "get", "roles,rolebindings", "-o", "name").stdout
        assert roles.strip() == "", f"the watched namespace keeps {roles}"
    finally:
        cp.kubectl("delete", "namespace", other, "--wait=false", check=False)
