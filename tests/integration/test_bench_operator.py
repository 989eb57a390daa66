"""``bench/operator.py --quick`` keeps working: 50 LiveStreams, and a report with
every figure docs/benchmarks.md quotes ("Operator at scale").

The bench runs its real operator process against the session's control plane (kwok
nodes; no worker: one local server answers /status for every pod IP, see the
bench's docstring), and counts the operator's requests in the API server's audit log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_operator_bench_reports_convergence_memory_requests_and_deletion(
    control_plane: ControlPlane, kubecast_crds: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "operator.py"), "--quick",
         "--cluster-dir", str(control_plane.cluster_dir), "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=control_plane.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (run,) = report["results"]
    assert run["streams"] == 50
    assert 0 < run["converge_seconds"] < 120
    assert run["peak_rss_mb"] > 0 and run["converge_cpu_seconds"] > 0
    # Counted by the API server: at least one apply (PATCH) of each of a stream's
    # four applied children, and its key Secret created.
    per_stream = run["converge_requests_per_stream"]
    assert per_stream["patch"] >= 4 and per_stream["create"] >= 1, per_stream
    assert run["delete_seconds"] > 0
    # `kubectl describe` shows each phase a stream entered once: created Pending,
    # then Idle (the loop's own status write, not yet back from the watch, once
    # made it announce "Pending" twice).
    events = run["events_per_stream"]
    why = (events, run["event_posts_failed"], run.get("idle_unannounced"))
    assert events["Pending"] == {"1": 50} and sum(events["Idle"].values()) == 50, why
    # and its status was written when it had something new: Pending, then Idle.
    # (A status written from a body the watch had not yet brought the loop's own
    # write back to had every condition "new" and was written twice.)
    assert run["status_writes_per_stream_to_idle"] <= 2.2, run
    steady = run["steady"]
    assert steady["seconds"] >= 30 and steady["cpu_cores"] >= 0
    # Idle streams cost no write: nothing changed, so nothing is applied or patched
    # (the resync, 5 minutes by default, is outside the window).
    assert steady["writes_per_minute"] == 0, steady["detail_per_minute"]
    # so no phase changed (flapping would show here), whatever the polls met
    assert steady["phase_changes"] == {} and steady["status_patches"] == 0, steady
    assert 0 <= steady["worker_polls_forgiven"] <= steady["worker_polls_failed"], steady
    assert "| 50 |" in proc.stdout  # the table docs/benchmarks.md takes
