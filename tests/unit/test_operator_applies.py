"""A stream's pass applies a child only when something changed.

At a thousand idle streams, re-applying every child on every resync was most of
the operator's writes (bench/operator.py). The pass now remembers what it applied
(``streams.Applied``) and reads the children from the watches (``streams.Watched``);
these tests hold the decisions: what is applied on a first pass, on an idle pass,
after a spec change, after a child was deleted or edited by someone else, and at
the resync. The API server is a recorder here: what is tested is which calls are
made, and the real API server's side is bench/operator.py's (steady state: no write).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes.client.rest import ApiException

from kubecast_operator import streams
from kubecast_operator.kube import Kube
from kubecast_operator.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SETTINGS = Settings(worker_image="kubecast/worker:test", public_host="203.0.113.7")


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    doc["metadata"].update(namespace="live", uid="uid-1", generation=1)
    return doc


class Recorder:
    """Records the writes; answers an apply with the object as a server would store it."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[str] = []
        self.version = 100
        self.refuse = refuse

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        self.calls.append(f"apply {manifest['kind']}/{name}")
        if name == self.refuse:
            raise ApiException(
                status=500,
                reason="Internal Server Error",
                body=b'{"message": "Internal error occurred: failed to allocate a serviceIP:'
                b' range is full"}',
            )
        self.version += 1
        stored = copy.deepcopy(manifest)
        stored["metadata"].update(
            uid=f"uid-{name}", generation=1, resourceVersion=str(self.version)
        )
        return stored

    def create(self, manifest: dict[str, Any]) -> None:
        self.calls.append(f"create {manifest['kind']}/{manifest['metadata']['name']}")

    def get(self, kind: str, namespace: str, name: str) -> None:
        raise AssertionError(f"GET {kind}/{name}: the pass must read the watches")

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError(f"LIST {kind}: the pass must read the watches")


def watched_after(kube: Recorder, applied: streams.Applied) -> streams.Watched:
    """What the watches hold once they caught up with the applies."""
    objects = applied.objects
    return streams.Watched(
        profile=sample("transcodeprofile-default.yaml"),
        deployment=objects.get("Deployment/studio-worker"),
        ingest_service=objects.get("Service/studio-ingest"),
        playback_service=objects.get("Service/studio-playback"),
    )


def run_pass(
    kube: Recorder,
    stream: dict[str, Any],
    watched: streams.Watched,
    applied: streams.Applied,
    *,
    resync: bool = False,
) -> tuple[list[str], streams.Observation]:
    kube.calls.clear()
    seen = streams.reconcile(cast(Kube, kube), stream, SETTINGS, watched, applied, resync=resync)
    return list(kube.calls), seen


def test_an_idle_pass_makes_no_call_and_a_first_one_applies_everything() -> None:
    kube, applied, stream = Recorder(), streams.Applied(), sample("livestream-push.yaml")
    first, seen = run_pass(kube, stream, streams.Watched(profile=sample(
        "transcodeprofile-default.yaml")), applied)  # fmt: skip
    assert first == [
        "create Secret/studio-stream-key",
        "apply Service/studio-ingest",
        "apply Service/studio-playback",
        "apply ConfigMap/studio-worker-config",
        "apply Deployment/studio-worker",
    ]
    # Before the watch shows them, the status is computed from what the applies returned.
    assert seen.deployment and seen.ingest_service and seen.playback_service
    # A pass before the watch caught up does not apply again.
    assert run_pass(kube, stream, streams.Watched(profile=sample(
        "transcodeprofile-default.yaml")), applied)[0] == []  # fmt: skip
    # The watch has caught up, nothing changed: no call at all, reads included.
    assert run_pass(kube, stream, watched_after(kube, applied), applied)[0] == []


def test_a_spec_change_applies_only_what_it_changes() -> None:
    kube, applied, stream = Recorder(), streams.Applied(), sample("livestream-push.yaml")
    run_pass(kube, stream, watched_after(kube, applied), applied)
    stream["spec"]["reconnectWindowSeconds"] = 45
    stream["metadata"]["generation"] = 2
    calls, _ = run_pass(kube, stream, watched_after(kube, applied), applied)
    assert calls == ["apply ConfigMap/studio-worker-config", "apply Deployment/studio-worker"]


def test_a_child_deleted_or_edited_by_someone_else_is_applied_again() -> None:
    kube, applied, stream = Recorder(), streams.Applied(), sample("livestream-push.yaml")
    run_pass(kube, stream, streams.Watched(profile=sample("transcodeprofile-default.yaml")),
             applied)  # fmt: skip
    watched = watched_after(kube, applied)
    assert run_pass(kube, stream, watched, applied)[0] == []  # the watch has shown them
    watched.playback_service = None  # its DELETED event
    assert run_pass(kube, stream, watched, applied)[0] == ["apply Service/studio-playback"]
    watched = watched_after(kube, applied)
    edited = copy.deepcopy(watched.deployment)
    assert edited is not None
    edited["metadata"]["generation"] = 2  # `kubectl edit` of its spec
    watched.deployment = edited
    assert run_pass(kube, stream, watched, applied)[0] == ["apply Deployment/studio-worker"]


def test_the_resync_applies_everything_again() -> None:
    kube, applied, stream = Recorder(), streams.Applied(), sample("livestream-push.yaml")
    run_pass(kube, stream, watched_after(kube, applied), applied)
    calls, _ = run_pass(kube, stream, watched_after(kube, applied), applied, resync=True)
    assert len(calls) == 5 and calls[0] == "create Secret/studio-stream-key"


def test_a_service_the_api_server_refuses_is_named_with_its_reason_in_status() -> None:
    kube = Recorder(refuse="studio-playback")
    applied, stream = streams.Applied(), sample("livestream-push.yaml")
    calls, seen = run_pass(kube, stream, watched_after(kube, applied), applied)
    assert "apply Deployment/studio-worker" not in calls  # no worker without its Services
    assert applied.retry_at is not None  # tried again soon, not on every poll
    status = streams.compute_status(stream, seen)
    assert status["phase"] == "Error"
    assert status["message"] == (
        "Service 'studio-playback' could not be created or updated: HTTP 500: Internal error"
        " occurred: failed to allocate a serviceIP: range is full"
    )
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "ServiceNotCreated"
