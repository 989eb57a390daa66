"""The admin port's guards against a real kube-apiserver: NetworkPolicies and stop tokens.

The operator runs as a real process with the per-stream NetworkPolicies on
(what ``networkPolicy.enabled`` sets in the chart) and a signing key file.
These tests check the objects the API server stores; whether a CNI enforces
them is a real-node question (no pod runs here: the media pods go to kwok).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import operator_harness as harness
from .conftest import ControlPlane
from .test_operator import apply, get, sample, wait

pytestmark = pytest.mark.integration

OPERATOR_NAMESPACE = "kubecast-system"
OPERATOR_LABELS = {"app.kubernetes.io/name": "kubecast", "app.kubernetes.io/component": "operator"}
KEY = b"integration-signing-key-0123456789abcdef"


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kubecast_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Process]:
    workdir = tmp_path_factory.mktemp("operator-admin")
    key_file = workdir / "signing-key"
    key_file.write_bytes(KEY + b"\n")  # as a mounted Secret: a trailing newline is common
    proc, _ = harness.operator(
        control_plane.env,
        workdir,
        KUBECAST_NETWORK_POLICIES="true",
        KUBECAST_OPERATOR_NAMESPACE=OPERATOR_NAMESPACE,
        KUBECAST_OPERATOR_POD_LABELS=json.dumps(OPERATOR_LABELS),
        KUBECAST_SIGNING_KEY_FILE=str(key_file),
    )
    yield proc
    proc.stop()


def from_operator_only() -> list[dict[str, Any]]:
    return [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}
            },
            "podSelector": {"matchLabels": OPERATOR_LABELS},
        }
    ]


def test_a_stream_gets_a_policy_with_the_admin_port_for_the_operator_only(
    control_plane: ControlPlane, operator: harness.Process, namespace: str
) -> None:
    op = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml", playbackService={"type": "NodePort"}),
    )
    policy = wait(
        "the stream's NetworkPolicy",
        lambda: get(control_plane, namespace, "networkpolicy", "studio-worker"),
        op,
    )
    stream = get(control_plane, namespace, "livestream", "studio")
    assert stream is not None
    (owner,) = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("LiveStream", stream["metadata"]["uid"])
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    open_rule, admin_rule = spec["ingress"]
    assert "from" not in open_rule
    assert {(p["port"], p["protocol"]) for p in open_rule["ports"]} == {
        (1935, "TCP"),
        (8080, "TCP"),
    }
    assert admin_rule == {
        "from": from_operator_only(),
        "ports": [{"port": 9090, "protocol": "TCP"}],
    }

    # The policy selects the worker's pods, and names the ports they listen on.
    deployment = wait(
        "the worker Deployment",
        lambda: get(control_plane, namespace, "deployment", "studio-worker"),
        op,
    )
    template = deployment["spec"]["template"]
    assert spec["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"rtmp": 1935, "http": 8080, "admin": 9090}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"

    # What a NodePort hands to the world: playback only, never the admin port.
    playback = get(control_plane, namespace, "service", "studio-playback")
    assert playback is not None and playback["spec"]["type"] == "NodePort"
    assert [(p["port"], p["targetPort"]) for p in playback["spec"]["ports"]] == [(8080, "http")]

    control_plane.kubectl(
        "-n", namespace, "delete", "livestream", "studio", "--wait=true", timeout=60
    )
    wait(
        "the NetworkPolicy to be garbage-collected with its stream",
        lambda: get(control_plane, namespace, "networkpolicy", "studio-worker") is None,
        op,
    )


def test_a_recording_gets_its_stop_token_secret_and_a_policy(
    control_plane: ControlPlane, operator: harness.Process, namespace: str
) -> None:
    op = operator
    apply(
        control_plane,
        namespace,
        sample("transcodeprofile-default.yaml"),
        sample("livestream-push.yaml"),
        sample("recording.yaml"),
    )
    pod = wait(
        "the recorder pod",
        lambda: get(control_plane, namespace, "pod", "studio-show-recorder"),
        op,
    )
    recording = get(control_plane, namespace, "recording", "studio-show")
    assert recording is not None
    uid = recording["metadata"]["uid"]

    # Read with the tests' admin rights: the operator itself may create Secrets, not read them.
    secret = get(control_plane, namespace, "secret", "studio-show-stop-token")
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("Recording", uid)
    token = base64.b64decode(secret["data"]["token"]).decode()
    message = f"{namespace}/studio-show/{uid}".encode()
    assert token == hmac.new(KEY, message, hashlib.sha256).hexdigest()

    (container,) = pod["spec"]["containers"]
    args = container["args"]
    token_file = Path(args[args.index("--stop-token-file") + 1])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "stop-token")
    assert str(token_file.parent) == mount["mountPath"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "stop-token")
    assert volume["secret"]["secretName"] == "studio-show-stop-token"
    assert container["ports"] == [{"name": "admin", "containerPort": 9090, "protocol": "TCP"}]

    policy = wait(
        "the recorder's NetworkPolicy",
        lambda: get(control_plane, namespace, "networkpolicy", "studio-show-recorder"),
        op,
    )
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == [
        {"from": from_operator_only(), "ports": [{"port": 9090, "protocol": "TCP"}]}
    ]

    # Deleting the Recording: the finalizer tries /stop (no recorder answers on
    # kwok), then lets go, and the token and the policy go with it.
    control_plane.kubectl(
        "-n", namespace, "delete", "recording", "studio-show", "--wait=true", timeout=90
    )
    for kind, name in (
        ("secret", "studio-show-stop-token"),
        ("networkpolicy", "studio-show-recorder"),
    ):
        wait(
            f"{kind} {name} to be garbage-collected",
            lambda kind=kind, name=name: get(control_plane, namespace, kind, name) is None,
            op,
        )
