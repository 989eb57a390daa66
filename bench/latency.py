"""Glass to glass: the wall clock burnt into each published picture, read back at a player.

    sudo .venv/bin/python bench/latency.py [--legs rtmp-hls,whip-whep] [--seconds 30]

Both ends run on this machine, so one clock: a publisher stamps the time into
every picture as it hands it to its encoder (tests/e2e/clock_pattern.py), and a
player reads it off the picture it shows and subtracts it from the time then.
Each leg starts a worker (the tests' SMALL_PROFILE ladder: 360p + 180p, x264
ultrafast, 1 s GOP, 2 s segments), one publisher and its players, warms up for
``--warmup`` s after the stream is live, then samples for ``--seconds``.

Publishers (640x360, 30 fps):
- rtmp, srt: tests/e2e/clock_publisher.py, the ffmpeg CLI's x264 (veryfast,
  ``--tune zerolatency`` unless ``--publisher-tune none``) fed raw pictures, and AAC
  fed the PCM of a tone written with every picture (``--publisher-lavfi-audio``:
  ffmpeg's own tone at ``-re``, the bench's publisher before);
- whip: tests/e2e/whip_client.py --clock, aiortc's VP8, as a browser sends.

Players:
- hls.js in headless Chromium (bench/clock_reader.html: hls.js made by the worker's
  player/static/hls-live.js, as the worker's player page makes it), reading the
  <video> every 100 ms and counting stalls (``waiting``);
- pyav (HLS legs): FFmpeg's HLS demuxer (its default start, 3 segments from the
  live end), each picture "shown" at its arrival or one frame after the previous
  one, whichever is later: a player that plays out at 1x and stalls when starved;
  ``arrival`` is the latency at decode, before any play-out buffer;
- whep (WHEP legs): tests/e2e/whep_client.py --clock, aiortc decoding 360p.

Everything runs in a network namespace of its own (aioice offers no loopback
candidate, see tests/integration/netns.py): the script enters it and runs again
inside, hence root. It prints one JSON document: per leg, each player's median,
p95, max and number of samples (ms), the target, and the worker's own count of
late and dropped frames (whether it kept up). LL-HLS legs are skipped with the
reason when this build's worker config has no ``outputs.hls.lowLatency``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"
sys.path.insert(0, str(E2E))
sys.path.insert(0, str(REPO))
import clock_pattern  # noqa: E402
from browsers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from conftest import (  # noqa: E402
    SMALL_PROFILE,
    WorkerProcess,
    launch_configured_worker,
    stop_process,
    until,
)
from test_worker_srt import free_udp_port  # noqa: E402

from kubecast_api import WorkerConfig  # noqa: E402
from tests.integration import netns  # noqa: E402

ADDRESS = "10.214.1.1"
#: Also the SRT passphrase (10 to 79 characters).
KEY = "bench-latency-k3y-0c5d8e2a9f417b36"
READER = (Path(__file__).parent / "clock_reader.html").read_text()
SEGMENT_MS = int(SMALL_PROFILE["segmentSeconds"] * 1000)
LL_HLS = {"hls": {"segmentType": "fmp4", "lowLatency": True}}
FIELD = "outputs.hls.lowLatency"


@dataclass(frozen=True)
class Leg:
    ingest: str  # rtmp, srt, whip
    output: str  # hls, llhls, whep
    target_ms: int
    target: str


LEGS = {
    "rtmp-hls": Leg("rtmp", "hls", int(2.5 * SEGMENT_MS), "2.5 x the segment length"),
    "whip-hls": Leg("whip", "hls", int(2.5 * SEGMENT_MS), "2.5 x the segment length"),
    "rtmp-whep": Leg("rtmp", "whep", 500, "issue 12"),
    "whip-whep": Leg("whip", "whep", 300, "issue 12"),
    "rtmp-llhls": Leg("rtmp", "llhls", 2000, "issue 13"),
    "srt-llhls": Leg("srt", "llhls", 2000, "issue 13"),
}


def ll_hls_refused() -> str | None:
    """Why this build cannot run LL-HLS legs (its worker config refuses the field), or None."""
    try:
        WorkerConfig.model_validate(
            {"stream": "probe", "ingest": {"listen": "127.0.0.1:0"}, "outputs": LL_HLS}
        )
    except pydantic.ValidationError as error:
        reason = error.errors()[0]["msg"]
        return f"not available in this build: the worker config refuses {FIELD} ({reason})"
    return None


# -- the worker and its publisher ------------------------------------------------------


def start_worker(leg: Leg, directory: Path) -> WorkerProcess:
    # NB: an SRT listener cannot say which port it was given: pick a free one
    port = free_udp_port(ADDRESS) if leg.ingest == "srt" else 0
    return launch_configured_worker(
        directory,
        key=KEY,
        stream="latency",
        ingest={"listen": f"{ADDRESS}:{port}", "protocol": leg.ingest},
        http=f"{ADDRESS}:0",
        admin=f"{ADDRESS}:0",
        args=["--whep"] if leg.output == "whep" else [],
        **({"outputs": LL_HLS} if leg.output == "llhls" else {}),
    )


def start_publisher(
    leg: Leg, worker: WorkerProcess, log: Path, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    port = worker.rtmp_port
    if leg.ingest == "whip":
        command = [
            str(E2E / "whip_client.py"),
            f"http://{ADDRESS}:{port}/whip/live",
            "--no-delete",
            "--clock",
        ]
    else:
        url = (
            f"srt://{ADDRESS}:{port}?passphrase={KEY}"
            if leg.ingest == "srt"
            else f"rtmp://{ADDRESS}:{port}/live/{KEY}"
        )
        command = [str(E2E / "clock_publisher.py"), url, "--tune", args.publisher_tune]
        if args.publisher_muxdelay is not None:
            command += ["--muxdelay", str(args.publisher_muxdelay)]
        if args.publisher_lavfi_audio:
            command += ["--lavfi-audio"]
    with open(log, "wb") as errors:  # NB: the URL holds the key; it is not logged
        return subprocess.Popen(
            [sys.executable, *command], stdout=subprocess.DEVNULL, stderr=errors,
            env={**os.environ, "WHIP_TOKEN": KEY},
        )  # fmt: skip


def wait_for_segments(worker: WorkerProcess, segments: int = 3) -> None:
    """Every rendition lists ``segments`` segments: enough for a player to start."""

    def ready() -> bool:
        names = [r["name"] for r in SMALL_PROFILE["renditions"]]
        playlists = [worker.out / name / "index.m3u8" for name in names]
        return all(p.is_file() and p.read_text().count("#EXTINF") >= segments for p in playlists)

    until(ready, timeout=60, what=f"{segments} segments of every rendition", every=0.2)


# -- the players -----------------------------------------------------------------------


def hlsjs(browser: Any, origin: str, *, warmup: float, seconds: float) -> dict[str, Any]:
    """hls.js in a Chromium page of the worker's origin (so the canvas may read the
    video), playing the master playlist."""
    source = f"{origin}/master.m3u8"
    context = browser.new_context(viewport={"width": 700, "height": 800})
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        # A document of the worker's origin and address space (a page fulfilled by
        # page.route would be "public" to Chromium, which then blocks every request it
        # makes to this private address): any of the origin's URLs, then the reader.
        page.goto(f"{origin}/player/static/player.css")
        page.set_content(READER)
        page.evaluate(f"start({json.dumps(source)})")
        deadline = time.monotonic() + 60
        while not page.evaluate("window.clock.delays.length"):
            if time.monotonic() > deadline:
                state = page.evaluate("[video.readyState, video.paused, video.currentTime]")
                return {
                    "error": f"no picture read in 60 s: video {state}",
                    "console": console[-10:],
                }
            page.wait_for_timeout(200)
        page.wait_for_timeout(warmup * 1000)
        page.evaluate(
            "window.clock.delays = []; window.clock.hlsLatency = []; window.clock.heights = {};"
            " window.clock.stalls = 0"
        )
        page.wait_for_timeout(seconds * 1000)
        clock = page.evaluate("window.clock")
    finally:
        context.close()
    estimates = sorted(x for x in clock["hlsLatency"] if x is not None)
    return {
        **clock_pattern.summary(clock["delays"]),
        "rejected": clock["rejected"],
        "errors": clock["errors"],
        "stalls": clock["stalls"],  # waiting events while sampling
        # hls.js's own figure: its distance behind the playlist's live edge, in s
        "hlsjs_latency_estimate_s": round(estimates[len(estimates) // 2], 2) if estimates else None,
        "hlsjs_target_latency_s": clock["targetLatency"],
        "heights": clock["heights"],
    }


class PyavPlayer(threading.Thread):
    """FFmpeg's HLS demuxer (PyAV) reading one rendition, in a thread beside hls.js."""

    def __init__(self, url: str, *, warmup: float, seconds: float) -> None:
        super().__init__(name="pyav-player", daemon=True)
        self.url, self.warmup, self.seconds = url, warmup, seconds
        self.arrival: list[int] = []
        self.played: list[int] = []
        self.error: str | None = None

    def run(self) -> None:
        import av

        try:
            with av.open(self.url, timeout=10) as container:
                self._play(container)
        except av.FFmpegError as error:
            self.error = str(error)

    def _play(self, container: Any) -> None:
        start = time.time()
        shown_at: float | None = None  # when the previous picture was shown (wall clock)
        previous_pts = 0.0
        for frame in container.decode(video=0):
            now = time.time()
            pts = float(frame.pts * frame.time_base)
            # Play out at 1x: a picture is shown one frame after the previous one,
            # or when it arrives if that is later (a stall).
            shown_at = now if shown_at is None else max(now, shown_at + pts - previous_pts)
            previous_pts = pts
            stamped = clock_pattern.read(frame)
            if now - start < self.warmup:
                continue
            self.arrival.append(int(now * 1000 - stamped) % (1 << 32))
            self.played.append(int(shown_at * 1000 - stamped) % (1 << 32))
            if now - start > self.warmup + self.seconds:
                return

    def result(self) -> dict[str, Any]:
        self.join(timeout=30)
        if not self.played:
            return {"error": self.error or "no picture decoded"}
        return {
            **clock_pattern.summary(self.played),
            "arrival": clock_pattern.summary(self.arrival),
        }


def whep(origin: str, *, warmup: float, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(E2E / "whep_client.py"), f"{origin}/whep/360p", "--clock",
         "--seconds", str(warmup + seconds), "--warmup", str(warmup)],
        capture_output=True, text=True, timeout=warmup + seconds + 60, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"error": (done.stderr or "no output").strip().splitlines()[-1]}
    watched = json.loads(lines[-1])
    if not watched.get("latency_ms"):
        return {"error": f"no picture decoded: {watched}"}
    return {**watched["latency_ms"], "first_frame_seconds": watched["first_frame_seconds"]}


# -- one leg ---------------------------------------------------------------------------


def run_leg(
    name: str, leg: Leg, args: argparse.Namespace, browser: Any, work: Path
) -> dict[str, Any]:
    directory = work / name
    worker = start_worker(leg, directory)
    publisher = start_publisher(leg, worker, directory / "publisher.log", args)
    load = os.getloadavg()[0]
    try:
        worker.wait_state("live", timeout=60)
        players: dict[str, Any] = {}
        if leg.output == "whep":
            time.sleep(2)  # past the ladder's first keyframe
            players["whep"] = whep(worker.http, warmup=args.warmup, seconds=args.seconds)
        else:
            wait_for_segments(worker)
            pyav = PyavPlayer(
                f"{worker.http}/360p/index.m3u8", warmup=args.warmup, seconds=args.seconds
            )
            if leg.output == "hls":
                pyav.start()
            players["hls.js"] = hlsjs(
                browser, worker.http, warmup=args.warmup, seconds=args.seconds
            )
            if leg.output == "hls":
                players["pyav"] = pyav.result()
        status = worker.status()
        return {
            "target_ms": leg.target_ms,
            "target": leg.target,
            "players": players,
            "worker": {k: status.get(k) for k in ("framesDecoded", "droppedFrames", "lateFrames")},
            "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        stop_process(publisher, timeout=15)
        worker.stop()


def inside(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    names = args.legs.split(",")
    unknown = set(names) - set(LEGS)
    if unknown:
        raise SystemExit(f"unknown legs {sorted(unknown)}; choose from {sorted(LEGS)}")
    work = Path(tempfile.mkdtemp(prefix="kubecast-latency-"))
    refused = ll_hls_refused()
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name in names:
                leg = LEGS[name]
                if leg.output == "llhls" and refused:
                    results[name] = {"skipped": refused, "target_ms": leg.target_ms}
                    continue
                print(f"latency: {name}", file=sys.stderr, flush=True)
                try:
                    results[name] = run_leg(name, leg, args, browser, work)
                except AssertionError as error:  # a worker or player that never started
                    results[name] = {"error": str(error), "target_ms": leg.target_ms}
        finally:
            browser.close()
    print(json.dumps({
        "profile": "tests/e2e SMALL_PROFILE: 360p + 180p, x264 ultrafast, 1 s GOP, 2 s segments",
        "publisher": {
            "rtmp/srt": f"ffmpeg libx264 veryfast, tune {args.publisher_tune}, 2 s GOP,"
            " 1.5 Mbit/s CBR, 640x360 at 30 fps; AAC of a 1 kHz tone "
            + ("from ffmpeg's lavfi at -re" if args.publisher_lavfi_audio
               else "written with each picture")
            + "; SRT: -muxdelay "
            + ("0.7 (ffmpeg's default)" if args.publisher_muxdelay is None
               else str(args.publisher_muxdelay)),
            "whip": "aiortc VP8, 640x360 at 30 fps",
        },
        "warmup_seconds": args.warmup,
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "legs": results,
        "logs": str(work),
    }, indent=2))  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--legs", default=",".join(LEGS), help=f"comma-separated, of {','.join(LEGS)}"
    )
    parser.add_argument("--seconds", type=float, default=45, help="samples per leg, after warm-up")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of play before sampling")
    parser.add_argument("--publisher-tune", choices=("zerolatency", "none"), default="zerolatency")
    parser.add_argument(
        "--publisher-muxdelay", type=float, metavar="SECONDS",
        help="SRT legs: the publisher's ffmpeg -muxdelay (MPEG-TS); ffmpeg's default 0.7",
    )  # fmt: skip
    parser.add_argument(
        "--publisher-lavfi-audio", action="store_true",
        help="RTMP/SRT legs: ffmpeg makes the tone at -re, instead of the publisher's own"
        " PCM written with every picture",
    )  # fmt: skip
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    with netns.private_namespace(f"kubecast-latency-{os.getpid()}", ADDRESS) as path:
        return subprocess.run(
            ["nsenter", f"--net={path}", "--", sys.executable, __file__, "--inside", *sys.argv[1:]],
            check=False,
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
