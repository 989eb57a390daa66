"""Shared media fixtures for the end-to-end tests: real processes, real media.

- ``start_worker``: ``kubecast-worker run`` as its own process (as in a pod), on
  free loopback ports it picks itself (port 0) and reports in its JSON logs.
- ``publish``: the ffmpeg CLI pushing ``testsrc2`` + ``sine`` over RTMP with the
  common real-world settings of issue 4.
- ``ffprobe``: what the reference client reads from a playlist or segment.
- ``http_get``: a plain HTTP GET with the response headers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = REPO / "samples" / "transcodeprofile-default.yaml"
STREAM_KEY = "e2e-k3y-4b7d90c2f1"

#: A small, fast ladder for most tests: 1 s GOP, 2 s segments, ultrafast.
SMALL_PROFILE: dict[str, Any] = {
    "gopSeconds": 1,
    "segmentSeconds": 2,
    "audio": {"codec": "aac", "sampleRate": 48000, "channels": 2},
    "renditions": [
        {
            "name": "360p",
            "width": 640,
            "height": 360,
            "videoBitrate": 600,
            "maxrate": 700,
            "bufsize": 1200,
            "audioBitrate": 96,
            "fps": 30,
            "preset": "ultrafast",
            "profile": "main",
        },
        {
            "name": "180p",
            "width": 320,
            "height": 180,
            "videoBitrate": 200,
            "maxrate": 250,
            "bufsize": 400,
            "audioBitrate": 96,  # the same as 360p: one AAC encoder, shared
            "fps": 30,
            "preset": "ultrafast",
            "profile": "main",
        },
    ],
}

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="needs the ffmpeg and ffprobe CLIs",
)


def until(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# -- HTTP ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http_get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers.items()), e.read())


# -- the worker ----------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    out: Path
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)  # stderr: the logs
    stdout: list[str] = field(default_factory=list)  # nothing, normally
    http: str = ""
    #: The admin port's base URL: /status and /metrics are there, not on ``http``.
    admin: str = ""
    rtmp_port: int | None = None

    def url(self, path: str) -> str:
        return self.http + path

    def admin_url(self, path: str) -> str:
        return self.admin + path

    def rtmp(self, *, key: str = STREAM_KEY, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{key}"

    def status(self) -> dict[str, Any]:
        reply = http_get(self.admin_url("/status"))
        assert reply.status == 200, reply
        return reply.json()  # type: ignore[no-any-return]

    def metrics(self) -> str:
        reply = http_get(self.admin_url("/metrics"))
        assert reply.status == 200, reply
        return reply.text

    def logged(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in list(self.logs) if entry.get("msg") == msg]

    def wait_logged(self, msg: str, *, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        until(
            lambda: len(self.logged(msg)) >= count or self.process.poll() is not None,
            timeout=timeout,
            what=f"log line {msg!r} x{count}",
        )
        found = self.logged(msg)
        assert len(found) >= count, f"worker exited ({self.process.returncode}):\n" + "\n".join(
            self.raw[-30:]
        )
        return found[count - 1]

    def wait_state(self, state: str, *, timeout: float = 20) -> dict[str, Any]:
        return until(  # type: ignore[no-any-return]
            lambda: (s := self.status())["state"] == state and s,
            timeout=timeout,
            what=f"state {state}",
        )

    def stop(self) -> int:
        return stop_process(self.process, timeout=20)


def stop_process(process: subprocess.Popen[Any], *, timeout: float = 5) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s: a publisher's or a worker's own end
    first (it flushes what it holds), and never a test that hangs on one."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _read_stdout(worker: WorkerProcess) -> None:
    assert worker.process.stdout is not None
    for line in iter(worker.process.stdout.readline, b""):
        worker.stdout.append(line.decode(errors="replace").rstrip("\n"))


def _read_logs(worker: WorkerProcess) -> None:
    assert worker.process.stderr is not None
    for line in iter(worker.process.stderr.readline, b""):
        text = line.decode(errors="replace").rstrip("\n")
        worker.raw.append(text)
        with contextlib.suppress(ValueError):
            worker.logs.append(json.loads(text))


def launch_worker(
    directory: Path,
    *,
    profile: dict[str, Any] | Path = SMALL_PROFILE,
    pull: str | None = None,
    loop: bool = False,
    reconnect_window: int = 0,
    args: list[str] | None = None,
    name: str = "e2e",
    config: dict[str, Any] | None = None,
    wrap: list[str] | None = None,
) -> WorkerProcess:
    """Start ``kubecast-worker run`` in ``directory``; RTMP push with ``STREAM_KEY``
    unless ``pull`` is given. ``config``: run from this WorkerConfig document instead
    of flags (as the operator does). ``wrap``: a command to run it under (``nsenter
    --net=...``). The caller stops it (``WorkerProcess.stop()``)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "out"
    if config is not None:
        return _launch(
            [*(wrap or []), sys.executable, "-m", "kubecast_worker.cli", "run", "--config",
             str(_write(directory / "worker.yaml", {**config, "outputDir": str(out)})),
             *(args or [])],
            out=out, env=dict(os.environ), push=config["ingest"].get("listen") is not None,
        )  # fmt: skip
    if isinstance(profile, dict):
        profile_path = directory / "profile.yaml"
        profile_path.write_text(yaml.safe_dump(profile))
    else:
        profile_path = profile
    command = [
        sys.executable, "-m", "kubecast_worker.cli", "run",
        "--profile", str(profile_path),
        "--out", str(out),
        "--http", "127.0.0.1:0",
        "--stream", name,
        "--reconnect-window", str(reconnect_window),
        *(args or []),
    ]  # fmt: skip
    env = dict(os.environ)
    if pull:
        command += ["--pull", pull] + (["--loop"] if loop else [])
    else:
        command += ["--listen", "rtmp://127.0.0.1:0/live"]
        env["KUBECAST_STREAM_KEY"] = STREAM_KEY  # not in argv, where ps would show it
    return _launch(command, out=out, env=env, push=not pull)


def launch_configured_worker(
    directory: Path,
    *,
    key: str,
    stream: str = "e2e",
    app: str = "live",
    profile: dict[str, Any] = SMALL_PROFILE,
    reconnect_window: int = 0,
    ingest: dict[str, Any] | None = None,
    wrap: list[str] | None = None,
    args: list[str] | None = None,
    **config: Any,
) -> WorkerProcess:
    """A push worker as the operator runs it: from a WorkerConfig, the key in a file
    (``directory/stream-key``, a mounted Secret's stand-in). ``config``: more
    WorkerConfig fields by their API names (``restream=[...]``)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "stream-key"
    key_file.write_text(key)
    return launch_worker(
        directory,
        config={
            "stream": stream,
            "ingest": {"listen": "127.0.0.1:0", "app": app, "streamKeyFile": str(key_file)}
            | (ingest or {}),
            "profile": profile,
            "reconnectWindowSeconds": reconnect_window,
            "http": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            **config,
        },
        wrap=wrap,
        args=args,
    )


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def _launch(command: list[str], *, out: Path, env: dict[str, str], push: bool) -> WorkerProcess:
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    worker = WorkerProcess(process=process, out=out)
    threading.Thread(target=_read_logs, args=(worker,), daemon=True).start()
    threading.Thread(target=_read_stdout, args=(worker,), daemon=True).start()
    try:
        origin = worker.wait_logged("origin listening")
        worker.http = "http://" + origin["http"]
        worker.admin = "http://" + worker.wait_logged("admin listening")["admin"]
        if push:
            ingest = worker.wait_logged("ingest listening")
            worker.rtmp_port = int(ingest["ingest"].rsplit(":", 1)[1].split("/")[0])
    except BaseException:
        worker.stop()
        raise
    return worker


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(**launch_worker options)``; every worker is stopped at teardown."""
    workers: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        worker = launch_worker(tmp_path / f"worker{len(workers)}", **options)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


# -- the publisher -------------------------------------------------------------------------


def publisher_command(
    url: str, *, seconds: float, size: str = "640x360", rate: int = 25
) -> list[str]:
    """The issue's publisher: x264 main@3.1 at CRF 23 capped at 1.3 Mbit/s, AAC 128k."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-crf", "23",
        "-x264-params", "keyint=50:min-keyint=25:scenecut=-1",
        "-maxrate", "1300k", "-bufsize", "2600k",
        "-preset", "faster", "-tune", "zerolatency", "-profile:v", "main", "-level", "3.1",
        "-c:a", "aac", "-ar", "44100", "-b:a", "128k",
        "-flags", "+global_header",
        "-f", "flv", url,
    ]  # fmt: skip


def publish(
    url: str, *, seconds: float, size: str = "640x360", wait: bool = True, rate: int = 25
) -> subprocess.Popen[bytes]:
    """Push ``seconds`` of test pattern to ``url`` at real time (``wait``: until done)."""
    process = subprocess.Popen(
        publisher_command(url, seconds=seconds, size=size, rate=rate),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if wait:
        process.wait(timeout=seconds + 30)
    return process


def make_media(path: Path, *, seconds: float, size: str = "640x360", rate: int = 25) -> Path:
    """A local H.264/AAC file (for pull ingest and one-shot transcodes)."""
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * rate),
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


# -- ffprobe -------------------------------------------------------------------------------


def ffprobe(target: str | Path, *entries: str) -> dict[str, Any]:
    """``ffprobe -show_entries ...`` as JSON. A live playlist (no ENDLIST) would never end:
    probe playlists after the worker ended them."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_entries", ":".join(entries),
         str(target)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def video_stream(target: str | Path) -> dict[str, Any]:
    streams = ffprobe(target, "stream=codec_type,codec_name,profile,width,height,avg_frame_rate")
    return next(s for s in streams["streams"] if s["codec_type"] == "video")


def codecs(target: str | Path) -> set[str]:
    streams = ffprobe(target, "stream=codec_type,codec_name")["streams"]
    return {s["codec_name"] for s in streams}


@dataclass
class Timing:
    keyframes: list[float]
    video_seconds: float
    audio_seconds: float


def timing(target: str | Path) -> Timing:
    """Keyframe times and how long the video and the audio run, from every packet."""
    packets = ffprobe(
        target, "stream=index,codec_type", "packet=stream_index,pts_time,duration_time,flags"
    )
    kinds = {s["index"]: s["codec_type"] for s in packets["streams"]}
    spans: dict[str, list[float]] = {"video": [], "audio": []}
    ends: dict[str, list[float]] = {"video": [], "audio": []}
    keyframes = []
    for p in packets["packets"]:
        kind = kinds.get(p["stream_index"])
        if kind not in spans or "pts_time" not in p:
            continue
        start = float(p["pts_time"])
        spans[kind].append(start)
        ends[kind].append(start + float(p.get("duration_time") or 0))
        if kind == "video" and "K" in p.get("flags", ""):
            keyframes.append(round(start, 3))
    return Timing(
        keyframes=sorted(keyframes),
        video_seconds=max(ends["video"]) - min(spans["video"]),
        audio_seconds=max(ends["audio"]) - min(spans["audio"]) if spans["audio"] else 0.0,
    )


def free_port() -> int:
    """A free loopback TCP port (for servers that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
