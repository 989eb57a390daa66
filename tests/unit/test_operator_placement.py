"""Where media pods run, and what the kubelet says about their restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecast_api import LiveStreamSpec, RecordingSpec, TranscodeProfileSpec
from kubecast_operator import children, streams
from kubecast_operator.settings import Settings

SAMPLES = Path(__file__).parents[2] / "samples"
KWOK = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def body(sample: str) -> dict[str, Any]:
    doc = yaml.safe_load((SAMPLES / sample).read_text())
    doc["metadata"].update(namespace="live", uid="uid-1", generation=1)
    return doc


def test_media_pods_get_the_operators_node_selector_and_tolerations() -> None:
    settings = Settings.from_env(
        {
            "KUBECAST_WORKER_NODE_SELECTOR": '{"type": "kwok"}',
            "KUBECAST_WORKER_TOLERATIONS": '[{"key": "kwok.x-k8s.io/node", '
            '"operator": "Exists", "effect": "NoSchedule"}]',
        }
    )
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    profile = TranscodeProfileSpec.model_validate(body("transcodeprofile-default.yaml")["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile))
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=settings)
    pod_spec = pod["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"type": "kwok"}
    assert pod_spec["tolerations"] == [KWOK]

    recording = body("recording.yaml")
    recorder = children.recorder_pod(
        recording, RecordingSpec.model_validate(recording["spec"]), source="http://x",
        settings=settings,
    )  # fmt: skip
    assert recorder["spec"]["nodeSelector"] == {"type": "kwok"}
    assert recorder["spec"]["tolerations"] == [KWOK]


def test_without_placement_settings_media_pods_go_anywhere() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    profile = TranscodeProfileSpec.model_validate(body("transcodeprofile-default.yaml")["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile))
    pod_spec = children.worker_deployment(stream, spec, rendered=rendered, settings=Settings())[
        "spec"
    ]["template"]["spec"]
    assert "nodeSelector" not in pod_spec and "tolerations" not in pod_spec


@pytest.mark.parametrize(
    ("value", "message"),
    [("{not json", "is not JSON"), ('["a"]', "must be a JSON dict")],
)
def test_a_wrong_placement_setting_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"KUBECAST_WORKER_NODE_SELECTOR {message}"):
        Settings.from_env({"KUBECAST_WORKER_NODE_SELECTOR": value})


def test_restarts_and_the_last_exit_come_from_the_kubelets_pod_status() -> None:
    pod = {
        "metadata": {"name": "w"},
        "status": {
            "containerStatuses": [
                {
                    "name": "worker",
                    "restartCount": 2,
                    "lastState": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "finishedAt": "2026-12-01T10:00:00Z",
                        }
                    },
                }
            ]
        },
    }
    assert streams.worker_restarts([pod]) == {
        "workerRestarts": 2,
        "lastWorkerExit": "exit code 137 (Error) at 2026-12-01T10:00:00Z",
    }
    # A pod on its way out no longer counts; no pod at all says nothing.
    gone = {**pod, "metadata": {"name": "w", "deletionTimestamp": "2026-12-01T10:01:00Z"}}
    assert streams.worker_restarts([gone]) == {"workerRestarts": 0}
    assert streams.worker_restarts([]) == {}


def test_an_api_error_is_told_in_the_api_servers_own_words() -> None:
    from kubernetes.client.rest import ApiException

    from kubecast_operator import kube

    error = ApiException(status=500, reason="Internal Server Error")
    error.body = (
        '{"kind":"Status","message":"Internal error occurred: failed to allocate a serviceIP:'
        ' range is full","code":500}'
    )
    assert kube.describe(error) == (
        "HTTP 500: Internal error occurred: failed to allocate a serviceIP: range is full"
    )
    assert kube.describe(ValueError("bad")) == "ValueError: bad"


def test_the_preview_page_gets_the_ingest_services_in_cluster_name() -> None:
    """Not the load balancer's address, which arrives later and would roll the worker."""

    from kubecast_worker import origin
    from kubecast_worker.status import Status

    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    profile = TranscodeProfileSpec.model_validate(body("transcodeprofile-default.yaml")["spec"])
    config = children.worker_config(stream, spec, profile)
    name = stream["metadata"]["name"]
    url = f"rtmp://{name}-ingest.live.svc.cluster.local:1935/{spec.ingest.push.app}"  # type: ignore[union-attr]
    assert config.ingest.service_url == url

    async def page() -> str:
        from aiohttp.test_utils import TestClient, TestServer

        app = origin.make_app(
            root=Path("/nonexistent"),
            status=Status(stream=name, mode="push", ingest_url="rtmp://0.0.0.0:1935/live"),
            ingest_url=config.ingest.service_url,
        )
        async with TestClient(TestServer(app)) as http:  # a real HTTP server on loopback
            response = await http.get("/player")
            return await response.text()

    assert f'data-ingest-url="{url}"' in asyncio.run(page())
