"""A child's event must make the stream's loop reconcile in full.

The loop sleeps between passes and an event (a deleted Service, a worker pod
that got its IP) wakes it. The sleep consumes the wake; before it said so, the
loop woke, found no wake set, and only polled the worker: a deleted child came
back at the next resync (30 s), not at once. Real asyncio events, no kopf runtime.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

from kubecast_operator import handlers

KEY = ("LiveStream", "ns", "cam")


def test_the_sleep_says_it_was_woken_and_consumes_the_wake() -> None:
    async def go() -> tuple[bool, bool, bool]:
        memo = SimpleNamespace(wakeups={KEY: asyncio.Event()})
        stopped = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, handlers._wake, memo, *KEY)
        woken = await handlers._sleep(memo, KEY, stopped, 5)
        still_set = memo.wakeups[KEY].is_set()
        timed_out = await handlers._sleep(memo, KEY, stopped, 0.05)
        return woken, still_set, timed_out

    assert asyncio.run(go()) == (True, False, False)


def test_a_wake_during_a_pass_is_not_lost() -> None:
    """An event that arrives while the loop reconciles ends the next sleep at once."""

    async def go() -> tuple[bool, float]:
        memo = SimpleNamespace(wakeups={KEY: asyncio.Event()})
        handlers._wake(memo, *KEY)  # during the pass, before the sleep
        loop = asyncio.get_running_loop()
        started = loop.time()
        woken = await handlers._sleep(memo, KEY, asyncio.Event(), 5)
        return woken, loop.time() - started

    woken, took = asyncio.run(go())
    assert woken and took < 1


def test_streams_created_together_resync_spread_over_the_period() -> None:
    """1000 streams from one `kubectl apply` must not all resync in the same minute
    (their 5,000 writes starved the worker polls in bench/operator.py)."""
    phases = [handlers.resync_phase(str(uuid.uuid4())) for _ in range(1000)]
    assert all(0 <= p < 1 for p in phases)
    per_tenth = [sum(1 for p in phases if i / 10 <= p < (i + 1) / 10) for i in range(10)]
    assert max(per_tenth) < 160, per_tenth  # about 100 in each tenth of the period
    uid = "0d9c5a4e-5f2e-4c1d-9d5e-7c1f7e2b8a11"
    assert handlers.resync_phase(uid) == handlers.resync_phase(uid)  # a restart keeps it


def test_a_relisted_child_that_did_not_change_wakes_nothing() -> None:
    """kopf replays every child as an event when a watch starts over (410 Gone);
    only a version not seen before, or a deletion, wakes the owning stream."""
    memo = SimpleNamespace(wakeups={KEY: asyncio.Event()}, child_versions={})
    service = {
        "namespace": "ns", "name": "cam-ingest", "uid": "u-1", "resourceVersion": "41",
        "ownerReferences": [{"kind": "LiveStream", "name": "cam"}],
    }  # fmt: skip

    def woke(type: str | None, **meta: Any) -> bool:
        memo.wakeups[KEY].clear()
        handlers.child_changed(type=type, meta={**service, **meta}, memo=memo)
        return memo.wakeups[KEY].is_set()

    assert woke(None)  # first seen (the operator's first listing)
    assert not woke(None)  # the same version, replayed by a relist
    assert woke("MODIFIED", resourceVersion="42")  # someone edited it
    assert not woke(None, resourceVersion="42")
    assert woke("DELETED", resourceVersion="43")
    assert woke("ADDED", uid="u-2", resourceVersion="44")  # made again: a new object
