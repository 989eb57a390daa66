"""Lease-based leader election, so that two operator replicas never both act.

kopf's own peering works with KopfPeering objects and can freeze a new pod
behind a terminating one (nolar/kopf#734); a coordination.k8s.io Lease is what
every other Kubernetes controller uses, and what ``kubectl get leases`` shows.
A replica that cannot renew within the lease duration stops acting (the CLI
exits), so at most one replica reconciles at any time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.rest import ApiException

from kubecast_operator.kube import Kube

log = logging.getLogger("kubecast.leader")


def _now() -> datetime:
    return datetime.now(UTC)


def _format(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str = "kubecast-operator",
        identity: str | None = None,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity = identity or default_identity()
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        #: time.monotonic() when the API server last answered an attempt (a
        #: renewal while leading, a look at the holder while standing by); None
        #: before the first. health.py tells from it whether we are in touch.
        self.answered_at: float | None = None

    async def _attempt(self) -> bool:
        """``try_acquire`` off the event loop, noting when it got an answer."""
        held = await asyncio.to_thread(self.try_acquire)
        self.answered_at = time.monotonic()
        return held

    def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when we hold it."""
        now = _now()
        lease = self.kube.get("Lease", self.namespace, self.name)
        spec_fields = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": _format(now),
        }
        try:
            if lease is None:
                created = self.kube.create(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {**spec_fields, "acquireTime": _format(now), "leaseTransitions": 0},
                    }
                )
                return created is not None
            spec: dict[str, Any] = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            renewed = _parse(spec.get("renewTime")) or datetime.min.replace(tzinfo=UTC)
            expired = renewed + timedelta(seconds=spec.get("leaseDurationSeconds") or 15) < now
            if holder != self.identity and holder and not expired:
                return False
            if holder != self.identity:
                spec_fields["acquireTime"] = _format(now)
                spec_fields["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
                log.info("taking over the lease from %s", holder or "nobody")
            # NB: the resourceVersion makes this a compare-and-swap: of two
            # replicas racing for an expired lease, only one write succeeds.
            patched = self.kube.patch(
                "Lease",
                self.namespace,
                self.name,
                {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": spec_fields,
                },
            )
            return patched is not None
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        announced = False
        while True:
            try:
                if await self._attempt():
                    log.info(
                        "leading as %s (lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return
            except Exception as error:
                log.warning("lease %s/%s: %s", self.namespace, self.name, error)
            if not announced:
                log.info("another replica leads; standing by")
                announced = True
            await asyncio.sleep(self.renew_seconds)

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so a standby need not wait it out."""
        lease = self.kube.get("Lease", self.namespace, self.name)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            self.kube.patch(
                "Lease",
                self.namespace,
                self.name,
                {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
                },
            )
            log.info("released the lease")

    async def hold(self) -> None:
        """Renew the lease; return as soon as another replica holds it.

        NB: an API server that cannot be reached is not a lost lease. Nobody can
        take the lease over while the API server is down, and this replica
        cannot write anything meanwhile either; when it comes back, the next
        renewal tells whether we still lead (kopf's watches recover by
        themselves). Exiting instead would turn every API server restart into
        an operator restart.
        """
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if not await self._attempt():
                    log.error("lost the lease to another replica")
                    return
            except Exception as error:
                log.warning("lease renewal failed, retrying: %s", error)
