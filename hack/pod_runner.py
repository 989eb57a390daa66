#!/usr/bin/env python3
"""Run kubecast's pods for real on a kwok cluster: a stand-in kubelet for tests and the demo.

kwok marks pods Running without running anything. This harness (test and demo
tooling, never part of the product) runs the container command of every kubecast
pod as a local process, the way a kubelet would:

- the pod IP kwok assigned (from a loopback range, see hack/cluster-up.sh) is the
  address the process binds to, through ``$(POD_IP)`` in the container args;
- ConfigMap and Secret volumes are written to a directory per pod, emptyDirs are
  fresh directories, and PVCs are directories that outlive the pod; mount paths in
  the args and in mounted files are rewritten to those directories;
- ``<service>.<namespace>.svc.cluster.local`` in args is resolved to the IP of a
  running pod behind that Service (what cluster DNS and kube-proxy would do);
- a Service of type LoadBalancer gets its pod's IP as load-balancer ingress, as
  a bare-metal load balancer would, so status URLs are reachable from this host.

A pod that is deleted has its process stopped; a process that exits is restarted
when the pod's restartPolicy says so.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

log = logging.getLogger("pod-runner")
SELECTOR = "app.kubernetes.io/managed-by=kubecast-operator"
SVC_HOST = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local")


@dataclass
class Running:
    pod: str
    namespace: str
    process: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: str
    restarts: int = 0
    next_start: float = 0.0


class PodRunner:
    def __init__(self, *, workdir: Path, bin_dir: Path, selector: str = SELECTOR) -> None:
        self.workdir, self.bin_dir, self.selector = workdir, bin_dir, selector
        self.core = client.CoreV1Api()
        self.running: dict[str, Running] = {}

    # -- one pass ----------------------------------------------------------------

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=self.selector).items
        alive = {}
        for pod in pods:
            uid = pod.metadata.uid
            if pod.metadata.deletion_timestamp or pod.status.phase != "Running":
                continue
            if not pod.status.pod_ip:
                continue
            alive[uid] = pod
            if uid not in self.running:
                try:
                    self.start(pod)
                except Exception as error:  # keep serving the other pods
                    log.error(
                        "cannot run pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, error
                    )
        for uid in list(self.running):
            if uid not in alive:
                self.stop(uid)
        for run in self.running.values():
            if run.process.poll() is not None and run.restart in ("Always", "OnFailure"):
                if run.restart == "OnFailure" and run.process.returncode == 0:
                    continue
                now = time.monotonic()
                if not run.next_start:
                    # Like the kubelet's CrashLoopBackOff: 1 s, 2 s, 4 s ... up to 30 s.
                    run.next_start = now + min(30.0, 2.0 ** min(run.restarts, 5))
                if now < run.next_start:
                    continue
                run.restarts += 1
                run.next_start = 0.0
                log.info(
                    "restarting %s/%s (exit %s)", run.namespace, run.pod, run.process.returncode
                )
                run.process = self._spawn(run.argv, run.env, run.log_path)
        self.expose_load_balancers(alive.values())
        self.provision_claims()

    # -- a pod -------------------------------------------------------------------

    def start(self, pod: Any) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        root = self.workdir / "pods" / f"{ns}_{name}_{uid[:8]}"
        container = pod.spec.containers[0]
        mounts: dict[str, Path] = {}
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            mounts[mount.mount_path] = self._materialize(ns, volumes[mount.name], root)
        env = {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
            "HOME": str(root),
            "PYTHONUNBUFFERED": "1",
        }
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.field_ref:
                path = var.value_from.field_ref.field_path
                env[var.name] = {
                    "status.podIP": pod.status.pod_ip,
                    "metadata.name": name,
                    "metadata.namespace": ns,
                }.get(path, "")
        argv = [*(container.command or []), *(container.args or [])]
        argv = [self._rewrite(self._expand(a, env), mounts, ns) for a in argv]
        # Mounted config files name paths inside the container too.
        for path in mounts.values():
            for file in path.rglob("*"):
                if file.is_file() and file.suffix in (".yaml", ".yml", ".json"):
                    file.write_text(self._rewrite(file.read_text(), mounts, ns))
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
        log_path = root / "container.log"
        log.info("running %s/%s on %s: %s", ns, name, pod.status.pod_ip, " ".join(argv[:3]))
        self.running[uid] = Running(
            pod=name,
            namespace=ns,
            process=self._spawn(argv, env, log_path),
            argv=argv,
            env=env,
            log_path=log_path,
            restart=pod.spec.restart_policy or "Always",
        )

    def _spawn(
        self, argv: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as sink:
            return subprocess.Popen(
                argv,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self, uid: str) -> None:
        run = self.running.pop(uid)
        log.info("stopping %s/%s", run.namespace, run.pod)
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGTERM)
            try:
                run.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait()

    def stop_all(self) -> None:
        for uid in list(self.running):
            self.stop(uid)

    def _materialize(self, namespace: str, volume: Any, root: Path) -> Path:
        if volume.persistent_volume_claim:
            path = self.workdir / "claims" / namespace / volume.persistent_volume_claim.claim_name
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = root / "volumes" / volume.name
        path.mkdir(parents=True, exist_ok=True)
        if volume.config_map:
            data = self.core.read_namespaced_config_map(volume.config_map.name, namespace).data
            for key, value in (data or {}).items():
                (path / key).write_text(value)
        elif volume.secret:
            try:
                secret = self.core.read_namespaced_secret(volume.secret.secret_name, namespace)
            except client.ApiException as e:
                if e.status == 404 and volume.secret.optional:
                    return path  # as the kubelet does: an empty volume
                raise
            items = volume.secret.items or [
                client.V1KeyToPath(key=k, path=k) for k in (secret.data or {})
            ]
            for item in items:
                target = path / item.path
                target.write_bytes(base64.b64decode((secret.data or {}).get(item.key, "")))
                target.chmod(0o400)
        return path

    @staticmethod
    def _expand(arg: str, env: dict[str, str]) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)

    def _rewrite(self, text: str, mounts: dict[str, Path], namespace: str) -> str:
        # One pass, longest mount path first, whole path components only: a
        # rewritten path (under /tmp/...) must not be rewritten again by a /tmp mount.
        if mounts:
            pattern = re.compile(
                "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
                + r"(?=/|\b|$)"
            )
            text = pattern.sub(lambda m: str(mounts[m[0]]), text)
        return SVC_HOST.sub(lambda m: self._service_ip(m[1], m[2]) or m[0], text)

    def _service_ip(self, service: str, namespace: str) -> str | None:
        try:
            svc = self.core.read_namespaced_service(service, namespace)
        except client.ApiException:
            return None
        selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        ips = [p.status.pod_ip for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return ips[0] if ips else None

    # -- storage ---------------------------------------------------------------------

    def provision_claims(self) -> None:
        """Bind each pending claim to a hostPath volume, as a local-path provisioner would.

        Without a provisioner a claim stays Pending and the scheduler never
        places the pod that mounts it. The directory is the one ``_materialize``
        gives the pod, so what the pod writes is where the test looks.
        """
        claims = self.core.list_persistent_volume_claim_for_all_namespaces(
            label_selector=self.selector
        ).items
        for claim in claims:
            if claim.status.phase != "Pending" or claim.spec.volume_name:
                continue
            ns, name = claim.metadata.namespace, claim.metadata.name
            path = self.workdir / "claims" / ns / name
            path.mkdir(parents=True, exist_ok=True)
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"local-{claim.metadata.uid}"},
                "spec": {
                    "capacity": {"storage": claim.spec.resources.requests["storage"]},
                    "accessModes": claim.spec.access_modes,
                    # Retain: the controller-manager's hostPath deleter would wipe the
                    # directory with the claim, and tests read the files afterwards.
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": claim.spec.storage_class_name or "",
                    "hostPath": {"path": str(path)},
                    "claimRef": {"namespace": ns, "name": name, "uid": claim.metadata.uid},
                },
            }
            try:
                self.core.create_persistent_volume(volume)
                log.info("provisioned %s/%s at %s", ns, name, path)
            except client.ApiException as error:
                if error.status != 409:
                    raise

    # -- load balancers --------------------------------------------------------------

    def expose_load_balancers(self, pods: Any) -> None:
        services = self.core.list_service_for_all_namespaces(label_selector=self.selector).items
        for svc in services:
            if svc.spec.type != "LoadBalancer" or not svc.spec.selector:
                continue
            ips = [
                p.status.pod_ip
                for p in pods
                if p.metadata.namespace == svc.metadata.namespace
                and all((p.metadata.labels or {}).get(k) == v for k, v in svc.spec.selector.items())
            ]
            ingress = [{"ip": ips[0]}] if ips else []
            current = [{"ip": i.ip} for i in (svc.status.load_balancer.ingress or [])]
            if current != ingress:
                self.core.patch_namespaced_service_status(
                    svc.metadata.name,
                    svc.metadata.namespace,
                    {"status": {"loadBalancer": {"ingress": ingress}}},
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=Path(sys.executable).parent,
        help="where kubecast-worker is (default: this Python's bin)",
    )
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pod-runner %(message)s")
    config.load_kube_config(config_file=args.kubeconfig)
    runner = PodRunner(workdir=args.workdir, bin_dir=args.bin_dir)
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping:
            try:
                runner.sync()
            except Exception as error:  # the API server may be restarting
                log.warning("sync failed: %s", error)
            time.sleep(args.interval)
    finally:
        runner.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
