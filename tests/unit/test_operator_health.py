"""The operator's /healthz and /readyz, over real loopback HTTP.

Liveness and readiness mean different things: a standby is alive (never
restarted for waiting), a leader whose renewals fail stops being alive; the
leader is ready only once kopf watches, a standby only while it reaches the Lease.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
from kubernetes.client.rest import ApiException
from prometheus_client import REGISTRY

from kubecast_operator import health
from kubecast_operator.kube import Kube
from kubecast_operator.leader import LeaderElector

Answers = dict[str, tuple[int, dict[str, str]]]
Get = Callable[[], Awaitable[Answers]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    """An in-memory stand-in for the three Kube calls the elector makes."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.versions = itertools.count(1)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._check()
        return self.lease

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        self._check()
        manifest["metadata"]["resourceVersion"] = str(next(self.versions))
        self.lease = manifest
        return manifest

    def patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        self._check()
        assert self.lease is not None
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.lease["spec"].update(patch["spec"])
        self.lease["metadata"]["resourceVersion"] = str(next(self.versions))
        return self.lease


def elector(store: LeaseStore, identity: str = "me", **kwargs: Any) -> LeaderElector:
    return LeaderElector(cast(Kube, store), namespace="ns", identity=identity, **kwargs)


def answered(leader: LeaderElector) -> float:
    assert leader.answered_at is not None
    return leader.answered_at


def leading_gauge() -> float | None:
    return REGISTRY.get_sample_value("kubecast_operator_leader")


def probe(state: health.Health, steps: Callable[[Get], Awaitable[None]]) -> None:
    """Serve ``state`` on a free loopback port; ``steps`` gets a GET-both-endpoints function."""

    async def main() -> None:
        runner, port = await health.serve(state, port=0, host="127.0.0.1")
        try:
            async with aiohttp.ClientSession() as http:

                async def get_both() -> Answers:
                    answers: Answers = {}
                    for path in ("/healthz", "/readyz"):
                        async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                            answers[path] = (response.status, await response.json())
                    return answers

                await steps(get_both)
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))


def codes(answers: Answers) -> tuple[int, int]:
    return answers["/healthz"][0], answers["/readyz"][0]


def test_standby_is_alive_and_ready_only_while_it_reaches_the_lease() -> None:
    clock = Clock()
    store = LeaseStore()
    store.lease = {
        "metadata": {"name": "kubecast-operator", "resourceVersion": "7"},
        "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": None},
    }
    standby = elector(store)

    async def steps(get: Get) -> None:
        before = await get()
        assert codes(before) == (200, 503)
        assert before["/healthz"][1] == {"status": "ok", "role": "standby"}
        assert before["/readyz"][1]["reason"] == "the lease has not been read yet"

        # One look at the Lease: held by a live leader, so this replica waits.
        store.lease["spec"]["renewTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert await standby._attempt() is False
        assert leading_gauge() == 0
        clock.now = answered(standby) + 1
        assert codes(await get()) == (200, 200)

        # The API server stops answering: a standby is still alive (restarting
        # it would not help), but no longer ready (it could not take over).
        clock.now += 16
        waiting = await get()
        assert codes(waiting) == (200, 503)
        assert waiting["/readyz"][1]["reason"] == "lease not read for 17s (lease 15s)"
        clock.now += 10_000
        assert codes(await get()) == (200, 503)

    probe(health.Health(standby, clock=clock), steps)


def test_leader_is_ready_once_kopf_watches_and_unready_then_dead_without_renewals() -> None:
    clock = Clock()
    store = LeaseStore()
    leading = elector(store)
    state = health.Health(leading, clock=clock)

    async def steps(get: Get) -> None:
        await leading.acquire()  # no lease yet: taken at once
        state.lead()
        assert leading_gauge() == 1
        clock.now = answered(leading)
        starting = await get()
        assert codes(starting) == (200, 503)
        assert starting["/readyz"][1] == {
            "status": "failing",
            "role": "leader",
            "reason": "leading; kopf is starting its watches",
        }

        state.watching.set()  # what kopf does with ready_flag
        ready = await get()
        assert codes(ready) == (200, 200)
        assert ready["/readyz"][1] == {"status": "ok", "role": "leader"}

        # Renewals fail: past the lease's duration others may take it over, so
        # it is not ready; past the deadline it is restarted.
        store.down = True
        with pytest.raises(ApiException):
            await leading._attempt()
        clock.now += 20
        expired = await get()
        assert codes(expired) == (200, 503)
        assert expired["/readyz"][1]["reason"] == "lease not renewed for 20s (lease 15s)"

        clock.now += health.RENEW_DEADLINE_SECONDS
        dead = await get()
        assert codes(dead) == (503, 503)
        assert dead["/healthz"][1] == {
            "status": "failing",
            "role": "leader",
            "reason": "lease not renewed for 80s (deadline 60s)",
        }

        # The API server is back and the renewal succeeds: healthy again.
        store.down = False
        assert await leading._attempt() is True
        clock.now = answered(leading)
        assert codes(await get()) == (200, 200)

    probe(state, steps)


def test_hold_keeps_the_lease_fresh_and_a_failing_api_lets_it_age() -> None:
    """The real renewal loop drives the timestamps the endpoints judge by."""
    store = LeaseStore()
    leading = elector(store, renew_seconds=0.01)

    async def main() -> None:
        await leading.acquire()
        holding = asyncio.create_task(leading.hold())
        try:
            first = answered(leading)
            await asyncio.sleep(0.1)
            assert answered(leading) > first
            store.down = True
            await asyncio.sleep(0.05)  # a renewal in flight may still land
            frozen = leading.answered_at
            await asyncio.sleep(0.1)
            assert leading.answered_at == frozen
            assert not holding.done(), "an unreachable API server is not a lost lease"
        finally:
            holding.cancel()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_without_leader_election_it_leads_and_is_ready_once_kopf_watches() -> None:
    state = health.Health(None)

    async def steps(get: Get) -> None:
        assert leading_gauge() == 1
        assert codes(await get()) == (200, 503)
        state.watching.set()
        answers = await get()
        assert codes(answers) == (200, 200)
        assert answers["/healthz"][1] == {"status": "ok", "role": "leader"}

    probe(state, steps)


def test_other_paths_are_not_served() -> None:
    async def main() -> None:
        runner, port = await health.serve(health.Health(None), port=0, host="127.0.0.1")
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 404
                async with http.post(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 405
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 10))
