#!/usr/bin/env python3
"""Benchmark: what CMAF + DASH packaging costs against plain MPEG-TS HLS, in CPU seconds.

    .venv/bin/python bench/packaging.py [--runs 3] [--json results.json]

The input and ladder of bench/ladder.py (20 s of 1080p30 H.264/AAC, the default
4-rung ladder) go through ``kubecast-worker transcode`` four ways per round:

- ``ts``: MPEG-TS segments, audio muxed into every rendition (the default);
- ``fmp4``: CMAF segments, audio muxed into every rendition;
- ``fmp4 + dash``: CMAF segments, video-only renditions plus one audio-only
  rendition per distinct audio bitrate, the HLS master with audio groups, and
  ``manifest.mpd`` rewritten after every new segment;
- ``fmp4 + ll-hls`` (``--low-latency``): CMAF segments cut into parts, the
  playlists rewritten with every new part (EXT-X-PART, preload hints).

The encodes are the same in all four (x264 and AAC with the same settings, and
AAC once per distinct bitrate either way), so the difference is packaging. The
ways run interleaved, round after round, so that load from other processes hits
them alike; reported are each way's median CPU seconds (user + sys of the worker
process, its ``cpuSeconds``) and the median of the per-round differences against
``ts`` in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ladder  # bench/ladder.py: the same input and profile

WAYS: dict[str, list[str]] = {
    "ts": ["--segment-type", "ts"],
    "fmp4": ["--segment-type", "fmp4"],
    "fmp4 + dash": ["--segment-type", "fmp4", "--dash"],
    "fmp4 + ll-hls": ["--segment-type", "fmp4", "--low-latency"],
}


def run_once(source: Path, flags: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kubecast-bench-") as out:
        result = subprocess.run(
            [sys.executable, "-m", "kubecast_worker.cli", "transcode", str(source),
             "--profile", str(ladder.PROFILE), "--out", out, "--log-level", "warning", *flags],
            capture_output=True, text=True, check=True, cwd=ladder.REPO,
        )  # fmt: skip
        summary: dict[str, Any] = json.loads(result.stdout)
        files = [p for p in Path(out).rglob("*") if p.is_file()]
        summary["files"] = len(files)
        summary["bytes"] = sum(p.stat().st_size for p in files)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    source = ladder.make_input()
    load = os.getloadavg()[0]
    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.runs):
        rounds.append({})
        for way, flags in WAYS.items():
            summary = run_once(source, flags)
            rounds[-1][way] = summary
            print(
                f"round {n + 1}: {way:12} cpu {summary['cpuSeconds']:6.2f} s"
                f"  wall {summary['wallSeconds']:6.2f} s  {summary['bytes'] / 1e6:6.2f} MB",
                file=sys.stderr,
            )
    print(f"\nload average at the start: {load:.1f}; {args.runs} interleaved rounds\n")
    print("| | CPU (s), median | wall (s), median | output (MB) | CPU vs ts, per round | median |")
    print("|---|---:|---:|---:|---|---:|")
    table = {}
    for way in WAYS:
        cpu = [r[way]["cpuSeconds"] for r in rounds]
        wall = [r[way]["wallSeconds"] for r in rounds]
        diffs = [round(r[way]["cpuSeconds"] - r["ts"]["cpuSeconds"], 2) for r in rounds]
        size = statistics.median(r[way]["bytes"] for r in rounds) / 1e6
        table[way] = {"cpu": cpu, "wall": wall, "cpu_minus_ts": diffs, "mb": size}
        shown = "reference" if way == "ts" else ", ".join(f"{d:+.2f}" for d in diffs)
        median = "" if way == "ts" else f"{statistics.median(diffs):+.2f} s"
        print(
            f"| {way} | {statistics.median(cpu):.2f} | {statistics.median(wall):.2f}"
            f" | {size:.2f} | {shown} | {median} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"load": load, "ways": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
