"""What only a real node shows: the pod's security context, Services that route,
restarts by the kubelet, readiness that gates traffic, storage that outlives a pod,
and a `helm upgrade` that leaves live streams alone.

The operator and the workers run as real pods (images built here, `helm install`)
on the local cluster's real node: containerd + runc, the CNI bridge, kube-proxy in
iptables mode, CoreDNS. Each test would fail if the behaviour it names broke.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import operator_harness as harness
from . import release as rel
from .conftest import REPO_ROOT, ControlPlane
from .test_live_stream_e2e import (
    PROFILE,
    publish,
    ready_to_publish,
    service_ready,
    status,
    stream_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

STREAM: dict[str, Any] = {  # LoadBalancer: the host reaches it on a loopback address
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "LiveStream",
    "metadata": {"name": "e2e"},
    "spec": {
        "ingest": {"push": {"app": "live"}},
        "profileRef": {"name": "small"},
        "ingestService": {"type": "LoadBalancer"},
        "playbackService": {"type": "LoadBalancer"},
        "reconnectWindowSeconds": 10,
    },
}


def start_stream(
    cp: ControlPlane, release: rel.Release, namespace: str, **spec: Any
) -> dict[str, Any]:
    """Apply the profile and the stream; wait until a publisher here could push."""
    stream = {**STREAM, "spec": {**STREAM["spec"], **spec}}
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, stream]))
    if stream["spec"]["ingestService"]["type"] == "LoadBalancer":
        return ready_to_publish(cp, namespace, lambda: release.logs(namespace))
    ready: dict[str, Any] = harness.eventually(
        "phase Idle with an ingest URL",
        lambda: (s := status(cp, namespace)).get("phase") == "Idle" and s.get("ingestUrl") and s,
        timeout=90,
        logs=lambda: release.logs(namespace),
    )
    # Idle is what the operator saw at the pod's own address; a Service (its
    # NodePort too) routes once the endpoint is ready and kube-proxy has synced.
    harness.eventually(
        "the ingest Service's endpoint ready",
        lambda: service_ready(cp, namespace, "e2e-ingest"),
        timeout=30,
        logs=lambda: release.logs(namespace),
    )
    time.sleep(1.5)
    return ready


def exec_python(cp: ControlPlane, namespace: str, pod: str, code: str) -> Any:
    """Run Python inside the pod's container (``kubectl exec``); returns its JSON output."""
    out = cp.kubectl("-n", namespace, "exec", pod, "--", "python", "-c", code).stdout
    return json.loads(out)


def test_the_worker_runs_as_10001_with_a_read_only_root_and_writes_only_to_its_volumes(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    start_stream(control_plane, kubecast, namespace)
    pod = rel.worker_pod(control_plane, namespace, "e2e")
    assert pod is not None
    seen = exec_python(
        control_plane, namespace, pod["metadata"]["name"],
        "import json, os\n"
        "def write(path):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); os.remove(path); return 'ok'\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'caps': caps[0],\n"
        "    'root': write('/kubecast-probe'), 'etc': write('/etc/kubecast-probe'),\n"
        "    'media': write('/var/lib/kubecast/media/probe'), 'tmp': write('/tmp/probe')}))",
    )  # fmt: skip
    assert (seen["uid"], seen["gid"]) == (10001, 10001)
    assert seen["caps"] == "0000000000000000", "the container kept capabilities"
    assert seen["root"] == seen["etc"] == "Read-only file system"
    assert seen["media"] == seen["tmp"] == "ok"


def test_services_route_ingest_through_the_node_and_playback_by_cluster_name(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    """Ingest from outside through a NodePort; playback inside the cluster through
    CoreDNS and the ClusterIP, from a pod of its own."""
    cp = control_plane
    ready = start_stream(
        cp, kubecast, namespace, ingestService={"type": "NodePort"},
        playbackService={"type": "ClusterIP"},
    )  # fmt: skip
    service = harness.get_json(cp.kubectl, "-n", namespace, "service", "e2e-ingest")
    assert service is not None
    node_port = service["spec"]["ports"][0]["nodePort"]
    node_ip = cp.env["KUBECAST_NODE_IP"]
    # The status names the node's address and port, as it would on any cluster.
    assert ready["ingestUrl"] == f"rtmp://{node_ip}:{node_port}/live"
    assert ready["playbackUrl"] == (
        f"http://e2e-playback.{namespace}.svc.cluster.local:8080/master.m3u8"
    )
    # The host reaches the node's port through a loopback door of its own.
    door = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "hack" / "tunnel.py"), "--netns", cp.netns,
         "--forward", f"127.0.0.1:0={node_ip}:{node_port}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert door.stdout is not None
        local = door.stdout.readline().split()[0].removeprefix("listen=")
        key = stream_key(cp, namespace, ready["streamKeySecret"])
        publishers = [publish(f"rtmp://{local}/live/{key}", seconds=40)]

        def live() -> bool:
            # A refused first connection (kube-proxy a beat behind): retry, as encoders do.
            if publishers[-1].poll() is not None:
                publishers.append(publish(f"rtmp://{local}/live/{key}", seconds=40))
            return status(cp, namespace).get("phase") == "Live"

        try:
            harness.eventually(
                "Live through the NodePort", live, timeout=60,
                logs=lambda: kubecast.logs(namespace),
            )  # fmt: skip
            image = rel.image_of(kubecast, "worker")
            url = ready["playbackUrl"]
            code = (
                "import time, urllib.request\n"
                "for _ in range(30):\n"
                "    try:\n"
                f"        body = urllib.request.urlopen({url!r}, timeout=3).read()\n"
                "        if b'EXT-X-STREAM-INF' in body: print(body.decode()); break\n"
                "    except OSError as e: print('retry', e)\n"
                "    time.sleep(1)\n"
                "else: raise SystemExit('no master playlist')\n"
            )
            phase, log = rel.run_pod(cp, namespace, "player", image, ["python", "-c", code])
            assert phase == "Succeeded", log
            assert "RESOLUTION=640x360" in log
        finally:
            for publisher in publishers:
                publisher.kill()
                publisher.wait()
    finally:
        door.kill()
        door.wait()


def test_a_killed_worker_is_restarted_by_the_kubelet_and_status_says_so(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    cp = control_plane
    logs = lambda: kubecast.logs(namespace)  # noqa: E731
    ready = start_stream(cp, kubecast, namespace)
    key = stream_key(cp, namespace, ready["streamKeySecret"])
    url = f"{ready['ingestUrl']}/{key}"
    publisher = publish(url, seconds=60)
    try:
        harness.eventually(
            "Live", lambda: status(cp, namespace).get("phase") == "Live", timeout=60, logs=logs
        )
        pod = rel.worker_pod(cp, namespace, "e2e")
        assert pod is not None
        os.kill(rel.container_pid(cp, pod, "worker"), signal.SIGKILL)
        restarted = harness.eventually(
            "the restart in status",
            lambda: (s := status(cp, namespace)).get("workerRestarts") == 1 and s,
            timeout=60, logs=logs,
        )  # fmt: skip
        assert "exit code 137" in restarted["lastWorkerExit"], restarted
        after = rel.worker_pod(cp, namespace, "e2e")
        assert after is not None and after["metadata"]["uid"] == pod["metadata"]["uid"]
    finally:
        publisher.kill()
        publisher.wait()
    # The restarted container found its playlists open on the pod's volume: it
    # waits for the publisher as on any reconnect, and players keep their place.
    harness.eventually(
        "Reconnecting after the restart",
        lambda: status(cp, namespace).get("phase") == "Reconnecting",
        timeout=60, logs=logs,
    )  # fmt: skip
    # NB: the worker says Reconnecting (the operator reads it at the pod's own
    # address) before the restarted container passes its readiness probe; until
    # then the playback Service has no ready endpoint and refuses.
    harness.eventually(
        "the playback Service's endpoint ready again",
        lambda: service_ready(cp, namespace, "e2e-playback"),
        timeout=60, logs=logs,
    )  # fmt: skip

    def sequence() -> tuple[int] | None:
        try:  # kube-proxy may take a moment more to route to the ready endpoint
            return (rel.media_sequence(ready["playbackUrl"]),)
        except OSError:
            return None

    (sequence_before,) = harness.eventually(
        "the playlist through the playback Service", sequence, timeout=30, logs=logs
    )
    # The publisher's next connection works: the restarted worker goes Live again.
    publisher = publish(url, seconds=40)
    try:
        live = harness.eventually(
            "Live again after the restart",
            lambda: (s := status(cp, namespace)).get("phase") == "Live" and s,
            timeout=60, logs=logs,
        )  # fmt: skip
        assert live["workerRestarts"] == 1
        assert rel.media_sequence(ready["playbackUrl"]) >= sequence_before  # not started over
    finally:
        publisher.kill()
        publisher.wait()


def test_readiness_gates_traffic(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    """A worker that stops answering its probes leaves the Service; back, it returns."""
    cp = control_plane
    ready = start_stream(cp, kubecast, namespace)
    playback = ready["playbackUrl"].rsplit("/", 1)[0] + "/healthz"
    pod = rel.worker_pod(cp, namespace, "e2e")
    assert pod is not None

    def endpoint_ready() -> bool | None:
        slices = json.loads(
            cp.kubectl(
                "-n", namespace, "get", "endpointslices", "-l",
                "kubernetes.io/service-name=e2e-playback", "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        states = [e["conditions"].get("ready") for s in slices for e in s.get("endpoints") or []]
        return states[0] if states else None

    def answers() -> bool:
        try:
            return rel_get(playback) == 200
        except OSError:
            return False

    assert endpoint_ready() is True and answers()
    pid = rel.container_pid(cp, pod, "worker")
    os.kill(pid, signal.SIGSTOP)  # frozen: probes time out, the process stays
    try:
        harness.eventually("the endpoint not ready", lambda: endpoint_ready() is False, timeout=60)
        # kube-proxy now refuses the Service at once, instead of hanging on a frozen pod.
        harness.eventually("the Service refusing", lambda: not answers(), timeout=15)
    finally:
        os.kill(pid, signal.SIGCONT)
    harness.eventually("the endpoint ready again", lambda: endpoint_ready() is True, timeout=60)
    harness.eventually("the Service answering again", answers, timeout=15)
    after = rel.worker_pod(cp, namespace, "e2e")
    assert after is not None
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0, "readiness only"


def rel_get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=3) as response:
        return int(response.status)


def test_a_recording_survives_its_pod_being_deleted_and_recreated(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    cp = control_plane
    logs = lambda: kubecast.logs(namespace)  # noqa: E731
    recording = {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "Recording",
        "metadata": {"name": "show"},
        "spec": {"streamRef": {"name": "e2e"}, "formats": ["hls", "mp4"],
                 "rendition": "180p", "storage": {"size": "1Gi"}},
    }  # fmt: skip
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(recording))
    ready = start_stream(cp, kubecast, namespace)
    key = stream_key(cp, namespace, ready["streamKeySecret"])
    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=90)

    def recorded() -> dict[str, Any]:
        doc = harness.get_json(cp.kubectl, "-n", namespace, "recording", "show")
        result: dict[str, Any] = (doc or {}).get("status") or {}
        return result

    try:
        before = harness.eventually(
            "a few seconds recorded",
            lambda: (s := recorded()).get("phase") == "Recording"
            and (s.get("durationSeconds") or 0) >= 4 and s,
            timeout=90, logs=logs,
        )  # fmt: skip
        old = harness.get_json(cp.kubectl, "-n", namespace, "pod", "show-recorder")
        assert old is not None
        cp.kubectl("-n", namespace, "delete", "pod", "show-recorder", "--wait=true",
                   "--timeout=90s")  # fmt: skip
        harness.eventually(
            "a new recorder pod",
            lambda: (p := harness.get_json(cp.kubectl, "-n", namespace, "pod", "show-recorder"))
            and p["metadata"]["uid"] != old["metadata"]["uid"]
            and p["status"].get("phase") == "Running",
            timeout=60, logs=logs,
        )  # fmt: skip
        # The new pod resumes the same recording on the same claim: it keeps
        # what the first pod wrote and goes on growing.
        harness.eventually(
            "the resumed recording growing past what it had",
            lambda: (s := recorded()).get("phase") == "Recording"
            and (s.get("durationSeconds") or 0) >= before["durationSeconds"] + 4,
            timeout=90, logs=logs,
        )  # fmt: skip
    finally:
        publisher.kill()
        publisher.wait()
    pvc = harness.get_json(cp.kubectl, "-n", namespace, "pvc", "show-data")
    assert pvc is not None
    pv = harness.get_json(cp.kubectl, "pv", pvc["spec"]["volumeName"])
    assert pv is not None and pv["spec"]["hostPath"]["path"].startswith(str(cp.cluster_dir))
    playlists = list(Path(pv["spec"]["hostPath"]["path"]).rglob("*.m3u8"))
    assert playlists, "no playlist on the node's disk"
