"""The Helm chart's CRDs are the files in crds/, generated from the same models."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubecast_api import crdgen
from kubecast_api.resources import KINDS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubecast"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_chart_crd_is_byte_for_byte_the_one_in_crds(kind: crdgen.Kind) -> None:
    chart = (CHART / crdgen.CHART_CRD_DIR / crdgen.filename(kind)).read_text()
    assert chart == (REPO / "crds" / crdgen.filename(kind)).read_text()
    assert chart == crdgen.render(kind), "charts/kubecast/crds is stale: run `make crds`"


def test_chart_has_no_crd_that_crds_lacks() -> None:
    chart = sorted(p.name for p in (CHART / crdgen.CHART_CRD_DIR).iterdir())
    assert chart == sorted(crdgen.filename(kind) for kind in KINDS)
    # Templated copies would make Helm own them twice (and fail the install).
    assert not list((CHART / "templates").rglob("*CustomResourceDefinition*"))
    for template in (CHART / "templates").rglob("*.yaml"):
        assert "kind: CustomResourceDefinition" not in template.read_text(), template


def test_generator_writes_and_checks_the_chart_too(tmp_path: Path) -> None:
    out, chart = tmp_path / "crds", tmp_path / "chart"
    assert crdgen.main(["--out", str(out), "--chart", str(chart)]) == 0
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 0
    victim = chart / crdgen.CHART_CRD_DIR / crdgen.filename(KINDS[0])
    victim.write_text(victim.read_text() + "# edited by hand\n")
    assert crdgen.main(["--out", str(out), "--chart", str(chart), "--check"]) == 1
    # Without --chart only crds/ is looked at, as `make crds-check` always did.
    assert crdgen.main(["--out", str(out), "--check"]) == 0
