"""Faults on the real node that a recording must survive (docs/reliability.md).

A recorder pod that is evicted (a node drain, a kubelet under pressure) or deleted gets
SIGTERM and its grace period: it writes out what it has, and the pod the operator
makes next resumes the same Recording on the same claim. When the Recording ends,
its MP4 holds both parts.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import m3u8
import pytest
import yaml

from . import operator_harness as harness
from . import release as rel
from .conftest import ControlPlane
from .test_live_stream_e2e import PROFILE, claim_directory, publish, stream_key
from .test_real_node import start_stream

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
SEGMENT_S = PROFILE["spec"]["segmentSeconds"]


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types in file order (faststart: moov before mdat)."""
    boxes, data = [], path.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def duration_of(path: Path) -> float:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return float(json.loads(probe.stdout)["format"]["duration"])


def evict(cp: ControlPlane, namespace: str, pod: str) -> None:
    """What `kubectl drain` does to a pod: the Eviction API, not a plain delete."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    cp.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input=json.dumps(eviction),
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["evicted", "deleted"])
def test_a_recorder_pod_that_goes_away_keeps_what_it_has_and_the_next_pod_resumes(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str, fault: str
) -> None:
    """Evicted (the Eviction API, as `kubectl drain` uses) or deleted (`kubectl delete
    pod`, graceful): either way the pod gets SIGTERM and its grace period (60 s)."""
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
    publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=120)

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
        data = claim_directory(cp, namespace, "show-data")
        pvc = harness.get_json(cp.kubectl, "-n", namespace, "pvc", "show-data")
        assert pvc is not None
        cp.kubectl(
            "patch", "pv", pvc["spec"]["volumeName"],
            "-p", '{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}',
        )  # fmt: skip
        old = harness.get_json(cp.kubectl, "-n", namespace, "pod", "show-recorder")
        assert old is not None
        faulted = time.monotonic()
        if fault == "evicted":
            evict(cp, namespace, "show-recorder")
        else:
            cp.kubectl("-n", namespace, "delete", "pod", "show-recorder", "--wait=false")
        harness.eventually(
            f"the {fault} pod gone",
            lambda: (
                (p := harness.get_json(cp.kubectl, "-n", namespace, "pod", "show-recorder"))
                is None
                or p["metadata"]["uid"] != old["metadata"]["uid"]
            ),
            timeout=90, logs=logs,
        )  # fmt: skip
        gone_s = time.monotonic() - faulted
        # What the pod had is on the claim, playable: nothing was lost.
        kept = data / "recording.mp4"
        assert kept.exists(), sorted(p.name for p in data.iterdir())
        boxes = top_level_boxes(kept)
        assert boxes.index("moov") < boxes.index("mdat"), boxes
        kept_s = duration_of(kept)
        assert kept_s >= before["durationSeconds"] - SEGMENT_S

        harness.eventually(
            "a new recorder pod resuming the same recording",
            lambda: (s := recorded()).get("phase") == "Recording"
            and (s.get("durationSeconds") or 0) >= before["durationSeconds"] + 4,
            timeout=120, logs=logs,
        )  # fmt: skip
        resumed_s = time.monotonic() - faulted
    finally:
        publisher.kill()
        publisher.wait()

    # Ending the Recording completes it: the MP4 now covers both parts.
    cp.kubectl("-n", namespace, "delete", "recording", "show", "--timeout=120s", timeout=150)
    playlist = m3u8.loads((data / "recording.m3u8").read_text())
    assert playlist.is_endlist
    assert any(s.discontinuity for s in playlist.segments), "no discontinuity at the gap"
    recorded_seconds = sum(float(s.duration) for s in playlist.segments)
    final = data / "recording.mp4"
    boxes = top_level_boxes(final)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert duration_of(final) == pytest.approx(recorded_seconds, abs=SEGMENT_S)
    assert recorded_seconds >= before["durationSeconds"] + 4
    print({"fault": fault, "recorded_before_s": before["durationSeconds"],
           "kept_mp4_s": round(kept_s, 2), "pod_gone_after_s": round(gone_s, 1),
           "recording_again_after_s": round(resumed_s, 1),
           "playlist_s": round(recorded_seconds, 2), "final_mp4_s": round(duration_of(final), 2),
           "discontinuities": sum(1 for s in playlist.segments if s.discontinuity)})  # fmt: skip
    events = json.loads(
        cp.kubectl(
            "-n", namespace, "get", "events", "-o", "json",
            "--field-selector", "involvedObject.name=show,reason=Finalized",
        ).stdout
    )["items"]  # fmt: skip
    assert events and "recording Completed" in events[0]["message"], events
