"""WHIP in, WHEP out: what a WebRTC viewer costs the worker, and how fast sessions turn over.

    sudo .venv/bin/python bench/webrtc.py [--viewers 8] [--window 10]
        [--processes 4] [--rendition 360p] [--no-audio] [--publisher whip|rtmp720]
        [--count-only]

In a network namespace of its own (aioice offers no loopback candidate), as the
tests do: a worker (tests/e2e SMALL_PROFILE ladder: 360p + 180p, ultrafast, 1 s GOP)
with ``--whep``, an aiortc WHIP publisher (tests/e2e/whip_client.py --clock: VP8 +
Opus, 640x360 at 30 fps, each picture showing the wall clock), then ``--viewers``
aiortc WHEP viewers of ``--rendition`` (tests/e2e/whep_client.py --clock), spread over
``--processes`` processes (several viewers share one event loop: fifty processes
would cost more than the viewers). It prints one JSON document:

- ``worker_cpu_idle_viewers``: the worker's CPU (cores) over ``--window`` s with no viewer;
- ``worker_cpu_with_viewers``: the same with the viewers watching;
- ``per_viewer_cpu_percent``: the difference per viewer, in % of one core;
- ``per_viewer_loop_cpu_percent``: the same of the worker's event-loop thread alone,
  where every viewer's RTP, SRTP and RTCP run (the encoder threads' CPU, which a
  busy machine moves most, left out);
- ``first_frame_seconds``: each viewer, from its answer to its first decoded picture;
- ``glass_to_glass_ms``: each viewer's median, p95 and max of the wall clock at its
  decoded picture minus the clock the picture shows (WHIP → ladder → WHEP; one clock);
- ``vanished_to_idle_seconds``: the publisher killed (no DELETE) → the worker idle;
- ``worker_status``: its frames decoded, dropped (a rendition behind) and late (decoded
  more than a second after real time): whether the worker kept up;
- ``viewers_cpu``: the viewer processes' own CPU (cores) while they watched;
- ``keyframe_skips``, ``max_gap_seconds``: from the worker's /metrics, times a
  viewer's queue overflowed; from each viewer, its longest gap between pictures.

The viewers run on the same machine, so they compete with the worker for the
cores: read the per-viewer figure as an upper bound on a shared machine.

``--count-only``: viewers that do ICE, DTLS and SRTP but count the video's RTP instead
of decoding it (whep_client.py ``RtpCounter``), so that 100-200 of them leave the cores
to the worker: how many viewers one worker holds. Each viewer then reports its packets,
the packets missing from its sequence numbers (``viewer_lost_packets``) and the
keyframes it got; its fps is pictures (distinct RTP timestamps) over their span.

``--publisher rtmp720``: the viewers' cost at 720p. The ffmpeg CLI publishes a 720p30
test pattern over RTMP (x264, the tests' publisher), and the ladder is 720p (2.5 Mbit/s)
+ 360p, ultrafast, 1 s GOP: what an OBS publisher and a 720p WebRTC rung look like.
There is no clock in that picture, so no glass-to-glass figure either.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO))
from conftest import SMALL_PROFILE, publisher_command  # noqa: E402

from tests.integration import netns  # noqa: E402

ADDRESS = "10.214.0.1"
KEY = "bench-whip-k3y-5d0c"
#: --publisher rtmp720: a 720p WebRTC rung above the tests' 360p one
LADDER_720P = {
    **SMALL_PROFILE,
    "renditions": [
        {"name": "720p", "width": 1280, "height": 720, "videoBitrate": 2500, "maxrate": 2800,
         "bufsize": 5000, "audioBitrate": 96, "fps": 30, "preset": "ultrafast",
         "profile": "main"},
        SMALL_PROFILE["renditions"][0],
    ],
}  # fmt: skip


def cpu_times(pid: int, thread: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (of its ``thread`` alone, if given)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def loop_seconds(pid: int) -> float:
    """CPU seconds of the worker's main thread: its asyncio loop, where viewers are sent to."""
    return sum(cpu_times(pid, pid))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--processes", type=int, default=4, help="viewer processes")
    parser.add_argument("--rendition", default="360p")
    parser.add_argument("--no-audio", action="store_true", help="viewers receive video only")
    parser.add_argument("--publisher", choices=("whip", "rtmp720"), default="whip")
    parser.add_argument(
        "--count-only", action="store_true", help="viewers count RTP instead of decoding"
    )
    args = parser.parse_args()
    with netns.private_namespace(f"kubecast-whip-bench-{os.getpid()}", ADDRESS) as path:
        return bench(args, path)


def bench(args: argparse.Namespace, path: str) -> int:
    enter = ["nsenter", f"--net={path}", "--"]
    work = Path(tempfile.mkdtemp(prefix="kubecast-webrtc-bench-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        (work / "key").write_text(KEY)
        rtmp = args.publisher == "rtmp720"
        ingest = (
            {"listen": f"{ADDRESS}:1935"}
            if rtmp
            else {"listen": f"{ADDRESS}:8889", "protocol": "whip"}
        )
        config = {
            "stream": "bench",
            "ingest": {**ingest, "streamKeyFile": str(work / "key")},
            "profile": LADDER_720P if rtmp else SMALL_PROFILE, "reconnectWindowSeconds": 0,
            "http": f"{ADDRESS}:8080", "admin": f"{ADDRESS}:9090", "outputDir": str(work / "out"),
        }  # fmt: skip
        (work / "worker.yaml").write_text(yaml.safe_dump(config))
        with open(work / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [*enter, sys.executable, "-m", "kubecast_worker.cli", "run", "--config",
                 str(work / "worker.yaml"), "--whep"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=REPO,
            )  # fmt: skip
        procs.append(worker)

        def status() -> dict[str, Any]:
            def get() -> dict[str, Any]:
                try:
                    with urllib.request.urlopen(f"http://{ADDRESS}:9090/status", timeout=5) as r:
                        return json.load(r)  # type: ignore[no-any-return]
                except OSError:
                    return {"state": "down"}

            return netns.call(path, get)

        def state() -> str:
            return str(status()["state"])

        def wait(want: str, timeout: float = 60) -> float:
            deadline = time.monotonic() + timeout
            while state() != want:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no {want} state; see {work / 'worker.log'}")
                time.sleep(0.2)
            return time.monotonic()

        wait("idle")
        if rtmp:
            url = f"rtmp://{ADDRESS}:1935/live/{KEY}"
            command = publisher_command(url, seconds=3600, size="1280x720", rate=30)
        else:
            command = [sys.executable, str(REPO / "tests/e2e/whip_client.py"),
                       f"http://{ADDRESS}:8889/whip/live", "--no-delete", "--clock"]  # fmt: skip
        publisher = subprocess.Popen(
            [*enter, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "WHIP_TOKEN": KEY},
        )  # fmt: skip
        procs.append(publisher)
        wait("live")
        time.sleep(3)
        s0, t0 = cpu_times(worker.pid)[1], time.monotonic()
        c0, l0 = cpu_seconds(worker.pid), loop_seconds(worker.pid)
        time.sleep(args.window)
        idle = (cpu_seconds(worker.pid) - c0) / (time.monotonic() - t0)
        idle_loop = (loop_seconds(worker.pid) - l0) / (time.monotonic() - t0)
        idle_sys = (cpu_times(worker.pid)[1] - s0) / (time.monotonic() - t0)

        def keyframe_skips() -> float:
            def get() -> float:
                with urllib.request.urlopen(f"http://{ADDRESS}:9090/metrics", timeout=5) as r:
                    text = r.read().decode()
                return sum(
                    s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == "kubecast_whep_keyframe_skips_total"
                )

            return netns.call(path, get)

        processes = max(1, min(args.processes, args.viewers))
        shares = [
            args.viewers // processes + (i < args.viewers % processes) for i in range(processes)
        ]
        viewer = [*enter, sys.executable, str(REPO / "tests/e2e/whep_client.py"),
                  f"http://{ADDRESS}:8080/whep/{args.rendition}",
                  "--seconds", str(args.window + 8)] + ([] if rtmp else ["--clock"])  # fmt: skip
        if args.no_audio:
            viewer.append("--no-audio")
        if args.count_only:
            viewer.append("--count-only")
        crowd = [
            subprocess.Popen(
                [*viewer, "--viewers", str(n)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for n in shares
        ]
        procs.extend(crowd)
        skips0 = keyframe_skips()
        time.sleep(6)  # every viewer connected and past its first keyframe
        c1, s1, t1 = cpu_seconds(worker.pid), cpu_times(worker.pid)[1], time.monotonic()
        l1 = loop_seconds(worker.pid)
        v1 = sum(cpu_seconds(v.pid) for v in crowd)  # NB: nsenter execs: the same pid
        time.sleep(args.window)
        watching = (cpu_seconds(worker.pid) - c1) / (time.monotonic() - t1)
        watching_sys = (cpu_times(worker.pid)[1] - s1) / (time.monotonic() - t1)
        watching_loop = (loop_seconds(worker.pid) - l1) / (time.monotonic() - t1)
        viewers_cpu = (sum(cpu_seconds(v.pid) for v in crowd) - v1) / (time.monotonic() - t1)
        viewers = [
            json.loads(line)
            for v in crowd
            for line in v.communicate()[0].splitlines()
            if line.startswith("{")
        ]
        skips = keyframe_skips() - skips0
        live = status()  # the worker's own account: did it keep up?
        behind = {k: live.get(k) for k in ("framesDecoded", "droppedFrames", "lateFrames")}
        publisher.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        vanished = wait("idle") - killed
        print(json.dumps({
            "viewers": args.viewers,
            "viewer_processes": processes,
            "publisher": args.publisher,
            "rendition": args.rendition,
            "audio": not args.no_audio,
            "count_only": args.count_only,
            "window_seconds": args.window,
            "load_average": os.getloadavg()[0],
            "worker_cpu_idle_viewers": round(idle, 3),
            "worker_cpu_with_viewers": round(watching, 3),
            "per_viewer_cpu_percent": round(100 * (watching - idle) / args.viewers, 2),
            # NB: the kernel's part: sendto() of every RTP packet; with the viewers on this
            # machine it also delivers each datagram to the viewer's socket (loopback).
            "per_viewer_system_cpu_percent": round(
                100 * (watching_sys - idle_sys) / args.viewers, 2
            ),
            # NB: the event loop's thread alone (every viewer's RTP, SRTP, sendto and RTCP;
            # not the decode and encode threads, whose CPU a busy machine moves most)
            "worker_loop_cpu_idle_viewers": round(idle_loop, 3),
            "worker_loop_cpu_with_viewers": round(watching_loop, 3),
            "per_viewer_loop_cpu_percent": round(
                100 * (watching_loop - idle_loop) / args.viewers, 2
            ),
            "viewers_cpu": round(viewers_cpu, 3),
            "watched": len(viewers),
            "viewer_frames": [v["frames"] for v in viewers],
            "viewer_distinct_frames": [v["distinct"] for v in viewers],
            "viewer_fps": [round(v["distinct"] / v["video_seconds"], 2) for v in viewers],
            "viewer_sizes": sorted({tuple(s) for v in viewers for s in v["sizes"]}),
            "viewer_lost_packets": sorted(v["lost"] for v in viewers if "lost" in v),
            "viewer_keyframes": sorted(v["keyframes"] for v in viewers if "keyframes" in v),
            "first_frame_seconds": [v["first_frame_seconds"] for v in viewers],
            "connected_to_first_frame_seconds": [
                v["connected_to_first_frame_seconds"] for v in viewers
            ],
            "max_gap_seconds": max((v["max_gap_seconds"] or 0) for v in viewers),
            "keyframe_skips": skips,
            "glass_to_glass_ms": [v["latency_ms"] for v in viewers],
            "vanished_to_idle_seconds": round(vanished, 2),
            "worker_status": behind,
            "logs": str(work / "worker.log"),
        }, indent=2))  # fmt: skip
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
