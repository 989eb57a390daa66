"""bench/latency.py's players agree: one short RTMP → HLS leg, read by hls.js in Chromium
and by FFmpeg's HLS demuxer. No player can show a picture before it has arrived, and an
HLS picture arrives only once its whole segment is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_PROFILE, needs_ffmpeg

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    needs_ffmpeg,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="the bench makes a network namespace: root"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "latency.py"


def test_hlsjs_and_pyav_read_the_clock_of_a_short_rtmp_to_hls_leg() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--legs", "rtmp-hls", "--seconds", "5", "--warmup", "2"],
        capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    leg = json.loads(done.stdout)["legs"]["rtmp-hls"]
    hlsjs, pyav = leg["players"]["hls.js"], leg["players"]["pyav"]
    assert not hlsjs.get("errors") and "error" not in hlsjs and "error" not in pyav, leg
    assert hlsjs["samples"] >= 40 and hlsjs["rejected"] == 0, hlsjs  # 10 readings a second
    assert pyav["samples"] >= 5 * 30 * 0.9, pyav  # 30 fps
    segment_ms = SMALL_PROFILE["segmentSeconds"] * 1000
    # A segment arrives whole: its last picture a moment old, its first one segment older.
    assert 0 < pyav["arrival"]["median"] < 3 * segment_ms, pyav
    assert hlsjs["median"] >= pyav["arrival"]["median"], leg
    assert hlsjs["median"] < 10 * segment_ms, hlsjs
