"""The Helm chart's CRDs are templates of the release, generated from the same models as crds/.

Templated, not in the chart's crds/ folder: Helm installs that folder once and
never upgrades it, so a field added in a new version would be pruned by the API
server after `helm upgrade`. The rendering tests need a helm binary (see
test_chart_render.py for how it is found).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart_render import _helm, of_kind, render, render_chart

from kubecast_api import crdgen
from kubecast_api.resources import KINDS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubecast"
KEEP = {"helm.sh/resource-policy": "keep"}


def _plain(kind: crdgen.Kind) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((REPO / "crds" / crdgen.filename(kind)).read_text())
    return crd


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_chart_crd_files_are_what_the_models_generate(kind: crdgen.Kind) -> None:
    template = (CHART / crdgen.CHART_TEMPLATE_DIR / crdgen.filename(kind)).read_text()
    body = (CHART / crdgen.CHART_BODY_DIR / crdgen.filename(kind)).read_text()
    assert template == crdgen.chart_template(kind), "the chart's CRDs are stale: run `make crds`"
    assert body == crdgen.chart_body(kind), "the chart's CRDs are stale: run `make crds`"
    assert template.splitlines()[1] == '{{- if include "kubecast.crdsEnabled" . }}'


def test_chart_has_no_crds_folder_that_helm_would_install_once() -> None:
    # Helm would install crds/ itself and then fail on the templated copies of
    # the same CRDs (or, without them, never upgrade the CRDs again).
    assert not (CHART / "crds").exists()
    names = sorted(p.name for p in (CHART / crdgen.CHART_TEMPLATE_DIR).iterdir())
    assert names == sorted(crdgen.filename(kind) for kind in KINDS)


@pytest.mark.usefixtures(_helm.__name__)
def test_rendered_crds_are_the_plain_crds_with_the_release_metadata() -> None:
    docs = render()
    crds = {d["metadata"]["name"]: d for d in of_kind(docs, "CustomResourceDefinition")}
    assert sorted(crds) == sorted(f"{k.plural}.kubecast.dev" for k in KINDS)
    for kind in KINDS:
        plain, rendered = _plain(kind), crds[f"{kind.plural}.kubecast.dev"]
        assert rendered["spec"] == plain["spec"]
        assert rendered["metadata"]["annotations"] == KEEP
        labels = rendered["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "kubecast"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.usefixtures(_helm.__name__)
def test_crds_keep_false_lets_uninstall_delete_them() -> None:
    docs = render("--set", "crds.keep=false")
    for crd in of_kind(docs, "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


@pytest.mark.usefixtures(_helm.__name__)
def test_crds_enabled_false_renders_no_crd_and_a_plain_default_profile() -> None:
    docs = render("--set", "crds.enabled=false")
    assert of_kind(docs, "CustomResourceDefinition") == []
    (profile,) = of_kind(docs, "TranscodeProfile")
    assert "helm.sh/hook" not in profile["metadata"]["annotations"]


@pytest.mark.usefixtures(_helm.__name__)
def test_default_profile_waits_for_the_crds_on_a_first_install_only() -> None:
    # A cluster that does not serve the kind yet: Helm could not map the profile
    # before the release's CRDs exist, so it is created after them by a hook.
    (first,) = of_kind(render(), "TranscodeProfile")
    annotations = first["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install"
    assert annotations["meta.helm.sh/release-name"] == "kc"
    assert annotations["meta.helm.sh/release-namespace"] == "kubecast-system"
    # Once it does (every upgrade), a plain object of the release.
    (later,) = of_kind(
        render("--api-versions", "kubecast.dev/v1alpha1/TranscodeProfile"), "TranscodeProfile"
    )
    assert later["metadata"]["annotations"] == KEEP


@pytest.mark.usefixtures(_helm.__name__)
def test_a_description_with_template_braces_survives_rendering(tmp_path: Path) -> None:
    # The CRD body is included with .Files.Get, never parsed as a template, so
    # text such as an example Go template in a description renders as written.
    chart = tmp_path / "kubecast"
    shutil.copytree(CHART, chart)
    kind = KINDS[0]
    body = chart / crdgen.CHART_BODY_DIR / crdgen.filename(kind)
    braces = "e.g. {{ .Release.Name }} or {{- fail }}"
    crd = yaml.safe_load(body.read_text())
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = braces
    body.write_text(yaml.safe_dump(crd, sort_keys=False))
    docs = render_chart(chart)
    (rendered,) = [
        d for d in of_kind(docs, "CustomResourceDefinition")
        if d["spec"]["names"]["kind"] == kind.kind
    ]  # fmt: skip
    assert rendered["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] == braces


def test_generator_writes_and_checks_the_chart_too(tmp_path: Path) -> None:
    out, chart = tmp_path / "crds", tmp_path / "chart"
    assert crdgen.main(["--out", str(out), "--chart", str(chart)]) == 0
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 0
    victim = chart / crdgen.CHART_BODY_DIR / crdgen.filename(KINDS[0])
    victim.write_text(victim.read_text() + "# edited by hand\n")
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 1
    assert crdgen.main(["--out", str(out), "--chart", str(chart)]) == 0
    # A crds/ folder left in the chart from before is reported: Helm would install it.
    (chart / "crds").mkdir()
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 1
    # Without --chart only crds/ is looked at, as `make crds-check` always did.
    assert crdgen.main(["--out", str(out), "--check"]) == 0


@pytest.mark.usefixtures(_helm.__name__)
def test_an_upgrade_reusing_values_of_a_chart_without_the_switches_gets_their_defaults() -> None:
    # `helm upgrade --reuse-values` from 0.1.0 reuses values without crds.* and
    # rbac.admissionPolicy; null removes a key just so.
    docs = render("--set", "crds=null", "--set", "rbac.admissionPolicy=null")
    crds = of_kind(docs, "CustomResourceDefinition")
    assert len(crds) == len(KINDS)
    assert all(crd["metadata"]["annotations"] == KEEP for crd in crds)
    assert len(of_kind(docs, "ValidatingAdmissionPolicy")) == 1
