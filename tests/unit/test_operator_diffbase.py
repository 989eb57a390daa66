"""The operator's diff-base builder gives kopf's essence, without kopf's copying."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
import pytest

from kubecast_api import GROUP
from kubecast_operator import diffbase, handlers


def pod() -> dict[str, Any]:
    """A worker Pod as a watch brings it: managedFields, status, owners, annotations."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "s0001-worker-7d9c-x2",
            "namespace": "studio",
            "uid": "0b8a",
            "resourceVersion": "4711",
            "labels": {"app.kubernetes.io/managed-by": "kubecast", "kubecast.dev/stream": "s0001"},
            "annotations": {
                "kubecast.dev/config-hash": "1f2e3d4c5b6a7980",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                f"{GROUP}/kopf-managed": "yes",
                f"{GROUP}/last-handled-configuration": "{}",
            },
            "ownerReferences": [{"kind": "ReplicaSet", "name": "s0001-worker-7d9c", "uid": "1"}],
            "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"nodeName": "kwok-0", "containers": [{"name": "worker", "ports": []}]},
        "status": {"phase": "Running", "podIP": "10.244.0.7"},
    }


def replica_set() -> dict[str, Any]:
    body = pod()
    body["kind"] = "ReplicaSet"
    body["apiVersion"] = "apps/v1"
    body["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "s0001-worker"}]
    return body


def bare() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}


@pytest.mark.parametrize("raw", [pod(), replica_set(), bare()], ids=["pod", "rs", "bare"])
def test_essence_is_kopfs_own(raw: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    lean = diffbase.LeanDiffBaseStorage(prefix=GROUP).build(body=kopf.Body(raw))
    stock = kopf.AnnotationsDiffBaseStorage(prefix=GROUP).build(body=kopf.Body(raw))
    assert lean == stock
    assert "status" not in lean and "managedFields" not in lean.get("metadata", {})
    assert raw == before, "building the essence changed the body"
    # A copy: changing the essence does not change the body (nor the reverse).
    lean.setdefault("spec", {})["nodeName"] = "elsewhere"
    assert raw == before


def test_extra_fields_left_to_kopf() -> None:
    raw = pod()
    fields = ["status.phase"]
    lean = diffbase.LeanDiffBaseStorage(prefix=GROUP).build(
        body=kopf.Body(raw), extra_fields=fields
    )
    stock = kopf.AnnotationsDiffBaseStorage(prefix=GROUP).build(
        body=kopf.Body(raw), extra_fields=fields
    )
    assert lean == stock and lean["status"] == {"phase": "Running"}


def test_operator_uses_it() -> None:
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    asyncio.run(handlers.configure(settings=settings, memo=memo))
    try:
        assert isinstance(settings.persistence.diffbase_storage, diffbase.LeanDiffBaseStorage)
    finally:
        memo.pool.shutdown()
        memo.status_pool.shutdown()
        logging.getLogger("kopf.objects").removeFilter(handlers._quiet_event_handlers)
