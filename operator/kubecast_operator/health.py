"""``/healthz`` (liveness) and ``/readyz`` (readiness) of the operator.

They answer different questions, so the kubelet acts on each differently:

- ``/healthz``, liveness: *should this process be restarted?* It answers from
  the operator's own event loop, so a blocked or dead loop fails it by timing
  out. A standby waiting for the Lease is healthy: restarting it would only
  put it back in the queue. A leader that has not renewed its Lease within
  its renew deadline fails it (the lease thread normally ends the process
  first, see leader.py; this is the kubelet's backstop).
- ``/readyz``, readiness: *can this replica do its part right now?* The leader
  is ready once kopf has run its startup handlers and started its watches, and
  while its Lease is not past its duration. A standby is ready while the API
  server answers its look at the Lease, i.e. while it could take over. NB: a
  standby is ready on purpose: the PodDisruptionBudget, ``kubectl rollout
  status``, ``helm --wait`` and Argo CD count ready pods, and with the
  leader alone ready a drain of the leader's node could never proceed (the
  standby cannot become ready until the leader goes). Which replica leads is in
  both bodies (``role``), in the ``kubecast_operator_leader`` gauge and in the
  Lease's ``holderIdentity`` (``<pod name>_<pid>``).

Both answer JSON: ``{"status": "ok" | "failing", "role": ..., "reason": ...}``,
with 200 or 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from kubecast_operator import metrics
from kubecast_operator.leader import LeaderElector

Role = Literal["standby", "leader"]


@dataclass
class Health:
    """What this replica is doing, as the two endpoints report it.

    ``elector`` is None without leader election: the replica then acts from
    the start, and only the kopf part of readiness applies.
    """

    elector: LeaderElector | None
    #: set by kopf once its startup handlers ran and its watch tasks started
    watching: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Callable[[], float] = time.monotonic
    role: Role = field(init=False)

    def __post_init__(self) -> None:
        self.role = "standby" if self.elector is not None else "leader"
        metrics.LEADER.set(self.role == "leader")

    def lead(self) -> None:
        self.role = "leader"
        metrics.LEADER.set(1)

    def _lease_age(self) -> float | None:
        """Seconds since the API server last answered a lease request; None: never."""
        if self.elector is None or self.elector.answered_at is None:
            return None
        return self.clock() - self.elector.answered_at

    def live(self) -> tuple[bool, str]:
        if self.elector is None or self.role == "standby":
            return True, ""
        elector = self.elector
        if elector.renewed_at is not None:
            age = self.clock() - elector.renewed_at
            if age > elector.renew_deadline:
                deadline = elector.renew_deadline
                return False, f"lease not renewed for {age:.0f}s (deadline {deadline:.0f}s)"
        return True, ""

    def ready(self) -> tuple[bool, str]:
        age = self._lease_age()
        if self.elector is not None:
            lease = self.elector.lease_seconds
            if age is None:
                return False, "the lease has not been read yet"
            if age > lease:
                what = "renewed" if self.role == "leader" else "read"
                return False, f"lease not {what} for {age:.0f}s (lease {lease}s)"
        if self.role == "leader" and not self.watching.is_set():
            return False, "leading; kopf is starting its watches"
        return True, ""


def _answer(ok: bool, reason: str, role: Role) -> web.Response:
    body: dict[str, str] = {"status": "ok" if ok else "failing", "role": role}
    if reason:
        body["reason"] = reason
    return web.json_response(body, status=200 if ok else 503)


def app(health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return _answer(*health.live(), health.role)

    async def readyz(_: web.Request) -> web.Response:
        return _answer(*health.ready(), health.role)

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    return application


async def serve(health: Health, *, port: int, host: str = "0.0.0.0") -> tuple[web.AppRunner, int]:
    """Serve both endpoints; returns the runner and the bound port (for port 0).

    NB: not kopf's own liveness endpoint, which starts with kopf, i.e. only
    once this replica leads: a standby would fail it and be restarted.
    """
    runner = web.AppRunner(app(health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound: int = runner.addresses[0][1] if runner.addresses else port
    return runner, bound
