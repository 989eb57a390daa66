"""The operator's /healthz and /readyz, over real loopback HTTP.

Liveness and readiness mean different things: a standby is alive (never
restarted for waiting), a leader whose renewals fail stops being alive; the
leader is ready only once kopf watches, a standby only while it reaches the Lease.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
from kubernetes.client.rest import ApiException
from prometheus_client import REGISTRY

from kubecast_operator import health
from kubecast_operator.kube import Kube
from kubecast_operator.leader import LeaderElector, NotLeading

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
    kwargs.setdefault("on_lost", lambda reason: None)
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
        assert standby.attempt() is False
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
    leading = elector(store, clock=clock)
    state = health.Health(leading, clock=clock)

    async def steps(get: Get) -> None:
        assert leading.attempt() is True  # no lease yet: taken at once
        state.lead()
        assert leading_gauge() == 1
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

        # Renewals fail: past the renew deadline it is not alive (the lease
        # thread has normally ended the process by then), past the lease's
        # duration others may take it over, so it is not ready either.
        store.down = True
        assert leading.attempt() is None
        clock.now += 11
        dead = await get()
        assert codes(dead) == (503, 200)
        assert dead["/healthz"][1] == {
            "status": "failing",
            "role": "leader",
            "reason": "lease not renewed for 11s (deadline 10s)",
        }
        clock.now += 9
        expired = await get()
        assert codes(expired) == (503, 503)
        assert expired["/readyz"][1]["reason"] == "lease not renewed for 20s (lease 15s)"

    probe(state, steps)


def test_the_fence_closes_at_the_renew_deadline_before_the_lease_can_expire() -> None:
    clock = Clock()
    store = LeaseStore()
    lost: list[str] = []
    leading = elector(store, clock=clock, on_lost=lost.append)
    with pytest.raises(NotLeading):
        leading.check()  # a standby never writes
    assert leading.attempt() is True
    leading.check()
    clock.now += 9.9
    leading.check()
    store.down = True
    assert leading.attempt() is None
    clock.now += 0.2  # 10.1 s after the last accepted renewal
    assert not leading.may_act()
    with pytest.raises(NotLeading, match="me does not lead: no renewal within the 10s deadline"):
        leading.check()
    # A standby may take over only once the lease (15 s) has passed on its own
    # clock since it saw the record change: by then this replica had stopped.
    assert lost == []
    leading.check_after_freeze()
    assert lost == ["resumed 10.1s after the last renewal (deadline 10s)"]


def test_a_standby_takes_over_only_after_a_full_lease_on_its_own_clock() -> None:
    clock = Clock()
    store = LeaseStore()
    store.lease = {
        "metadata": {"name": "kubecast-operator", "resourceVersion": "7"},
        # NB: a renewTime from another machine's clock, long past: not trusted.
        "spec": {
            "holderIdentity": "other",
            "leaseDurationSeconds": 15,
            "renewTime": "2020-01-01T00:00:00.000000Z",
            "leaseTransitions": 3,
        },
    }
    standby = elector(store, clock=clock)
    assert standby.attempt() is False
    clock.now += 14.9
    assert standby.attempt() is False
    store.lease["spec"]["renewTime"] = "2020-01-01T00:00:10.000000Z"  # the holder renewed
    clock.now += 10
    assert standby.attempt() is False, "a renewal restarts the wait"
    clock.now += 15.1
    assert standby.attempt() is True
    assert store.lease["spec"]["holderIdentity"] == "me"
    assert store.lease["spec"]["leaseTransitions"] == 4


def test_a_leader_that_finds_another_holder_stops_at_once() -> None:
    clock = Clock()
    store = LeaseStore()
    lost: list[str] = []
    leading = elector(store, clock=clock, on_lost=lost.append)
    assert leading.attempt() is True
    assert store.lease is not None
    store.lease["spec"]["holderIdentity"] = "other"
    store.lease["metadata"]["resourceVersion"] = "99"
    assert leading.attempt() is False
    assert lost == ["another replica holds the lease"]
    with pytest.raises(NotLeading, match="another replica holds the lease"):
        leading.check()


def test_the_lease_thread_renews_on_its_own_and_ends_leadership_at_the_deadline() -> None:
    """The real thread and clock: renewals keep it leading; a dead API ends it."""
    store = LeaseStore()
    lost: list[str] = []
    leading = elector(
        store, retry_seconds=0.02, renew_deadline=0.3, lease_seconds=1, on_lost=lost.append
    )

    async def main() -> None:
        await leading.acquire()
        try:
            first = leading.renewed_at
            assert first is not None
            # NB: the event loop is blocked here, and the thread renews anyway.
            time.sleep(0.1)
            assert (leading.renewed_at or 0) > first
            leading.check()
            store.down = True
            await asyncio.sleep(0.6)
            assert len(lost) == 1 and lost[0].startswith("no renewal accepted for 0.3"), lost
            with pytest.raises(NotLeading):
                leading.check()
        finally:
            leading.stop()

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
