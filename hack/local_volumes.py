#!/usr/bin/env python3
"""Dynamic local volumes for the local cluster's one real node.

A PersistentVolumeClaim of the StorageClass ``kubecast-local`` (the cluster's
default class, written by hack/cluster-up.sh) gets a directory on the node,
under ``<cluster dir>/node/volumes/``, and a hostPath PersistentVolume bound to
it; when the claim is deleted, the volume and its directory go too
(``reclaimPolicy: Delete``). It is what local-path-provisioner does on kind and
k3d, without its helper pods (this script runs on the node itself).

Why not the kube-controller-manager's built-in ``--enable-hostpath-provisioner``:
it makes root-owned directories under /tmp, and kubelet applies no fsGroup to
hostPath volumes, so a non-root recorder could not write its recording. These
directories are world-writable (sticky), as local-path-provisioner makes them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

log = logging.getLogger("local-volumes")
PROVISIONER = "kubecast.dev/local-volumes"
CLASS = "kubecast-local"


def volume_for(claim: Any, path: Path) -> dict[str, Any]:
    """The PersistentVolume that serves ``claim`` from ``path``, bound to it up front."""
    meta, spec = claim.metadata, claim.spec
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta.uid}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "labels": {"kubecast.dev/local-volume": "true"},
        },
        "spec": {
            "capacity": {"storage": spec.resources.requests["storage"]},
            "accessModes": spec.access_modes or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": CLASS,
            "volumeMode": "Filesystem",
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta.namespace,
                "name": meta.name,
                "uid": meta.uid,
            },
        },
    }


class Provisioner:
    def __init__(self, api: client.CoreV1Api, root: Path) -> None:
        self.api, self.root = api, root

    def claim_changed(self, claim: Any) -> None:
        if claim.spec.storage_class_name != CLASS or claim.spec.volume_name:
            return
        if claim.metadata.deletion_timestamp or claim.status.phase != "Pending":
            return
        path = (
            self.root / f"{claim.metadata.namespace}-{claim.metadata.name}-{claim.metadata.uid[:8]}"
        )
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o1777)  # NB: chmod, not mkdir(mode=): the umask would narrow it
        try:
            self.api.create_persistent_volume(volume_for(claim, path))
            log.info("provisioned %s/%s at %s", claim.metadata.namespace, claim.metadata.name, path)
        except client.ApiException as error:
            if error.status != 409:  # 409: made already, on an earlier event
                raise

    def volume_changed(self, volume: Any) -> None:
        ours = (volume.metadata.annotations or {}).get("pv.kubernetes.io/provisioned-by")
        if ours != PROVISIONER or volume.status.phase not in ("Released", "Failed"):
            return
        if volume.spec.persistent_volume_reclaim_policy != "Delete":
            return  # Retain: the user keeps the data (and deletes the volume when done)
        path = Path(volume.spec.host_path.path)
        if self.root in path.parents:
            shutil.rmtree(path, ignore_errors=True)
        try:
            self.api.delete_persistent_volume(volume.metadata.name)
            log.info("deleted %s and %s", volume.metadata.name, path)
        except client.ApiException as error:
            if error.status != 404:
                raise

    def run(self) -> None:
        """Follow claims and volumes, each in a thread of its own, forever."""
        threads = [
            threading.Thread(target=self._follow, args=(lister, handle), daemon=True)
            for lister, handle in (
                (self.api.list_persistent_volume_claim_for_all_namespaces, self.claim_changed),
                (self.api.list_persistent_volume, self.volume_changed),
            )
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _follow(self, lister: Any, handle: Any) -> None:
        while True:
            try:
                listed = lister()
                for item in listed.items:
                    handle(item)
                for event in watch.Watch().stream(
                    lister, resource_version=listed.metadata.resource_version, timeout_seconds=300
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        handle(event["object"])
            except Exception as error:  # the API server restarts in some tests: start over
                log.info("watch ended (%s); listing again", error)
                time.sleep(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--root", required=True, type=Path, help="where the volumes' directories go")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local-volumes %(message)s")
    args.root.mkdir(parents=True, exist_ok=True)
    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    Provisioner(api, args.root).run()


if __name__ == "__main__":
    main()
