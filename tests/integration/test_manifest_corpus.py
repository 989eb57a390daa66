"""The invalid-manifest corpus, refused the same way by the API server and the models.

Every file in ``tests/manifests/invalid/`` is a manifest with exactly one mistake and a
comment header (YAML, each line behind ``# ``) that says what is wrong::

    # why: width 1279 is odd; H.264 4:2:0 needs even dimensions
    # rule: cel                          (schema or cel: which part of the CRD refuses it)
    # field: spec.renditions[0].width    (the field both refusals must name)
    # words: [must be even, '4:2:0']     (words both refusals must contain)
    # server: [...]                      (optional: words only the API server says)
    # local: [...]                       (optional: words only pydantic says)

Each file is run through the real kube-apiserver (``kubectl create --dry-run=server``,
so nothing is stored) and through ``kubecast_api.parse_manifest`` locally. A case
refused in one place and accepted in the other is a bug in the models or the CRDs.

The local error "names the field" when a line of ``describe_error`` is about that field
(``spec.renditions[0].width: ...``), or when the error sits on an enclosing object (a
rule written as a model validator) and its message names the rest of the path
(``spec: segmentSeconds (5) must be a multiple of gopSeconds ...``).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from kubecast_api import KINDS, describe_error, parse_manifest

from .conftest import REPO_ROOT, ControlPlane

pytestmark = pytest.mark.integration

CORPUS_DIR = REPO_ROOT / "tests" / "manifests" / "invalid"
MIN_PER_KIND = 8


@dataclass(frozen=True)
class Case:
    path: Path
    manifest: dict[str, Any]
    why: str
    rule: str
    field: str
    words: tuple[str, ...]
    server: tuple[str, ...]
    local: tuple[str, ...]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])


def _header(text: str) -> dict[str, Any]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    header = yaml.safe_load("\n".join(lines)) or {}
    assert isinstance(header, dict), f"the comment header is not a YAML mapping: {header!r}"
    return header


def load_case(path: Path) -> Case:
    text = path.read_text()
    header = _header(text)
    manifest = yaml.safe_load(text)
    return Case(
        path=path,
        manifest=manifest,
        why=str(header.get("why", "")),
        rule=str(header.get("rule", "")),
        field=str(header.get("field", "")),
        words=tuple(str(w) for w in header.get("words", ())),
        server=tuple(str(w) for w in header.get("server", ())),
        local=tuple(str(w) for w in header.get("local", ())),
    )


def corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*.yaml"))


CASES = [pytest.param(p, id=p.stem) for p in corpus_files()]


# ---------------------------------------------------------------- the corpus itself


def test_corpus_covers_every_kind() -> None:
    cases = [load_case(p) for p in corpus_files()]
    by_kind = Counter(c.kind for c in cases)
    assert len(cases) >= 30, by_kind
    for kind in KINDS:
        assert by_kind[kind.kind] >= MIN_PER_KIND, by_kind
        # Both halves of every CRD are exercised: its OpenAPI schema and its CEL rules.
        rules = {c.rule for c in cases if c.kind == kind.kind}
        assert rules == {"schema", "cel"}, (kind.kind, rules)


@pytest.mark.parametrize("path", CASES)
def test_case_is_well_formed(path: Path) -> None:
    case = load_case(path)
    assert case.why and case.field.startswith("spec"), f"{path.name}: header needs why and field"
    assert case.rule in {"schema", "cel"}, path.name
    assert case.words or (case.server and case.local), f"{path.name}: no words to look for"
    assert case.manifest["metadata"]["name"] == path.stem, "metadata.name is the file's name"


def every_cel_message() -> set[str]:
    """The message of every CEL rule in the CRDs, as generated from the models."""
    messages: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", ()):
                messages.add(rule["message"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for f in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        walk(yaml.safe_load(f.read_text()))
    return messages


def test_every_cel_rule_has_a_case() -> None:
    """A new rule in the models must come with a manifest that breaks it."""
    cel_cases = [c for c in map(load_case, corpus_files()) if c.rule == "cel"]
    # A case covers a rule when all of its words are taken from the rule's message.
    missing = [
        message
        for message in sorted(every_cel_message())
        if not any(c.words and all(w in message for w in c.words) for c in cel_cases)
    ]
    assert not missing, f"CEL rules without a case in {CORPUS_DIR}: {missing}"


# ---------------------------------------------------------------- the two refusals


def _names_field_on_server(stderr: str, field: str) -> bool:
    # `spec.x: Invalid value ...`, `spec.x: Required value`, `unknown field "spec.x"`.
    return re.search(re.escape(field) + r'(\[\d+\])?[:"]', stderr) is not None


def _names_field_locally(message: str, field: str) -> bool:
    for line in message.splitlines():
        path, _, text = line.partition(": ")
        if path == field or path.startswith((field + "[", field + ".")):
            return True
        if field.startswith((path + ".", path + "[")):
            rest = field[len(path) :].lstrip(".")
            # The rest of the path, or its last part with the index left out.
            leaf = re.sub(r"\[\d+\]", "", rest)
            if rest in text or leaf in text:
                return True
    return False


@pytest.fixture(scope="module")
def corpus_namespace(control_plane: ControlPlane, kubecast_crds: list[str]) -> Iterator[str]:
    name = "manifest-corpus"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def server_create(cp: ControlPlane, namespace: str, path: Path) -> subprocess.CompletedProcess[str]:
    # Dry run on the server: schema, defaulting, CEL and strict field validation all
    # run in kube-apiserver, and nothing is stored.
    return cp.kubectl("-n", namespace, "create", "--dry-run=server", "-f", str(path), check=False)


@pytest.mark.parametrize("path", CASES)
def test_refused_by_the_api_server(
    control_plane: ControlPlane, corpus_namespace: str, path: Path
) -> None:
    case = load_case(path)
    proc = server_create(control_plane, corpus_namespace, path)
    assert proc.returncode != 0, f"the API server accepted {path.name} ({case.why})"
    assert _names_field_on_server(proc.stderr, case.field), (
        f"expected the error to name {case.field}:\n{proc.stderr}"
    )
    for word in case.words + case.server:
        assert word in proc.stderr, f"expected {word!r} in the error:\n{proc.stderr}"


@pytest.mark.parametrize("path", CASES)
def test_refused_by_the_models(path: Path) -> None:
    case = load_case(path)
    with pytest.raises(pydantic.ValidationError) as caught:
        parse_manifest(case.manifest)
    message = describe_error(caught.value)
    assert _names_field_locally(message, case.field), (
        f"expected the error to name {case.field}:\n{message}"
    )
    for word in case.words + case.local:
        assert word in message, f"expected {word!r} in the error:\n{message}"


# ---------------------------------------------------------------- the control group


def valid_base(kind: str) -> dict[str, Any]:
    """What every case of a kind starts from: accepted in both places."""
    if kind == "TranscodeProfile":
        spec: dict[str, Any] = {
            "gopSeconds": 2,
            "segmentSeconds": 4,
            "renditions": [
                {"name": "720p", "width": 1280, "height": 720, "videoBitrate": 2500},
                {"name": "360p", "width": 640, "height": 360, "videoBitrate": 800},
            ],
        }
    elif kind == "LiveStream":
        spec = {"ingest": {"push": {"app": "live"}}, "profileRef": {"name": "default"}}
    else:
        spec = {"streamRef": {"name": "studio"}}
    return {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"valid-{kind.lower()}"},
        "spec": spec,
    }


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_the_base_of_every_case_is_valid(
    control_plane: ControlPlane, corpus_namespace: str, kind: str, tmp_path: Path
) -> None:
    """So a refusal above is about the one broken field, not the rest of the manifest."""
    manifest = valid_base(kind)
    parse_manifest(manifest)
    path = tmp_path / "valid.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    proc = server_create(control_plane, corpus_namespace, path)
    assert proc.returncode == 0, proc.stderr
