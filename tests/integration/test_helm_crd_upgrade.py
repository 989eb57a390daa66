"""`helm upgrade` upgrades the CRDs; `helm uninstall` leaves them, and every stream.

Against the real kube-apiserver, with the helm binary of hack/build-binaries.sh.
No image is needed and no pod has to run: the operator's pod may stay Pending
(`helm install` without --wait). What is tested is what the API server does
with the CRDs the release installs:

- an older chart whose LiveStream CRD lacks a field (a copy of this chart with
  one property dropped from the CRD) is installed; a LiveStream that sets the
  field loses it, pruned by the API server;
- `helm upgrade` to this chart upgrades the CRD: a new LiveStream keeps the field;
- `helm uninstall` with crds.keep leaves the CRDs and the LiveStreams.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubecast_api import crdgen
from kubecast_api.resources import KINDS

from . import operator_harness as harness
from .conftest import REPO_ROOT, ControlPlane

CHART = REPO_ROOT / "charts" / "kubecast"
CRD_NAMES = [f"{k.plural}.kubecast.dev" for k in KINDS]
LIVESTREAM = next(k for k in KINDS if k.kind == "LiveStream")
LIVESTREAM_CRD = f"{LIVESTREAM.plural}.kubecast.dev"
# A field of LiveStream.spec with no say in anything else the test does.
FIELD = "reconnectWindowSeconds"
SPEC_PATH = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties"


def helm(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cp.bin_dir / "helm"), *args], capture_output=True, text=True, timeout=180, env=cp.env
    )
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def older_chart(tmp_path: Path) -> Path:
    """This chart as a version that did not have ``FIELD`` yet."""
    chart = tmp_path / "kubecast"
    shutil.copytree(CHART, chart)
    body = chart / crdgen.CHART_BODY_DIR / crdgen.filename(LIVESTREAM)
    crd = yaml.safe_load(body.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"][FIELD]
    body.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def stream(name: str) -> str:
    return json.dumps({
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": name},
        "spec": {
            "ingest": {"push": {"protocol": "rtmp", "app": "live"}},
            "profileRef": {"name": "default"},
            FIELD: 45,
        },
    })  # fmt: skip


def spec_of(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    doc = harness.get_json(cp.kubectl, "-n", namespace, "livestream", name)
    assert doc is not None, f"LiveStream {name} is gone"
    spec: dict[str, Any] = doc["spec"]
    return spec


def livestream_properties(cp: ControlPlane) -> dict[str, Any]:
    crd = json.loads(cp.kubectl("get", "crd", LIVESTREAM_CRD, "-o", "json").stdout)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties: dict[str, Any] = schema["properties"]["spec"]["properties"]
    return properties


def test_upgrade_adds_a_crd_field_and_uninstall_keeps_crds_and_streams(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp, release, release_ns, streams_ns = (
        control_plane, "crdup", "kubecast-crd-upgrade", "crd-upgrade-streams",
    )  # fmt: skip
    cp.kubectl("create", "namespace", streams_ns)
    install = [
        "install", release, str(older_chart(tmp_path)), "-n", release_ns, "--create-namespace",
        "--set", f"defaultProfile.namespaces={{{streams_ns}}}",
    ]  # fmt: skip
    if cp.kubectl("get", "crd", LIVESTREAM_CRD, check=False).returncode == 0:
        # Another module of this session applied crds/ (the kubecast_crds fixture).
        # Make the cluster look as the older chart left it, and let this release
        # take the CRDs over; on a fresh cluster the release creates them.
        cp.kubectl(
            "patch", "crd", LIVESTREAM_CRD, "--type=json",
            "-p", json.dumps([{"op": "remove", "path": f"{SPEC_PATH}/{FIELD}"}]),
        )  # fmt: skip
        install.append("--take-ownership")
    try:
        helm(cp, *install)
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   *(f"crd/{n}" for n in CRD_NAMES))  # fmt: skip
        assert FIELD not in livestream_properties(cp)
        # The default profile was created after the CRDs, on a fresh cluster too.
        assert harness.get_json(cp.kubectl, "-n", streams_ns, "transcodeprofile", "default")

        # The older CRD: the API server drops the field it does not know
        # (kubectl's own field validation would refuse it: the user's
        # `kubectl apply` with a newer manifest, or a GitOps tool, would not).
        cp.kubectl("-n", streams_ns, "create", "--validate=false", "-f", "-", input=stream("old"))
        assert FIELD not in spec_of(cp, streams_ns, "old")

        helm(cp, "upgrade", release, str(CHART), "-n", release_ns, "--reuse-values")
        assert FIELD in livestream_properties(cp), "helm upgrade did not upgrade the CRD"
        cp.kubectl("-n", streams_ns, "create", "-f", "-", input=stream("new"))
        assert spec_of(cp, streams_ns, "new")[FIELD] == 45
        # What was pruned stays lost: the old stream reads the default now.
        assert spec_of(cp, streams_ns, "old")[FIELD] == 30

        out = helm(cp, "uninstall", release, "-n", release_ns).stdout
        assert "kept due to the resource policy" in out
        for name in CRD_NAMES:
            crd = json.loads(cp.kubectl("get", "crd", name, "-o", "json").stdout)
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert spec_of(cp, streams_ns, "new")[FIELD] == 45
        assert spec_of(cp, streams_ns, "old")
        assert harness.get_json(cp.kubectl, "-n", streams_ns, "transcodeprofile", "default")
    finally:
        subprocess.run(
            [str(cp.bin_dir / "helm"), "uninstall", release, "-n", release_ns],
            capture_output=True, timeout=120, env=cp.env,
        )  # fmt: skip
        cp.kubectl("delete", "namespace", streams_ns, release_ns, "--wait=false", check=False)
        # The CRDs stay for the session's other modules, as the kubecast_crds
        # fixture would leave them: this chart's schema, no release's ownership.
        for name in CRD_NAMES:
            cp.kubectl(
                "annotate", "crd", name, "meta.helm.sh/release-name-",
                "meta.helm.sh/release-namespace-", check=False,
            )  # fmt: skip
