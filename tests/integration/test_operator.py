"""The operator against a real kube-apiserver: children, status, rollouts, deletion.

The operator runs as a real process (``kubecast-operator``) with the admin
kubeconfig. No worker runs in these tests (kwok only pretends pods run), so a
stream settles in Pending with the reason that its worker does not answer; the
end-to-end tests in tests/e2e run workers for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from . import operator_harness as harness
from .conftest import SAMPLES_DIR, ControlPlane

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kubecast_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[harness.Process, int]]:
    workdir = tmp_path_factory.mktemp("operator")
    proc, metrics_port = harness.operator(control_plane.env, workdir)
    yield proc, metrics_port
    proc.stop()


def sample(name: str, **spec_changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SAMPLES_DIR / name).read_text())
    doc["spec"].update(spec_changes)
    return doc


def apply(cp: ControlPlane, namespace: str, *docs: dict[str, Any]) -> None:
    cp.kubectl(
        "-n", namespace, "apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs)
    )


def get(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    return harness.get_json(cp.kubectl, "-n", namespace, kind, name)


def wait(what: str, predicate: Any, op: harness.Process, timeout: float = 60) -> Any:
    return harness.eventually(what, predicate, timeout=timeout, logs=op.output)


def status_of(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return (get(cp, namespace, kind, name) or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_stream_gets_owned_children_and_a_status(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, metrics_port = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml"),
    )
    stream = wait(
        "the LiveStream", lambda: get(control_plane, namespace, "livestream", "studio"), op
    )
    uid = stream["metadata"]["uid"]
    children = {
        "deployment": "studio-worker",
        "configmap": "studio-worker-config",
        "secret": "studio-stream-key",
        "service/studio-ingest": None,
        "service/studio-playback": None,
    }
    for kind, name in children.items():
        args = (kind, name) if name else (kind,)
        child = wait(
            f"{kind} {name or ''}",
            lambda args=args: harness.get_json(control_plane.kubectl, "-n", namespace, *args),
            op,
        )
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LiveStream", "studio", uid)
        assert owner["controller"] is True

    key = json.loads(
        control_plane.kubectl(
            "-n", namespace, "get", "secret", "studio-stream-key", "-o", "json"
        ).stdout
    )["data"]["streamKey"]
    assert len(key) >= 43  # base64 of >= 32 random bytes, URL-safe

    config = harness.get_json(
        control_plane.kubectl, "-n", namespace, "configmap", "studio-worker-config"
    )
    assert config is not None
    worker_yaml = yaml.safe_load(config["data"]["worker.yaml"])
    assert [r["name"] for r in worker_yaml["profile"]["renditions"]] == [
        "1080p",
        "720p",
        "480p",
        "360p",
    ]

    deployment = harness.get_json(
        control_plane.kubectl, "-n", namespace, "deployment", "studio-worker"
    )
    assert deployment is not None
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["securityContext"]["runAsNonRoot"] is True

    status = wait(
        "status with URLs and phase",
        lambda: (
            (s := status_of(control_plane, namespace, "livestream", "studio")).get("ingestUrl")
            and s.get("phase") == "Pending"
            and s
        ),
        op,
    )
    assert status["ingestUrl"].startswith("rtmp://127.0.0.1:") and status["ingestUrl"].endswith(
        "/live"
    )
    assert status["playbackUrl"].endswith("/master.m3u8")
    assert status["streamKeySecret"] == "studio-stream-key"
    assert status["observedGeneration"] == stream["metadata"]["generation"]
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] in ("WorkerUnreachable", "WorkerStarting")
    # The key never appears in status, and kubectl shows the columns.
    assert key not in json.dumps(status)
    table = control_plane.kubectl("-n", namespace, "get", "livestreams").stdout
    assert "Pending" in table and "default" in table

    profile_status = wait(
        "profile usedBy",
        lambda: (
            (s := status_of(control_plane, namespace, "transcodeprofile", "default")).get("usedBy")
            == 1
            and s
        ),
        op,
    )
    assert condition(profile_status, "Valid")["status"] == "True"

    metrics = harness.scrape(control_plane.env, metrics_port)
    assert 'kubecast_operator_reconciles_total{resource="LiveStream",result="ok"}' in metrics
    assert "kubecast_operator_reconcile_duration_seconds_bucket" in metrics
    assert 'kubecast_operator_streams{phase="Pending"}' in metrics

    # Operator never writes a spec: nothing but the user's fields in managedFields for spec.
    managers = {
        m["manager"]
        for m in stream["metadata"].get("managedFields", [])
        if m.get("subresource") != "status"
    }
    assert "kubecast-operator" not in managers


def test_profile_change_rolls_the_worker(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, _ = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-pull.yaml"),
    )

    def template_hash() -> str | None:
        dep = harness.get_json(
            control_plane.kubectl, "-n", namespace, "deployment", "lobby-camera-worker"
        )
        if not dep:
            return None
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["kubecast.dev/config-hash"])

    before = wait("the worker Deployment", template_hash, op)
    apply(control_plane, namespace, sample("transcodeprofile-default.yaml", segmentSeconds=6))
    after = wait(
        "a new config hash", lambda: (h := template_hash()) != before and h, op, timeout=30
    )
    assert after != before
    config = harness.get_json(
        control_plane.kubectl, "-n", namespace, "configmap", "lobby-camera-worker-config"
    )
    assert config is not None
    assert yaml.safe_load(config["data"]["worker.yaml"])["profile"]["segmentSeconds"] == 6
    # The Deployment controller starts a new ReplicaSet for the new template.
    wait(
        "a second ReplicaSet",
        lambda: (
            len(
                json.loads(
                    control_plane.kubectl(
                        "-n",
                        namespace,
                        "get",
                        "replicasets",
                        "-l",
                        "kubecast.dev/stream=lobby-camera",
                        "-o",
                        "json",
                    ).stdout
                )["items"]
            )
            >= 2
        ),
        op,
        timeout=30,
    )

    # Status follows the rollout from what the pods carry: Progressing ends with
    # the serving pod on the new config (kwok runs it; no worker answers there).
    def rolled_out() -> dict[str, Any] | None:
        found = condition(status_of(control_plane, namespace, "livestream", "lobby-camera"),
                          "Progressing")  # fmt: skip
        return found if found.get("status") == "False" and after[:12] in found["message"] else None

    done = wait("Progressing to end on the new config", rolled_out, op, timeout=60)
    assert done["reason"] == "RolledOut", done


def test_missing_profile_is_reported_then_converges(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, _ = operator
    apply(control_plane, namespace, sample("livestream-push.yaml", profileRef={"name": "hd"}))
    status = wait(
        "Error with ProfileNotFound",
        lambda: (
            (s := status_of(control_plane, namespace, "livestream", "studio")).get("phase")
            == "Error"
            and s
        ),
        op,
    )
    ready = condition(status, "Ready")
    assert ready["reason"] == "ProfileNotFound"
    assert f"TranscodeProfile 'hd' not found in namespace '{namespace}'" in ready["message"]
    assert get(control_plane, namespace, "deployment", "studio-worker") is None
    events = control_plane.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=studio",
        "-o",
        "json",
    ).stdout
    assert '"reason": "Error"' in events

    hd = sample("transcodeprofile-default.yaml")
    hd["metadata"]["name"] = "hd"
    apply(control_plane, namespace, hd)
    wait(
        "the worker Deployment after the fix",
        lambda: get(control_plane, namespace, "deployment", "studio-worker"),
        op,
        timeout=30,
    )
    status = wait(
        "no longer Error",
        lambda: (
            (s := status_of(control_plane, namespace, "livestream", "studio")).get("phase")
            == "Pending"
            and s
        ),
        op,
    )
    assert condition(status, "Ready")["reason"] != "ProfileNotFound"


def test_missing_key_secret_is_reported(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    """The operator never reads the Secret; the worker pod's failed mount says it is missing.

    NB: the kubelet is the one that finds the Secret missing, and no kubelet runs
    the media pods of these tests (they go to kwok nodes, which report every pod
    as running). So the test plays the kubelet, through the API a kubelet uses:
    the worker pod asks for more CPU than any node has, stays Pending, and the
    test posts the FailedMount Event the kubelet posts, in the kubelet's words
    (kubelet/volume/secret: "MountVolume.SetUp failed for volume ..."). Then,
    after the Secret is created, it reports the container running through the
    pod's status subresource, as the kubelet does once its retried mount works.
    """
    cp, (op, _) = control_plane, operator
    stream = sample("livestream-push.yaml")
    stream["spec"]["ingest"]["push"]["streamKeySecretRef"] = {"name": "studio-key"}
    stream["spec"]["resources"] = {"requests": {"cpu": "1000"}}
    apply(cp, namespace, sample("transcodeprofile-default.yaml"), stream)
    # The worker is created at once: nothing is checked before the kubelet mounts.
    pod = wait(
        "the worker pod",
        lambda: (
            items := json.loads(
                cp.kubectl("-n", namespace, "get", "pods", "-l", "kubecast.dev/stream=studio",
                           "-o", "json").stdout
            )["items"]
        ) and items[0],
        op,
    )  # fmt: skip
    meta = pod["metadata"]
    kubelet_event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.failedmount"},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": meta["name"],
                           "uid": meta["uid"], "apiVersion": "v1"},
        "reason": "FailedMount",
        "message": 'MountVolume.SetUp failed for volume "stream-key" : '
                   'secret "studio-key" not found',
        "type": "Warning",
        "source": {"component": "kubelet", "host": "kubecast-node"},
        "firstTimestamp": "2026-12-02T02:00:00Z",
        "lastTimestamp": "2026-12-02T02:00:00Z",
        "count": 1,
    }  # fmt: skip
    cp.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(kubelet_event))
    status = wait(
        "StreamKeySecretNotFound",
        lambda: (s := status_of(cp, namespace, "livestream", "studio")).get("phase") == "Error"
        and s,
        op,
    )  # fmt: skip
    assert condition(status, "Ready")["reason"] == "StreamKeySecretNotFound"
    assert status["message"] == (
        f"Secret 'studio-key' not found in namespace '{namespace}'; create it or fix"
        " spec.ingest.push.streamKeySecretRef"
    )

    cp.kubectl("-n", namespace, "create", "secret", "generic", "studio-key",
               "--from-literal=streamKey=my-own-key")  # fmt: skip
    running = {"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "worker", "image": "kubecast/worker:test", "imageID": "", "ready": False,
            "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2026-12-02T02:01:00Z"}},
        }],
    }}  # fmt: skip
    cp.kubectl("-n", namespace, "patch", "pod", meta["name"], "--subresource=status",
               "--type=merge", "-p", json.dumps(running))  # fmt: skip
    status = wait(
        "no longer Error once the worker runs",
        lambda: (s := status_of(cp, namespace, "livestream", "studio")).get("phase") != "Error"
        and s,
        op,
    )  # fmt: skip
    assert condition(status, "Ready")["reason"] != "StreamKeySecretNotFound"
    assert get(cp, namespace, "secret", "studio-stream-key") is None


def test_deleting_a_stream_removes_its_children(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, _ = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml"),
    )
    wait(
        "the worker Deployment",
        lambda: get(control_plane, namespace, "deployment", "studio-worker"),
        op,
    )
    control_plane.kubectl(
        "-n", namespace, "delete", "livestream", "studio", "--wait=true", timeout=60
    )
    for kind, name in [
        ("deployment", "studio-worker"),
        ("configmap", "studio-worker-config"),
        ("secret", "studio-stream-key"),
        ("service", "studio-ingest"),
        ("service", "studio-playback"),
    ]:
        wait(
            f"{kind} {name} to be garbage-collected",
            lambda kind=kind, name=name: get(control_plane, namespace, kind, name) is None,
            op,
        )


def test_profile_in_use_waits_for_its_streams_before_going(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, _ = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml"),
    )
    wait(
        "in-use protection",
        lambda: (
            "kubecast.dev/in-use-protection"
            in (
                (get(control_plane, namespace, "transcodeprofile", "default") or {})
                .get("metadata", {})
                .get("finalizers")
                or []
            )
        ),
        op,
    )
    control_plane.kubectl("-n", namespace, "delete", "transcodeprofile", "default", "--wait=false")
    status = wait(
        "Deleting condition naming the user",
        lambda: condition(
            status_of(control_plane, namespace, "transcodeprofile", "default"), "Deleting"
        ),
        op,
    )
    assert "studio" in status["message"]
    assert get(control_plane, namespace, "transcodeprofile", "default") is not None
    control_plane.kubectl("-n", namespace, "delete", "livestream", "studio", "--wait=false")
    wait(
        "the profile to go once unused",
        lambda: get(control_plane, namespace, "transcodeprofile", "default") is None,
        op,
    )


def test_operator_recovers_when_the_api_server_restarts(
    control_plane: ControlPlane, operator: tuple[harness.Process, int], namespace: str
) -> None:
    op, _ = operator
    control_plane.restart_apiserver()
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml"),
    )
    wait(
        "children after the API server came back",
        lambda: get(control_plane, namespace, "deployment", "studio-worker"),
        op,
        timeout=90,
    )
