"""A worker pod that cannot start, as the kubelet reports it, becomes a status a user can act on.

The Event messages are the kubelet's own (its secret volume plugin and the
operation executor: "MountVolume.SetUp failed for volume ..."); the operator
reads them instead of the Secret, which it may not get.
"""

from __future__ import annotations

from typing import Any, cast

import yaml
from test_operator_children import SAMPLES, body

from kubecast_api import LiveStreamSpec
from kubecast_operator import pod_problems, streams
from kubecast_operator.kube import Kube

NOT_FOUND = 'MountVolume.SetUp failed for volume "stream-key" : secret "studio-key" not found'
NO_KEY = (
    'MountVolume.SetUp failed for volume "stream-key" : '
    "references non-existent secret key: streamKey"
)


def event(message: str, at: str = "2026-12-02T02:00:00Z", reason: str = "FailedMount") -> dict:
    return {"reason": reason, "message": message, "lastTimestamp": at, "type": "Warning"}


def pod(phase: str = "Pending", waiting: dict[str, Any] | None = None, **meta: Any) -> dict:
    state = {"waiting": waiting or {"reason": "ContainerCreating"}}
    return {
        "metadata": {"name": "studio-worker-abc", "uid": "u-1", **meta},
        "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state}]},
    }


def test_a_missing_secret_is_named_as_the_kubelet_found_it() -> None:
    what = pod_problems.secret_mount_problem(
        [event(NOT_FOUND)], volume="stream-key", secret="studio-key", namespace="live"
    )
    assert what == "Secret 'studio-key' not found in namespace 'live'"


def test_a_secret_without_the_key_is_named_with_the_key() -> None:
    what = pod_problems.secret_mount_problem(
        [event(NOT_FOUND, "2026-12-02T02:00:00Z"), event(NO_KEY, "2026-12-02T02:01:00Z")],
        volume="stream-key", secret="studio-key", namespace="live",
    )  # fmt: skip
    assert what == "Secret 'studio-key' has no key 'streamKey' in namespace 'live'"


def test_other_volumes_and_other_reasons_are_not_the_key_secret() -> None:
    other = 'MountVolume.SetUp failed for volume "config" : configmap "studio-config" not found'
    what = pod_problems.secret_mount_problem(
        [event(other), event(NOT_FOUND, reason="Scheduled")],
        volume="stream-key", secret="studio-key", namespace="live",
    )  # fmt: skip
    assert what is None


def test_only_a_pod_that_has_not_started_is_looked_at() -> None:
    assert pod_problems.waiting(pod())
    running = pod("Running", waiting={})
    running["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": "x"}}
    assert not pod_problems.waiting(running)
    assert not pod_problems.waiting(pod(deletionTimestamp="2026-12-02T02:00:00Z"))
    selector = pod_problems.failed_mount_selector(pod())
    assert selector == (
        "involvedObject.kind=Pod,involvedObject.name=studio-worker-abc,"
        "involvedObject.uid=u-1,reason=FailedMount"
    )


def test_a_missing_env_secret_is_reported_in_the_kubelet_words() -> None:
    stuck = pod(waiting={"reason": "CreateContainerConfigError",
                         "message": 'secret "studio-key" not found'})  # fmt: skip
    assert pod_problems.container_config_problem(stuck) == 'secret "studio-key" not found'
    assert pod_problems.container_config_problem(pod()) is None


class _Events:
    """The reads of one reconcile pass: the worker's pod and the kubelet's Events on it."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events, self.selectors = events, []  # type: list[dict[str, Any]], list[str]

    def list(self, kind: str, namespace: str | None = None, **selectors: Any) -> list[dict]:
        assert kind == "Event"
        self.selectors.append(selectors["field_selector"])
        return self.events


def test_the_stream_status_says_which_secret_to_create() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["ingest"]["push"]["streamKeySecretRef"] = {"name": "studio-key"}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    kube = _Events([event(NOT_FOUND)])
    problem = streams._worker_pod_problem(cast(Kube, kube), stream, spec, [pod()])
    assert problem == (
        "StreamKeySecretNotFound",
        "Secret 'studio-key' not found in namespace 'live'; create it or fix"
        " spec.ingest.push.streamKeySecretRef",
    )
    status = streams.compute_status(stream, streams.Observation(spec=spec, problem=problem))
    assert status["phase"] == "Error"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "StreamKeySecretNotFound"
    assert status["message"] == problem[1]
    # Once the pod runs (the Secret was created), old Events no longer count.
    started = pod("Running")
    started["status"]["containerStatuses"][0]["state"] = {"running": {}}
    assert streams._worker_pod_problem(cast(Kube, kube), stream, spec, [started]) is None


def test_a_generated_key_is_not_looked_up() -> None:
    stream = yaml.safe_load((SAMPLES / "livestream-push.yaml").read_text())
    stream["metadata"].update(namespace="live", uid="u", generation=1)
    spec = LiveStreamSpec.model_validate(stream["spec"])
    kube = _Events([event(NOT_FOUND)])
    assert streams._worker_pod_problem(cast(Kube, kube), stream, spec, [pod()]) is None
    assert kube.selectors == []


def test_a_missing_pull_url_secret_is_named_too() -> None:
    stream = body("livestream-pull.yaml")
    stream["spec"]["ingest"]["pull"] = {"urlSecretRef": {"name": "camera-url", "key": "url"}}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    message = 'MountVolume.SetUp failed for volume "pull-url" : secret "camera-url" not found'
    problem = streams._worker_pod_problem(cast(Kube, _Events([event(message)])), stream, spec,
                                          [pod()])  # fmt: skip
    assert problem == (
        "PullUrlSecretNotFound",
        "Secret 'camera-url' not found in namespace 'live'; create it or fix"
        " spec.ingest.pull.urlSecretRef",
    )
