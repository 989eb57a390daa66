"""The checked-in CRDs are exactly what the API models generate, and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecast_api import crdgen
from kubecast_api.resources import KINDS

CRDS = Path(__file__).parents[2] / "crds"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_the_models(kind: crdgen.Kind) -> None:
    committed = (CRDS / crdgen.filename(kind)).read_text()
    assert committed == crdgen.render(kind), "crds/ is stale: run `make crds` and commit"


def test_generator_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    victim = tmp_path / crdgen.filename(KINDS[0])
    victim.write_text(victim.read_text() + "# edited by hand\n")
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Every violation of the structural-schema rules below ``node``."""
    problems = []
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "nullable", "$defs", "title"):
        if forbidden in node:
            problems.append(f"{path}: {forbidden}")
    if "type" not in node:
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties with additionalProperties")
    for name, child in node.get("properties", {}).items():
        if (path.endswith(".spec") or ".spec." in path) and "description" not in child:
            problems.append(f"{path}.{name}: no description")
        problems += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    return problems


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_schema_is_structural_and_documented(kind: crdgen.Kind) -> None:
    crd = crdgen.crd_for(kind)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_carries_names_columns_category_and_status(kind: crdgen.Kind) -> None:
    crd = yaml.safe_load((CRDS / crdgen.filename(kind)).read_text())
    names = crd["spec"]["names"]
    assert names["shortNames"] and "kubecast" in names["categories"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_livestream_columns_are_the_ones_users_read() -> None:
    crd = crdgen.crd_for(next(k for k in KINDS if k.kind == "LiveStream"))
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    visible = [c["name"] for c in columns if not c.get("priority")]
    assert visible == ["Phase", "Profile", "Input", "Bitrate", "Playback", "Age"]


def _rules(node: dict[str, Any]) -> list[str]:
    found = [r["message"] for r in node.get("x-kubernetes-validations", [])]
    for child in node.get("properties", {}).values():
        found += _rules(child)
    if isinstance(node.get("items"), dict):
        found += _rules(node["items"])
    return found


def test_cel_rules_cover_what_the_schema_cannot_say() -> None:
    messages = " | ".join(
        m
        for kind in KINDS
        for m in _rules(crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    )
    for words in (
        "exactly one of spec.ingest.push or spec.ingest.pull",
        "names must be unique",
        "width must be even",
        "height must be even",
        "maxrate must be at least",
        "multiple of gopSeconds",
        "endTime must be after startTime",
    ):
        assert words in messages
