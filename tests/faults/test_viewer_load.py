"""Load held: 1,000 concurrent HLS viewers of one live stream on the worker's origin.

One real ``kubecast-worker run`` takes the ffmpeg CLI's test pattern over RTMP at real
time. Debian's ``wrk`` opens 1,000 keep-alive connections to its origin on 127.0.0.1,
each a viewer fetching the 360p playlist and then the newest segment it lists, in a
loop (``hls_viewers.lua``), twice:

1. paced as real players are: a playlist and a segment per 2 s segment per viewer
   (about 1,000 requests per second). Every answer comes, none is late by a segment's
   length, the playlists are valid, and the encoder keeps real time;
2. as fast as the origin answers (what it can do): still every answer, none timed out.

Each load then goes to Debian's nginx serving the same directory, which tells the load
tool's errors from the origin's and gives the ratio. Meanwhile a player in this process
fetches the playlist and its newest segment every second, and the playlist on disk is
watched for the encoder's cadence. Numbers go to test-artifacts/faults/viewer-load.json;
the longer runs of docs/benchmarks.md are ``bench/viewers.py``.

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
    Live,
    Nginx,
    WrkResult,
    live_stream,
    raise_fd_limit,
    run_wrk,
    settle,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(300)]

VIEWERS = 1000
SECONDS = 20
PACE_MS = 2000  # a playlist and a segment per 2 s segment, per viewer
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
    cores: dict[str, float]  # CPU used by the worker, the publisher, nginx, wrk


@dataclass
class Campaign:
    worker: WorkerProcess
    origin: Phase  # paced as players
    nginx: Phase
    origin_flat_out: Phase  # as fast as it answers
    nginx_flat_out: Phase
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


def _phase(live: Live, nginx: Nginx, server: str, *, pace_ms: int) -> Phase:
    worker = live.worker
    base = worker.http if server == "origin" else nginx.base
    settle(worker.status)
    cpu = live.cpu(nginx=nginx.process.pid).start()
    watch = EncoderWatch(
        worker.status, worker.out / PLAYLIST.strip("/"), segment_seconds=SEGMENT_SECONDS
    ).start()
    sample = Sample([], [], None, [])
    stop = threading.Event()
    player = threading.Thread(target=_play, args=(base, stop, sample), daemon=True)
    player.start()
    try:
        load = run_wrk(
            base, PLAYLIST, server=server, connections=VIEWERS, seconds=SECONDS, pace_ms=pace_ms
        )
    finally:
        stop.set()
        player.join(timeout=30)
    encoder = watch.stop()
    return Phase(server, load, encoder, sample, cpu.stop() | {"wrk": load.client_cores})


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
    with live_stream(directory / "worker", seconds=4 * SECONDS + 120) as live:
        worker = live.worker
        nginx = Nginx(worker.out)
        try:
            # Paced first: the encoder's counters then owe nothing to a flat-out run.
            phases = [
                _phase(live, nginx, server, pace_ms=pace)
                for pace in (PACE_MS, 0)
                for server in ("origin", "nginx")
            ]
            headers = {"origin": _headers(worker.http), "nginx": _headers(nginx.base)}
        finally:
            nginx.stop()
        newest = directory / "newest.ts"
        newest.write_bytes(phases[0].player.newest or b"")
        result = Campaign(worker, *phases, headers=headers, newest_segment=newest,
                          fd_limit=fd_limit)  # fmt: skip
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(_report(result), indent=2) + "\n")
        yield result


def _report(c: Campaign) -> dict[str, Any]:
    def phase(p: Phase) -> dict[str, Any]:
        return p.load.to_json() | {
            "encoder": p.encoder.to_json(),
            "cores": p.cores,
            "player_cycles": len(p.player.seconds),
            "player_slowest_s": round(max(p.player.seconds, default=0), 2),
        }

    return {
        "viewers": VIEWERS,
        "seconds": SECONDS,
        "fd_soft_limit": {"before": c.fd_limit[0], "after": c.fd_limit[1]},
        "paced": {"origin": phase(c.origin), "nginx": phase(c.nginx)},
        "flat_out": {"origin": phase(c.origin_flat_out), "nginx": phase(c.nginx_flat_out)},
        "origin_vs_nginx_requests_per_second_flat_out": round(
            c.origin_flat_out.load.rps / c.nginx_flat_out.load.rps, 3
        ),
        "origin_vs_nginx_p99_paced": round(
            c.origin.load.latency_ms["p99"] / max(c.nginx.load.latency_ms["p99"], 0.01), 2
        ),
        "headers": c.headers,
    }


def test_1000_viewers_get_every_answer_from_the_origin_in_time(campaign: Campaign) -> None:
    load = campaign.origin.load
    assert load.established >= VIEWERS, "wrk did not hold 1,000 connections to the origin"
    assert load.errors == 0, load.to_json()
    # Each viewer got playlists and segments, over and over (not one of each, or none),
    # at about the rate players ask (2 requests per viewer per 2 s).
    assert load.playlists >= 2 * VIEWERS and load.segments >= 2 * VIEWERS, load.to_json()
    assert load.rps >= 0.7 * VIEWERS * 2 / (PACE_MS / 1000), load.to_json()
    # A segment that takes longer than its own length to come makes a player stall.
    assert load.latency_ms["p99"] < SEGMENT_SECONDS * 1000, load.to_json()
    # A player beside the 1,000 was served too, every second it asked.
    player = campaign.origin.player
    assert set(player.statuses) == {200}, player.statuses
    assert len(player.seconds) >= SECONDS // 3


def test_flat_out_the_origin_answers_every_request(campaign: Campaign) -> None:
    """1,000 connections asking as fast as they are answered: slower answers (that is
    what queueing is), but no refused connection, no timeout, no error."""
    load = campaign.origin_flat_out.load
    assert load.established >= VIEWERS
    assert load.errors == 0, load.to_json()
    assert set(campaign.origin_flat_out.player.statuses) == {200}


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
    # A player holds three segments (hls.js's default live sync distance): a wait of two
    # between new ones does not stall it.
    assert cadence.max_gap_s <= 2 * SEGMENT_SECONDS, report
    assert campaign.worker.status()["state"] == "live"


def test_nginx_on_the_same_files_takes_the_same_load(campaign: Campaign) -> None:
    """The yardstick: the load tool and the machine make no errors of their own, and
    nginx serves what the origin serves, with the same headers."""
    for load in (campaign.nginx.load, campaign.nginx_flat_out.load):
        assert load.established >= VIEWERS
        assert load.errors == 0, load.to_json()
        assert load.playlists >= 2 * VIEWERS and load.segments >= 2 * VIEWERS
    origin, nginx = campaign.headers["origin"], campaign.headers["nginx"]
    assert origin == nginx
    assert origin["playlist"]["Cache-Control"] == PLAYLIST_CACHE
    assert origin["segment"]["Cache-Control"] == SEGMENT_CACHE
