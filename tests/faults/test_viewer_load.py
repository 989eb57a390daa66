"""Load held: 1,000 concurrent HLS viewers of one live stream on the worker's origin.

One real ``kubecast-worker run`` takes the ffmpeg CLI's test pattern over RTMP at real
time. Debian's ``wrk`` opens 1,000 keep-alive connections to its origin on 127.0.0.1,
each a viewer fetching the 360p playlist and then the newest segment it lists, as fast
as the origin answers (see ``hls_viewers.lua``). Then the same load goes to Debian's
nginx serving the same directory, which tells the load tool's own errors from the
origin's and gives the ratio. Meanwhile a player in this process fetches the playlist
and its newest segment every second, and the playlist on disk is watched for the
encoder's cadence. Numbers go to test-artifacts/faults/viewer-load.json; the longer
runs of docs/benchmarks.md are ``bench/viewers.py``.

1,000 connections need more file descriptors than a default soft limit of 1,024: the
fixture raises this process's soft RLIMIT_NOFILE (the worker, wrk and nginx inherit it).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import m3u8
import pytest

from tests.e2e.conftest import (
    REPO,
    SMALL_PROFILE,
    WorkerProcess,
    http_get,
    needs_ffmpeg,
    video_stream,
)

from .viewer_load import (
    PLAYLIST_CACHE,
    SEGMENT_CACHE,
    EncoderReport,
    EncoderWatch,
    Nginx,
    WrkResult,
    live_stream,
    raise_fd_limit,
    run_wrk,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(300)]

VIEWERS = 1000
SECONDS = 20
PLAYLIST = "/360p/index.m3u8"
SEGMENT_SECONDS = float(SMALL_PROFILE["segmentSeconds"])
ARTIFACT = REPO / "test-artifacts" / "faults" / "viewer-load.json"


@dataclass
class Sample:
    """What one more player saw while the load ran: each playlist and its newest segment."""

    playlists: list[str]
    statuses: list[int]
    newest: bytes | None
    seconds: list[float]  # how long each playlist + segment took


@dataclass
class Phase:
    server: str
    load: WrkResult
    encoder: EncoderReport
    player: Sample


@dataclass
class Campaign:
    worker: WorkerProcess
    origin: Phase
    nginx: Phase
    headers: dict[str, dict[str, dict[str, str]]]  # server -> playlist/segment -> headers
    newest_segment: Path
    fd_limit: tuple[int, int]


def _play(base: str, stop: threading.Event, sample: Sample) -> None:
    while not stop.wait(1.0):
        started = time.monotonic()
        reply = http_get(base + PLAYLIST)
        sample.statuses.append(reply.status)
        if reply.status != 200:
            continue
        sample.playlists.append(reply.text)
        newest = m3u8.loads(reply.text).segments[-1].uri
        segment = http_get(base + PLAYLIST.rsplit("/", 1)[0] + "/" + newest)
        sample.statuses.append(segment.status)
        if segment.status == 200:
            sample.newest = segment.body
        sample.seconds.append(time.monotonic() - started)


def _phase(worker: WorkerProcess, base: str, server: str) -> Phase:
    watch = EncoderWatch(
        worker.status, worker.out / PLAYLIST.strip("/"), segment_seconds=SEGMENT_SECONDS
    ).start()
    sample = Sample([], [], None, [])
    stop = threading.Event()
    player = threading.Thread(target=_play, args=(base, stop, sample), daemon=True)
    player.start()
    try:
        load = run_wrk(base, PLAYLIST, server=server, connections=VIEWERS, seconds=SECONDS)
    finally:
        stop.set()
        player.join(timeout=30)
    return Phase(server, load, watch.stop(), sample)


def _headers(base: str) -> dict[str, dict[str, str]]:
    playlist = http_get(base + PLAYLIST)
    newest = m3u8.loads(playlist.text).segments[-1].uri
    segment = http_get(base + "/360p/" + newest)
    keep = ("Content-Type", "Cache-Control", "Access-Control-Allow-Origin")
    return {
        name: {k: reply.headers.get(k, "") for k in keep} | {"status": str(reply.status)}
        for name, reply in (("playlist", playlist), ("segment", segment))
    }


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    assert shutil.which("wrk") and shutil.which("nginx"), (
        "needs Debian's wrk and nginx: hack/system-packages.sh --tests installs them"
    )
    fd_limit = raise_fd_limit(4 * VIEWERS + 1024)
    directory = tmp_path_factory.mktemp("viewer-load")
    with live_stream(directory / "worker", seconds=2 * SECONDS + 90) as worker:
        nginx = Nginx(worker.out)
        try:
            origin = _phase(worker, worker.http, "origin")
            against = _phase(worker, nginx.base, "nginx")
            headers = {"origin": _headers(worker.http), "nginx": _headers(nginx.base)}
        finally:
            nginx.stop()
        newest = directory / "newest.ts"
        newest.write_bytes(origin.player.newest or b"")
        result = Campaign(worker, origin, against, headers, newest, fd_limit)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(_report(result), indent=2) + "\n")
        yield result


def _report(c: Campaign) -> dict[str, Any]:
    phases = {
        p.server: p.load.to_json()
        | {
            "encoder": p.encoder.to_json(),
            "player_cycles": len(p.player.seconds),
            "player_slowest_s": round(max(p.player.seconds, default=0), 2),
        }
        for p in (c.origin, c.nginx)
    }
    return {
        "viewers": VIEWERS,
        "seconds": SECONDS,
        "fd_soft_limit": {"before": c.fd_limit[0], "after": c.fd_limit[1]},
        **phases,
        "origin_vs_nginx_requests_per_second": round(c.origin.load.rps / c.nginx.load.rps, 3),
        "headers": c.headers,
    }


def test_1000_viewers_get_every_answer_from_the_origin(campaign: Campaign) -> None:
    load = campaign.origin.load
    assert load.established >= VIEWERS, "wrk did not hold 1,000 connections to the origin"
    assert load.errors == 0, load.to_json()
    # Each viewer got playlists and segments, over and over (not one of each, or none).
    assert load.playlists >= 2 * VIEWERS and load.segments >= 2 * VIEWERS, load.to_json()
    assert load.segments >= 0.4 * load.requests
    # A player beside the 1,000 was served too, every second it asked.
    player = campaign.origin.player
    assert set(player.statuses) == {200}, player.statuses
    assert len(player.seconds) >= SECONDS // 3


def test_playlists_served_under_load_are_valid_live_playlists(campaign: Campaign) -> None:
    load = campaign.origin.load
    assert load.invalid_playlists == 0 and load.wrong_type == 0
    texts = campaign.origin.player.playlists
    assert len(texts) >= SECONDS // 3
    sequences = []
    for text in texts:
        playlist = m3u8.loads(text)
        assert playlist.target_duration == SEGMENT_SECONDS
        assert not playlist.is_endlist
        assert len(playlist.segments) >= 2
        assert all(0 < s.duration <= SEGMENT_SECONDS + 0.1 for s in playlist.segments)
        sequences.append(playlist.media_sequence or 0)
    assert sequences == sorted(sequences), "the live window went backwards"
    # The newest segment, fetched under load, is whole and plays: 640x360 H.264.
    stream = video_stream(campaign.newest_segment)
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 640, 360)


def test_the_encoder_kept_real_time_while_the_origin_served(campaign: Campaign) -> None:
    encoder = campaign.origin.encoder
    report = encoder.to_json()
    assert encoder.dropped_frames == 0, report
    assert encoder.late_frames == 0, report
    cadence = encoder.cadence
    assert cadence.media_seconds >= cadence.seconds - 2 * SEGMENT_SECONDS, report
    assert cadence.max_gap_s <= 1.5 * SEGMENT_SECONDS, report
    assert campaign.worker.status()["state"] == "live"


def test_nginx_on_the_same_files_takes_the_same_load(campaign: Campaign) -> None:
    """The yardstick: the load tool and the machine make no errors of their own, and
    nginx serves what the origin serves, with the same headers."""
    load = campaign.nginx.load
    assert load.established >= VIEWERS
    assert load.errors == 0, load.to_json()
    assert load.playlists >= 2 * VIEWERS and load.segments >= 2 * VIEWERS
    origin, nginx = campaign.headers["origin"], campaign.headers["nginx"]
    assert origin == nginx
    assert origin["playlist"]["Cache-Control"] == PLAYLIST_CACHE
    assert origin["segment"]["Cache-Control"] == SEGMENT_CACHE
