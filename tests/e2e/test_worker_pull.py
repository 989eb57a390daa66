"""Pull ingest from a local file, once or looped, through ``kubecast-worker run --pull``."""

from __future__ import annotations

import functools
import itertools
import subprocess
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import m3u8
import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    free_port,
    http_get,
    make_media,
    needs_ffmpeg,
    timing,
    until,
)

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(120)]

StartWorker = Callable[..., WorkerProcess]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=3)


def test_pulled_file_plays_once_at_real_time_then_playlists_end(
    start_worker: StartWorker, clip: Path
) -> None:
    worker = start_worker(pull=clip.as_uri())
    live = until(
        lambda: (s := worker.status())["state"] == "live" and s["input"] and s,
        timeout=10,
        what="the pull to go live",
    )
    assert live["ingest"]["mode"] == "pull"
    assert live["ingest"]["url"] == clip.as_uri()
    assert live["input"]["resolution"] == "640x360"
    worker.wait_logged("the input file ended", timeout=20)
    status = worker.wait_state("idle")
    assert status["lastError"] is None
    for name in ("360p", "180p"):
        playlist = worker.out / name / "index.m3u8"
        assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
        t = timing(playlist)
        assert 2.9 < t.video_seconds < 3.2, t
        assert abs(t.video_seconds - t.audio_seconds) < 0.1, t
    ended = worker.logged("publish ended")[0]
    assert ended["wall_seconds"] > 2.5  # paced at real time, not as fast as the disk


def test_looped_file_keeps_the_stream_going_on_one_timeline(
    start_worker: StartWorker, clip: Path
) -> None:
    worker = start_worker(pull=clip.as_uri(), loop=True, reconnect_window=30)
    until(
        lambda: (
            worker.status()["renditions"]
            and all(r["segments"] >= 4 for r in worker.status()["renditions"])
        ),
        timeout=30,
        what="four segments (8 s) from a 3 s file",
    )
    assert worker.status()["state"] == "live"
    assert len(worker.logged("looping the input")) >= 2
    assert worker.stop() == 0
    playlist = worker.out / "360p" / "index.m3u8"
    parsed = m3u8.load(str(playlist))
    assert parsed.is_endlist
    assert not any(s.discontinuity for s in parsed.segments)
    t = timing(playlist)
    assert t.video_seconds > 7.5
    # One timeline across the loops: keyframes every second, never jumping back.
    assert {round(b - a, 3) for a, b in itertools.pairwise(t.keyframes)} == {1.0}
    assert abs(t.video_seconds - t.audio_seconds) < 0.15, t


def test_pull_retries_with_backoff_until_the_source_appears(
    start_worker: StartWorker, clip: Path, tmp_path: Path
) -> None:
    """An HLS source over HTTP that is down at first: the worker backs off, then pulls it."""
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(clip),
         "-c", "copy", "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
         str(site / "index.m3u8")],
        check=True,
    )  # fmt: skip
    port = free_port()
    worker = start_worker(pull=f"http://127.0.0.1:{port}/index.m3u8", reconnect_window=30)
    worker.wait_logged("pull source dropped; retrying", count=2, timeout=15)
    waits = [e["in_seconds"] for e in worker.logged("pull source dropped; retrying")]
    assert waits[:2] == [1.0, 2.0]  # backing off
    status = worker.status()
    assert status["state"] == "idle" and "cannot open the input" in status["lastError"]
    assert status["ingest"]["url"] == f"http://127.0.0.1:{port}/index.m3u8"

    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        until(
            lambda: (s := worker.status())["state"] == "live" and s["input"],
            timeout=15,
            what="the pull to reach the source once it is up",
        )
        until(
            lambda: all(r["segments"] >= 1 for r in worker.status()["renditions"]),
            timeout=15,
            what="segments from the pulled HLS",
        )
        assert worker.status()["lastError"] is None
    finally:
        server.shutdown()
        server.server_close()


def test_worker_runs_from_the_config_file_the_operator_renders(
    start_worker: StartWorker, clip: Path
) -> None:
    worker = start_worker(
        config={
            "stream": "from-config",
            "namespace": "live",
            "ingest": {"pull": {"url": clip.as_uri()}},
            "profile": SMALL_PROFILE,
            "outputs": {"hls": {"segmentType": "ts", "windowSegments": 3}},
            "reconnectWindowSeconds": 0,
            "http": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        }
    )
    assert worker.wait_logged("origin listening")["stream"] == "from-config"
    worker.wait_logged("the input file ended", timeout=20)
    assert worker.wait_state("idle")["stream"] == "from-config"
    assert 'kubecast_stream_live{stream="from-config"} 0.0' in worker.metrics()
    playlist = http_get(worker.url("/360p/index.m3u8")).text
    assert playlist.count("#EXTINF") <= 3  # windowSegments
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")


def test_event_playlist_from_the_config_keeps_every_segment_from_the_start(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    """outputs.hls.playlistType: event — DVR from the first segment, not a window."""
    source = make_media(tmp_path / "ten.mp4", seconds=10)
    worker = start_worker(
        config={
            "stream": "dvr",
            "ingest": {"pull": {"url": source.as_uri()}},
            "profile": SMALL_PROFILE,  # 2 s segments
            "outputs": {"hls": {"playlistType": "event", "windowSegments": 3}},
            "reconnectWindowSeconds": 0,
            "http": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        }
    )
    worker.wait_logged("the input file ended", timeout=30)
    worker.wait_state("idle")
    for name in ("360p", "180p"):
        playlist = m3u8.loads(http_get(worker.url(f"/{name}/index.m3u8")).text)
        assert playlist.playlist_type == "event"
        assert playlist.media_sequence in (None, 0), "the first segment is still listed"
        assert len(playlist.segments) >= 5, "more than windowSegments: nothing slid out"
        assert playlist.is_endlist
        assert abs(sum(s.duration for s in playlist.segments) - 10) < 2.1
        assert all((worker.out / name / s.uri).is_file() for s in playlist.segments)
