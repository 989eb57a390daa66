"""DASH and HLS from one set of CMAF segments, checked by independent players.

One worker (``outputs.dash`` with fMP4 segments) and one ffmpeg publisher are shared by
the module, as in test_player_browser.py; the tests read what the worker serves:

- ffprobe opens the live MPD and finds every representation;
- dash.js (from npm, node_modules of the player's package-lock) plays it in Debian's
  Chromium, and hls.js plays the HLS master of the very same segment files;
- keyframes line up across renditions: segment N of every video rendition starts
  with a keyframe at the same presentation time;
- the master's CODECS say what ffprobe finds in the segments.
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import browsers
import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    http_get,
    launch_configured_worker,
    needs_ffmpeg,
    publish,
    stop_process,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(240)]

PLAYER = Path(__file__).resolve().parents[2] / "workers" / "kubecast_worker" / "player"
DASH_JS = PLAYER / "node_modules" / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js"
HLS_JS = PLAYER / "static" / "hls.min.js"
NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
KEY = "sk-dash-7c1e90b2d4"
#: Two audio bitrates: two audio-only renditions, one audio group each.
PROFILE = {
    **SMALL_PROFILE,
    "renditions": [
        SMALL_PROFILE["renditions"][0],
        {**SMALL_PROFILE["renditions"][1], "audioBitrate": 64},
    ],
}
VIDEO = {"360p": (640, 360), "180p": (320, 180)}
AUDIO = ("audio-96k", "audio-64k")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = launch_configured_worker(
        tmp_path_factory.mktemp("dash"),
        key=KEY,
        profile=PROFILE,
        outputs={"hls": {"segmentType": "fmp4"}, "dash": {"enabled": True}},
    )
    publisher = publish(worker.rtmp(key=KEY), seconds=600, wait=False)
    try:
        worker.wait_state("live", timeout=30)

        def listed() -> bool:
            names = [*VIDEO, *AUDIO]
            playlists = [worker.out / name / "index.m3u8" for name in names]
            return all(p.is_file() and p.read_text().count("#EXTINF") >= 3 for p in playlists)

        until(listed, timeout=60, what="3 segments of every rendition", every=0.2)
        yield worker
    finally:
        stop_process(publisher)
        worker.stop()


def manifest(worker: WorkerProcess) -> ET.Element:
    reply = http_get(worker.url("/manifest.mpd"))
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/dash+xml"
    return ET.fromstring(reply.body)


def test_status_offers_the_manifest_with_video_and_audio_apart(worker: WorkerProcess) -> None:
    status = worker.status()
    assert status["dashUrl"] == "/manifest.mpd"
    assert status["playbackUrl"] == "/master.m3u8"
    # /status renditions are the ladder's: the audio-only ones are the packaging's own.
    assert [r["name"] for r in status["renditions"]] == list(VIDEO)
    mpd = manifest(worker)
    assert mpd.get("type") == "dynamic"
    assert mpd.get("minimumUpdatePeriod") == "PT2.000S"
    assert mpd.get("timeShiftBufferDepth") == "PT12.000S"  # 6 segments of 2 s
    (period,) = mpd.findall("d:Period", NS)
    sets = {a.get("contentType"): a for a in period.findall("d:AdaptationSet", NS)}
    assert set(sets) == {"video", "audio"}
    video = {r.get("id"): r for r in sets["video"].findall("d:Representation", NS)}
    assert {k: (int(v.get("width")), int(v.get("height"))) for k, v in video.items()} == VIDEO
    audio = [r.get("id") for r in sets["audio"].findall("d:Representation", NS)]
    assert audio == list(AUDIO)
    # The presentation starts when its first session did (within the minute), and that
    # session's period with it: its media starts at 0 in the player's MediaSource.
    begun = datetime.fromisoformat(mpd.get("availabilityStartTime")).timestamp()
    assert time.time() - 120 < begun < time.time()
    assert period.get("start") == "PT0.000S"


def test_master_offers_the_audio_renditions_as_groups(worker: WorkerProcess) -> None:
    master = http_get(worker.url("/master.m3u8")).text
    for name in AUDIO:
        assert f'TYPE=AUDIO,GROUP-ID="{name}"' in master and f'URI="{name}/index.m3u8"' in master
    lines = master.splitlines()
    variants = {lines[i + 1]: line for i, line in enumerate(lines) if line.startswith("#EXT-X-S")}
    assert 'AUDIO="audio-96k"' in variants["360p/index.m3u8"]
    assert 'AUDIO="audio-64k"' in variants["180p/index.m3u8"]


def ffprobe_json(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_ffprobe_reads_the_live_mpd_and_every_representation(worker: WorkerProcess) -> None:
    probed = ffprobe_json(
        "-show_entries", "stream=codec_type,codec_name,width,height,sample_rate:stream_tags",
        worker.url("/manifest.mpd"),
    )  # fmt: skip
    streams = probed["streams"]
    videos = sorted((s["width"], s["height"]) for s in streams if s["codec_type"] == "video")
    assert videos == sorted(VIDEO.values())
    assert all(s["codec_name"] == "h264" for s in streams if s["codec_type"] == "video")
    audio = [s for s in streams if s["codec_type"] == "audio"]
    assert [s["codec_name"] for s in audio] == ["aac", "aac"]
    assert {s["sample_rate"] for s in audio} == {"48000"}


def first_frame(directory: Path, segment: str) -> tuple[float, str]:
    """pts and flags of the first video frame of ``segment``, with its init section."""
    init = next(directory.glob("*-init.mp4"))
    data = init.read_bytes() + (directory / segment).read_bytes()
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-select_streams", "v",
         "-show_entries", "packet=pts_time,flags", "-read_intervals", "%+#1", "-"],
        input=data, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    packet = json.loads(result.stdout)["packets"][0]
    return float(packet["pts_time"]), packet["flags"]


def test_keyframes_line_up_across_renditions(worker: WorkerProcess) -> None:
    listed = {
        name: [
            line
            for line in (worker.out / name / "index.m3u8").read_text().splitlines()
            if line.endswith(".m4s")
        ]
        for name in VIDEO
    }
    common = sorted(set.intersection(*(set(v) for v in listed.values())))
    assert len(common) >= 2, listed
    for segment in common[-2:]:
        frames = {name: first_frame(worker.out / name, segment) for name in VIDEO}
        assert all(flags.startswith("K") for _, flags in frames.values()), frames
        times = {name: pts for name, (pts, _) in frames.items()}
        assert max(times.values()) - min(times.values()) < 0.001, (segment, times)


PROFILE_IDC = {"Baseline": 66, "Constrained Baseline": 66, "Main": 77, "High": 100}


def probe_segment(directory: Path, entries: str) -> list[dict[str, Any]]:
    """ffprobe's streams of the first listed segment, read after its init section."""
    init = next(directory.glob("*-init.mp4"))
    segment = min(directory.glob("*[0-9].m4s"))
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_entries", entries, "-"],
        input=init.read_bytes() + segment.read_bytes(), capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["streams"]  # type: ignore[no-any-return]


def test_master_codecs_say_what_the_segments_hold(worker: WorkerProcess) -> None:
    master = http_get(worker.url("/master.m3u8")).text
    for name in VIDEO:
        (stream,) = probe_segment(worker.out / name, "stream=codec_name,profile,level")
        assert stream["codec_name"] == "h264"
        variant = master.split(f"\n{name}/index.m3u8")[0].rsplit("\n", 1)[-1]
        codecs = variant.split('CODECS="')[1].split('"')[0].split(",")
        # avc1.PPCCLL: profile_idc and level_idc as ffprobe reads them from the stream.
        assert codecs[0][:7] == f"avc1.{PROFILE_IDC[stream['profile']]:02x}", (codecs, stream)
        assert codecs[0][9:] == f"{stream['level']:02x}", (codecs, stream)
        assert codecs[1] == "mp4a.40.2"
    for name in AUDIO:
        streams = probe_segment(worker.out / name, "stream=codec_type,codec_name,profile")
        assert [(s["codec_type"], s["codec_name"], s["profile"]) for s in streams] == [
            ("audio", "aac", "LC")
        ]


# -- players in Chromium ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not DASH_JS.is_file():
        pytest.fail(f"{DASH_JS} is missing: run workers/kubecast_worker/player/build_assets.sh")
    with browsers.chromium() as chromium:
        yield chromium


DASH_PAGE = """<!doctype html><video id="video" muted autoplay playsinline></video>
<script src="/test-player.js"></script>
<script>
window.__errors = [];
const player = dashjs.MediaPlayer().create();
player.on(dashjs.MediaPlayer.events.ERROR, e => window.__errors.push(JSON.stringify(e.error)));
player.initialize(document.getElementById('video'), '/manifest.mpd', true);
window.player = player;
</script>"""

HLS_PAGE = """<!doctype html><video id="video" muted autoplay playsinline></video>
<script src="/test-player.js"></script>
<script>
window.__errors = [];
const hls = new Hls();
hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.__errors.push(d.details); });
hls.loadSource('/master.m3u8');
hls.attachMedia(document.getElementById('video'));
window.hls = hls;
</script>"""


#: What a viewer sees: a picture (a frame decoded, media to play on) and its clock.
PLAYBACK = """(() => { const v = document.getElementById('video');
  return {time: v.currentTime, ready: v.readyState, paused: v.paused,
          frames: v.getVideoPlaybackQuality().totalVideoFrames, height: v.videoHeight}; })()"""
#: From opening the page to a moving picture. Usually 1-2 s; a player stuck at the
#: start (issue 13: dash.js with Chromium 156 on the Unix-epoch timeline) takes 8 s+.
STARTUP_SECONDS = 6.0


def play(browser: Any, worker: WorkerProcess, *, page_html: str, script: Path) -> list[str]:
    """Open the page on the origin (the test serves it and the player script), check that
    the picture comes within STARTUP_SECONDS and then plays at about real time for 8 s,
    and return the media URLs it fetched. NB: not "currentTime > 0.5" as the start:
    a live timeline can start anywhere, and currentTime is set before any frame plays."""
    context = browser.new_context()
    page = context.new_page()
    fetched: list[str] = []
    failed: list[str] = []
    page.on("response", lambda r: fetched.append(r.url))
    page.on(
        "response", lambda r: failed.append(f"{r.url}: {r.status}") if r.status >= 400 else None
    )
    page.route(
        worker.url("/test-page"),
        lambda route: route.fulfill(body=page_html, content_type="text/html"),
    )
    page.route(
        worker.url("/test-player.js"),
        lambda route: route.fulfill(path=str(script), content_type="text/javascript"),
    )
    try:
        opened = time.monotonic()
        page.goto(worker.url("/test-page"))
        while not ((state := page.evaluate(PLAYBACK))["frames"] and state["ready"] >= 3):
            assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
            assert time.monotonic() < opened + 45, f"no picture: {state}; failed: {failed}"
            page.wait_for_timeout(200)
        startup = time.monotonic() - opened
        assert startup < STARTUP_SECONDS, f"the picture took {startup:.1f} s: {state}"
        began = time.monotonic()
        page.wait_for_timeout(8000)
        end = page.evaluate(PLAYBACK)
        rate = (end["time"] - state["time"]) / (time.monotonic() - began)
        assert 0.75 < rate < 1.25, f"played at {rate:.2f}x real time: {state} -> {end}"
        assert not end["paused"] and end["frames"] > state["frames"] + 100, (state, end)
        assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
        assert end["height"] in (180, 360)
    finally:
        context.close()
    # Nothing but the origin: dash.js asks a public time server unless the MPD says UTCTiming.
    assert all(u.startswith(worker.http) for u in fetched), fetched
    return [u for u in fetched if u.endswith((".m4s", ".mp4"))]


@pytest.fixture(scope="module")
def dash_fetched(browser: Any, worker: WorkerProcess) -> list[str]:
    return play(browser, worker, page_html=DASH_PAGE, script=DASH_JS)


def test_dash_js_plays_the_live_manifest(dash_fetched: list[str]) -> None:
    assert any("/audio-" in u and u.endswith(".m4s") for u in dash_fetched), dash_fetched
    assert any(u.endswith(".m4s") and "/audio-" not in u for u in dash_fetched), dash_fetched


def test_hls_js_plays_the_same_segment_files(
    browser: Any, worker: WorkerProcess, dash_fetched: list[str]
) -> None:
    hls_fetched = play(browser, worker, page_html=HLS_PAGE, script=HLS_JS)
    assert any("/audio-" in u and u.endswith(".m4s") for u in hls_fetched), hls_fetched
    # The same files: the init sections both players asked for are the very same URLs.
    inits = {u for u in hls_fetched if u.endswith("-init.mp4")}
    assert inits & {u for u in dash_fetched if u.endswith("-init.mp4")}, (inits, dash_fetched)


# -- a publisher that drops and comes back -------------------------------------------------


def test_a_publisher_back_within_the_window_is_a_new_period_and_the_end_ends_it(
    tmp_path: Path,
) -> None:
    worker = launch_configured_worker(
        tmp_path,
        key=KEY,
        profile=PROFILE,
        reconnect_window=8,
        outputs={"hls": {"segmentType": "fmp4"}, "dash": {"enabled": True}},
    )
    try:
        for _ in range(2):
            publish(worker.rtmp(key=KEY), seconds=5)
            worker.wait_logged("publish ended", count=_ + 1, timeout=30)
        until(lambda: worker.status()["state"] == "idle", timeout=30, what="the window to pass")
        mpd = manifest(worker)
        periods = mpd.findall("d:Period", NS)
        assert len(periods) == 2, ET.tostring(mpd)
        first, second = (float(p.get("start")[2:-1]) for p in periods)
        assert second >= first + 4, "the second session started after the first one's media"
        for period in periods:
            kinds = [a.get("contentType") for a in period.findall("d:AdaptationSet", NS)]
            assert kinds == ["video", "audio"]
            templates = period.findall(".//d:SegmentTemplate", NS)
            assert all(t.get("media").split("/")[1].startswith(period.get("id")) for t in templates)
        # The session numbering goes on from where the first one stopped.
        numbers = [int(p.find(".//d:SegmentTemplate", NS).get("startNumber")) for p in periods]
        assert numbers[1] > numbers[0]
        # Over: no more updates, and the last period has its length.
        assert "minimumUpdatePeriod" not in mpd.attrib
        assert periods[-1].get("duration", "").startswith("PT")
        assert "#EXT-X-DISCONTINUITY" in (worker.out / "audio-96k" / "index.m3u8").read_text()
        assert "#EXT-X-ENDLIST" in (worker.out / "audio-64k" / "index.m3u8").read_text()
    finally:
        worker.stop()
