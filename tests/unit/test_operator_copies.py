"""The copies the operator keeps of its children hold what it reads, and no more.

At a thousand streams these copies (the watches' indexes, and each stream's
memory of its last applies) were most of the operator's memory; bench/operator.py
``--heap`` shows where it goes. What is tested here: a copy drops managedFields, a
Deployment's pod template and a ConfigMap's data, and keeps everything the status
and the apply decisions read, so a stream's passes behave as with whole objects.
"""

from __future__ import annotations

import copy
from typing import Any

from kubecast_operator import copies, streams
from tests.unit.test_operator_applies import Recorder, run_pass, sample, watched_after

MANAGED_FIELDS = [
    {
        "manager": "kubecast-operator",
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {}}}}},
    }
]


class StoringRecorder(Recorder):
    """Answers an apply as the API server does: with managedFields and a status."""

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        stored = super().apply(manifest)
        stored["metadata"]["managedFields"] = copy.deepcopy(MANAGED_FIELDS)
        if manifest["kind"] == "Deployment":
            stored["status"] = {"replicas": 1, "availableReplicas": 1}
        return stored


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "studio-worker",
            "uid": "u1",
            "resourceVersion": "7",
            "generation": 3,
            "labels": {"app.kubernetes.io/managed-by": "kubecast-operator"},
            "ownerReferences": [{"kind": "LiveStream", "name": "studio"}],
            "managedFields": copy.deepcopy(MANAGED_FIELDS),
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"kubecast.dev/stream": "studio"}},
            "template": {
                "metadata": {"annotations": {"kubecast.dev/config-hash": "abc"}},
                "spec": {"containers": [{"name": "worker", "image": "w", "env": []}]},
            },
        },
        "status": {"availableReplicas": 1},
    }


def test_a_deployment_copy_keeps_the_config_hash_and_status_and_drops_the_rest() -> None:
    whole = deployment()
    kept = copies.slim(whole)
    assert kept["metadata"] == {k: v for k, v in whole["metadata"].items() if k != "managedFields"}
    assert kept["spec"] == {
        "replicas": 1,
        "selector": whole["spec"]["selector"],
        "template": {"metadata": {"annotations": {"kubecast.dev/config-hash": "abc"}}},
    }
    assert kept["status"] == {"availableReplicas": 1}
    assert "managedFields" in whole["metadata"]  # the original is left as it was


def test_a_pod_copy_keeps_its_node_ports_and_status() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "managedFields": MANAGED_FIELDS},
        "spec": {
            "nodeName": "n1",
            "volumes": [{"name": "config"}],
            "containers": [{"name": "worker", "ports": [{"containerPort": 9090}], "env": []}],
        },
        "status": {"podIP": "10.244.0.5", "phase": "Running"},
    }
    assert copies.slim(pod) == {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "worker", "ports": [{"containerPort": 9090}]}],
        },
        "status": {"podIP": "10.244.0.5", "phase": "Running"},
    }


def test_a_service_copy_keeps_its_spec_and_a_config_map_copy_loses_its_data() -> None:
    service = {
        "kind": "Service",
        "metadata": {"name": "s", "managedFields": MANAGED_FIELDS},
        "spec": {"type": "NodePort", "ports": [{"port": 1935, "nodePort": 31935}]},
    }
    assert copies.slim(service) == {**service, "metadata": {"name": "s"}}
    config_map = {"kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}, "data": {"x": "y"}}
    assert copies.slim(config_map) == {"kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}}


def test_a_stream_remembers_slim_copies_of_what_it_applied_and_still_decides_alike() -> None:
    kube, applied, stream = StoringRecorder(), streams.Applied(), sample("livestream-push.yaml")
    calls, seen = run_pass(kube, stream, watched_after(kube, applied), applied)
    assert len(calls) == 5, calls  # the Secret, and 4 applies
    for key, kept in applied.objects.items():
        assert "managedFields" not in kept["metadata"], key
    assert "data" not in applied.objects["ConfigMap/studio-worker-config"]
    assert "spec" not in applied.objects["Deployment/studio-worker"]["spec"]["template"]
    # What the status reads is there: the Deployment's status, the Services' ports.
    assert seen.deployment is not None and seen.deployment["status"]["availableReplicas"] == 1
    assert seen.ingest_service is not None and seen.ingest_service["spec"]["ports"]

    # An idle pass with the watches caught up: nothing is applied again.
    assert run_pass(kube, stream, watched_after(kube, applied), applied)[0] == []
