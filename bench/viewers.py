#!/usr/bin/env python3
"""Benchmark: the worker's HLS origin under 1,000 viewers of one live stream, against
nginx serving the same directory.

    .venv/bin/python bench/viewers.py [--seconds 60] [--rounds 2] [--connections 1000]
                                      [--pace-ms 0,2000] [--json results.json]

One real ``kubecast-worker run`` (the 2-rung ladder of the e2e tests: 360p and 180p,
x264 ultrafast, 2 s segments) takes the ffmpeg CLI's 640x360 test pattern over RTMP
at real time for the whole run. Debian's ``wrk`` opens ``--connections`` keep-alive
connections to 127.0.0.1 and runs ``tests/faults/hls_viewers.lua``: each viewer
fetches ``/360p/index.m3u8``, then the newest segment it lists, in a loop, and every
answer is checked (status, a valid live playlist, the segment's type).

Two kinds of load, each against the origin and against Debian's nginx (1 worker
process, sendfile, no access log, the origin's cache headers), on the same files:
- pace 0: every viewer asks again as soon as it has its answer, i.e. what the server
  can do (requests per second at saturation, and the latency that queueing makes);
- pace 2000: a random 0-2 s pause before each request, i.e. a playlist and a segment
  per 2 s segment per viewer, as real players of a live stream ask (about 1,000
  requests per second for 1,000 viewers).
Rounds alternate which server goes first, so load from other processes on the machine
hits both alike; before each run, the encoder catches up with what the last one left
it. While each run lasts, the worker's dropped and late frame counters and the
packager's segment cadence (on disk) say whether the encoder kept real time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.faults.viewer_load (shared with the test)

from tests.e2e.conftest import SMALL_PROFILE  # noqa: E402
from tests.faults.viewer_load import (  # noqa: E402
    EncoderWatch,
    Nginx,
    live_stream,
    raise_fd_limit,
    run_wrk,
    settle,
)

PLAYLIST = "/360p/index.m3u8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="wrk threads")
    parser.add_argument("--pace-ms", default="0,2000", help="comma-separated paces (see above)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    paces = [int(p) for p in args.pace_ms.split(",")]
    missing = [tool for tool in ("wrk", "nginx", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)}: hack/system-packages.sh --tests installs them")

    machine = _machine()
    before, after = raise_fd_limit(4 * args.connections + 1024)
    if after != before:
        print(f"raised the soft RLIMIT_NOFILE from {before} to {after}", file=sys.stderr)
    runs_total = args.rounds * len(paces) * 2
    publish_seconds = runs_total * (args.seconds + 15) + 60
    segment_seconds = float(SMALL_PROFILE["segmentSeconds"])
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="kubecast-viewers-") as tmp,
        live_stream(Path(tmp) / "worker", seconds=publish_seconds) as live,
    ):
        worker = live.worker
        nginx = Nginx(worker.out, workers=args.nginx_workers)
        try:
            servers = {"origin": worker.http, "nginx": nginx.base}
            disk = worker.out / PLAYLIST.strip("/")
            for round_ in range(args.rounds):
                order = ["origin", "nginx"] if round_ % 2 == 0 else ["nginx", "origin"]
                for pace in paces:
                    for name in order:
                        settle(worker.status)
                        cpu = live.cpu(nginx=nginx.process.pid).start()
                        watch = EncoderWatch(
                            worker.status, disk, segment_seconds=segment_seconds
                        ).start()
                        result = run_wrk(
                            servers[name], PLAYLIST, server=name,
                            connections=args.connections, threads=args.threads,
                            seconds=args.seconds, pace_ms=pace,
                        )  # fmt: skip
                        encoder = watch.stop()
                        cores = cpu.stop() | {"wrk": result.client_cores}
                        run = result.to_json() | {"round": round_ + 1, "cores": cores,
                                                  "encoder": encoder.to_json()}  # fmt: skip
                        runs.append(run)
                        print(_line(run), file=sys.stderr)
        finally:
            nginx.stop()
    report = {
        "machine": machine | {"load_average_at_end": _load()},
        "config": vars(args) | {"json": str(args.json)},
        "runs": runs,
        "summary": _summary(runs, paces),
    }
    print(_markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _line(run: dict[str, Any]) -> str:
    e = run["encoder"]
    return (
        f"  round {run['round']} pace {run['pace_ms']:>4} {run['server']:<6}"
        f" {run['requests_per_second']:>8.0f} req/s p50 {run['latency_ms']['p50']:>7.1f} ms"
        f" p99 {run['latency_ms']['p99']:>7.1f} ms errors {run['errors']}"
        f" established {run['established_mid_run']} | encoder dropped {e['dropped_frames']}"
        f" late {e['late_frames']} max gap {e['max_gap_between_segments_s']} s"
        f" | cores {run['cores']} | load {run['load_average_before'][0]}"
    )


def _server_cores(run: dict[str, Any], runs: list[dict[str, Any]]) -> float | None:
    """CPU the server itself used, in cores. nginx: its processes. The origin: the
    worker's event loop (its main thread) less what that loop did (the RTMP ingest)
    while nginx took the same load in the same round."""
    if run["server"] == "nginx":
        return float(run["cores"]["nginx"])
    twin = next(
        (r for r in runs if r["server"] == "nginx" and r["round"] == run["round"]
         and r["pace_ms"] == run["pace_ms"]),
        None,
    )  # fmt: skip
    if twin is None:
        return None
    return max(float(run["cores"]["worker_loop"]) - float(twin["cores"]["worker_loop"]), 0.0)


def _summary(runs: list[dict[str, Any]], paces: list[int]) -> dict[str, Any]:
    for run in runs:
        cores = _server_cores(run, runs)
        run["server_cores"] = None if cores is None else round(cores, 3)
        run["requests_per_server_cpu_second"] = (
            round(run["requests_per_second"] / cores) if cores else None
        )
    summary: dict[str, Any] = {}
    for pace in paces:
        by: dict[str, list[dict[str, Any]]] = {"origin": [], "nginx": []}
        for run in runs:
            if run["pace_ms"] == pace:
                by[run["server"]].append(run)
        entry: dict[str, Any] = {}
        for name, values in by.items():
            efficiency = [
                v["requests_per_server_cpu_second"]
                for v in values
                if v["requests_per_server_cpu_second"]
            ]
            entry[name] = {
                "requests_per_second": statistics.median(v["requests_per_second"] for v in values),
                "p50_ms": statistics.median(v["latency_ms"]["p50"] for v in values),
                "p99_ms": statistics.median(v["latency_ms"]["p99"] for v in values),
                "errors": sum(v["errors"] for v in values),
                "encoder_kept_real_time": all(v["encoder"]["kept_real_time"] for v in values),
                "requests_per_server_cpu_second": statistics.median(efficiency)
                if efficiency
                else None,
            }
        o, n = entry["origin"], entry["nginx"]
        entry["origin_vs_nginx"] = {
            "requests_per_second": round(o["requests_per_second"] / n["requests_per_second"], 3),
            "p99": round(o["p99_ms"] / n["p99_ms"], 2) if n["p99_ms"] else None,
            "requests_per_server_cpu_second": round(
                o["requests_per_server_cpu_second"] / n["requests_per_server_cpu_second"], 3
            )
            if o["requests_per_server_cpu_second"] and n["requests_per_server_cpu_second"]
            else None,
        }
        summary[f"pace {pace} ms"] = entry
    return summary


def _machine() -> dict[str, str]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    import aiohttp

    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk": (wrk.stdout or wrk.stderr).split("\n")[0].split(" [")[0],
        "nginx": nginx.stderr.strip().split(": ", 1)[-1],
        "load_average_at_start": _load(),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _markdown(report: dict[str, Any]) -> str:
    rows = [
        "| round | pace | server | req/s | p50 (ms) | p99 (ms) | max (ms) | errors"
        " | segments Mbit/s | dropped / late frames | longest segment gap (s)"
        " | cores: worker (its loop), nginx, wrk, publisher | load avg |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in report["runs"]:
        e, lat, c = r["encoder"], r["latency_ms"], r["cores"]
        rows.append(
            f"| {r['round']} | {r['pace_ms']} | {r['server']} | {r['requests_per_second']:.0f}"
            f" | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.0f} | {r['errors']}"
            f" | {r['segment_mbit_per_second']} | {e['dropped_frames']} / {e['late_frames']}"
            f" | {e['max_gap_between_segments_s']}"
            f" | {c['worker']} ({c['worker_loop']}), {c['nginx']}, {c['wrk']}, {c['publisher']}"
            f" | {r['load_average_before'][0]} |"
        )
    rows += ["", "| pace | origin req/s | nginx req/s | origin / nginx | origin p99 (ms)"
             " | nginx p99 (ms) | errors (origin, nginx) | encoder kept real time"
             " | req per server CPU-s (origin, nginx) | origin / nginx per CPU-s |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---:|"]  # fmt: skip
    for pace, s in report["summary"].items():
        o, n = s["origin"], s["nginx"]
        rows.append(
            f"| {pace} | {o['requests_per_second']:.0f} | {n['requests_per_second']:.0f}"
            f" | {s['origin_vs_nginx']['requests_per_second']:.2f} | {o['p99_ms']:.1f}"
            f" | {n['p99_ms']:.1f} | {o['errors']}, {n['errors']}"
            f" | {o['encoder_kept_real_time'] and n['encoder_kept_real_time']}"
            f" | {o['requests_per_server_cpu_second']}, {n['requests_per_server_cpu_second']}"
            f" | {s['origin_vs_nginx']['requests_per_server_cpu_second']} |"
        )
    machine = report["machine"]
    rows += ["", ", ".join(f"{k} {v}" for k, v in machine.items())]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
