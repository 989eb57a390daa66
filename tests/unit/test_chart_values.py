"""values.yaml, values.schema.json and Chart.yaml agree with each other and with the code.

These need no helm binary; tests/integration/test_helm_chart.py renders and installs.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from kubecast_operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubecast"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _undeclared(values: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Keys of ``values`` that a closed (additionalProperties: false) schema does not list."""
    schema = _resolve(schema)
    if not isinstance(values, dict) or schema.get("type") != "object":
        return []
    properties = schema.get("properties", {})
    problems = []
    for key, value in values.items():
        if key in properties:
            problems += _undeclared(value, properties[key], f"{path}.{key}")
        elif schema.get("additionalProperties") is False:
            problems.append(f"{path}.{key}")
    return problems


def test_every_value_is_declared_in_the_schema() -> None:
    assert SCHEMA["additionalProperties"] is False, "a misspelled top-level key must be refused"
    assert _undeclared(VALUES, SCHEMA, "") == []


def test_every_closed_schema_object_is_documented_in_values() -> None:
    for key, node in SCHEMA["properties"].items():
        assert key in VALUES, f"{key} is in values.schema.json but has no default in values.yaml"
        node = _resolve(node)
        if node.get("additionalProperties") is False and isinstance(VALUES[key], dict):
            for sub in node.get("properties", {}):
                assert sub in VALUES[key], f"{key}.{sub} has no default in values.yaml"


def test_chart_version_follows_the_package_and_the_operator_default() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert CHART_YAML["appVersion"] == version
    # The worker image the chart passes is the one the operator assumes unset.
    worker = VALUES["worker"]["image"]
    assert f"{worker['repository']}:{CHART_YAML['appVersion']}" == Settings().worker_image
    assert worker["pullPolicy"] == Settings().worker_image_pull_policy


def test_operator_defaults_match_the_operator_own_defaults() -> None:
    assert VALUES["operator"]["pollSeconds"] == Settings().poll_seconds
    assert VALUES["operator"]["resyncSeconds"] == Settings().resync_seconds


def test_default_profile_is_the_sample_default_ladder() -> None:
    sample = yaml.safe_load((REPO / "samples" / "transcodeprofile-default.yaml").read_text())
    assert VALUES["defaultProfile"]["spec"] == sample["spec"]
    assert VALUES["defaultProfile"]["name"] == sample["metadata"]["name"]


def test_security_defaults_are_restrictive() -> None:
    pod, container = VALUES["podSecurityContext"], VALUES["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_operator_requests_and_limits_ephemeral_storage_by_default() -> None:
    resources = VALUES["resources"]
    assert resources["requests"]["ephemeral-storage"] == "64Mi"
    assert resources["limits"]["ephemeral-storage"] == "256Mi"
    # No CPU limit on purpose (values.yaml says why).
    assert "cpu" not in resources["limits"]


def test_pod_disruption_budget_is_off_by_default_and_then_lets_one_pod_go() -> None:
    assert VALUES["podDisruptionBudget"] == {
        "enabled": False,
        "maxUnavailable": 1,
        "minAvailable": "",
    }
    declared = SCHEMA["properties"]["podDisruptionBudget"]
    assert declared["additionalProperties"] is False


def test_crds_are_upgraded_with_the_release_and_kept_on_uninstall_by_default() -> None:
    assert VALUES["crds"] == {"enabled": True, "keep": True}
    assert SCHEMA["properties"]["crds"]["additionalProperties"] is False


def test_the_operator_admission_policy_is_on_by_default() -> None:
    assert VALUES["rbac"] == {"create": True, "admissionPolicy": True}
