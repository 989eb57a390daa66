"""Operator replicas and restarts: no duplicates, no fighting, a standby takes over.

These tests start their own operator processes; no other operator runs meanwhile
(the module-scoped one in test_operator.py is stopped when that module ends).
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import operator_harness as harness
from .conftest import ControlPlane
from .test_operator import apply, get, sample, wait

pytestmark = pytest.mark.integration


def test_restarting_the_operator_mid_reconcile_creates_no_duplicates(
    control_plane: ControlPlane, kubecast_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    streams = []
    for index in range(20):
        stream = sample("livestream-pull.yaml")
        stream["metadata"]["name"] = f"cam-{index:02d}"
        streams.append(stream)
    apply(control_plane, namespace, sample("transcodeprofile-default.yaml"), *streams)
    first, _ = harness.operator(control_plane.env, tmp_path, name="first")
    try:
        wait(
            "some workers",
            lambda: (
                len(
                    json.loads(
                        control_plane.kubectl(
                            "-n", namespace, "get", "deployments", "-o", "json"
                        ).stdout
                    )["items"]
                )
                >= 3
            ),
            first,
            timeout=60,
        )
    finally:
        first.stop(signal.SIGKILL)  # a crash, mid-reconcile
    second, _ = harness.operator(control_plane.env, tmp_path, name="second")
    try:

        def all_children() -> bool:
            kinds = {}
            for kind in ("deployments", "configmaps", "services"):
                items = json.loads(
                    control_plane.kubectl(
                        "-n",
                        namespace,
                        "get",
                        kind,
                        "-l",
                        "app.kubernetes.io/managed-by=kubecast-operator",
                        "-o",
                        "json",
                    ).stdout
                )["items"]
                kinds[kind] = [i["metadata"]["name"] for i in items]
            return (
                len(kinds["deployments"]) == 20
                and len(kinds["configmaps"]) == 20
                and len(kinds["services"]) == 40
            )

        wait("every child of 20 streams", all_children, second, timeout=120)

        def items(kind: str) -> list[dict]:
            doc = control_plane.kubectl("-n", namespace, "get", kind, "-o", "json").stdout
            result: list[dict] = json.loads(doc)["items"]
            return result

        # A Deployment whose spec changed after creation has generation > 1: that is
        # the restarted operator rolling a worker it should have left alone.
        rolled = [
            d["metadata"]["name"] for d in items("deployments") if d["metadata"]["generation"] != 1
        ]
        assert not rolled, f"a restarted operator rolled workers: {rolled}"
        # The Deployment controller makes ReplicaSets on its own time; wait for all
        # of them, then check there is exactly one per stream.
        wait("a ReplicaSet per stream", lambda: len(items("replicasets")) >= 20, second, timeout=60)
        replicasets = items("replicasets")
        assert len(replicasets) == 20, "a restarted operator rolled or duplicated workers"
    finally:
        second.stop()


def test_two_replicas_do_not_fight_and_the_standby_takes_over(
    control_plane: ControlPlane, kubecast_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl(
        "-n", "default", "delete", "lease", "kubecast-operator", "--ignore-not-found"
    )
    one, _ = harness.operator(control_plane.env, tmp_path, name="one")
    two, _ = harness.operator(control_plane.env, tmp_path, name="two")
    try:

        def holder() -> str | None:
            lease = harness.get_json(
                control_plane.kubectl, "-n", "default", "lease", "kubecast-operator"
            )
            return ((lease or {}).get("spec") or {}).get("holderIdentity")

        leader = harness.eventually("a leader", holder, timeout=30)
        standby = two if "leading as" in one.output() else one
        active = one if standby is two else two
        assert "leading as" not in standby.output()
        apply(
            control_plane,
            namespace,
            sample("transcodeprofile-default.yaml"),
            sample("livestream-push.yaml"),
        )
        wait(
            "the worker",
            lambda: get(control_plane, namespace, "deployment", "studio-worker"),
            active,
        )
        active.stop(timeout=5)
        harness.eventually(
            "the standby to lead",
            lambda: holder() not in (None, leader),
            timeout=45,
            logs=standby.output,
        )
        control_plane.kubectl("-n", namespace, "delete", "deployment", "studio-worker")
        wait(
            "the new leader to recreate the worker",
            lambda: get(control_plane, namespace, "deployment", "studio-worker"),
            standby,
            timeout=45,
        )
    finally:
        one.stop()
        two.stop()


# --- fencing: a frozen leader makes no write after a standby took over -------------

WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def _service_account_kubeconfig(cp: ControlPlane, name: str, out: Path) -> Path:
    """A kubeconfig that acts as ServiceAccount ``default/<name>`` (cluster-admin).

    Each replica gets its own, so the API server's audit log tells their
    requests apart by user, kopf's as well as ours.
    """
    cp.kubectl("-n", "default", "create", "serviceaccount", name)
    cp.kubectl(
        "create",
        "clusterrolebinding",
        f"{name}-admin",
        "--clusterrole=cluster-admin",
        f"--serviceaccount=default:{name}",
    )
    token = cp.kubectl("-n", "default", "create", "token", name, "--duration=2h").stdout.strip()
    config = yaml.safe_load(Path(cp.env["KUBECONFIG_NETNS"]).read_text())
    config["users"] = [{"name": name, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = name
    path = out / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _audit(cp: ControlPlane) -> list[dict[str, Any]]:
    path = cp.cluster_dir / "logs" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_frozen_leader_makes_no_write_after_the_standby_took_over(
    control_plane: ControlPlane, kubecast_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    cp.kubectl("-n", "default", "delete", "lease", "kubecast-operator", "--ignore-not-found")
    users = {}
    for name in ("fenced-a", "fenced-b"):
        users[name] = f"system:serviceaccount:default:{name}"
        cp.kubectl("-n", "default", "delete", "serviceaccount", name, "--ignore-not-found")
        cp.kubectl("delete", "clusterrolebinding", f"{name}-admin", "--ignore-not-found")
    configs = {name: _service_account_kubeconfig(cp, name, tmp_path) for name in users}
    names = [f"fenced-{i}" for i in range(10)]
    streams = []
    for name in names:
        stream = sample("livestream-pull.yaml")
        stream["metadata"]["name"] = name
        streams.append(stream)
    first, _ = harness.operator(cp.env, tmp_path, name="a", KUBECONFIG=str(configs["fenced-a"]))
    second: harness.Process | None = None
    try:
        harness.eventually("a to lead", lambda: "leading as" in first.output(), logs=first.output)
        apply(cp, namespace, sample("transcodeprofile-default.yaml"), *streams)

        def deployments() -> set[str]:
            doc = cp.kubectl("-n", namespace, "get", "deployments", "-o", "json").stdout
            return {d["metadata"]["name"] for d in json.loads(doc)["items"]}

        every = {f"{n}-worker" for n in names}
        wait("a's children", lambda: every <= deployments(), first, timeout=90)
        second, _ = harness.operator(
            cp.env, tmp_path, name="b", KUBECONFIG=str(configs["fenced-b"])
        )
        harness.eventually(
            "b to stand by", lambda: "standing by" in second.output(), logs=second.output
        )  # fmt: skip

        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGSTOP)
        frozen = datetime.now(UTC)
        harness.eventually(
            "b to take the lease over",
            lambda: "leading as" in second.output(),
            timeout=45,
            logs=second.output,
        )
        took_over = [
            _at(e["requestReceivedTimestamp"])
            for e in _audit(cp)
            if e.get("user", {}).get("username") == users["fenced-b"]
            and e.get("objectRef", {}).get("resource") == "leases"
            and e["verb"] in ("update", "patch")
            and e["responseStatus"]["code"] == 200
        ]
        assert took_over, "b's lease update is not in the audit log"
        takeover = min(took_over)
        # The lease waited out: at least its 15 s since a's last renewal.
        assert (takeover - frozen).total_seconds() >= 15 - 2.5, (frozen, takeover)

        # Work a's reconcilers would do, had they woken up still acting: a changed
        # spec and a deleted child. b does it.
        changed = {**streams[0], "spec": {**streams[0]["spec"], "reconnectWindowSeconds": 77}}
        apply(cp, namespace, changed)
        cp.kubectl("-n", namespace, "delete", "deployment", f"{names[1]}-worker")

        def b_reconciled() -> bool:
            config = harness.get_json(
                cp.kubectl, "-n", namespace, "configmap", f"{names[0]}-worker-config"
            )
            window = (
                config and yaml.safe_load(config["data"]["worker.yaml"])["reconnectWindowSeconds"]
            )
            return window == 77 and every <= deployments()

        wait("b to reconcile the changes", b_reconciled, second, timeout=60)

        os.kill(first.proc.pid, signal.SIGCONT)
        code = first.proc.wait(timeout=30)
        assert code == 1, first.output()[-3000:]
        assert "stopped leading: " in first.output(), first.output()[-3000:]

        events = _audit(cp)
        by_a = [e for e in events if e.get("user", {}).get("username") == users["fenced-a"]]
        assert any(e["verb"] in WRITES for e in by_a), "a's own writes are not in the audit log"
        late = [
            f"{e['verb']} {e['requestURI']} at {e['requestReceivedTimestamp']}"
            for e in by_a
            if e["verb"] in WRITES and _at(e["requestReceivedTimestamp"]) >= takeover
        ]
        assert late == [], f"the old leader wrote after the takeover at {takeover}: {late}"
        assert any(
            e.get("user", {}).get("username") == users["fenced-b"] and e["verb"] in WRITES
            and _at(e["requestReceivedTimestamp"]) > takeover
            and e.get("objectRef", {}).get("resource") != "leases"
            for e in events
        ), "b made no write after taking over"  # fmt: skip
    finally:
        if first.proc is not None and first.proc.poll() is None:
            os.kill(first.proc.pid, signal.SIGCONT)
        first.stop()
        if second is not None:
            second.stop()
        for name in users:
            cp.kubectl("-n", "default", "delete", "serviceaccount", name, "--ignore-not-found")
            cp.kubectl("delete", "clusterrolebinding", f"{name}-admin", "--ignore-not-found")
