"""`helm upgrade` and `helm uninstall` of a release with a live stream, on the real node.

Its own module: the release here must be the only operator while it runs (the
other modules install theirs for their own duration).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from . import operator_harness as harness
from . import release as rel
from .conftest import ControlPlane
from .test_live_stream_e2e import PROFILE, publish, ready_to_publish, status, stream_key
from .test_real_node import STREAM

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def start_stream(cp: ControlPlane, release: rel.Release, namespace: str) -> dict[str, Any]:
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([PROFILE, STREAM]))
    return ready_to_publish(cp, namespace, lambda: release.logs(namespace))


def test_helm_upgrade_rolls_the_operator_and_leaves_live_streams_alone(
    control_plane: ControlPlane, kubecast_crds: list[str], kubecast_images: dict[str, str],
    namespace: str,
) -> None:  # fmt: skip
    cp = control_plane
    release = rel.install(cp, name="upgrade", namespace=f"{namespace[:40]}-op")
    try:
        logs = lambda: release.logs(namespace)  # noqa: E731
        ready = start_stream(cp, release, namespace)
        key = stream_key(cp, namespace, ready["streamKeySecret"])
        publisher = publish(f"{ready['ingestUrl']}/{key}", seconds=90)
        try:
            harness.eventually(
                "Live", lambda: status(cp, namespace).get("phase") == "Live", timeout=60,
                logs=logs,
            )  # fmt: skip
            worker = rel.worker_pod(cp, namespace, "e2e")
            operator = release.operator_pod()
            assert worker is not None and operator is not None
            # A new operator image: the same build under the next tag, as a registry would have.
            base = rel.image_of(release, "operator").rsplit(":", 1)[0]
            if "." not in base.split("/", 1)[0]:
                base = f"docker.io/{base}"  # how containerd names a short reference
            subprocess.run(
                ["nsenter", f"--net={cp.netns}", "--", "ctr", "--address",
                 cp.env["CONTAINERD_ADDRESS"], "-n", "k8s.io", "images", "tag", "--force",
                 f"{base}:0.1.0", f"{base}:0.1.1"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            master = ready["playbackUrl"]
            sequence_before = rel.media_sequence(master)
            rel.helm(
                cp,
                "upgrade",
                "upgrade",
                str(rel.CHART),
                "-n",
                release.namespace,
                "--reuse-values",
                "--set",
                "image.tag=0.1.1",
                "--wait",
                "--timeout",
                "180s",
            )
            harness.eventually(
                "the new operator leading",
                lambda: (p := release.operator_pod())
                and p["spec"]["containers"][0]["image"].endswith(":0.1.1")
                and all(c.get("ready") for c in p["status"].get("containerStatuses", [])),
                timeout=120, logs=release.operator_log,
            )  # fmt: skip
            # The stream never noticed: same worker pod, no restart, still live and growing.
            after = rel.worker_pod(cp, namespace, "e2e")
            assert after is not None and after["metadata"]["uid"] == worker["metadata"]["uid"]
            assert after["status"]["containerStatuses"][0]["restartCount"] == 0
            assert status(cp, namespace)["phase"] == "Live"
            assert rel.media_sequence(master) > sequence_before
        finally:
            publisher.kill()
            publisher.wait()
    except BaseException:
        rel.uninstall(release)
        raise
    # Uninstalled as a user does, with helm alone (rel.uninstall also deletes the
    # streams first, for the next module): the streams must stay.
    rel.helm(cp, "uninstall", release.name, "-n", release.namespace, "--wait",
             "--timeout", "120s")  # fmt: skip
    try:
        assert_only_the_streams_stay(cp, namespace)
    finally:
        forget(cp, namespace, release.namespace)


def assert_only_the_streams_stay(cp: ControlPlane, namespace: str) -> None:
    """What stays: the CRDs (and with them everyone's streams); nothing of the release."""
    selector = "app.kubernetes.io/instance=upgrade"
    left = cp.kubectl(
        "get", "-A", "-l", selector, "-o", "name",
        "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,"
        "clusterroles,clusterrolebindings,configmaps,networkpolicies,"
        "poddisruptionbudgets",
    ).stdout.split()  # fmt: skip
    harness.eventually(
        "nothing of the release left",
        lambda: not cp.kubectl(
            "get", "-A", "-l", selector, "-o", "name", "deployments,pods,clusterroles"
        ).stdout.split(),
        timeout=60,
    )  # fmt: skip
    assert all("pod/" in name or "replicaset" in name for name in left), left
    assert harness.get_json(cp.kubectl, "-n", namespace, "livestream", "e2e") is not None


def forget(cp: ControlPlane, *namespaces: str) -> None:
    """With no operator left to finalize them, drop the kept objects' finalizers and
    the release's namespace, so that nothing is left terminating for the next module."""
    for ns in namespaces:
        for name in cp.kubectl(
            "-n", ns, "get", "livestreams,recordings,transcodeprofiles", "-o", "name",
            check=False,
        ).stdout.split():  # fmt: skip
            cp.kubectl("-n", ns, "patch", name, "--type", "merge",
                       "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    cp.kubectl("delete", "namespace", namespaces[-1], "--wait=true", "--timeout=120s",
               check=False, timeout=150)  # fmt: skip
