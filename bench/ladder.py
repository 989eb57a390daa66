#!/usr/bin/env python3
"""Benchmark: the worker's transcode path against the ffmpeg CLI doing the same ladder.

    .venv/bin/python bench/ladder.py [--runs 3] [--json results.json]

1. Throughput. The same 20 s 1080p30 H.264/AAC input (made once with ffmpeg and
   cached in bench/.cache/) goes through the default 4-rung ladder
   (samples/transcodeprofile-default.yaml: 1080p/720p/480p/360p, x264 veryfast,
   2 s fixed GOP, 4 s HLS segments, AAC per rung) twice per run:
   - the reference: ONE ffmpeg CLI process, ``-filter_complex split=4`` + ``fps`` +
     ``scale`` (bicubic) per rung, libx264 with the same preset, rate control and
     GOP, FFmpeg's hls muxer per rung;
   - the worker: ``kubecast-worker transcode`` (the live pipeline, unpaced), with
     x264's frame threads (its default) and with sliced ones (PyAV's default).
   Runs are interleaved (CLI, worker modes, CLI, ...) so that load from other
   processes hits both alike; medians are reported. CPU time is the children's
   rusage (user + sys) of each process.
2. Latency. The worker runs as in production (``kubecast-worker run --listen``);
   the ffmpeg CLI publishes the same file at real time (``-re -c copy``). Reported
   per rendition: seconds from the publisher's start to the first segment being
   listed in that rendition's playlist over HTTP (what a player sees), and the
   worker's own ``firstSegmentSeconds`` (from the accepted publish). Target:
   segment length + 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache"
PROFILE = REPO / "samples" / "transcodeprofile-default.yaml"
SECONDS = 20
INPUT = CACHE / f"testsrc2-1080p30-{SECONDS}s.mp4"
KEY = "bench-key-0c1d2e3f"

#: The worker's settings, as extra ``kubecast-worker transcode`` flags.
WORKER_MODES: dict[str, list[str]] = {
    "worker: thread per rendition": [],
    # PyAV's default threading for encoders: x264 with sliced threads.
    "worker: x264 slice threads": ["--x264-thread-type", "slice"],
}


def make_input() -> Path:
    if INPUT.exists():
        return INPUT
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = INPUT.with_suffix(".part.mp4")
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
            "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
            str(tmp),
        ],
        check=True,
    )  # fmt: skip
    tmp.rename(INPUT)
    return INPUT


def cli_command(source: Path, out: Path) -> list[str]:
    """The reference: one ffmpeg process, split + fps + scale, an hls muxer per rung."""
    spec = yaml.safe_load(PROFILE.read_text())["spec"]
    rungs = spec["renditions"]
    gop_seconds, segment = spec["gopSeconds"], spec["segmentSeconds"]
    labels = "".join(f"[v{i}]" for i in range(len(rungs)))
    graph = [f"[0:v]split={len(rungs)}{labels}"]
    for i, r in enumerate(rungs):
        graph.append(
            f"[v{i}]fps={r['fps']}:start_time=0,scale={r['width']}:{r['height']}:flags=bicubic,"
            f"format=yuv420p,setsar=1[o{i}]"
        )
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source)]
    command += ["-filter_complex", ";".join(graph)]
    for i, r in enumerate(rungs):
        gop = gop_seconds * r["fps"]
        directory = out / r["name"]
        directory.mkdir(parents=True)
        command += [
            "-map", f"[o{i}]", "-map", "0:a",
            "-c:v", "libx264", "-preset", r["preset"], "-profile:v", r["profile"],
            "-level:v", r["level"],
            "-b:v", f"{r['videoBitrate']}k", "-maxrate", f"{r['maxrate']}k",
            "-bufsize", f"{r['bufsize']}k",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", f"{r['audioBitrate']}k", "-ar", "48000", "-ac", "2",
            "-f", "hls", "-hls_time", str(segment), "-hls_list_size", "0",
            "-hls_playlist_type", "event", "-hls_flags", "temp_file+independent_segments",
            "-hls_segment_filename", str(directory / "s-%05d.ts"), str(directory / "index.m3u8"),
        ]  # fmt: skip
    return command


def worker_command(source: Path, out: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "kubecast_worker.cli", "transcode", str(source),
        "--profile", str(PROFILE), "--out", str(out), "--log-format", "text",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


def measure(command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds (user + sys of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def throughput(source: Path, runs: int) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[dict[str, float]]] = {"ffmpeg CLI": []}
    samples.update({mode: [] for mode in WORKER_MODES})
    for run in range(runs):
        for name in samples:
            with tempfile.TemporaryDirectory(prefix="kubecast-bench-") as tmp:
                out = Path(tmp)
                if name == "ffmpeg CLI":
                    command = cli_command(source, out)
                else:
                    command = worker_command(source, out, WORKER_MODES[name])
                result = measure(command)
                check_output(out)
            samples[name].append(result)
            print(
                f"  run {run + 1}/{runs} {name:<32} wall {result['wall']:6.2f} s"
                f"  cpu {result['cpu']:6.2f} s",
                file=sys.stderr,
            )
    cores = os.cpu_count() or 1
    summary: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        wall = statistics.median(v["wall"] for v in values)
        cpu = statistics.median(v["cpu"] for v in values)
        summary[name] = {
            "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "speed_x_realtime": round(SECONDS / wall, 2),
            "cores_busy_percent": round(100 * cpu / wall / cores),
            "runs": [{k: round(v, 2) for k, v in value.items()} for value in values],
        }
    reference = summary["ffmpeg CLI"]["wall_seconds"]
    cli_walls = [v["wall"] for v in samples["ffmpeg CLI"]]
    for name in WORKER_MODES:
        summary[name]["throughput_vs_cli"] = round(reference / summary[name]["wall_seconds"], 2)
        # Each run's worker against the CLI run just before it: less sensitive to
        # load that comes and goes during the benchmark than the ratio of medians.
        paired = [c / v["wall"] for c, v in zip(cli_walls, samples[name], strict=True)]
        summary[name]["paired_ratios"] = [round(r, 2) for r in paired]
        summary[name]["paired_ratio_median"] = round(statistics.median(paired), 2)
    return summary


def check_output(out: Path) -> None:
    """Both sides must have made the full ladder, or the times mean nothing."""
    for name in ("1080p", "720p", "480p", "360p"):
        playlist = (out / name / "index.m3u8").read_text()
        segments = playlist.count("#EXTINF")
        assert segments >= SECONDS // 4, f"{name}: only {segments} segments"


# -- latency -------------------------------------------------------------------------------


def latency(source: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kubecast-bench-") as tmp:
        out = Path(tmp) / "out"
        env = {**os.environ, "KUBECAST_STREAM_KEY": KEY}
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "kubecast_worker.cli", "run",
                "--listen", "rtmp://127.0.0.1:0/live", "--profile", str(PROFILE),
                "--out", str(out), "--http", "127.0.0.1:0", "--stream", "bench",
            ],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=REPO,
        )  # fmt: skip
        lines: list[dict[str, Any]] = []
        threading.Thread(target=_collect, args=(worker, lines), daemon=True).start()
        try:
            http = _wait_for(lines, "origin listening")["http"]
            admin = _wait_for(lines, "admin listening")["admin"]  # where /status is
            ingest = _wait_for(lines, "ingest listening")["ingest"]
            port = int(ingest.rsplit(":", 1)[1].split("/")[0])
            names = [r["name"] for r in yaml.safe_load(PROFILE.read_text())["spec"]["renditions"]]
            first: dict[str, float] = {}
            started = time.perf_counter()
            publisher = subprocess.Popen(
                [
                    "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                    "-i", str(source), "-c", "copy", "-f", "flv",
                    f"rtmp://127.0.0.1:{port}/live/{KEY}",
                ]
            )  # fmt: skip
            while len(first) < len(names) and time.perf_counter() - started < 30:
                for name in names:
                    if name in first:
                        continue
                    text = _get(f"http://{http}/{name}/index.m3u8")
                    if text and "#EXTINF" in text:
                        first[name] = round(time.perf_counter() - started, 2)
                time.sleep(0.05)
            status = json.loads(_get(f"http://{admin}/status") or "{}")
            publisher.wait(timeout=SECONDS + 30)
            time.sleep(1)
            final = json.loads(_get(f"http://{admin}/status") or "{}")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    segment = yaml.safe_load(PROFILE.read_text())["spec"]["segmentSeconds"]
    return {
        "target_seconds": segment + 1,
        "seen_by_a_player": first,
        "worker_first_segment_seconds": {
            r["name"]: r.get("firstSegmentSeconds") for r in status.get("renditions", [])
        },
        "dropped_frames": final.get("droppedFrames"),
        "late_frames": final.get("lateFrames"),
        "encode_speed_while_live": status.get("encodeSpeed"),
    }


def _collect(process: subprocess.Popen[bytes], lines: list[dict[str, Any]]) -> None:
    assert process.stderr is not None
    for raw in iter(process.stderr.readline, b""):
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))


def _wait_for(lines: list[dict[str, Any]], msg: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.get("msg") == msg:
                return line
        time.sleep(0.05)
    raise RuntimeError(f"the worker did not log {msg!r}")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()  # type: ignore[no-any-return]
    except OSError:
        return None


# -- report --------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import av

    cli = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    match = re.search(r"ffmpeg version (\S+)", cli.stdout)
    return {
        "ffmpeg_cli": match.group(1) if match else "?",
        "pyav": av.__version__,
        "pyav_ffmpeg": ".".join(str(v) for v in av.ffmpeg_version_info)
        if isinstance(av.ffmpeg_version_info, tuple)
        else str(av.ffmpeg_version_info),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "cpu_model": _cpu_model(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| | wall (s) | CPU (s) | x real time | cores busy | throughput vs CLI"
        " | per-run ratios (median) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in result["throughput"].items():
        ratio = r.get("throughput_vs_cli")
        paired = r.get("paired_ratios")
        rows.append(
            f"| {name} | {r['wall_seconds']:.2f} | {r['cpu_seconds']:.2f} |"
            f" {r['speed_x_realtime']:.2f} | {r['cores_busy_percent']} % |"
            f" {f'{ratio:.2f}x' if ratio else 'reference'} |"
            + (f" {', '.join(map(str, paired))} ({r['paired_ratio_median']}) |" if paired else " |")
        )
    lat = result.get("latency")
    if lat:
        rows += [
            "",
            f"First segment after the publisher starts (target {lat['target_seconds']} s):",
            "",
            "| rendition | seen in the playlist over HTTP (s) | worker's firstSegmentSeconds |",
            "|---|---:|---:|",
        ]
        for name, seen in lat["seen_by_a_player"].items():
            rows.append(f"| {name} | {seen} | {lat['worker_first_segment_seconds'].get(name)} |")
        rows.append("")
        rows.append(
            f"Dropped frames: {lat['dropped_frames']}, late frames: {lat['late_frames']},"
            f" encode speed while live: {lat['encode_speed_while_live']}x"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per contender")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        print("bench: needs the ffmpeg CLI", file=sys.stderr)
        return 2
    source = make_input()
    result: dict[str, Any] = {"input": str(source.relative_to(REPO)), "env": versions()}
    print(f"throughput: {args.runs} interleaved runs", file=sys.stderr)
    result["throughput"] = throughput(source, args.runs)
    if not args.skip_latency:
        print("latency: publishing at real time", file=sys.stderr)
        result["latency"] = latency(source)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["env"], indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
