"""The operator killed mid-reconcile, again and again; the API server restarted under it.

50 LiveStreams, their media pods on the kwok nodes (nothing runs there: the test
sees what the operator does, not what a worker does). Before every start of the
operator, the test gives it work: a new spec for every stream, children deleted,
streams deleted and created. It kills the operator (SIGKILL, a crash) once it has
started on that work and before it has finished, ten times. A last operator then
runs undisturbed, and the cluster must hold exactly what the streams ask for: one
of each child per stream, every child owned by an object that exists, every status
current. Leader election is off (``--no-leader-election``): a new process would
wait out the dead one's lease (15 s) each time, which is not what is tested here;
tests/integration/test_operator_replicas.py tests the handover.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import operator_harness as harness
from .conftest import ControlPlane
from .test_operator import sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STREAMS = 50
KILLS = 10
#: Children per stream, by kind (the push ingest gets a generated key Secret).
CHILDREN = {"Deployment": 1, "ConfigMap": 1, "Service": 2, "Secret": 1}
MANAGED = "app.kubernetes.io/managed-by=kubecast-operator"
#: Long, so that only watches (not the periodic resync) can explain a quick reaction.
RESYNC_S = "600"
OPERATOR_ARGS = ("--no-leader-election",)


def stream(name: str, window: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": name},
        "spec": {
            "ingest": {"push": {"app": "live"}},
            "profileRef": {"name": "default"},
            "reconnectWindowSeconds": window,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        },
    }


def items(cp: ControlPlane, namespace: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    doc = cp.kubectl("-n", namespace, "get", kind, *selector, "-o", "json", timeout=120).stdout
    result: list[dict[str, Any]] = json.loads(doc)["items"]
    return result


def apply_all(cp: ControlPlane, namespace: str, docs: list[dict[str, Any]]) -> None:
    cp.kubectl(
        "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=120
    )  # fmt: skip


def worker_window(config_map: dict[str, Any]) -> int:
    """The reconnect window the worker would run with, from its rendered config."""
    return int(yaml.safe_load(config_map["data"]["worker.yaml"])["reconnectWindowSeconds"])


def progress(cp: ControlPlane, namespace: str, window: int) -> tuple[int, int]:
    """(streams whose worker config has ``window``, streams whose status is current)."""
    configs = items(cp, namespace, "configmaps", "-l", MANAGED)
    done = sum(1 for c in configs if worker_window(c) == window)
    current = sum(
        1
        for s in items(cp, namespace, "livestreams")
        if (s.get("status") or {}).get("observedGeneration") == s["metadata"]["generation"]
    )
    return done, current


def test_ten_kills_mid_reconcile_leave_no_duplicate_no_orphan_and_status_converges(
    control_plane: ControlPlane, kubecast_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    rng = random.Random(20261202)
    names = [f"cam-{i:02d}" for i in range(STREAMS)]
    apply_all(cp, namespace, [sample("transcodeprofile-default.yaml")])
    apply_all(cp, namespace, [stream(n, 30) for n in names])
    rounds: list[dict[str, Any]] = []
    window = 30
    for round_ in range(KILLS):
        # Work for the operator, made while no operator runs.
        if round_ > 0:
            window = 30 + round_
            apply_all(cp, namespace, [stream(n, window) for n in names])
            victims = rng.sample(items(cp, namespace, "deployments,services,configmaps",
                                       "-l", MANAGED), 4)  # fmt: skip
            for child in victims:
                cp.kubectl("-n", namespace, "delete", child["kind"].lower(),
                           child["metadata"]["name"], "--wait=false")  # fmt: skip
        if round_ == 3:  # streams deleted while no operator runs: their finalizer waits
            gone = names[-5:]
            names = names[:-5]
            cp.kubectl("-n", namespace, "delete", "livestream", *gone, "--wait=false")
        if round_ == 6:  # and new ones created
            names += [f"new-{i}" for i in range(5)]
            apply_all(cp, namespace, [stream(n, window) for n in names])
        op, _ = harness.operator(
            cp.env, tmp_path, name=f"op-{round_}", args=OPERATOR_ARGS,
            KUBECAST_RESYNC_SECONDS=RESYNC_S,
        )  # fmt: skip
        started = time.monotonic()
        try:
            # Kill it once it has begun (a first stream done), at a random point after.
            def at_work(w: int = window) -> bool:
                return progress(cp, namespace, w)[0] > 0

            harness.eventually(
                "the operator at work", at_work, timeout=120, interval=0.2, logs=op.output
            )
            # NB: the operator reads its children from its watches and applies only
            # what changed, so 50 streams take it a second or two: kill it soon.
            time.sleep(rng.uniform(0, 0.5))
        finally:
            op.stop(signal.SIGKILL)
        done, current = progress(cp, namespace, window)
        rounds.append({"round": round_, "alive_s": round(time.monotonic() - started, 1),
                       "configs_done": done, "status_current": current,
                       "streams": len(names)})  # fmt: skip
    print(json.dumps(rounds))
    # The kills were mid-reconcile: most rounds left work undone.
    assert sum(1 for r in rounds if r["configs_done"] < r["streams"]) >= KILLS // 2, rounds

    final, _ = harness.operator(
        cp.env, tmp_path, name="final", args=OPERATOR_ARGS, KUBECAST_RESYNC_SECONDS=RESYNC_S
    )
    try:
        converge_started = time.monotonic()
        harness.eventually(
            "every stream converged",
            lambda: converged(cp, namespace, names, window),
            timeout=180, interval=1, logs=final.output,
        )  # fmt: skip
        print(f"converged {time.monotonic() - converge_started:.1f}s after the last start")
        assert_exact_children(cp, namespace, names)

        # The API server restarts under the running operator: its watches must
        # recover by themselves (the resync is 10 minutes away).
        pid = final.proc.pid if final.proc else None
        away = cp.restart_apiserver()
        restarted = time.monotonic()
        # NB: the leader rides out an API server that is back within its renew
        # deadline (10 s); a longer absence restarts it by design (leader.py).
        print(f"the API server restarted in {away:.1f}s")
        target = names[0]
        apply_all(cp, namespace, [stream(target, 99)])
        cp.kubectl("-n", namespace, "delete", "service", f"{names[1]}-playback")

        def reconciled() -> bool:
            config = harness.get_json(
                cp.kubectl, "-n", namespace, "configmap", f"{target}-worker-config"
            )
            service = harness.get_json(
                cp.kubectl, "-n", namespace, "service", f"{names[1]}-playback"
            )
            return bool(config and worker_window(config) == 99 and service)

        harness.eventually(
            "a change after the API server restart reconciled",
            reconciled,
            timeout=90,
            interval=0.5,
            logs=final.output,
        )
        print(f"reconciled {time.monotonic() - restarted:.1f}s after the API server restart")
        assert final.proc is not None and final.proc.poll() is None and final.proc.pid == pid
    finally:
        final.stop()


def converged(cp: ControlPlane, namespace: str, names: list[str], window: int) -> bool:
    streams = {s["metadata"]["name"]: s for s in items(cp, namespace, "livestreams")}
    if sorted(streams) != sorted(names):
        return False  # a deleted stream still there (its finalizer not yet run)
    for s in streams.values():
        status = s.get("status") or {}
        if status.get("observedGeneration") != s["metadata"]["generation"]:
            return False
        if not status.get("phase") or not status.get("ingestUrl"):
            return False
    configs = items(cp, namespace, "configmaps", "-l", MANAGED)
    if len(configs) != len(names) or any(worker_window(c) != window for c in configs):
        return False
    deployments = items(cp, namespace, "deployments", "-l", MANAGED)
    return len(deployments) == len(names) and all(
        (d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
        and (d.get("status") or {}).get("updatedReplicas") == 1
        and (d.get("status") or {}).get("replicas") == 1
        for d in deployments
    )


def assert_exact_children(cp: ControlPlane, namespace: str, names: list[str]) -> None:
    streams = {s["metadata"]["uid"]: s for s in items(cp, namespace, "livestreams")}
    by_stream: Counter[tuple[str, str]] = Counter()
    objects = items(cp, namespace, "deployments,services,configmaps,secrets", "-l", MANAGED)
    for child in objects:
        owners = child["metadata"].get("ownerReferences") or []
        assert len(owners) == 1, child["metadata"]
        owner = streams.get(owners[0]["uid"])
        assert owner is not None, f"orphan {child['kind']} {child['metadata']['name']}"
        assert owners[0]["controller"] is True
        by_stream[(owner["metadata"]["name"], child["kind"])] += 1
    expected = Counter({(n, kind): count for n in names for kind, count in CHILDREN.items()})
    assert by_stream == expected, by_stream - expected or expected - by_stream

    # The workers' own objects: each owned by one that exists, one live pod a stream.
    deployments = {d["metadata"]["uid"] for d in items(cp, namespace, "deployments")}
    replicasets = items(cp, namespace, "replicasets")
    for rs in replicasets:
        (owner,) = rs["metadata"]["ownerReferences"]
        assert owner["uid"] in deployments, f"orphan ReplicaSet {rs['metadata']['name']}"
    rs_uids = {rs["metadata"]["uid"] for rs in replicasets}
    pods = [p for p in items(cp, namespace, "pods") if not p["metadata"].get("deletionTimestamp")]
    for pod in pods:
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["uid"] in rs_uids, f"orphan pod {pod['metadata']['name']}"
    per_stream = Counter(p["metadata"]["labels"].get("kubecast.dev/stream") for p in pods)
    assert per_stream == Counter(dict.fromkeys(names, 1)), per_stream


def test_a_deleted_child_comes_back_from_its_watch_event_not_the_resync(
    control_plane: ControlPlane, kubecast_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    """The resync is 10 minutes away: only the child's DELETED event can explain a
    quick return. (A deleted ConfigMap is not watched; the resync brings it back.)"""
    cp = control_plane
    apply_all(cp, namespace, [sample("transcodeprofile-default.yaml"), stream("cam", 30)])
    op, _ = harness.operator(cp.env, tmp_path, args=OPERATOR_ARGS, KUBECAST_RESYNC_SECONDS=RESYNC_S)
    try:
        first = harness.eventually(
            "the children",
            lambda: harness.get_json(cp.kubectl, "-n", namespace, "service", "cam-playback")
            and harness.get_json(cp.kubectl, "-n", namespace, "deployment", "cam-worker"),
            timeout=60, logs=op.output,
        )  # fmt: skip
        for kind, name in (("service", "cam-playback"), ("deployment", "cam-worker")):
            old = harness.get_json(cp.kubectl, "-n", namespace, kind, name)
            assert old is not None
            deleted = time.monotonic()
            cp.kubectl("-n", namespace, "delete", kind, name, "--wait=true")
            harness.eventually(
                f"{kind} {name} recreated",
                lambda kind=kind, name=name, old=old: (
                    (new := harness.get_json(cp.kubectl, "-n", namespace, kind, name))
                    and new["metadata"]["uid"] != old["metadata"]["uid"]
                ),
                timeout=20, interval=0.25, logs=op.output,
            )  # fmt: skip
            print(f"{kind} recreated {time.monotonic() - deleted:.1f}s after its deletion")
        assert first
    finally:
        op.stop()
