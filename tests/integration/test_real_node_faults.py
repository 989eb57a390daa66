"""Repeated faults on the real node that a live stream must survive (docs/reliability.md).

The operator and the worker run as real pods from the images built here; ffmpeg
publishes from the host through the ingest Service's loopback address, and a
player on the host follows the media playlist through the playback Service, as
hls.js would: it only ever sees what the origin serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import m3u8
import pytest

from . import operator_harness as harness
from . import release as rel
from .conftest import ControlPlane
from .test_live_stream_e2e import publish, service_ready, status, stream_key
from .test_real_node import start_stream

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
KILLS = 5
#: Longer than the kubelet's back-off before the fifth restart (10, 20, 40, 80 s):
#: the restarted worker continues its playlists only within the window.
WINDOW_S = 300


@dataclass
class Follower:
    """A player that polls one media playlist and remembers every segment it saw."""

    url: str
    uri_by_sequence: dict[int, str] = field(default_factory=dict)
    discontinuities: set[int] = field(default_factory=set)
    conflicts: list[tuple[int, str, str]] = field(default_factory=list)
    regressions: list[tuple[int, int]] = field(default_factory=list)
    fetches: int = 0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        highest = -1
        while not self._stop.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=3) as response:
                    text = response.read().decode()
            except OSError:
                self.failures += 1  # the worker is down: its Service refuses
                continue
            self.fetches += 1
            playlist = m3u8.loads(text)
            first = int(playlist.media_sequence or 0)
            if first < highest:
                self.regressions.append((highest, first))
            highest = max(highest, first)
            for offset, segment in enumerate(playlist.segments):
                sequence = first + offset
                seen = self.uri_by_sequence.setdefault(sequence, segment.uri)
                if seen != segment.uri:
                    self.conflicts.append((sequence, seen, segment.uri))
                if segment.discontinuity:
                    self.discontinuities.add(sequence)

    def epochs(self) -> list[str]:
        """Session prefixes (``<epoch>-00012.ts``) in sequence order, without repeats."""
        out: list[str] = []
        for sequence in sorted(self.uri_by_sequence):
            epoch = self.uri_by_sequence[sequence].rsplit("/", 1)[-1].split("-", 1)[0]
            if not out or out[-1] != epoch:
                out.append(epoch)
        return out

    def highest(self) -> int:
        return max(self.uri_by_sequence, default=-1)

    def wait_for_more(self, segments: int, logs: Any) -> None:
        """Until the player has seen ``segments`` more than it has now."""
        target = self.highest() + segments
        harness.eventually(
            f"{segments} more segments served", lambda: self.highest() >= target,
            timeout=60, logs=logs,
        )  # fmt: skip


def media_playlist_url(master_url: str) -> str:
    """The first rendition's playlist; the master appears once every rendition has a
    segment, a moment after the stream goes Live."""

    def master() -> Any:
        try:
            return m3u8.loads(urllib.request.urlopen(master_url, timeout=5).read().decode())
        except OSError:
            return None

    found = harness.eventually("the master playlist", master, timeout=60)
    return master_url.rsplit("/", 1)[0] + "/" + found.playlists[0].uri


def go_live(
    cp: ControlPlane, namespace: str, url: str, logs: Any
) -> tuple[subprocess.Popen[bytes], float, int]:
    """Publish (again) once the ingest Service routes, as an encoder does: when its
    connection fails, it tries again (after 1 s here; OBS waits 10 s). Returns the
    publisher, how long until Live, and the attempts.

    The endpoint comes first; even so, kube-proxy programs its rules a moment after
    the EndpointSlice turns ready (on a loaded machine, seconds), and a connection in
    between is refused by kube-proxy before it reaches the worker (hack/tunnel.py logs
    "cannot reach <ClusterIP>:1935 ... Connection refused")."""
    started = time.monotonic()
    harness.eventually(
        "the ingest Service's endpoint ready",
        lambda: service_ready(cp, namespace, "e2e-ingest"),
        timeout=240, logs=logs,
    )  # fmt: skip
    attempts = [publish(url, seconds=900)]

    def live() -> bool:
        if status(cp, namespace).get("phase") == "Live":
            return True
        if attempts[-1].poll() is not None:  # refused or dropped: the encoder retries
            time.sleep(1)
            attempts.append(publish(url, seconds=900))
        return False

    harness.eventually("Live", live, timeout=90, logs=logs)
    return attempts[-1], time.monotonic() - started, len(attempts)


def test_a_worker_killed_five_times_mid_stream_is_restarted_and_its_playlists_go_on(
    control_plane: ControlPlane, kubecast: rel.Release, namespace: str
) -> None:
    cp = control_plane
    logs = lambda: kubecast.logs(namespace)  # noqa: E731
    ready = start_stream(cp, kubecast, namespace, reconnectWindowSeconds=WINDOW_S)
    url = f"{ready['ingestUrl']}/{stream_key(cp, namespace, ready['streamKeySecret'])}"
    first_pod = rel.worker_pod(cp, namespace, "e2e")
    assert first_pod is not None
    publisher, _, _ = go_live(cp, namespace, url, logs)
    follower = Follower(media_playlist_url(ready["playbackUrl"])).start()
    kills: list[dict[str, Any]] = []
    try:
        for n in range(1, KILLS + 1):
            # Some segments of this session served, then the crash.
            follower.wait_for_more(3, logs)
            pod = rel.worker_pod(cp, namespace, "e2e")
            assert pod is not None and pod["metadata"]["uid"] == first_pod["metadata"]["uid"]
            killed = time.monotonic()
            os.kill(rel.container_pid(cp, pod, "worker"), signal.SIGKILL)
            # The publisher's connection dies with the worker.
            publisher.wait(timeout=60)
            # What a user sees meanwhile, until the restarted worker continues its
            # playlists (Reconnecting: it waits for the publisher, as on any drop).
            seen: list[tuple[str | None, str | None]] = []

            def back(n: int = n, seen: list[Any] = seen) -> dict[str, Any] | None:
                s = status(cp, namespace)
                if (s.get("phase"), s.get("message")) not in seen:
                    seen.append((s.get("phase"), s.get("message")))
                done = s.get("workerRestarts") == n and s.get("phase") == "Reconnecting"
                return s if done else None

            after = harness.eventually(
                f"restart {n}: the worker back, Reconnecting", back, timeout=300, logs=logs
            )
            restarted_s = time.monotonic() - killed
            # The publisher's next connection works.
            publisher, live_s, attempts = go_live(cp, namespace, url, logs)
            kills.append({
                "kill": n, "worker_back_s": round(restarted_s, 1),
                "live_again_s": round(restarted_s + live_s, 1),
                "publish_attempts": attempts, "seen": seen,
                "lastWorkerExit": after.get("lastWorkerExit"),
            })  # fmt: skip
        follower.wait_for_more(3, logs)  # after the last restart
    finally:
        publisher.kill()
        publisher.wait()
        follower.stop()
    print({"kills": kills, "fetches": follower.fetches, "failed_fetches": follower.failures,
           "segments_seen": len(follower.uri_by_sequence),
           "discontinuities": sorted(follower.discontinuities)})  # fmt: skip

    final = status(cp, namespace)
    assert final["workerRestarts"] == KILLS
    assert all("exit code 137" in (k["lastWorkerExit"] or "") for k in kills), kills
    # While the kubelet held the container back, status said why (from the second
    # kill on: the first restart is immediate).
    for k in kills[1:]:
        messages = [m or "" for _, m in k["seen"]]
        assert any("exit code 137" in m and "CrashLoopBackOff" in m for m in messages), k
    # One pod all along: the kubelet restarted its container, nothing rescheduled it.
    after = rel.worker_pod(cp, namespace, "e2e")
    assert after is not None and after["metadata"]["uid"] == first_pod["metadata"]["uid"]
    # One playlist: sequence numbers went on (never reused for other segments,
    # never back), one session per publish, and a discontinuity where each began.
    assert not follower.conflicts, follower.conflicts[:5]
    assert not follower.regressions, follower.regressions
    epochs = follower.epochs()
    assert len(epochs) == KILLS + 1 == len(set(epochs)), epochs
    assert len(follower.discontinuities) == KILLS, sorted(follower.discontinuities)
    sequences = sorted(follower.uri_by_sequence)
    assert sequences == list(range(sequences[0], sequences[-1] + 1)), "a segment was skipped"
