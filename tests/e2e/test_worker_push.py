"""An ffmpeg publisher pushes RTMP to ``kubecast-worker run``; players' view of the result.

One publish of the small test ladder (640x360 + 320x180, ultrafast) is observed
while live and after it ends, and several tests read those observations; one
more publish uses the issue's exact 1280x720 publisher against the default
ladder, whose 1080p rung must be dropped rather than upscaled.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import m3u8
import pytest
from conftest import (
    DEFAULT_PROFILE,
    SMALL_PROFILE,
    STREAM_KEY,
    Reply,
    WorkerProcess,
    codecs,
    ffprobe,
    http_get,
    launch_configured_worker,
    launch_worker,
    needs_ffmpeg,
    publish,
    timing,
    until,
    video_stream,
)

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(120)]

SMALL = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}


@dataclass
class Observed:
    worker: WorkerProcess
    live_status: dict[str, Any]
    live_metrics: str
    master: Reply
    playlist: Reply
    segment: Reply
    thumbnail: Reply
    final_status: dict[str, Any]
    #: What the playback port answered while live, by path (admin paths and the player's).
    on_playback_port: dict[str, Reply]


def _all_renditions_have_segments(worker: WorkerProcess, count: int) -> dict[str, Any] | None:
    status = worker.status()
    active = [r for r in status["renditions"] if r["state"] == "Active"]
    ready = (
        status["state"] == "live"
        and active
        and all(r["segments"] >= count and r["bitrateKbps"] for r in active)
        and status["input"]["bitrateKbps"]
        and status["encodeSpeed"]
    )
    return status if ready else None


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    worker = launch_worker(tmp_path_factory.mktemp("push-small"), profile=SMALL_PROFILE)
    try:
        publisher = publish(worker.rtmp(), seconds=8, wait=False)
        # The first still (of media time 0) as soon as there is one: the next is 5 s later.
        until(lambda: worker.status().get("thumbnailUrl"), timeout=20, what="a thumbnail")
        thumbnail = http_get(worker.url("/thumbnail.jpg"))
        live = until(
            lambda: _all_renditions_have_segments(worker, 2),
            timeout=20,
            what="two segments of every rendition while live",
        )
        metrics = worker.metrics()
        master = http_get(worker.url("/master.m3u8"))
        playlist = http_get(worker.url("/360p/index.m3u8"))
        first = next(line for line in playlist.text.splitlines() if line.endswith(".ts"))
        segment = http_get(worker.url(f"/360p/{first}"))
        paths = ("/status", "/metrics", "/player/status")
        on_playback = {path: http_get(worker.url(path)) for path in paths}
        assert publisher.wait(timeout=30) == 0, publisher.stderr.read() if publisher.stderr else ""
        final = worker.wait_state("idle")
        yield Observed(
            worker, live, metrics, master, playlist, segment, thumbnail, final, on_playback
        )
    finally:
        worker.stop()


def test_publish_makes_a_master_playlist_listing_every_rendition(small: Observed) -> None:
    assert small.master.status == 200
    master = m3u8.loads(small.master.text)
    assert master.is_variant
    by_uri = {p.uri: p.stream_info for p in master.playlists}
    assert set(by_uri) == {f"{name}/index.m3u8" for name in SMALL}
    for name, (width, height) in SMALL.items():
        info = by_uri[f"{name}/index.m3u8"]
        assert info.resolution == (width, height)
        assert info.frame_rate == 25.0  # the publisher's rate: 30 is a ceiling, not a target
        assert info.bandwidth > info.average_bandwidth > 0
        assert re.fullmatch(r"avc1\.[0-9a-f]{6},mp4a\.40\.2", info.codecs), info.codecs
        assert (small.worker.out / name / "index.m3u8").is_file()


def test_ffprobe_reads_every_rendition_with_its_size_and_codecs(small: Observed) -> None:
    for name, (width, height) in SMALL.items():
        playlist = small.worker.out / name / "index.m3u8"
        video = video_stream(playlist)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
        assert video["profile"] in ("Main", "Constrained Baseline")  # ultrafast: no CABAC
        assert codecs(playlist) == {"h264", "aac"}


def _peak_kbps(segments: list[tuple[float, int]], target: float) -> float:
    """HLS's peak segment bit rate: the highest rate of any run of contiguous
    segments lasting 0.5 to 1.5 target durations (RFC 8216bis 4.4.6.2)."""
    peak = 0.0
    for start in range(len(segments)):
        seconds = bits = 0.0
        for duration, size in segments[start:]:
            seconds, bits = seconds + duration, bits + size * 8
            if seconds > 1.5 * target:
                break
            if seconds >= 0.5 * target:
                peak = max(peak, bits / seconds / 1000)
    return peak


def test_master_bandwidth_is_what_the_segments_measure(small: Observed) -> None:
    """BANDWIDTH is at least the peak segment bitrate, AVERAGE-BANDWIDTH within 10 %
    of the average, and CODECS names the profile and level really in the stream."""
    master = m3u8.load(str(small.worker.out / "master.m3u8"))
    for variant in master.playlists:
        info = variant.stream_info
        playlist = m3u8.load(str(small.worker.out / variant.uri))
        directory = (small.worker.out / variant.uri).parent
        segments = [(s.duration, (directory / s.uri).stat().st_size) for s in playlist.segments]
        assert len(segments) >= 3, variant.uri  # the whole publish is still listed
        peak = _peak_kbps(segments, playlist.target_duration)
        average = sum(size * 8 for _, size in segments) / sum(d for d, _ in segments) / 1000
        assert info.bandwidth >= peak * 1000, (variant.uri, info.bandwidth, peak)
        assert abs(info.average_bandwidth - average * 1000) <= 0.10 * average * 1000, (
            variant.uri, info.average_bandwidth, average,
        )  # fmt: skip
        profile = ffprobe(directory / "index.m3u8", "stream=codec_type,profile,level")
        video = next(s for s in profile["streams"] if s["codec_type"] == "video")
        avc1 = info.codecs.split(",")[0]
        profile_idc = {"Constrained Baseline": 0x42, "Baseline": 0x42, "Main": 0x4D, "High": 0x64}
        assert int(avc1[5:7], 16) == profile_idc[video["profile"]], (avc1, video)
        assert int(avc1[9:11], 16) == video["level"], (avc1, video)


def test_a_thumbnail_of_the_smallest_rendition_is_served_and_refreshed(small: Observed) -> None:
    assert small.live_status["thumbnailUrl"] == "/thumbnail.jpg"
    assert small.thumbnail.status == 200
    assert small.thumbnail.headers["Content-Type"] == "image/jpeg"
    assert small.thumbnail.body[:3] == b"\xff\xd8\xff"  # a JPEG
    path = small.worker.out / "thumbnail.jpg"
    video = video_stream(path)
    smallest = min(SMALL.values(), key=lambda size: size[0] * size[1])
    assert (video["codec_name"], video["width"], video["height"]) == ("mjpeg", *smallest)
    # 8 s of a moving test picture, a still every 5 s: the last one is another picture.
    assert path.read_bytes() != small.thumbnail.body


def test_keyframes_are_on_the_same_timestamps_in_every_rendition(small: Observed) -> None:
    keyframes = {name: timing(small.worker.out / name / "index.m3u8").keyframes for name in SMALL}
    first, *others = keyframes.values()
    assert len(first) >= 6, keyframes  # 1 s GOP, 8 s of media
    for other in others:
        assert other == first
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(first)}
    assert gaps == {1.0}, gaps  # gopSeconds: 1, no scene-cut keyframes


def test_audio_and_video_durations_differ_by_less_than_100ms(small: Observed) -> None:
    for name in SMALL:
        t = timing(small.worker.out / name / "index.m3u8")
        assert t.video_seconds > 7.0
        assert abs(t.video_seconds - t.audio_seconds) < 0.1, (name, t)


def test_playlists_end_with_endlist_when_the_publisher_stops(small: Observed) -> None:
    for name in SMALL:
        text = (small.worker.out / name / "index.m3u8").read_text()
        assert text.rstrip().endswith("#EXT-X-ENDLIST")
    status = small.final_status
    assert status["state"] == "idle"
    assert status["publisher"] is None and status["input"] is None
    assert status["lastError"] is None


def test_status_shows_live_values_during_the_publish(small: Observed) -> None:
    status = small.live_status
    assert status["state"] == "live"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", status["publisher"])
    assert status["input"]["videoCodec"] == "h264" and status["input"]["audioCodec"] == "aac"
    assert status["input"]["resolution"] == "640x360"
    assert status["input"]["fps"] == 25.0
    assert 100 < status["input"]["bitrateKbps"] < 3000
    assert 0.5 < status["encodeSpeed"] < 3.0
    assert status["ingest"]["counters"]["accepted"] == 1
    assert status["playbackUrl"] == "/master.m3u8"
    rungs = {r["name"]: r for r in status["renditions"]}
    assert set(rungs) == set(SMALL)
    for name, (width, height) in SMALL.items():
        r = rungs[name]
        assert (r["state"], r["width"], r["height"]) == ("Active", width, height)
        assert r["bitrateKbps"] > 0 and r["segments"] >= 2 and r["frames"] > 0
        assert r["playbackUrl"] == f"/{name}/index.m3u8"
    assert isinstance(status["droppedFrames"], int) and isinstance(status["lateFrames"], int)


def _sample(metrics: str, name: str, **labels: str) -> float:
    wanted = {"stream": "e2e", **labels}
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-z_]+)\{(.*)\} (\S+)", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if all(have.get(k) == v for k, v in wanted.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{wanted} in:\n{metrics}")


def test_metrics_show_live_values_during_the_publish(small: Observed) -> None:
    m = small.live_metrics
    assert _sample(m, "kubecast_stream_live") == 1
    assert _sample(m, "kubecast_stream_state", state="live") == 1
    assert _sample(m, "kubecast_ingest_accepted_total") == 1
    assert _sample(m, "kubecast_input_bitrate_kbps") > 100
    assert _sample(m, "kubecast_frames_decoded_total") > 25
    assert _sample(m, "kubecast_encode_speed_ratio") > 0.5
    assert _sample(m, "kubecast_input_info", resolution="640x360", video_codec="h264") == 1
    for name in SMALL:
        assert _sample(m, "kubecast_rendition_active", rendition=name) == 1
        assert _sample(m, "kubecast_rendition_segments_total", rendition=name) >= 2
        assert _sample(m, "kubecast_rendition_bitrate_kbps", rendition=name) > 0


def test_origin_serves_playlists_and_segments_with_player_headers(small: Observed) -> None:
    for reply in (small.master, small.playlist):
        assert reply.headers["Content-Type"] == "application/vnd.apple.mpegurl"
        assert reply.headers["Cache-Control"] == "public, max-age=1"
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert small.segment.status == 200
    assert small.segment.headers["Content-Type"] == "video/mp2t"
    assert "immutable" in small.segment.headers["Cache-Control"]
    assert small.segment.body[:1] == b"\x47"  # MPEG-TS sync byte


def test_the_playback_port_shows_viewers_no_publisher_address_and_no_admin_endpoint(
    small: Observed,
) -> None:
    """/status and /metrics are on the admin port only; the page's share of the status
    has the stream's figures and not the publisher's address."""
    replies = small.on_playback_port
    assert replies["/status"].status == 404 and replies["/metrics"].status == 404
    viewer = replies["/player/status"]
    assert viewer.status == 200 and viewer.json()["state"] == "live"
    assert viewer.json()["input"]["videoCodec"] == "h264"
    publisher = small.live_status["publisher"]  # 127.0.0.1:<the publisher's port>
    assert publisher and publisher not in viewer.text and "publisher" not in viewer.text
    assert small.worker.admin != small.worker.http


def test_the_stream_key_never_appears_in_logs_or_status(small: Observed) -> None:
    assert all(STREAM_KEY not in line for line in small.worker.raw)
    assert STREAM_KEY not in str(small.live_status)
    assert STREAM_KEY not in small.live_metrics


def test_issue_publisher_at_720p_gets_the_default_ladder_without_1080p(tmp_path: Path) -> None:
    """The issue's publisher settings, verbatim, at 1280x720 against the default ladder."""
    worker = launch_worker(tmp_path, profile=DEFAULT_PROFILE, name="e2e")
    try:
        publisher = publish(worker.rtmp(), seconds=10, size="1280x720", wait=False)
        live = until(
            lambda: _all_renditions_have_segments(worker, 1),
            timeout=25,
            what="a segment of every rendition",
        )
        assert publisher.wait(timeout=40) == 0
        worker.wait_state("idle")
    finally:
        worker.stop()

    rungs = {r["name"]: r for r in live["renditions"]}
    assert rungs["1080p"]["state"] == "Dropped"
    assert "upscale" in rungs["1080p"]["reason"] and "1280x720" in rungs["1080p"]["reason"]
    expected = {"720p": (1280, 720), "480p": (854, 480), "360p": (640, 360)}
    assert {n for n, r in rungs.items() if r["state"] == "Active"} == set(expected)

    master = m3u8.load(str(worker.out / "master.m3u8"))
    assert [p.uri for p in master.playlists] == [f"{n}/index.m3u8" for n in expected]
    assert not (worker.out / "1080p").exists()

    keyframes = []
    for name, (width, height) in expected.items():
        playlist = worker.out / name / "index.m3u8"
        assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
        video = video_stream(playlist)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
        assert codecs(playlist) == {"h264", "aac"}
        t = timing(playlist)
        assert abs(t.video_seconds - t.audio_seconds) < 0.1, (name, t)
        keyframes.append(t.keyframes)
    assert keyframes[0] == keyframes[1] == keyframes[2]
    assert {round(b - a, 3) for a, b in itertools.pairwise(keyframes[0])} == {2.0}


def test_a_rotated_key_in_the_key_file_is_taken_without_a_restart(tmp_path: Path) -> None:
    """The kubelet rewrites a mounted Secret in place; the worker follows it."""
    old, new = "old-key-5b1e9d", "new-key-27c4fa"
    worker = launch_configured_worker(tmp_path, key=old, stream="rotate")
    key_file = tmp_path / "stream-key"
    try:
        swap = tmp_path / "stream-key.new"
        swap.write_text(new + "\n")
        swap.replace(key_file)  # atomic, as the kubelet's symlink swap is
        worker.wait_logged("stream key rotated", timeout=15)

        refused = publish(worker.rtmp(key=old), seconds=2)
        assert refused.returncode != 0, "the old key still publishes"
        assert worker.status()["ingest"]["counters"]["refused_wrong_key"] == 1
        accepted = publish(worker.rtmp(key=new), seconds=4, wait=False)
        worker.wait_state("live", timeout=20)
        assert accepted.wait(timeout=30) == 0
        worker.wait_state("idle", timeout=20)
    finally:
        worker.stop()
    logged = "\n".join(worker.raw)
    assert old not in logged and new not in logged
