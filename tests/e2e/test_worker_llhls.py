"""Low-latency HLS from a live worker, checked by independent tools.

One worker (``outputs.hls.lowLatency`` with fMP4 segments) and one ffmpeg publisher
over RTMP are shared by the module, as in test_worker_dash.py; the tests read what
the worker serves over HTTP:

- every version of a media playlist seen live obeys the part rules (parts no longer
  than PART-TARGET, PART-HOLD-BACK at least three part targets, the preload hint
  names the part that the next version adds, INDEPENDENT where segments start);
- a blocking reload for the next part is held until that part's file exists, and
  its answer lists it; one too far ahead is refused with 400;
- ffprobe reads the master playlist, the segments and the parts;
- hls.js in Debian's Chromium, with ``lowLatencyMode``, plays, and its latency to the
  live edge (``hls.latency``) is reported;
- a publisher that drops and comes back within the reconnect window: a
  discontinuity in the playlist, and hls.js keeps playing without a fatal error.

Timings are from a shared 2-core machine: noisy, and the bounds are loose.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browsers
import m3u8
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(300)]

PLAYER = Path(__file__).resolve().parents[2] / "workers" / "kubecast_worker" / "player"
HLS_JS = PLAYER / "static" / "hls.min.js"
KEY = "sk-llhls-5d2a81c7e0"
OUTPUTS = {"hls": {"segmentType": "fmp4", "lowLatency": True}}
RENDITIONS = [r["name"] for r in SMALL_PROFILE["renditions"]]
PART = re.compile(r"^(?P<epoch>[0-9a-z]+)-(?P<msn>\d{5})\.(?P<part>\d+)\.m4s$")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = launch_configured_worker(tmp_path_factory.mktemp("llhls"), key=KEY, outputs=OUTPUTS)
    publisher = publish(worker.rtmp(key=KEY), seconds=600, wait=False)
    try:
        worker.wait_state("live", timeout=30)

        def listed() -> bool:
            playlists = [worker.out / name / "index.m3u8" for name in RENDITIONS]
            return all(p.is_file() and p.read_text().count("#EXTINF") >= 2 for p in playlists)

        until(listed, timeout=60, what="2 segments of every rendition", every=0.2)
        until(lambda: (worker.out / "master.m3u8").is_file(), timeout=30, what="the master")
        yield worker
    finally:
        stop_process(publisher)
        worker.stop()


def playlist_url(worker: WorkerProcess, name: str = "360p", query: str = "") -> str:
    return worker.url(f"/{name}/index.m3u8") + (f"?{query}" if query else "")


def watch(worker: WorkerProcess, *, seconds: float, name: str = "360p") -> list[str]:
    """Every distinct version of the playlist served during ``seconds`` (polled)."""
    versions: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = http_get(playlist_url(worker, name)).text
        if not versions or versions[-1] != text:
            versions.append(text)
        time.sleep(0.03)
    return versions


def parts(text: str) -> list[str]:
    return [p.uri for s in m3u8.loads(text).segments for p in s.parts]


def test_the_live_playlist_obeys_the_part_rules(worker: WorkerProcess) -> None:
    for name in RENDITIONS:
        versions = watch(worker, seconds=4, name=name)
        assert len(versions) >= 8, f"{name}: {len(versions)} versions in 4 s"
        hinted = 0
        for before, after in itertools.pairwise(versions):
            playlist = m3u8.loads(before)
            target = playlist.part_inf.part_target
            assert 0.2 <= target <= 0.5
            assert playlist.server_control.can_block_reload == "YES"
            assert playlist.server_control.part_hold_back >= 3 * target
            for segment in playlist.segments:
                assert all(p.duration <= target for p in segment.parts), before
                if segment.parts and segment.uri:
                    assert segment.parts[0].independent == "YES"
                    assert sum(p.duration for p in segment.parts) == pytest.approx(
                        segment.duration, abs=1e-3
                    )
            new = [uri for uri in parts(after) if uri not in set(parts(before))]
            if new and playlist.preload_hint is not None:
                assert new[0] == playlist.preload_hint.uri, (before, after)
                hinted += 1
        assert hinted >= 6, f"{name}: {hinted} hints checked"
        # Rendition reports: where the other rendition's edge is, near this one's.
        (other,) = [n for n in RENDITIONS if n != name]
        reports = m3u8.loads(versions[-1]).rendition_reports
        assert [r.uri for r in reports] == [f"../{other}/index.m3u8"]
        theirs = m3u8.loads(http_get(playlist_url(worker, other)).text)
        last_msn = theirs.media_sequence + len(theirs.segments) - 1
        assert abs(reports[0].last_msn - last_msn) <= 1


def test_a_blocking_reload_answers_once_the_part_exists(worker: WorkerProcess) -> None:
    held = []
    for _ in range(3):
        playlist = m3u8.loads(http_get(playlist_url(worker)).text)
        hint = PART.match(playlist.preload_hint.uri)
        assert hint is not None, playlist.preload_hint.uri
        msn, part = int(hint["msn"]), int(hint["part"])
        path = worker.out / "360p" / hint.group(0)
        existed = path.exists()
        asked = time.time()
        reply = http_get(playlist_url(worker, query=f"_HLS_msn={msn}&_HLS_part={part}"))
        answered = time.time()
        assert reply.status == 200, reply
        assert hint.group(0) in reply.text  # the answer lists the part asked for
        # Held until the part was there: the file was written before the answer.
        assert path.stat().st_mtime <= answered + 0.01
        if not existed:
            held.append(answered - asked)
            assert path.stat().st_mtime >= asked - 0.01
        assert reply.headers["Cache-Control"] == "public, max-age=1"
    assert held, "the next part was always there already: nothing was held"
    assert max(held) < 3 * 2 + 1  # within three target durations
    # Too far ahead (more than two segments past the last): refused at once.
    last = m3u8.loads(http_get(playlist_url(worker)).text)
    ahead = last.media_sequence + len([s for s in last.segments if s.uri]) + 3
    started = time.monotonic()
    refused = http_get(playlist_url(worker, query=f"_HLS_msn={ahead}&_HLS_part=0"))
    assert refused.status == 400 and time.monotonic() - started < 1
    assert refused.headers["Cache-Control"] == "no-store"
    bad = http_get(playlist_url(worker, query="_HLS_part=1"))
    assert bad.status == 400


def test_the_hinted_part_is_held_until_it_exists(worker: WorkerProcess) -> None:
    playlist = m3u8.loads(http_get(playlist_url(worker)).text)
    name = playlist.preload_hint.uri
    reply = http_get(worker.url(f"/360p/{name}"))
    assert reply.status == 200
    assert reply.body == (worker.out / "360p" / name).read_bytes()
    assert reply.headers["Content-Type"] == "video/mp4"


def ffprobe_json(*args: str, data: bytes | None = None) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args],
        input=data, capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_ffprobe_reads_the_master_the_segments_and_the_parts(worker: WorkerProcess) -> None:
    streams = ffprobe_json(
        "-show_entries", "stream=codec_type,codec_name,width,height", worker.url("/master.m3u8")
    )["streams"]
    sizes = {(s["width"], s["height"]) for s in streams if s["codec_type"] == "video"}
    assert sizes == {(640, 360), (320, 180)}
    directory = worker.out / "360p"
    playlist = m3u8.loads((directory / "index.m3u8").read_text())
    init = (directory / playlist.segments[0].init_section.uri).read_bytes()
    segment = next(s for s in playlist.segments if s.uri and s.parts)
    for uri in [segment.uri, *(p.uri for p in segment.parts)]:
        data = init + (directory / uri).read_bytes()
        probed = ffprobe_json("-show_entries", "stream=codec_name", "-", data=data)
        assert sorted(s["codec_name"] for s in probed["streams"]) == ["aac", "h264"]
    # The segment's video frames span its EXTINF.
    data = init + (directory / segment.uri).read_bytes()
    packets = ffprobe_json(
        "-select_streams", "v", "-show_entries", "packet=pts_time,duration_time", "-", data=data
    )["packets"]
    ends = [float(p["pts_time"]) + float(p["duration_time"]) for p in packets]
    span = max(ends) - min(float(p["pts_time"]) for p in packets)
    assert span == pytest.approx(segment.duration, abs=0.05)


# -- hls.js in Chromium --------------------------------------------------------------------

HLS_PAGE = """<!doctype html><video id="video" muted autoplay playsinline></video>
<script src="/test-player.js"></script>
<script>
window.__errors = [];
window.__discontinuities = 0;
const hls = new Hls({lowLatencyMode: true});
hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.__errors.push(d.details); });
hls.on(Hls.Events.FRAG_CHANGED, (_, d) => { if (d.frag.cc) window.__discontinuities = d.frag.cc; });
hls.loadSource('/master.m3u8');
hls.attachMedia(document.getElementById('video'));
window.hls = hls;
</script>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browsers.chromium() as chromium:
        yield chromium


def open_player(browser: Any, worker: WorkerProcess) -> tuple[Any, Any, list[str]]:
    context = browser.new_context()
    page = context.new_page()
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    page.route(
        worker.url("/test-page"),
        lambda route: route.fulfill(body=HLS_PAGE, content_type="text/html"),
    )
    page.route(
        worker.url("/test-player.js"),
        lambda route: route.fulfill(path=str(HLS_JS), content_type="text/javascript"),
    )
    page.goto(worker.url("/test-page"))
    return context, page, fetched


def current_time(page: Any) -> float:
    return float(page.evaluate("document.getElementById('video').currentTime"))


def wait_playing(page: Any, *, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while current_time(page) < 0.5:
        assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
        assert time.monotonic() < deadline, "hls.js never started"
        page.wait_for_timeout(200)


def test_hls_js_plays_in_low_latency_mode_near_the_live_edge(
    browser: Any, worker: WorkerProcess
) -> None:
    context, page, fetched = open_player(browser, worker)
    try:
        wait_playing(page)
        assert page.evaluate("hls.config.lowLatencyMode") is True
        start = current_time(page)
        latencies = []
        for _ in range(16):  # 8 s
            page.wait_for_timeout(500)
            latencies.append(float(page.evaluate("hls.latency")))
        advanced = current_time(page) - start
        assert advanced > 6.0, f"currentTime advanced {advanced:.2f} s in 8 s"
        assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
        # hls.js read the parts and used blocking reloads, not only whole segments.
        assert any(PART.match(u.rsplit("/", 1)[-1]) for u in fetched), fetched[-20:]
        assert any("_HLS_msn=" in u for u in fetched), fetched[-20:]
        target = float(page.evaluate("hls.targetLatency"))
        median = statistics.median(latencies)
        print(
            f"\nhls.js low-latency: latency median {median:.2f} s, max {max(latencies):.2f} s,"
            f" targetLatency {target:.2f} s over {len(latencies)} samples"
        )
        # PART-HOLD-BACK is 1 s; a whole-segment player would be 6 s (3 segments) behind.
        assert median < 3.0, latencies
    finally:
        context.close()


def test_hls_js_plays_an_event_playlist_by_delta_updates(tmp_path: Path, browser: Any) -> None:
    outputs = {"hls": {**OUTPUTS["hls"], "playlistType": "event"}}
    worker = launch_configured_worker(tmp_path, key=KEY, outputs=outputs)
    publisher = publish(worker.rtmp(key=KEY), seconds=600, wait=False)
    context = None
    try:
        worker.wait_state("live", timeout=30)
        # Longer than CAN-SKIP-UNTIL (six target durations, 12 s): a delta skips some.
        until(
            lambda: http_get(playlist_url(worker)).text.count("#EXTINF") >= 8,
            timeout=60,
            what="8 segments",
            every=0.5,
        )
        update = http_get(playlist_url(worker, query="_HLS_skip=YES")).text
        assert re.search(r"^#EXT-X-SKIP:SKIPPED-SEGMENTS=[1-9]", update, re.MULTILINE), update
        context, page, fetched = open_player(browser, worker)
        wait_playing(page)
        start = current_time(page)
        page.wait_for_timeout(8000)
        assert current_time(page) - start > 6.0
        assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
        assert any("_HLS_skip=YES" in u for u in fetched), fetched[-20:]
    finally:
        if context is not None:
            context.close()
        stop_process(publisher)
        worker.stop()


# -- a publisher that drops and comes back -------------------------------------------------


def test_a_publisher_back_within_the_window_is_a_discontinuity_hls_js_plays_through(
    tmp_path: Path, browser: Any
) -> None:
    worker = launch_configured_worker(tmp_path, key=KEY, reconnect_window=20, outputs=OUTPUTS)
    first = publish(worker.rtmp(key=KEY), seconds=600, wait=False)
    second: subprocess.Popen[bytes] | None = None
    context = None
    try:
        worker.wait_state("live", timeout=30)
        until(lambda: (worker.out / "master.m3u8").is_file(), timeout=60, what="the master")
        context, page, _ = open_player(browser, worker)
        wait_playing(page)
        page.wait_for_timeout(4000)
        stop_process(first)  # the drop
        worker.wait_logged("publish ended", timeout=30)
        before_return = current_time(page)
        second = publish(worker.rtmp(key=KEY), seconds=600, wait=False)
        worker.wait_state("live", timeout=30)

        def discontinuity() -> bool:
            return "#EXT-X-DISCONTINUITY" in http_get(playlist_url(worker)).text

        until(discontinuity, timeout=30, what="a discontinuity in the playlist")
        # hls.js crosses it at the live edge and goes on playing the new session.
        deadline = time.monotonic() + 40
        while not (
            page.evaluate("window.__discontinuities") >= 1
            and current_time(page) > before_return + 4
        ):
            assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
            assert time.monotonic() < deadline, (
                f"currentTime {current_time(page):.2f} (was {before_return:.2f} at the return),"
                f" discontinuities {page.evaluate('window.__discontinuities')}"
            )
            page.wait_for_timeout(250)
        start = current_time(page)
        page.wait_for_timeout(4000)
        assert current_time(page) - start > 3.0
        assert not page.evaluate("window.__errors"), page.evaluate("window.__errors")
        text = http_get(playlist_url(worker)).text
        assert "#EXT-X-PRELOAD-HINT" in text  # live again, low-latency again
    finally:
        if context is not None:
            context.close()
        stop_process(first)
        if second is not None:
            stop_process(second)
        worker.stop()
