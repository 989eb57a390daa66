"""Lease-based leader election, fenced the way client-go's is.

kopf's own peering works with KopfPeering objects and can freeze a new pod
behind a terminating one (nolar/kopf#734); a coordination.k8s.io Lease is what
every other Kubernetes controller uses, and what ``kubectl get leases`` shows.

Three durations, with client-go's defaults and its rule ``retry < deadline < lease``:

- ``retry_seconds`` (2 s): how often the lease is renewed, or looked at by a standby;
- ``renew_deadline`` (10 s): a leader whose last accepted renewal is older than
  this stops acting: every write the operator makes is refused from then on
  (``check``), and the process exits so that its pod restarts and queues up
  again. It is shorter than the lease, so the leader has stopped before any
  standby may take over;
- ``lease_seconds`` (15 s): a standby takes the lease over only after it has
  seen the same record, unchanged, for this long, timed on its own clock (as
  client-go does: the holder's ``renewTime`` is another machine's clock).

Renewals run in a thread of their own with their own HTTP connections, so they
are never queued behind reconciles in asyncio's shared thread pool, nor behind a
busy event loop. A frozen leader (SIGSTOP, a paused VM, a long GC) wakes up past
its deadline: the renewal thread exits the process before it renews, and a
SIGCONT handler in the main thread, where kopf's loop runs, does the same at
once. The one write nobody can fence from here is a request that was already on
the wire when the process froze; the API server's resourceVersion checks are
what protect the Lease itself from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from kubecast_operator.kube import Kube

log = logging.getLogger("kubecast.leader")


class NotLeading(RuntimeError):
    """A write was refused because this replica does not (or no longer) lead."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


def _exit_process(reason: str) -> None:
    """What a leader does when it loses the lease: exit now, let the pod restart.

    NB: ``os._exit``, not ``sys.exit``: a clean shutdown would run kopf's and our
    cleanup handlers, which write (finalizers, status); a leader that lost the
    lease must not write anything more.
    """
    log.error("stopped leading: %s; exiting so that the pod restarts", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str = "kubecast-operator",
        identity: str | None = None,
        lease_seconds: int = 15,
        renew_deadline: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_lost: Callable[[str], None] = _exit_process,
    ) -> None:
        if not 0 < retry_seconds < renew_deadline < lease_seconds:
            raise ValueError(
                "leader election needs retry < renew deadline < lease duration, got"
                f" {retry_seconds} / {renew_deadline} / {lease_seconds} s"
            )
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity = identity or default_identity()
        self.lease_seconds, self.renew_deadline = lease_seconds, renew_deadline
        self.retry_seconds = retry_seconds
        self.clock, self.on_lost = clock, on_lost
        #: clock() when the API server last answered an attempt (a renewal while
        #: leading, a look at the holder while standing by); None before the
        #: first. health.py tells from it whether we are in touch.
        self.answered_at: float | None = None
        #: clock() when the last renewal that the API server accepted was sent
        #: (sent, not answered: the lease runs from the renewTime we wrote)
        self.renewed_at: float | None = None
        self.leading = False
        self._lost: str | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the fence ---------------------------------------------------------------

    def may_act(self) -> bool:
        """True while this replica leads and its last renewal is within the deadline."""
        return (
            self.leading
            and self._lost is None
            and self.renewed_at is not None
            and self.clock() - self.renewed_at < self.renew_deadline
        )

    def check(self) -> None:
        """The write gate (see ``Kube(fence=...)``): raise unless ``may_act()``."""
        if not self.may_act():
            raise NotLeading(
                f"{self.identity} does not lead: "
                + (self._lost or f"no renewal within the {self.renew_deadline:.0f}s deadline")
            )

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            self.on_lost(reason)

    def check_after_freeze(self, *_: Any) -> None:
        """SIGCONT: a leader resumed past its deadline stops before anything else runs."""
        if self.leading and not self.may_act():
            age = self.clock() - (self.renewed_at or 0.0)
            self._lose(
                f"resumed {age:.1f}s after the last renewal (deadline {self.renew_deadline:.0f}s)"
            )

    # -- one attempt ---------------------------------------------------------------

    def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when we hold it."""
        lease = self.kube.get("Lease", self.namespace, self.name)
        now = _now()
        fields: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": now,
        }
        try:
            if lease is None:
                created = self.kube.create(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {**fields, "acquireTime": now, "leaseTransitions": 0},
                    }
                )
                return created is not None
            spec: dict[str, Any] = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, self.clock()
            duration = spec.get("leaseDurationSeconds") or self.lease_seconds
            if holder and holder != self.identity:
                if self.clock() - self._observed_at < duration:
                    return False
                log.info(
                    "the lease of %s was not renewed for %ss: taking it over", holder, duration
                )
            if holder != self.identity:
                fields["acquireTime"] = now
                fields["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
            # NB: the resourceVersion makes this a compare-and-swap: of two
            # replicas racing for an expired lease, only one write succeeds.
            patched = self.kube.patch(
                "Lease",
                self.namespace,
                self.name,
                {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": fields,
                },
            )
            return patched is not None
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    def attempt(self) -> bool | None:
        """One round of the loop: True held, False held by another, None no answer."""
        sent = self.clock()
        try:
            held = self.try_acquire()
        except Exception as error:
            log.warning("lease %s/%s: %s", self.namespace, self.name, error)
            return None
        self.answered_at = self.clock()
        if held:
            self.renewed_at = sent
            if not self.leading:
                self.leading = True
                log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
        elif self.leading:
            self._lose("another replica holds the lease")
        return held

    # -- the loop, in its own thread ---------------------------------------------------

    def _run(self, acquired: Callable[[], None]) -> None:
        announced = False
        while not self._stop.is_set() and self._lost is None:
            if self.leading and not self.may_act():
                age = self.clock() - (self.renewed_at or 0.0)
                self._lose(
                    f"no renewal accepted for {age:.1f}s (deadline {self.renew_deadline:.0f}s)"
                )
                return
            started = self.clock()
            was_leading = self.leading
            held = self.attempt()
            if held and not was_leading:
                acquired()
            elif not held and not self.leading and not announced:
                log.info("another replica leads; standing by")
                announced = True
            self._stop.wait(max(0.0, self.retry_seconds - (self.clock() - started)))

    async def acquire(self) -> None:
        """Start the lease thread and wait until this replica leads.

        From then on the thread renews on its own schedule, and ends the
        process (``on_lost``) when leadership is lost.
        """
        loop = asyncio.get_running_loop()
        leading = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(lambda: loop.call_soon_threadsafe(leading.set),),
            name="lease",
            daemon=True,
        )
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCONT, self.check_after_freeze)
        await leading.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_seconds + 5)

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so a standby need not wait it out."""
        self.stop()
        if not self.may_act():
            return
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
        self.leading = False
