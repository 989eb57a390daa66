"""kubecast installed the way a user installs it: images built here, `helm install`.

The operator and every worker run as real pods from the built images on the
cluster's real node (containerd, runc, the CNI bridge, kube-proxy, CoreDNS).
Publishers and players on the host reach them through the loopback addresses
that hack/tunnel.py gives LoadBalancer Services.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import operator_harness as harness
from .conftest import REPO_ROOT, ControlPlane

CHART = REPO_ROOT / "charts" / "kubecast"
IMAGES_TIMEOUT_S = 30 * 60  # cold: bootstrap a Debian base, then pip installs


def build_images(cp: ControlPlane) -> dict[str, str]:
    """``make images`` (cached: seconds when nothing changed), then load them into the node."""
    built = subprocess.run(
        [str(REPO_ROOT / "hack" / "images.sh")],
        capture_output=True, text=True, timeout=IMAGES_TIMEOUT_S, env=cp.env,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.fail(f"hack/images.sh failed:\n{built.stderr[-4000:]}", pytrace=False)
    archives = dict(
        line.split("=", 1) for line in built.stdout.splitlines() if line.count("=") == 1
    )
    load = subprocess.run(
        [str(REPO_ROOT / "hack" / "cluster-up.sh"), "--load-images"],
        capture_output=True, text=True, timeout=300, env=cp.env,
    )  # fmt: skip
    if load.returncode != 0:
        pytest.fail(f"loading the images failed:\n{load.stderr[-4000:]}", pytrace=False)
    return archives


def helm(cp: ControlPlane, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cp.bin_dir / "helm"), *args],
        capture_output=True, text=True, timeout=timeout, env=cp.env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Release:
    """A helm release of the chart, with its operator running as a pod."""

    cp: ControlPlane
    name: str
    namespace: str

    def operator_pod(self) -> dict[str, Any] | None:
        pods = harness.get_json(
            self.cp.kubectl, "-n", self.namespace, "pods", "-l",
            f"app.kubernetes.io/instance={self.name}",
        )  # fmt: skip
        running = [
            p for p in (pods or {}).get("items", [])
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        return running[0] if running else None

    def operator_log(self) -> str:
        proc = self.cp.kubectl(
            "-n", self.namespace, "logs", "-l", f"app.kubernetes.io/instance={self.name}",
            "--tail=-1", "--prefix", check=False,
        )  # fmt: skip
        return proc.stdout + proc.stderr

    def logs(self, namespace: str | None = None) -> str:
        """The operator's log, and the media pods' logs of ``namespace``: for failures."""
        out = self.operator_log()[-4000:]
        if namespace:
            media = self.cp.kubectl(
                "-n", namespace, "logs", "-l", "app.kubernetes.io/managed-by=kubecast-operator",
                "--tail=60", "--prefix", "--all-containers", check=False,
            )  # fmt: skip
            out += "\n--- media pods\n" + media.stdout[-6000:] + media.stderr[-1000:]
            events = self.cp.kubectl("-n", namespace, "get", "events", check=False).stdout
            out += "\n--- events\n" + events[-3000:]
        return out


def install(
    cp: ControlPlane, *, name: str = "kubecast", namespace: str = "kubecast-system", **values: str
) -> Release:
    """``helm install`` the chart with the images built here; waits for the operator pod."""
    sets = {
        # The session's CRDs come from crds/ (the kubecast_crds fixture): managed
        # outside the release, as in a cluster with several releases.
        "crds.enabled": "false",
        "operator.pollSeconds": "1",
        "operator.resyncSeconds": "10",
        "operator.statusFiguresSeconds": "2",
        **values,
    }
    # The previous module's release namespace may still be terminating (its
    # uninstall waits 120 s for it): a namespace being deleted refuses new objects.
    harness.eventually(
        f"namespace {namespace} gone",
        lambda: cp.kubectl("get", "namespace", namespace, check=False).returncode != 0,
        timeout=300,
    )
    args = ["install", name, str(CHART), "-n", namespace, "--create-namespace", "--wait",
            "--timeout", "180s"]  # fmt: skip
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    helm(cp, *args)
    release = Release(cp, name, namespace)
    harness.eventually(
        "the operator pod Running and leading",
        lambda: (
            (pod := release.operator_pod())
            and all(c.get("ready") for c in pod["status"].get("containerStatuses", []))
        ),
        timeout=120,
        logs=release.operator_log,
    )
    return release


def uninstall(release: Release) -> None:
    # First what the operator finalizes, while it still runs: the chart keeps its
    # default profile on uninstall, and a stream a test namespace was deleting
    # waits for the operator too. Without the operator their finalizers stay and
    # the namespaces they are in never finish terminating.
    release.cp.kubectl(
        "delete", "livestreams,recordings,transcodeprofiles", "--all", "--all-namespaces",
        "--wait=true", "--timeout=120s", check=False, timeout=150,
    )  # fmt: skip
    helm(release.cp, "uninstall", release.name, "-n", release.namespace, "--wait",
         "--timeout", "120s")  # fmt: skip
    # Wait: the next module installs into a namespace of the same name, and a
    # namespace still terminating refuses new objects.
    release.cp.kubectl(
        "delete", "namespace", release.namespace, "--wait=true", "--timeout=120s",
        check=False, timeout=150,
    )  # fmt: skip


def pod_of(cp: ControlPlane, namespace: str, selector: str) -> dict[str, Any] | None:
    """The one running, not terminating, pod matching ``selector``."""
    doc = json.loads(
        cp.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    )
    pods = [
        p for p in doc["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    return pods[0] if len(pods) == 1 else None


def worker_pod(cp: ControlPlane, namespace: str, stream: str) -> dict[str, Any] | None:
    return pod_of(cp, namespace, f"kubecast.dev/stream={stream},app.kubernetes.io/component=worker")


def container_pid(cp: ControlPlane, pod: dict[str, Any], container: str) -> int:
    """The host pid of a container's main process, from containerd (as a node admin would)."""
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
    container_id = status["containerID"].removeprefix("containerd://")
    tasks = subprocess.run(
        ["nsenter", f"--net={cp.netns}", "--", "ctr", "--address", cp.env["CONTAINERD_ADDRESS"],
         "-n", "k8s.io", "tasks", "ls"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for line in tasks.splitlines():
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"containerd has no task {container_id}:\n{tasks}")


def run_pod(
    cp: ControlPlane,
    namespace: str,
    name: str,
    image: str,
    command: list[str],
    timeout: float = 120,
) -> tuple[str, str]:
    """Run a one-shot pod to completion; returns (phase, log)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip
    cp.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod))
    phase = harness.eventually(
        f"pod {name} to finish",
        lambda: (
            (doc := harness.get_json(cp.kubectl, "-n", namespace, "pod", name))
            and doc["status"].get("phase") in ("Succeeded", "Failed")
            and doc["status"]["phase"]
        ),
        timeout=timeout,
    )
    log = cp.kubectl("-n", namespace, "logs", name, check=False)
    return phase, log.stdout + log.stderr


def image_of(release: Release, component: str = "worker") -> str:
    """The image the release runs for ``component`` (operator or worker)."""
    pod = release.operator_pod()
    assert pod is not None
    container = pod["spec"]["containers"][0]
    if component == "operator":
        return str(container["image"])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return str(env["KUBECAST_WORKER_IMAGE"])


def kubeconfig_path(cp: ControlPlane) -> Path:
    return cp.kubeconfig


def media_sequence(master_url: str) -> int:
    """EXT-X-MEDIA-SEQUENCE of the first rendition (grows while the stream is live)."""
    base = master_url.rsplit("/", 1)[0]
    master = urllib.request.urlopen(master_url, timeout=5).read().decode()
    media = next(line for line in master.splitlines() if line and not line.startswith("#"))
    for _ in range(20):
        text = urllib.request.urlopen(f"{base}/{media}", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                return int(line.split(":", 1)[1])
        time.sleep(0.5)
    raise AssertionError(f"no media sequence in {base}/{media}")
