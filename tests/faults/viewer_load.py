"""HLS viewers under load: wrk as 1,000 players of one live stream, nginx as the yardstick.

Shared by ``tests/faults/test_viewer_load.py`` (short, asserts) and ``bench/viewers.py``
(longer, prints a table). Everything goes to 127.0.0.1.

- :func:`run_wrk`: Debian's ``wrk`` with ``hls_viewers.lua`` (the playlist, then the
  newest segment it names, in a loop) against one server; its own counts of non-2xx
  answers and invalid playlists beside wrk's socket errors and timeouts.
- :class:`Nginx`: Debian's nginx serving the same output directory, unprivileged (a
  config in a temp dir, a free loopback port, no system file touched), with the
  origin's cache headers.
- :class:`EncoderWatch`: whether the worker kept real time while it served: its
  dropped and late frame counters, its encode speed, and the cadence of new segments
  in the playlist on disk (what the packager wrote, not what the origin served).
- :func:`raise_fd_limit`: 1,000 connections need more descriptors than a default
  soft limit of 1,024 gives the worker (which inherits it), wrk and nginx.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import m3u8

from tests.e2e.conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    free_port,
    http_get,
    launch_worker,
    publish,
    until,
)

SCRIPT = Path(__file__).with_name("hls_viewers.lua")
LATENCIES = ("p50", "p90", "p99", "max", "mean")
WRK_TIMEOUT_S = 10  # a request slower than this counts as an error (hls.js waits 20 s)

# The origin's headers (kubecast_worker.origin), repeated for nginx; the test checks
# that both servers answer with the same ones.
PLAYLIST_CACHE = "public, max-age=1"
SEGMENT_CACHE = "public, max-age=31536000, immutable"


def raise_fd_limit(need: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to at least ``need`` (up to the hard
    limit); children started afterwards inherit it. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_seconds(pid: int, *, thread: int | None = None) -> float:
    """User + system CPU time of a process (all its threads) and of its live children
    (nginx's workers), from /proc; of one of its threads only, with ``thread``."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    total = 0.0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        if thread:
            return total
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            total += sum(cpu_seconds(int(child)) for child in children)
    return total


class CpuMeter:
    """Cores each named process used between ``start()`` and ``stop()``; a name given as
    (pid, tid) is one thread of a process."""

    def __init__(self, pids: dict[str, int | tuple[int, int]]) -> None:
        self.pids = pids

    def _read(self) -> dict[str, float]:
        return {
            name: cpu_seconds(*pid[:1], thread=pid[1]) if isinstance(pid, tuple)
            else cpu_seconds(pid)
            for name, pid in self.pids.items()
        }  # fmt: skip

    def start(self) -> CpuMeter:
        self._wall = time.monotonic()
        self._cpu = self._read()
        return self

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        now = self._read()
        return {name: round((now[name] - self._cpu[name]) / wall, 3) for name in self.pids}


# -- wrk ------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    server: str
    connections: int
    seconds: float
    requests: int
    playlists: int
    segments: int
    segment_bytes: int
    non2xx: int
    statuses: dict[str, int]
    invalid_playlists: int
    wrong_type: int
    socket_errors: dict[str, int]  # wrk's connect, read, write
    timeouts: int
    latency_ms: dict[str, float]  # p50, p90, p99, max, mean
    established: int  # connections seen established to the server mid-run (ss)
    load_before: tuple[float, float, float]
    pace_ms: int = 0
    client_cores: float = 0.0  # CPU wrk used, in cores

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Everything a viewer would notice: a refused or broken connection, a slow or
        non-2xx answer, a playlist that does not parse, a segment of the wrong type."""
        return (
            self.non2xx
            + sum(self.socket_errors.values())
            + self.timeouts
            + self.invalid_playlists
            + self.wrong_type
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "connections": self.connections,
            "established_mid_run": self.established,
            "pace_ms": self.pace_ms,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "requests_per_second": round(self.rps, 1),
            "playlists": self.playlists,
            "segments": self.segments,
            "segment_mbit_per_second": round(self.segment_bytes * 8 / 1e6 / self.seconds, 1),
            "latency_ms": self.latency_ms,
            "errors": self.errors,
            "non2xx": self.non2xx,
            "statuses": self.statuses,
            "socket_errors": self.socket_errors,
            "timeouts": self.timeouts,
            "invalid_playlists": self.invalid_playlists,
            "wrong_content_type": self.wrong_type,
            "load_average_before": [round(x, 2) for x in self.load_before],
            "wrk_cores": self.client_cores,
        }


def established_to(port: int) -> int:
    """Established TCP connections whose server side is 127.0.0.1:``port``."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if line.strip())


def run_wrk(
    base: str,
    playlist: str,
    *,
    server: str,
    connections: int = 1000,
    threads: int = 2,
    seconds: int = 20,
    pace_ms: int = 0,
) -> WrkResult:
    """``connections`` viewers of ``base + playlist`` for ``seconds``; see hls_viewers.lua."""
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    load_before = load_average()
    command = [
        "wrk", "-c", str(connections), "-t", str(threads), "-d", f"{seconds}s",
        "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(SCRIPT), base, "--", playlist, str(pace_ms),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Midway, count the connections the server really holds (wrk opens them all at once).
    time.sleep(min(seconds / 2, 5))
    established = established_to(port)
    stdout, stderr = process.communicate(timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert process.returncode == 0, f"wrk failed ({process.returncode}):\n{stderr}\n{stdout}"
    line = next((x for x in stdout.splitlines() if x.startswith("HLS_VIEWERS ")), None)
    assert line is not None, f"no summary from wrk:\n{stdout}\n{stderr}"
    data = json.loads(line.split(" ", 1)[1])
    errors = data["errors"]
    latency = data["latency_us"]
    return WrkResult(
        server=server,
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        playlists=int(data["playlists"]),
        segments=int(data["segments"]),
        segment_bytes=int(data["segment_bytes"]),
        non2xx=int(data["non2xx"]),
        statuses={k: int(v) for k, v in data["statuses"].items()},
        invalid_playlists=int(data["invalid_playlists"]),
        wrong_type=int(data["wrong_type"]),
        socket_errors={k: int(errors[k]) for k in ("connect", "read", "write")},
        timeouts=int(errors["timeout"]),
        latency_ms={k: round(float(latency[k]) / 1000, 2) for k in LATENCIES},
        established=established,
        load_before=load_before,
        pace_ms=pace_ms,
        client_cores=round(
            (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            / (data["duration_us"] / 1e6),
            3,
        ),
    )


# -- nginx ----------------------------------------------------------------------------------


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    # Debian's defaults for static files, no access log (the origin keeps none either).
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/mp2t ts;
        video/mp4 m4s mp4;
    }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        add_header Access-Control-Allow-Origin "*" always;
        # A live playlist changes every segment; a segment name is never reused.
        location ~ \\.m3u8$ {{
            add_header Cache-Control "{playlist_cache}" always;
            add_header Access-Control-Allow-Origin "*" always;
        }}
        location ~ \\.(ts|m4s|mp4)$ {{
            add_header Cache-Control "{segment_cache}" always;
            add_header Access-Control-Allow-Origin "*" always;
        }}
    }}
}}
"""


class Nginx:
    """Debian's nginx serving ``root`` on a free loopback port, until ``stop()``.

    Unprivileged: its config, pid, logs and temp paths are in a temp dir of its own,
    it listens on a high port, and it touches no system file. ``workers``: 1 by default,
    like the origin's one event loop."""

    def __init__(self, root: Path, *, workers: int = 1) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.tmp = Path(tempfile.mkdtemp(prefix="kubecast-nginx-"))
        self.port = free_port()
        # NB: as root, nginx would run its workers as "nobody", who cannot read a
        # pytest temp dir (0700): keep them as the user who owns the files.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user=user, workers=workers, tmp=self.tmp, port=self.port, root=root,
                playlist_cache=PLAYLIST_CACHE, segment_cache=SEGMENT_CACHE,
            )
        )  # fmt: skip
        self.process = subprocess.Popen(
            [binary, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            until(self._listening, timeout=10, what="nginx listening")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            raise AssertionError(f"nginx exited: {self.process.stderr.read().decode()}")
        try:
            return http_get(self.base + "/master.m3u8").status in (200, 404)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the encoder ----------------------------------------------------------------------------


@dataclass
class Cadence:
    """New segments as the packager listed them, while a load ran."""

    seconds: float
    segment_seconds: float  # the profile's segment length
    new_segments: int
    media_seconds: float  # the sum of their EXTINF durations
    max_gap_s: float  # the longest wait between two new segments
    arrivals: list[float] = field(default_factory=list)


@dataclass
class EncoderReport:
    dropped_frames: int  # input frames a rendition skipped because it fell behind
    late_frames: int  # frames decoded more than 1 s behind real time
    encode_speed: float | None  # media seconds per wall second, at the end
    cadence: Cadence

    @property
    def kept_real_time(self) -> bool:
        """No frame dropped or late, and segments kept coming at their own length: the
        media listed covers the wall time (less the part segments at either end), and
        no wait between two was longer than two segments (a player keeps three: hls.js's
        default live sync distance, so it does not stall)."""
        c = self.cadence
        return (
            self.dropped_frames == 0
            and self.late_frames == 0
            and c.media_seconds >= c.seconds - 2 * c.segment_seconds
            and c.max_gap_s <= 2 * c.segment_seconds
        )

    def to_json(self) -> dict[str, Any]:
        c = self.cadence
        return {
            "dropped_frames": self.dropped_frames,
            "late_frames": self.late_frames,
            "encode_speed": self.encode_speed,
            "new_segments": c.new_segments,
            "segment_media_seconds": round(c.media_seconds, 2),
            "wall_seconds": round(c.seconds, 2),
            "max_gap_between_segments_s": round(c.max_gap_s, 2),
            "kept_real_time": self.kept_real_time,
        }


def settle(status: Any, *, quiet: float = 4.0, timeout: float = 60.0) -> float:
    """Wait until the encoder has caught up with what the last load left it (its dropped
    and late frame counters stay put for ``quiet`` seconds), so that the next run is not
    charged with it. Returns the seconds waited."""
    started = time.monotonic()

    def counters() -> tuple[int, int]:
        s = status()
        return s["droppedFrames"], s["lateFrames"]

    last, since = counters(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - started < timeout:
        time.sleep(0.5)
        now = counters()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - started


class EncoderWatch:
    """From ``start()`` to ``stop()``: the worker's frame counters (from /status) and
    the segments its packager added to ``playlist`` on disk, polled every 50 ms."""

    def __init__(self, status: Any, playlist: Path, *, segment_seconds: float) -> None:
        self._status = status  # a callable returning the worker's /status document
        self.playlist = playlist
        self.segment_seconds = segment_seconds
        self._stop = threading.Event()
        self._seen: dict[str, float] = {}  # segment URI -> its duration
        self._arrivals: list[float] = []
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> EncoderWatch:
        self._before = self._status()
        self._read()  # what is already listed is not new
        self._arrivals.clear()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _read(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for segment in m3u8.loads(self.playlist.read_text()).segments:
                if segment.uri not in self._seen:
                    self._seen[segment.uri] = float(segment.duration)
                    self._arrivals.append(time.monotonic())

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self._read()

    def stop(self) -> EncoderReport:
        self._stop.set()
        self._thread.join()
        ended = time.monotonic()
        after = self._status()
        seen = list(self._seen.values())
        new = len(self._arrivals)
        marks = [self._started, *self._arrivals, ended]
        return EncoderReport(
            dropped_frames=after["droppedFrames"] - self._before["droppedFrames"],
            late_frames=after["lateFrames"] - self._before["lateFrames"],
            encode_speed=after.get("encodeSpeed"),
            cadence=Cadence(
                seconds=ended - self._started,
                segment_seconds=self.segment_seconds,
                new_segments=new,
                media_seconds=sum(seen[len(seen) - new :]) if new else 0.0,
                max_gap_s=max(b - a for a, b in itertools.pairwise(marks)),
                arrivals=[t - self._started for t in self._arrivals],
            ),
        )


# -- the live stream ------------------------------------------------------------------------


@dataclass
class Live:
    worker: WorkerProcess
    publisher: subprocess.Popen[bytes]

    def cpu(self, **more: int) -> CpuMeter:
        """Cores used by the worker (encoder and origin), by its event loop alone (the
        main thread: the origin and the RTMP ingest; the media work is in threads of its
        own), by the publisher and by ``more``."""
        pid = self.worker.process.pid
        return CpuMeter({"worker": pid, "worker_loop": (pid, pid),
                         "publisher": self.publisher.pid, **more})  # fmt: skip


@contextlib.contextmanager
def live_stream(directory: Path, *, seconds: float) -> Iterator[Live]:
    """A real ``kubecast-worker run`` (the small 2-rung ladder of the e2e tests) with the
    ffmpeg CLI publishing to it at real time for ``seconds``; yields once every rendition
    lists two segments, so that a viewer has a newest one from the start."""
    worker = launch_worker(directory, profile=SMALL_PROFILE, name="viewers")
    publisher = None
    try:
        assert worker.rtmp_port is not None
        publisher = publish(worker.rtmp(), seconds=seconds, wait=False)
        worker.wait_state("live", timeout=30)

        def listed() -> bool:
            renditions = worker.status()["renditions"]
            active = [r for r in renditions if r["state"] == "Active"]
            return bool(active) and all(r["segments"] >= 2 for r in active)

        until(listed, timeout=30, what="two segments of every rendition")
        yield Live(worker, publisher)
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        worker.stop()
