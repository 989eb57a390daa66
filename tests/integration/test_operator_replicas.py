"""Operator replicas and restarts: no duplicates, no fighting, a standby takes over.

These tests start their own operator processes; no other operator runs meanwhile
(the module-scoped one in test_operator.py is stopped when that module ends).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

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
