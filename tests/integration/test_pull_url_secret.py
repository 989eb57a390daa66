"""A pull URL with credentials, from a Secret: the real API server and the operator.

The URL reaches the worker pod only as a mounted Secret; the ConfigMap, the Deployment,
the LiveStream and its status never hold it. No worker runs here (kwok pods), see
test_operator.py; the worker side is tests/e2e/test_worker_credentials.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from . import operator_harness as harness
from .conftest import SAMPLES_DIR, ControlPlane

pytestmark = pytest.mark.integration

PASSWORD = "lobbyPa55-3e7d10"
TOKEN = "lobby-tok-91aa2c"


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kubecast_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Process]:
    proc, _ = harness.operator(control_plane.env, tmp_path_factory.mktemp("operator"))
    yield proc
    proc.stop()


def test_a_pull_url_from_a_secret_is_mounted_and_never_copied(
    control_plane: ControlPlane, operator: harness.Process, namespace: str
) -> None:
    stream = yaml.safe_load((SAMPLES_DIR / "livestream-pull.yaml").read_text())
    del stream["spec"]["ingest"]["pull"]["url"]
    stream["spec"]["ingest"]["pull"]["urlSecretRef"] = {"name": "lobby-camera-url"}
    url = f"rtsp://viewer:{PASSWORD}@camera.example:554/stream1?token={TOKEN}"
    docs = [
        yaml.safe_load((SAMPLES_DIR / "transcodeprofile-default.yaml").read_text()),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lobby-camera-url"},
            "stringData": {"url": url},
        },
        stream,
    ]
    control_plane.kubectl(
        "-n", namespace, "apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs)
    )

    deployment = harness.eventually(
        "the worker Deployment",
        lambda: harness.get_json(
            control_plane.kubectl, "-n", namespace, "deployment", "lobby-camera-worker"
        ),
        timeout=60,
        logs=operator.output,
    )
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "pull-url")
    assert volume["secret"]["secretName"] == "lobby-camera-url"
    assert volume["secret"]["items"] == [{"key": "url", "path": "url"}]
    config = harness.get_json(
        control_plane.kubectl, "-n", namespace, "configmap", "lobby-camera-worker-config"
    )
    assert config is not None
    worker = yaml.safe_load(config["data"]["worker.yaml"])
    assert worker["ingest"]["pull"] == {"urlFile": "/etc/kubecast/pull-url/url", "loop": False}

    live = harness.eventually(
        "a status",
        lambda: (
            (s := harness.get_json(control_plane.kubectl, "-n", namespace, "ls", "lobby-camera"))
            and s.get("status")
            and s
        ),
        timeout=60,
        logs=operator.output,
    )
    everything = (
        json.dumps([deployment, config, live])
        + control_plane.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    )
    assert PASSWORD not in everything and TOKEN not in everything
    assert PASSWORD not in operator.output() and TOKEN not in operator.output()

    explained = control_plane.kubectl("explain", "livestream.spec.ingest.pull.urlSecretRef").stdout
    assert "Secret holding the source URL" in explained
