"""End to end: helm install -> kubectl apply -> a real worker pod -> ffmpeg publishes -> Live.

The operator and the workers run as real pods, from the images built here, on
the local cluster's real node. The stream's LoadBalancer Services get loopback
addresses from hack/tunnel.py, the way a bare-metal load balancer would give them
addresses, so the publisher and the players on this machine reach them through
kube-proxy. Everything a user would touch comes from the LiveStream's status: the
ingest URL, the Secret with the key, the playback URL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import netns
from . import operator_harness as harness
from . import release as rel
from .conftest import REPO_ROOT, ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

PROFILE = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "TranscodeProfile",
    "metadata": {"name": "small"},
    "spec": {
        "gopSeconds": 1,
        "segmentSeconds": 1,
        "renditions": [
            {
                "name": "360p",
                "width": 640,
                "height": 360,
                "videoBitrate": 800,
                "fps": 25,
                "preset": "ultrafast",
                "profile": "main",
            },
            {
                "name": "180p",
                "width": 320,
                "height": 180,
                "videoBitrate": 300,
                "fps": 25,
                "preset": "ultrafast",
                "profile": "baseline",
                "audioBitrate": 64,
            },
        ],
    },
}

STREAM = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "LiveStream",
    "metadata": {"name": "e2e"},
    "spec": {
        "ingest": {"push": {"app": "live"}},
        "profileRef": {"name": "small"},
        "ingestService": {"type": "LoadBalancer"},
        "playbackService": {"type": "LoadBalancer"},
        "reconnectWindowSeconds": 5,
    },
}


@dataclass
class Running:
    """The release whose operator reconciles this test's namespace, and its logs."""

    release: rel.Release
    namespace: str

    def logs(self) -> str:
        return self.release.logs(self.namespace)


@pytest.fixture
def running(kubecast: rel.Release, namespace: str) -> Running:
    return Running(kubecast, namespace)


def status(cp: ControlPlane, namespace: str, name: str = "e2e") -> dict[str, Any]:
    doc = harness.get_json(cp.kubectl, "-n", namespace, "livestream", name) or {}
    result: dict[str, Any] = doc.get("status") or {}
    return result


def ready_to_publish(
    cp: ControlPlane,
    namespace: str,
    logs: Callable[[], str],
    name: str = "e2e",
    *,
    scheme: str = "rtmp",
) -> dict[str, Any]:
    """Wait for the stream to be Idle with an ingest URL a publisher here can reach.

    Idle comes from the worker and the URL from the Service's load-balancer address;
    the two arrive independently, and until the address does the URL names the
    in-cluster DNS name, which this machine cannot resolve.
    """
    ready: dict[str, Any] = harness.eventually(
        "phase Idle with a reachable ingest URL",
        lambda: (
            (s := status(cp, namespace, name)).get("phase") == "Idle"
            and s.get("ingestUrl", "").startswith(f"{scheme}://127.")
            and s
        ),
        timeout=90,
        logs=logs,
    )
    # Idle is what the operator saw at the pod's own address; the Service routes
    # once its endpoint is ready and kube-proxy has synced (about a second more).
    harness.eventually(
        "the ingest Service's endpoint ready",
        lambda: service_ready(cp, namespace, f"{name}-ingest"),
        timeout=30,
        logs=logs,
    )
    time.sleep(1.5)
    return ready


def service_ready(cp: ControlPlane, namespace: str, service: str) -> bool:
    slices = harness.get_json(
        cp.kubectl, "-n", namespace, "endpointslices", "-l",
        f"kubernetes.io/service-name={service}",
    )  # fmt: skip
    return any(
        (e.get("conditions") or {}).get("ready")
        for s in (slices or {}).get("items", [])
        for e in s.get("endpoints") or []
    )


def stream_key(cp: ControlPlane, namespace: str, secret_name: str) -> str:
    secret = json.loads(
        cp.kubectl("-n", namespace, "get", "secret", secret_name, "-o", "json").stdout
    )
    return base64.b64decode(secret["data"]["streamKey"]).decode()


def publish(url: str, *, seconds: int) -> subprocess.Popen[bytes]:
    """The ffmpeg CLI publishing a 640x360 test pattern and a tone at real time."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
         "-c:a", "aac", "-b:a", "96k", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_published_stream_goes_live_and_plays(
    control_plane: ControlPlane,
    namespace: str,
    running: Running,
) -> None:
    logs = running.logs
    control_plane.kubectl(
        "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, STREAM])
    )
    ready = ready_to_publish(control_plane, namespace, logs)
    key = stream_key(control_plane, namespace, ready["streamKeySecret"])

    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=40)
    started = time.monotonic()
    try:
        live = harness.eventually(
            "phase Live with the input bitrate",
            lambda: (
                (s := status(control_plane, namespace)).get("phase") == "Live"
                and (s.get("input") or {}).get("bitrateKbps")
                and s
            ),
            timeout=60,
            logs=logs,
        )
        seconds_to_live = time.monotonic() - started
        assert live["input"]["resolution"] == "640x360"
        table = control_plane.kubectl("-n", namespace, "get", "livestreams").stdout
        row = next(line for line in table.splitlines() if line.startswith("e2e"))
        assert "Live" in row and "640x360" in row and live["playbackUrl"] in row

        master_url = live["playbackUrl"]
        master = harness.eventually(
            "a master playlist listing both renditions",
            lambda: (m := _try(fetch, master_url)) and m.count("#EXT-X-STREAM-INF") == 2 and m,
            timeout=30,
            logs=logs,
        )
        assert "RESOLUTION=640x360" in master and "RESOLUTION=320x180" in master
        media_uri = next(line for line in master.splitlines() if line and not line.startswith("#"))
        media_url = master_url.rsplit("/", 1)[0] + "/" + media_uri
        harness.eventually(
            "a segment in the media playlist",
            lambda: (
                ".ts" in (_try(fetch, media_url) or "") or ".m4s" in (_try(fetch, media_url) or "")
            ),
            timeout=30,
            logs=logs,
        )
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "json",
                media_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
        codecs = {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}
        assert {"h264", "aac"} <= codecs
        # The still of the stream: in status, in `kubectl describe`, and served.
        thumbnail_url = harness.eventually(
            "status.thumbnailUrl",
            lambda: status(control_plane, namespace).get("thumbnailUrl"),
            timeout=30,
            logs=logs,
        )
        assert thumbnail_url == master_url.rsplit("/", 1)[0] + "/thumbnail.jpg"
        described = control_plane.kubectl("-n", namespace, "describe", "livestream", "e2e").stdout
        assert re.search(rf"Thumbnail U(RL|rl):\s+{re.escape(thumbnail_url)}", described), described
        with urllib.request.urlopen(thumbnail_url, timeout=5) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.read()[:3] == b"\xff\xd8\xff"
        # The key never shows up where users and logs look.
        assert key not in json.dumps(live)
        assert key not in running.release.operator_log()
        print(f"Live {seconds_to_live:.1f}s after the publisher started")
    finally:
        publisher.kill()
        publisher.wait()

    harness.eventually(
        "back to Idle (or Reconnecting) once the publisher leaves",
        lambda: status(control_plane, namespace).get("phase") in ("Idle", "Reconnecting"),
        timeout=60,
        logs=logs,
    )


def test_an_srt_stream_goes_live_through_its_udp_load_balancer(
    control_plane: ControlPlane, namespace: str, running: Running
) -> None:
    """SRT end to end: a UDP Service port, kube-proxy, the worker's srt-live-transmit
    child. ffmpeg is the SRT caller with the stream key as its passphrase; the
    tunnel gives the LoadBalancer Service a loopback address, UDP included."""
    cp, logs = control_plane, running.logs
    stream = {
        **STREAM,
        "metadata": {"name": "srt"},
        "spec": {**STREAM["spec"], "ingest": {"push": {"protocol": "srt"}}},
    }
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, stream]))
    ready = ready_to_publish(cp, namespace, logs, "srt", scheme="srt")
    service = harness.get_json(cp.kubectl, "-n", namespace, "service", "srt-ingest")
    assert service is not None
    assert [(p["protocol"], p["port"]) for p in service["spec"]["ports"]] == [("UDP", 9000)]
    key = stream_key(cp, namespace, ready["streamKeySecret"])
    url = f"{ready['ingestUrl']}?passphrase={key}"
    publisher = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000", "-t", "40",
         "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "50",
         "-c:a", "aac", "-b:a", "128k", "-f", "mpegts", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        live = harness.eventually(
            "phase Live over SRT",
            lambda: (
                (st := status(cp, namespace, "srt")).get("phase") == "Live"
                and (st.get("input") or {}).get("resolution") == "640x360"
                and st
            ),
            timeout=60,
            logs=logs,
        )
        assert key not in json.dumps(live)
        master_url = live["playbackUrl"]
        master = harness.eventually(
            "a master playlist",
            lambda: (m := _try(fetch, master_url)) and m.count("#EXT-X-STREAM-INF") == 2 and m,
            timeout=30,
            logs=logs,
        )
        for uri in [line for line in master.splitlines() if line and not line.startswith("#")]:
            media_url = master_url.rsplit("/", 1)[0] + "/" + uri
            harness.eventually(
                f"a segment in {uri}",
                lambda url=media_url: ".ts" in (_try(fetch, url) or ""),
                timeout=30,
                logs=logs,
            )
            probe = subprocess.run(
                ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json",
                 media_url],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert probe.returncode == 0, probe.stderr
            assert {"h264", "aac"} <= {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}
    finally:
        publisher.kill()
        publisher.wait()
    # NB: the killed publisher's session holds the port until libsrt's peer idle
    # timeout (5 s) ends it; a caller meanwhile gets no answer at all.
    harness.eventually(
        "the session over",
        lambda: status(cp, namespace, "srt").get("phase") in ("Reconnecting", "Idle"),
        timeout=30,
        logs=logs,
    )
    # A caller with a wrong passphrase is refused, and counted in status.
    wrong = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
         "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "3",
         "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts",
         f"{ready['ingestUrl']}?passphrase=not-the-key-at-all&connect_timeout=3000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrong.returncode != 0
    harness.eventually(
        "the refused caller counted",
        lambda: (status(cp, namespace, "srt").get("refusedPublishes") or 0) >= 1,
        timeout=30,
        logs=logs,
    )


WHIP_CLIENT = REPO_ROOT / "tests" / "e2e" / "whip_client.py"
WHEP_CLIENT = REPO_ROOT / "tests" / "e2e" / "whep_client.py"


def test_a_whip_publisher_goes_live_and_a_whep_viewer_watches_on_the_real_node(
    control_plane: ControlPlane, namespace: str, running: Running
) -> None:
    """WebRTC through the operator: an aiortc publisher POSTs its offer to the ingest
    Service (the key as bearer token), its media reaches the worker pod's own address
    (ICE, with the stream's NetworkPolicy letting UDP in), the ladder runs, and an
    aiortc viewer plays a rendition by WHEP from the playback Service. Both clients
    run in the cluster's network namespace, where Services and pod IPs exist."""
    cp, logs = control_plane, running.logs
    stream = {
        **STREAM,
        "metadata": {"name": "webrtc"},
        "spec": {
            **STREAM["spec"],
            "ingest": {"push": {"protocol": "whip", "app": "live"}},
            "outputs": {"webrtc": {"enabled": True}},
        },
    }
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, stream]))
    ready = ready_to_publish(cp, namespace, logs, "webrtc", scheme="http")
    assert ready["ingestUrl"].endswith(":8889/whip/live"), ready["ingestUrl"]
    key = stream_key(cp, namespace, ready["streamKeySecret"])

    def cluster_ip(service: str) -> str:
        doc = harness.get_json(cp.kubectl, "-n", namespace, "service", service)
        assert doc is not None
        return str(doc["spec"]["clusterIP"])

    in_cluster = ["nsenter", f"--net={cp.netns}", "--", sys.executable]
    whip = f"http://{cluster_ip('webrtc-ingest')}:8889/whip/live"
    wrong = subprocess.run(
        [*in_cluster, str(WHIP_CLIENT), whip, "--seconds", "2"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "WHIP_TOKEN": "nope"},
    )  # fmt: skip
    assert '"status": 401' in wrong.stdout, wrong.stdout + wrong.stderr[-2000:]
    publisher = subprocess.Popen(
        [*in_cluster, str(WHIP_CLIENT), whip, "--seconds", "45", "--codec", "h264"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WHIP_TOKEN": key},  # not in argv, where ps would show it
    )  # fmt: skip
    try:
        live = harness.eventually(
            "phase Live from the WHIP publisher",
            lambda: (
                (st := status(cp, namespace, "webrtc")).get("phase") == "Live"
                and st.get("whepUrl")
                and st
            ),
            timeout=60,
            logs=logs,
        )
        assert live["input"]["resolution"] == "640x360", live["input"]
        assert live["whepUrl"].endswith("/whep/360p"), live["whepUrl"]
        assert key not in json.dumps(live)
        master_url = live["playbackUrl"]
        media_url = master_url.rsplit("/", 1)[0] + "/360p/index.m3u8"
        harness.eventually(
            "HLS segments of the WHIP publish",
            lambda: ".ts" in (_try(fetch, media_url) or ""),
            timeout=30,
            logs=logs,
        )
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
             "-of", "json", media_url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert {"h264", "aac"} <= {s["codec_name"] for s in json.loads(probe.stdout)["streams"]}

        whep = f"http://{cluster_ip('webrtc-playback')}:8080/whep/180p"
        viewer = subprocess.run(
            [*in_cluster, str(WHEP_CLIENT), whep, "--seconds", "6"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert viewer.returncode == 0, viewer.stderr[-2000:]
        watched = json.loads(viewer.stdout.strip().splitlines()[-1])
        assert watched["event"] == "watched", watched
        assert watched["sizes"] == [[320, 180]], watched
        assert watched["frames"] >= 50 and watched["audio_frames"] >= 100, watched
    finally:
        publisher.kill()
        publisher.wait()
    harness.eventually(
        "the vanished WHIP publisher's session over",
        lambda: status(cp, namespace, "webrtc").get("phase") in ("Reconnecting", "Idle"),
        timeout=30,
        logs=logs,
    )


def claim_directory(cp: ControlPlane, namespace: str, claim: str) -> Path:
    """Where a bound claim's data lives on the node (the local volume's hostPath)."""
    pvc = harness.get_json(cp.kubectl, "-n", namespace, "pvc", claim)
    assert pvc is not None and pvc["status"].get("phase") == "Bound", pvc
    pv = harness.get_json(cp.kubectl, "pv", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError:
        return None


def test_recording_a_live_stream_is_finalized_before_it_is_deleted(
    control_plane: ControlPlane,
    namespace: str,
    running: Running,
) -> None:
    logs = running.logs
    recording = {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "Recording",
        "metadata": {"name": "show"},
        "spec": {
            "streamRef": {"name": "e2e"},
            "formats": ["hls", "mp4"],
            "rendition": "180p",
            "storage": {"size": "1Gi"},
        },
    }
    control_plane.kubectl(
        "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, STREAM, recording])
    )
    ready = ready_to_publish(control_plane, namespace, logs)
    key = stream_key(control_plane, namespace, ready["streamKeySecret"])
    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=60)

    def recording_status() -> dict[str, Any]:
        doc = harness.get_json(control_plane.kubectl, "-n", namespace, "recording", "show")
        result: dict[str, Any] = (doc or {}).get("status") or {}
        return result

    try:
        harness.eventually(
            "the Recording to record a few seconds",
            lambda: (
                (s := recording_status()).get("phase") == "Recording"
                and (s.get("durationSeconds") or 0) >= 3
            ),
            timeout=90,
            logs=logs,
        )
        claim = harness.get_json(control_plane.kubectl, "-n", namespace, "pvc", "show-data")
        assert claim is not None and claim["metadata"]["ownerReferences"][0]["name"] == "show"
        # The claim goes with the Recording; keep its volume, as a user keeps a
        # recording they want, to look at the files afterwards.
        data = claim_directory(control_plane, namespace, "show-data")
        control_plane.kubectl(
            "patch", "pv", claim["spec"]["volumeName"],
            "-p", '{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}',
        )  # fmt: skip
        # Deleting a running Recording first asks the recorder to finish the MP4.
        control_plane.kubectl("-n", namespace, "delete", "recording", "show", "--wait=false")
        # (Completed is written, then the finalizer goes: too quick to poll for, so
        # the Event the operator posts, which outlives the Recording, tells.)
        harness.eventually(
            "the Recording to be deleted once finalized",
            lambda: (
                harness.get_json(control_plane.kubectl, "-n", namespace, "recording", "show")
                is None
            ),
            timeout=60,
            logs=logs,
        )
        events = json.loads(
            control_plane.kubectl(
                "-n",
                namespace,
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=show,reason=Finalized",
                "-o",
                "json",
            ).stdout
        )["items"]
        assert events and "recording Completed: " in events[0]["message"], events
        assert "recording.mp4" in events[0]["message"]
        # The claim is real storage on the node: a directory behind a hostPath volume.
        files = list(data.rglob("*.mp4"))
        assert files, "the MP4 is on the claim"
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "json",
                str(files[0]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert float(json.loads(probe.stdout)["format"]["duration"]) >= 3
    finally:
        publisher.kill()
        publisher.wait()


def test_a_stream_is_restreamed_to_another_rtmp_ingest_with_a_key_from_a_secret(
    control_plane: ControlPlane,
    namespace: str,
    running: Running,
) -> None:
    """The destination is a second LiveStream (it checks its key, as YouTube would)."""
    logs = running.logs
    target_key = "yt-8c2e41f7d09b"
    passthrough = {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "TranscodeProfile",
        "metadata": {"name": "copy"},
        "spec": {"gopSeconds": 1, "segmentSeconds": 1, "renditions": [
            {"name": "source", "passthrough": True}]},
    }  # fmt: skip
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "youtube-key"},
        "stringData": {"streamKey": target_key},
    }
    receiver = {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": "receiver"},
        "spec": {
            "ingest": {"push": {"app": "live2", "streamKeySecretRef": {"name": "youtube-key"}}},
            "profileRef": {"name": "copy"},
            "ingestService": {"type": "LoadBalancer"},
            "playbackService": {"type": "LoadBalancer"},
            "reconnectWindowSeconds": 0,
        },
    }
    control_plane.kubectl(
        "-n", namespace, "apply", "-f", "-",
        input=yaml.safe_dump_all([PROFILE, passthrough, secret, receiver]),
    )  # fmt: skip
    target = ready_to_publish(control_plane, namespace, logs, name="receiver")
    # The source worker reaches the receiver by its in-cluster name (CoreDNS, the
    # ClusterIP): the loopback address in the receiver's status is the host's.
    assert target["ingestUrl"].startswith("rtmp://127.")
    in_cluster = f"rtmp://receiver-ingest.{namespace}.svc.cluster.local:1935/live2"
    source = {**STREAM, "spec": {**STREAM["spec"], "restream": [{
        "name": "youtube",
        "url": in_cluster,
        "streamKeySecretRef": {"name": "youtube-key"},
        "rendition": "180p",
    }]}}  # fmt: skip
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(source))
    ready = ready_to_publish(control_plane, namespace, logs)
    assert ready["restream"] == [{"name": "youtube", "state": "Idle", "restarts": 0}]
    key = stream_key(control_plane, namespace, ready["streamKeySecret"])
    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=45)
    try:
        sending = harness.eventually(
            "the restream target Live",
            lambda: (
                (s := status(control_plane, namespace)).get("restream")
                and s["restream"][0]["state"] == "Live"
                and s
            ),
            timeout=60,
            logs=logs,
        )
        outputs = next(c for c in sending["conditions"] if c["type"] == "OutputsReady")
        assert outputs["status"] == "True"
        received = harness.eventually(
            "the receiving stream Live with the 180p rendition's picture",
            lambda: (
                (s := status(control_plane, namespace, "receiver")).get("phase") == "Live"
                and (s.get("input") or {}).get("resolution")
                and s
            ),
            timeout=60,
            logs=logs,
        )
        assert received["input"]["resolution"] == "320x180"
        assert received.get("refusedPublishes", 0) == 0, "the target key was refused"
        assert target_key not in json.dumps(sending) + running.release.operator_log()
    finally:
        publisher.kill()
        publisher.wait()
    harness.eventually(
        "the copy ends with the publish",
        lambda: (
            status(control_plane, namespace, "receiver").get("phase") in ("Idle", "Reconnecting")
        ),
        timeout=60,
        logs=logs,
    )


PULL_PASSWORD = "S3cretPass-9f2c"
PULL_TOKEN = "T0ken-77ab41"


def test_no_key_or_pull_credential_shows_anywhere_users_and_logs_look(
    control_plane: ControlPlane,
    namespace: str,
    running: Running,
) -> None:
    """A whole run, searched: statuses, Events, the operator's and the workers' logs,
    the workers' /status and /metrics (labels included), the operator's metrics."""
    logs = running.logs
    cp = control_plane
    camera_url = f"rtsp://viewer:{PULL_PASSWORD}@127.0.0.1:9/stream1?token={PULL_TOKEN}"
    pull_secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "camera-url"},
        "stringData": {"url": camera_url},
    }  # fmt: skip
    camera = {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": "camera"},
        "spec": {
            "ingest": {"pull": {"urlSecretRef": {"name": "camera-url", "key": "url"}}},
            "profileRef": {"name": "small"},
        },
    }
    cp.kubectl(
        "-n", namespace, "apply", "-f", "-",
        input=yaml.safe_dump_all([PROFILE, STREAM, pull_secret, camera]),
    )  # fmt: skip
    ready = ready_to_publish(cp, namespace, logs)
    key = stream_key(cp, namespace, ready["streamKeySecret"])
    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=30)
    try:
        harness.eventually(
            "the pushed stream Live",
            lambda: status(cp, namespace).get("phase") == "Live",
            timeout=60,
            logs=logs,
        )
        # The pull source refuses: its error, with the URL masked, reaches status.
        failing = harness.eventually(
            "the camera's pull error in its status",
            lambda: "***" in ((m := status(cp, namespace, "camera").get("message")) or "") and m,
            timeout=90,
            logs=logs,
        )
        assert "127.0.0.1:9" in failing  # where it failed is still said
        seen = {
            "resources": cp.kubectl("-n", namespace, "get", "livestreams,recordings", "-o", "json"),
            "events": cp.kubectl("get", "events", "-A", "-o", "json"),
            "operator log": running.release.operator_log(),
            "media logs": cp.kubectl(
                "-n", namespace, "logs", "-l", "app.kubernetes.io/managed-by=kubecast-operator",
                "--tail=-1", "--all-containers", "--prefix", check=False,
            ),
        }  # fmt: skip
        for stream in ("e2e", "camera"):
            pod = rel.worker_pod(cp, namespace, stream)
            assert pod is not None, stream
            for path in ("/status", "/metrics"):
                url = f"http://{pod['status']['podIP']}:9090{path}"
                code, body = netns.http_get(cp.netns, url)
                assert code == 200, (url, code)
                seen[f"{stream} {path}"] = body.decode()
        operator = running.release.operator_pod()
        assert operator is not None
        code, body = netns.http_get(cp.netns, f"http://{operator['status']['podIP']}:8080/metrics")
        seen["operator metrics"] = body.decode()
        text = {
            name: value if isinstance(value, str) else value.stdout + value.stderr
            for name, value in seen.items()
        }
        assert "kubecast_ingest_accepted" in text["e2e /metrics"]  # we searched real pages
        for secret in (key, PULL_PASSWORD, PULL_TOKEN):
            leaks = [name for name, value in text.items() if secret in value]
            assert not leaks, f"a credential shows in: {leaks}"
    finally:
        publisher.kill()
        publisher.wait()
