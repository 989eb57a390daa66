"""The operator's child manifests, built from specs without a cluster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from kubecast_api import LiveStreamSpec, RecordingSpec, TranscodeProfileSpec, WorkerConfig
from kubecast_operator import children, conditions, profiles, streams
from kubecast_operator.kube import Kube
from kubecast_operator.settings import Settings

SAMPLES = Path(__file__).parents[2] / "samples"
SETTINGS = Settings(worker_image="kubecast/worker:test")


def body(sample: str, uid: str = "uid-1") -> dict[str, Any]:
    doc = yaml.safe_load((SAMPLES / sample).read_text())
    doc["metadata"].update(namespace="live", uid=uid, generation=3)
    return doc


def profile() -> TranscodeProfileSpec:
    return TranscodeProfileSpec.model_validate(body("transcodeprofile-default.yaml")["spec"])


def test_every_child_is_owned_by_the_stream_so_deletion_cascades() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    built = [
        children.generated_key_secret(stream, key="k"),
        children.worker_config_map(stream, rendered),
        children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS),
        children.ingest_service(stream, spec),
        children.playback_service(stream, spec),
    ]
    for child in built:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "kubecast.dev/v1alpha1",
            "kind": "LiveStream",
            "name": "studio",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "live"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubecast-operator"


def test_worker_config_resolves_profile_and_never_holds_the_key() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    config = WorkerConfig.model_validate(yaml.safe_load(rendered))
    assert config.ingest.listen == "0.0.0.0:1935" and config.ingest.app == "live"
    assert config.ingest.stream_key_file == "/etc/kubecast/stream-key/streamKey"
    assert config.ingest.stream_key_secret == "studio-stream-key"  # the name, for the page
    assert [r.name for r in config.profile.renditions] == ["1080p", "720p", "480p", "360p"]
    secret = children.generated_key_secret(stream, key="s3cret-key-value")
    assert "s3cret-key-value" not in rendered
    assert secret["stringData"] == {"streamKey": "s3cret-key-value"}


def test_low_latency_reaches_the_worker_config() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["outputs"] = {"hls": {"segmentType": "fmp4", "lowLatency": True}}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    assert yaml.safe_load(rendered)["outputs"]["hls"]["lowLatency"] is True
    config = WorkerConfig.model_validate(yaml.safe_load(rendered))
    assert config.outputs.hls.low_latency


def test_a_profile_change_changes_the_pod_template_so_the_worker_rolls() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    before = children.render_config(children.worker_config(stream, spec, profile()))
    changed = profile().model_copy(update={"segment_seconds": 6})
    after = children.render_config(children.worker_config(stream, spec, changed))

    def template_hash(rendered: str) -> str:
        deployment = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
        return deployment["spec"]["template"]["metadata"]["annotations"][children.CONFIG_HASH]

    assert template_hash(before) != template_hash(after)
    assert template_hash(before) == template_hash(before)


def test_worker_pod_is_locked_down_and_probed() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    deployment = children.worker_deployment(stream, spec, rendered="x", settings=SETTINGS)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "kubecast/worker:test"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security["allowPrivilegeEscalation"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "rtmp": 1935,
        "http": 8080,
        "admin": 9090,
    }
    # The probes check the port viewers use; Prometheus scrapes the admin port.
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        "9090",
        "/metrics",
    )
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_pull_stream_has_no_key_secret_and_pulls_its_url() -> None:
    stream = body("livestream-pull.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    assert children.stream_key_secret_ref(stream, spec) is None
    config = children.worker_config(stream, spec, profile())
    assert config.ingest.pull is not None and config.ingest.pull.url.startswith("rtsp://")
    deployment = children.worker_deployment(
        stream, spec, rendered=children.render_config(config), settings=SETTINGS
    )
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "stream-key" not in volumes


def test_services_follow_the_requested_exposure() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    ingest = children.ingest_service(stream, spec)
    assert ingest["spec"]["type"] == "NodePort"
    assert ingest["spec"]["ports"][0]["port"] == 1935
    assert children.playback_service(stream, spec)["spec"]["type"] == "ClusterIP"


def test_the_playback_service_exposes_media_and_never_the_admin_port() -> None:
    """A NodePort or LoadBalancer playback Service reaches viewers: /status and
    /metrics (the publisher's address, errors, restream state) must not be on it."""
    stream = body("livestream-push.yaml")
    stream["spec"]["playbackService"] = {"type": "LoadBalancer"}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    for service in (children.playback_service(stream, spec), children.ingest_service(stream, spec)):
        targets = {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert "admin" not in {t for _, t in targets} and 9090 not in {p for p, _ in targets}
    assert [(p["port"], p["targetPort"]) for p in children.playback_service(stream, spec)[
        "spec"]["ports"]] == [(8080, "http")]  # fmt: skip
    config = children.worker_config(stream, spec, profile())
    assert (config.http, config.admin) == ("0.0.0.0:8080", "0.0.0.0:9090")


def test_recording_children_claim_storage_and_record_the_stream() -> None:
    recording = body("recording.yaml")
    spec = RecordingSpec.model_validate(recording["spec"])
    claim = children.recording_claim(recording, spec)
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    pod = children.recorder_pod(
        recording, spec, source="http://studio-playback:8080", settings=SETTINGS
    )
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["record", "--source", "http://studio-playback:8080"]
    assert "--wait-for-next-live" in args and "--max-duration" in args
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    # Its one port is the admin port; /stop needs the token its Secret holds.
    assert args[args.index("--admin") + 1] == "0.0.0.0:9090"
    assert container["ports"] == [{"name": "admin", "containerPort": 9090, "protocol": "TCP"}]
    token_file = args[args.index("--stop-token-file") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "stop-token")
    assert token_file == f"{mount['mountPath']}/token" and mount["readOnly"]
    volume = _volumes(pod["spec"])["stop-token"]["secret"]
    assert (
        volume["secretName"]
        == "studio-show-stop-token"
        == children.stop_token_secret_name(recording["metadata"]["name"])
    )


def test_condition_transition_time_changes_only_on_a_real_transition() -> None:
    first = conditions.merge(
        None,
        [conditions.condition("Ready", False, "Starting")],
        generation=1,
        at="2026-01-01T00:00:00Z",
    )
    same = conditions.merge(
        first,
        [conditions.condition("Ready", False, "StillStarting")],
        generation=2,
        at="2026-01-01T00:01:00Z",
    )
    flipped = conditions.merge(
        same,
        [conditions.condition("Ready", True, "Running")],
        generation=2,
        at="2026-01-01T00:02:00Z",
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[0]["reason"] == "StillStarting"
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def _observed(
    worker: dict[str, Any] | None, stream: dict[str, Any] | None = None, **extra: Any
) -> streams.Observation:
    stream = stream or body("livestream-push.yaml")
    service = children.ingest_service(stream, LiveStreamSpec.model_validate(stream["spec"]))
    service["spec"]["ports"][0]["nodePort"] = 31935
    return streams.Observation(
        spec=LiveStreamSpec.model_validate(stream["spec"]),
        deployment={"status": {"availableReplicas": 1}},
        ingest_service=service,
        playback_service=children.playback_service(
            stream, LiveStreamSpec.model_validate(stream["spec"])
        ),
        node_address="203.0.113.7",
        worker=worker,
        **{"config_hash": "c0ffee", "pods": [_pod("c0ffee")], **extra},
    )


def _pod(config: str, *, created: str = "2026-12-01T10:00:00Z", **meta: Any) -> dict[str, Any]:
    """A running worker pod whose template carried config hash ``config``."""
    return {
        "metadata": {
            "name": f"studio-worker-{config}",
            "creationTimestamp": created,
            "annotations": {children.CONFIG_HASH: config},
            **meta,
        },
        "status": {"phase": "Running", "podIP": "10.1.0.9"},
    }


LIVE_WORKER = {
    "state": "live",
    "ready": True,
    "publisher": "198.51.100.4:50000",
    "input": {
        "videoCodec": "h264",
        "audioCodec": "aac",
        "width": 1280,
        "height": 720,
        "resolution": "1280x720",
        "fps": 30.0,
        "bitrateKbps": 2510.4,
        "publisher": "198.51.100.4:50000",
    },
    "renditions": [
        {"name": "1080p", "state": "Dropped", "reason": "would upscale 720p input"},
        {
            "name": "720p",
            "state": "Active",
            "width": 1280,
            "height": 720,
            "bitrateKbps": 2400.2,
            "playbackUrl": "720p/index.m3u8",
        },
    ],
    "droppedFrames": 0,
    "encodeSpeed": 1.4,
    "ingest": {"mode": "push", "counters": {"refused_wrong_key": 2, "accepted": 1}},
    "thumbnailUrl": "/thumbnail.jpg",
}


def test_live_worker_gives_live_status_with_urls_and_figures() -> None:
    status = streams.compute_status(body("livestream-push.yaml"), _observed(LIVE_WORKER))
    assert status["phase"] == "Live"
    assert status["ingestUrl"] == "rtmp://203.0.113.7:31935/live"
    assert status["playbackUrl"] == (
        "http://studio-playback.live.svc.cluster.local:8080/master.m3u8"
    )
    assert status["thumbnailUrl"] == (
        "http://studio-playback.live.svc.cluster.local:8080/thumbnail.jpg"
    )
    assert status["input"]["resolution"] == "1280x720"
    assert status["input"]["bitrateKbps"] == 2510
    assert status["renditions"][0]["state"] == "Dropped"
    assert status["renditions"][1]["playbackUrl"] == (
        "http://studio-playback.live.svc.cluster.local:8080/720p/index.m3u8"
    )
    assert status["refusedPublishes"] == 2
    assert status["streamKeySecret"] == "studio-stream-key"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["status"] == "True"
    assert by_type["IngestConnected"]["status"] == "True"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_only_when_the_serving_pod_runs_the_current_config() -> None:
    stream = body("livestream-push.yaml")
    current = _conditions(streams.compute_status(stream, _observed(LIVE_WORKER)))
    assert current["Ready"] == ("True", "WorkerRunning")
    assert current["Progressing"] == ("False", "RolledOut")

    # The spec changed: the new config is rendered, the old pod still answers.
    old = _observed(LIVE_WORKER, config_hash="beef00", pods=[_pod("c0ffee")])
    status = streams.compute_status(stream, old)
    assert _conditions(status)["Ready"] == ("False", "ConfigRollingOut")
    assert _conditions(status)["Progressing"] == ("True", "RollingOut")
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["message"] == "rolling out config beef00; the serving pod runs c0ffee"
    assert status["phase"] == "Live", "the old worker still serves its publisher"

    # Recreate: the old pod is stopping, the new one not yet running.
    stopping = _pod("c0ffee", deletionTimestamp="2026-12-01T10:05:00Z")
    gap = _observed(None, config_hash="beef00", pods=[stopping], worker_error="refused")
    assert _conditions(streams.compute_status(stream, gap))["Progressing"] == (
        "True",
        "RollingOut",
    )

    # The new pod serves; the stopped one is gone.
    new = _observed(LIVE_WORKER, config_hash="beef00", pods=[_pod("beef00")])
    done = _conditions(streams.compute_status(stream, new))
    assert done["Ready"] == ("True", "WorkerRunning")
    assert done["Progressing"] == ("False", "RolledOut")


def test_a_worker_that_answers_but_is_not_ready_is_not_ready() -> None:
    starting = {**LIVE_WORKER, "state": "idle", "ready": False, "lastError": None}
    status = streams.compute_status(body("livestream-push.yaml"), _observed(starting))
    assert _conditions(status)["Ready"] == ("False", "WorkerNotReady")


def test_missing_profile_is_an_error_with_a_clear_reason() -> None:
    problem = ("ProfileNotFound", "TranscodeProfile 'hd' not found in namespace 'live'")
    status = streams.compute_status(body("livestream-push.yaml"), _observed(None, problem=problem))
    assert status["phase"] == "Error"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ProfileNotFound")
    assert "not found" in status["message"]


def test_unreachable_worker_is_pending_not_guessed() -> None:
    status = streams.compute_status(
        body("livestream-push.yaml"), _observed(None, worker_error="connection refused")
    )
    assert status["phase"] == "Pending"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "WorkerUnreachable"


def test_profile_status_counts_users_and_reports_deferred_deletion() -> None:
    profile_body = body("transcodeprofile-default.yaml")
    status = profiles.compute_status(profile_body, ["studio"])
    assert status["usedBy"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Valid": "True"}
    profile_body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deleting = profiles.compute_status(profile_body, ["studio"])
    assert "studio" in deleting["conditions"][1]["message"]


def test_dash_url_is_advertised_once_the_worker_has_written_the_manifest() -> None:
    stream = body("livestream-push.yaml")
    plain = streams.compute_status(stream, _observed(LIVE_WORKER))
    outputs = next(c for c in plain["conditions"] if c["type"] == "OutputsReady")
    assert (outputs["status"], outputs["reason"]) == ("True", "OutputsServed")
    assert "dashUrl" not in plain

    stream["spec"]["outputs"] = {"hls": {"segmentType": "fmp4"}, "dash": {"enabled": True}}
    hls_only = {**LIVE_WORKER, "playbackUrl": "/master.m3u8"}
    status = streams.compute_status(stream, _observed(hls_only, stream))
    assert "dashUrl" not in status, "a DASH URL that answers 404 is worse than none"
    assert status["phase"] == "Live", "HLS still plays"
    outputs = next(c for c in status["conditions"] if c["type"] == "OutputsReady")
    assert (outputs["status"], outputs["reason"]) == ("False", "DashNotProduced")
    assert "spec.outputs.dash" in outputs["message"]

    both = {**hls_only, "dashUrl": "/manifest.mpd"}
    status = streams.compute_status(stream, _observed(both, stream))
    assert status["dashUrl"] == status["playbackUrl"].replace("master.m3u8", "manifest.mpd")
    outputs = next(c for c in status["conditions"] if c["type"] == "OutputsReady")
    assert (outputs["status"], outputs["reason"]) == ("True", "OutputsServed")


RESTREAM = [
    {
        "name": "youtube",
        "url": "rtmp://a.rtmp.youtube.com/live2",
        "streamKeySecretRef": {"name": "yt", "key": "key"},
        "rendition": "720p",
    },
    {"name": "open", "url": "rtmp://ingest.example/live"},
]


def test_restream_targets_reach_the_worker_with_their_keys_mounted_not_inlined() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["restream"] = RESTREAM
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    config = WorkerConfig.model_validate(yaml.safe_load(rendered))
    youtube, open_target = config.restream
    assert (youtube.url, youtube.rendition) == ("rtmp://a.rtmp.youtube.com/live2", "720p")
    assert youtube.stream_key_file == "/etc/kubecast/restream/0/key"
    assert open_target.stream_key_file is None
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
    template = pod["spec"]["template"]["spec"]
    volume = next(v for v in template["volumes"] if v["name"] == "restream-key-0")
    assert volume["secret"]["secretName"] == "yt" and volume["secret"]["optional"] is True
    mounts = template["containers"][0]["volumeMounts"]
    assert {
        "name": "restream-key-0",
        "mountPath": "/etc/kubecast/restream/0",
        "readOnly": True,
    } in mounts


def test_restream_state_is_shown_and_a_failing_target_is_a_condition() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["restream"] = RESTREAM
    worker = {
        **LIVE_WORKER,
        "restream": [
            {"name": "youtube", "state": "Live", "lastError": None, "restarts": 0},
            {"name": "open", "state": "Retrying", "lastError": "Connection refused", "restarts": 3},
        ],
    }
    status = streams.compute_status(stream, _observed(worker, stream))
    assert status["restream"] == [
        {"name": "youtube", "state": "Live", "restarts": 0},
        {"name": "open", "state": "Retrying", "message": "Connection refused", "restarts": 3},
    ]
    outputs = next(c for c in status["conditions"] if c["type"] == "OutputsReady")
    assert (outputs["status"], outputs["reason"]) == ("False", "RestreamFailing")
    assert outputs["message"] == "retrying open: Connection refused"
    assert status["phase"] == "Live"

    # The target's key volume is optional, so the worker finds the file missing.
    unreadable = {
        **LIVE_WORKER,
        "restream": [
            {
                "name": "youtube",
                "state": "Retrying",
                "lastError": "cannot read the target's key file: No such file or directory",
                "restarts": 1,
            }
        ],
    }
    missing = streams.compute_status(stream, _observed(unreadable, stream))
    outputs = next(c for c in missing["conditions"] if c["type"] == "OutputsReady")
    assert (outputs["reason"], outputs["message"]) == (
        "RestreamKeySecretNotFound",
        "restream key missing for youtube: Secret 'yt' not found or has no key 'key'",
    )


def test_event_playlist_is_asked_for_in_the_stream_and_reaches_the_worker() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["outputs"] = {"hls": {"playlistType": "event"}}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    config = WorkerConfig.model_validate(yaml.safe_load(rendered))
    assert config.outputs.hls.playlist_type == "event"


def test_only_moving_figures_wait_for_the_slower_status_pace() -> None:
    stream = body("livestream-push.yaml")
    first = streams.compute_status(stream, _observed(LIVE_WORKER), now="2026-01-01T00:00:00Z")
    busier = {
        **LIVE_WORKER,
        "input": {**LIVE_WORKER["input"], "bitrateKbps": 2890.0, "fps": 29.97},
        "droppedFrames": 4,
        "encodeSpeed": 1.1,
    }
    stream["status"] = first
    later = streams.compute_status(stream, _observed(busier), now="2026-01-01T00:00:02Z")
    assert later != first
    assert streams.only_figures_changed(first, later)
    idle = streams.compute_status(
        stream, _observed({**LIVE_WORKER, "state": "idle", "input": None})
    )
    assert not streams.only_figures_changed(first, idle), "a phase change is written at once"
    refused = {**LIVE_WORKER, "ingest": {"counters": {"refused_wrong_key": 3}}}
    assert not streams.only_figures_changed(
        first, streams.compute_status(stream, _observed(refused))
    )


def _worker(stream: dict[str, Any], prof: TranscodeProfileSpec) -> dict[str, Any]:
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, prof))
    deployment = children.worker_deployment(
        stream, spec, rendered=rendered, settings=SETTINGS, profile=prof
    )
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _volumes(pod: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in pod["volumes"]}


def test_worker_disk_is_requested_limited_and_sized_from_the_ladder() -> None:
    stream = body("livestream-push.yaml")
    pod = _worker(stream, profile())
    # 4 rungs at maxrate + audio (9511 kbit/s) + 10 % TS overhead, a 6-segment
    # window of 4 s plus 2 segments, twice: 80 MiB, below the 256 MiB floor.
    assert _volumes(pod)["media"] == {"name": "media", "emptyDir": {"sizeLimit": "256Mi"}}
    assert _volumes(pod)["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
    (container,) = pod["containers"]
    # media + /tmp + 128 MiB for logs and the writable layer; the stream's own
    # CPU and memory are kept as they are.
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "448Mi"},
        "limits": {"memory": "2Gi", "ephemeral-storage": "448Mi"},
    }

    # A long DVR window needs more: 1000 segments of the same ladder.
    stream["spec"]["outputs"]["hls"]["windowSegments"] = 1000
    pod = _worker(stream, profile())
    assert _volumes(pod)["media"]["emptyDir"] == {"sizeLimit": "9998Mi"}
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["ephemeral-storage"] == f"{9998 + 64 + 128}Mi"


def test_passthrough_rendition_is_sized_at_an_assumed_source_bitrate() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["outputs"]["hls"]["windowSegments"] = 100
    prof = TranscodeProfileSpec.model_validate(
        {"renditions": [{"name": "source", "passthrough": True}]}
    )
    sized = children.WorkerStorage.of(LiveStreamSpec.model_validate(stream["spec"]), prof)
    seconds = (100 + 2) * prof.segment_seconds
    expected = children.PASSTHROUGH_KBITS * 1000 / 8 * 1.10 * seconds * 2 / 2**20
    assert sized.media_mi == math.ceil(expected)
    assert sized.media_mi > children.MEDIA_MIN_MI


def test_event_playlist_worker_requests_disk_but_is_never_evicted_for_its_dvr() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["outputs"] = {"hls": {"playlistType": "event"}}
    pod = _worker(stream, profile())
    # Every segment of the publish stays: no bound holds, so no limit.
    assert _volumes(pod)["media"] == {"name": "media", "emptyDir": {}}
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == "448Mi"
    assert "ephemeral-storage" not in resources["limits"]


def test_recorder_requests_and_limits_its_small_local_disk() -> None:
    recording = body("recording.yaml")
    spec = RecordingSpec.model_validate(recording["spec"])
    pod = children.recorder_pod(recording, spec, source="http://x:8080", settings=SETTINGS)
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"ephemeral-storage": "192Mi"},
        "limits": {"ephemeral-storage": "192Mi"},
    }
    assert _volumes(pod["spec"])["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}


class _Cluster:
    """Just enough of Kube for one reconcile pass: reads from a dict, records applies."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.applied: list[dict[str, Any]] = []

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        # NB: a Secret is never read: the operator has no `get` on secrets.
        assert kind != "Secret", "the operator read a Secret"
        return self.objects.get((kind, name))

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return manifest

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return manifest


def test_the_reconcile_pass_sizes_the_worker_disk_from_the_stream_profile() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    kube = _Cluster({("TranscodeProfile", "default"): body("transcodeprofile-default.yaml")})
    streams._ensure_children(cast(Kube, kube), stream, spec, SETTINGS, streams.Observation())
    (deployment,) = [m for m in kube.applied if m["kind"] == "Deployment"]
    volumes = _volumes(deployment["spec"]["template"]["spec"])
    assert volumes["media"]["emptyDir"] == {"sizeLimit": "256Mi"}


OPERATOR_LABELS = {"app.kubernetes.io/name": "kubecast", "app.kubernetes.io/instance": "kc"}
POLICY_SETTINGS = Settings(
    worker_image="kubecast/worker:test",
    network_policies=True,
    operator_namespace="kubecast-system",
    operator_pod_labels=OPERATOR_LABELS,
    admin_from=({"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},),
)


def _rules(policy: dict[str, Any]) -> list[tuple[set[int], list[dict[str, Any]] | None]]:
    return [({p["port"] for p in r["ports"]}, r.get("from")) for r in policy["spec"]["ingress"]]


def test_the_stream_policy_opens_ingest_and_playback_and_admin_only_to_the_operator() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    policy = children.stream_network_policy(stream, POLICY_SETTINGS)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "LiveStream"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # It selects exactly the worker's pods (the Deployment's own selector).
    deployment = children.worker_deployment(stream, spec, rendered="x", settings=SETTINGS)
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubecast-system"}},
        "podSelector": {"matchLabels": OPERATOR_LABELS},
    }
    assert _rules(policy) == [
        ({1935, 8080}, None),  # anyone: publishers and viewers
        ({9090}, [operator, {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]),
    ]
    # The ports it names are the container's (numbers: every enforcer knows them).
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["containerPort"] for p in container["ports"]}
    assert {p for ports, _ in _rules(policy) for p in ports} == container_ports


def test_the_recorder_policy_admits_only_the_operator() -> None:
    recording = body("recording.yaml")
    spec = RecordingSpec.model_validate(recording["spec"])
    policy = children.recorder_network_policy(recording, POLICY_SETTINGS)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Recording"
    pod = children.recorder_pod(recording, spec, source="http://x:8080", settings=SETTINGS)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    ((ports, peers),) = _rules(policy)
    assert (
        ports == {9090}
        and peers is not None
        and peers[0]["podSelector"] == {"matchLabels": OPERATOR_LABELS}
    )


def test_policies_are_applied_only_when_the_chart_turns_them_on() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    objects = {("TranscodeProfile", "default"): body("transcodeprofile-default.yaml")}
    for settings, expected in ((SETTINGS, []), (POLICY_SETTINGS, ["studio-worker"])):
        kube = _Cluster(dict(objects))
        streams._ensure_children(cast(Kube, kube), stream, spec, settings, streams.Observation())
        kinds = [m["kind"] for m in kube.applied]
        assert [m["metadata"]["name"] for m in kube.applied if m["kind"] == "NetworkPolicy"] == (
            expected
        )
        if expected:  # before the worker exists, so its admin port is never open to all
            assert kinds.index("NetworkPolicy") < kinds.index("Deployment")


def test_policies_without_the_operators_labels_are_refused_at_start() -> None:
    """An empty podSelector would admit every pod of the operator's namespace."""
    with pytest.raises(ValueError, match="KUBECAST_OPERATOR_POD_LABELS"):
        Settings.from_env(
            {"KUBECAST_NETWORK_POLICIES": "true", "KUBECAST_OPERATOR_NAMESPACE": "kc"}
        )
    found = Settings.from_env(
        {
            "KUBECAST_NETWORK_POLICIES": "true",
            "KUBECAST_OPERATOR_NAMESPACE": "kc",
            "KUBECAST_OPERATOR_POD_LABELS": '{"app.kubernetes.io/name": "kubecast"}',
            "KUBECAST_ADMIN_FROM": '[{"podSelector": {}}]',
        }
    )
    assert found.network_policies and found.operator_namespace == "kc"
    assert found.admin_from == ({"podSelector": {}},)


def _srt_stream() -> dict[str, Any]:
    stream = body("livestream-push.yaml")
    stream["spec"]["ingest"]["push"].update(protocol="srt", latencyMilliseconds=400)
    return stream


def test_an_srt_stream_listens_on_udp_9000_with_its_key_as_the_passphrase() -> None:
    stream = _srt_stream()
    spec = LiveStreamSpec.model_validate(stream["spec"])
    config = children.worker_config(stream, spec, profile())
    assert (config.ingest.listen, config.ingest.protocol) == ("0.0.0.0:9000", "srt")
    assert config.ingest.latency_milliseconds == 400
    assert config.ingest.stream_key_file  # the key Secret, mounted as for RTMP
    assert config.ingest.service_url == "srt://studio-ingest.live.svc.cluster.local:9000"
    rendered = children.render_config(config)
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
    ports = pod["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "srt", "containerPort": 9000, "protocol": "UDP"} in ports
    assert not [p for p in ports if p["name"] == "rtmp"]
    service = children.ingest_service(stream, spec)
    assert service["spec"]["ports"] == [
        {"name": "srt", "port": 9000, "targetPort": "srt", "protocol": "UDP"}
    ]
    policy = children.stream_network_policy(stream, POLICY_SETTINGS)
    assert {"port": 9000, "protocol": "UDP"} in policy["spec"]["ingress"][0]["ports"]


def test_an_srt_stream_says_its_srt_url_in_status() -> None:
    stream = _srt_stream()
    status = streams.compute_status(stream, _observed(LIVE_WORKER, stream))
    assert status["ingestUrl"] == "srt://203.0.113.7:31935"
    assert status["streamKeySecret"] == "studio-stream-key"


def test_a_whip_stream_listens_on_8889_and_lets_webrtc_media_in_over_udp() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["ingest"]["push"]["protocol"] = "whip"
    stream["spec"]["outputs"] = {"webrtc": {"enabled": True}}
    spec = LiveStreamSpec.model_validate(stream["spec"])
    config = children.worker_config(stream, spec, profile())
    assert (config.ingest.listen, config.ingest.protocol) == ("0.0.0.0:8889", "whip")
    assert config.ingest.stream_key_file  # the bearer token, mounted as the RTMP key is
    assert config.ingest.service_url == (
        "http://studio-ingest.live.svc.cluster.local:8889/whip/live"
    )
    rendered = children.render_config(config)
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
    container = pod["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "whip", "containerPort": 8889, "protocol": "TCP"} in container["ports"]
    assert container["args"][-1] == "--whep"
    service = children.ingest_service(stream, spec)
    assert service["spec"]["ports"] == [
        {"name": "whip", "port": 8889, "targetPort": "whip", "protocol": "TCP"}
    ]
    open_to_all = children.stream_network_policy(stream, POLICY_SETTINGS)["spec"]["ingress"][0]
    assert {"port": 8889, "protocol": "TCP"} in open_to_all["ports"]
    assert {"protocol": "UDP"} in open_to_all["ports"], "ICE and media on ephemeral ports"

    offered = profile().webrtc_renditions()  # none marked webrtc: every encoded one
    status = streams.compute_status(
        stream, _observed(LIVE_WORKER, stream, webrtc_renditions=offered)
    )
    assert status["ingestUrl"] == "http://203.0.113.7:31935/whip/live"
    # The top rendition the worker produces (1080p was dropped for a 720p input).
    assert status["whepUrl"] == "http://studio-playback.live.svc.cluster.local:8080/whep/720p"


def test_whep_offers_the_renditions_the_profile_marks_webrtc() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["outputs"] = {"webrtc": {"enabled": True}}
    spec = profile().model_dump(by_alias=True, exclude_none=True)
    next(r for r in spec["renditions"] if r["name"] == "360p")["webrtc"] = True
    offered = TranscodeProfileSpec.model_validate(spec).webrtc_renditions()
    assert offered == ["360p"]
    small = {"name": "360p", "state": "Active", "playbackUrl": "360p/index.m3u8"}
    worker = {**LIVE_WORKER, "renditions": [*LIVE_WORKER["renditions"], small]}
    status = streams.compute_status(stream, _observed(worker, stream, webrtc_renditions=offered))
    assert status["whepUrl"] == "http://studio-playback.live.svc.cluster.local:8080/whep/360p"


def test_an_rtmp_stream_without_webrtc_opens_no_udp_and_offers_no_whep() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    rendered = children.render_config(children.worker_config(stream, spec, profile()))
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
    assert "--whep" not in pod["spec"]["template"]["spec"]["containers"][0]["args"]
    open_to_all = children.stream_network_policy(stream, POLICY_SETTINGS)["spec"]["ingress"][0]
    assert all(p.get("protocol") != "UDP" for p in open_to_all["ports"])
    assert "whepUrl" not in streams.compute_status(stream, _observed(LIVE_WORKER, stream))


def test_a_user_key_secret_is_never_read_and_the_worker_is_created_anyway() -> None:
    stream = body("livestream-push.yaml")
    stream["spec"]["ingest"]["push"]["streamKeySecretRef"] = {"name": "studio-key"}
    stream["spec"]["restream"] = RESTREAM
    spec = LiveStreamSpec.model_validate(stream["spec"])
    kube = _Cluster({("TranscodeProfile", "default"): body("transcodeprofile-default.yaml")})
    seen = streams.Observation()
    streams._ensure_children(cast(Kube, kube), stream, spec, SETTINGS, seen)
    assert seen.problem is None
    (deployment,) = [m for m in kube.applied if m["kind"] == "Deployment"]
    key = _volumes(deployment["spec"]["template"]["spec"])[children.STREAM_KEY_VOLUME]
    assert key["secret"]["secretName"] == "studio-key"


def test_a_worker_pod_that_only_appeared_is_no_status_write_of_its_own() -> None:
    stream = body("livestream-push.yaml")
    spec = LiveStreamSpec.model_validate(stream["spec"])
    starting = {
        "metadata": {"name": "studio-worker-x", "annotations": {children.CONFIG_HASH: "c0ffee"}},
        "status": {"phase": "Pending", "containerStatuses": [{"restartCount": 0}]},
    }

    def status(*pods: dict[str, Any]) -> dict[str, Any]:
        seen = streams.Observation(
            spec=spec, deployment={"status": {}}, config_hash="c0ffee", pods=list(pods)
        )
        return streams.compute_status(stream, seen, now="2026-01-01T00:00:00Z")

    before, after = status(), status(starting)
    assert "workerRestarts" not in before and after["workerRestarts"] == 0
    # Nothing a user could act on changed: written with the next real change.
    assert streams.same_status(before, after) and streams.same_status(after, before)
    restarted = {**starting, "status": {"phase": "Running", "containerStatuses": [
        {"restartCount": 1, "lastState": {"terminated": {"exitCode": 137}}}]}}  # fmt: skip
    assert not streams.same_status(after, status(restarted)), "a restart is written at once"
    assert not streams.same_status(before, {**before, "phase": "Idle"})
    # lastLiveTime moves on every poll of a live stream: never a write of its own
    assert streams.same_status(before, {**before, "lastLiveTime": "2026-01-01T00:00:02Z"})
