"""The preview page in a real browser: Debian's Chromium driven by Playwright.

The page is served by the real worker (``kubecast-worker run``) while the ffmpeg CLI
publishes to it over RTMP: what the viewer sees is what the worker makes. One worker,
one publisher and one browser page are shared by the module (they take a few seconds
to start and the machine's two cores are shared); the tests run in file order against
the page while it keeps playing. The publisher is stopped and restarted only by the
last test that uses the shared page.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browsers
import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    launch_configured_worker,
    needs_ffmpeg,
    publish,
    stop_process,
    until,
)

from kubecast_worker.player import routes

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(180)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

KEY = "sk-4e1d9b7c2a6f3058"
KEY_SECRET = "demo-stream-key"
LADDER = [(r["name"], r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]]
SEGMENT_KINDS = (".ts", ".m4s", ".mp4", ".aac")
X = "\N{MULTIPLICATION SIGN}"  # the page writes sizes and speed with it, as typographers do
RATE = re.compile(r"^\d+(\.\d\d)? [kM]b/s$")


# -- the worker and its publisher -------------------------------------------------------


def start_worker(directory: Path) -> WorkerProcess:
    """The key's Secret is named for the page (the name only, never the key)."""
    return launch_configured_worker(
        directory,
        key=KEY,
        stream="demo",
        reconnect_window=60,
        ingest={"streamKeySecret": KEY_SECRET},
    )


def start_publisher(worker: WorkerProcess) -> subprocess.Popen[bytes]:
    return publish(worker.rtmp(key=KEY), seconds=600, wait=False)


def wait_for_segments(worker: WorkerProcess, *, segments: int = 3) -> None:
    """Every rendition has ``segments`` segments listed: enough for hls.js to start."""

    def ready() -> bool:
        playlists = [worker.out / name / "index.m3u8" for name, _, _ in LADDER]
        return all(p.is_file() and p.read_text().count("#EXTINF") >= segments for p in playlists)

    until(ready, timeout=45, what=f"{segments} segments of every rendition", every=0.2)


# -- fixtures -----------------------------------------------------------------------


class Live:
    """The shared worker and its publisher."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.publisher = start_publisher(worker)

    @property
    def origin(self) -> str:
        return self.worker.http

    def restart_publisher(self) -> None:
        stop_process(self.publisher)
        self.publisher = start_publisher(self.worker)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not routes.hls_js_built():
        pytest.fail(f"{routes.NOT_BUILT} (make player does it)")
    worker = start_worker(tmp_path_factory.mktemp("worker"))
    live = Live(worker)
    try:
        worker.wait_state("live", timeout=30)
        wait_for_segments(worker)
        yield live
    finally:
        stop_process(live.publisher)
        worker.stop()


@pytest.fixture(scope="module")
def origin(live: Live) -> str:
    return live.origin


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browsers.chromium() as chromium:
        yield chromium


class Recorder:
    """Every request the page makes, and the bodies of all but media segments."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.bodies: list[tuple[str, bytes]] = []
        self.errors: list[str] = []

    def on_response(self, response: Any) -> None:
        self.urls.append(response.url)
        if response.status >= 400:
            self.errors.append(f"{response.url}: HTTP {response.status}")
        if response.url.split("?")[0].endswith(SEGMENT_KINDS):
            return
        try:
            self.bodies.append((response.url, response.body()))
        except Exception as error:  # a redirect or an aborted request has no body
            self.errors.append(f"{response.url}: {error}")


@pytest.fixture(scope="module")
def network() -> Recorder:
    return Recorder()


# NB: media events do not bubble; a capturing listener on document sees them all.
# A stall is a `waiting` event after playback began (the video ran out of buffer).
PLAYED = (
    "window.__played = false; window.__stalls = 0;"
    "document.addEventListener('playing', () => { window.__played = true; }, true);"
    "document.addEventListener('waiting', () => { if (window.__played) window.__stalls++; }, true);"
)


@pytest.fixture(scope="module")
def page(browser: Any, origin: str, network: Recorder) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.on("response", network.on_response)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.add_init_script(PLAYED)
    page.goto(f"{origin}/player")
    yield page
    context.close()
    print("\n".join(console + network.errors))
    problems = [line for line in console if line.startswith(("pageerror", "error"))]
    assert not problems, console


def wait_until(page: Any, expression: str, *, timeout: float = 10.0) -> None:
    """Poll a JS expression with ``page.evaluate``.

    NB: not ``page.wait_for_function``: that evaluates strings with eval, which the
    page's Content-Security-Policy (rightly) forbids.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout:.0f} s: {expression}")
        page.wait_for_timeout(100)


def current_time(page: Any) -> float:
    return float(page.evaluate("document.getElementById('video').currentTime"))


def assert_time_advances(page: Any, *, seconds: float, minimum: float) -> None:
    """currentTime grows in every second of ``seconds``, by ``minimum`` in total."""
    start = previous = current_time(page)
    for _ in range(int(seconds)):
        page.wait_for_timeout(1000)
        now = current_time(page)
        assert now > previous + 0.3, f"playback stalled: currentTime {previous:.2f} → {now:.2f}"
        previous = now
    assert previous - start >= minimum, f"currentTime advanced only {previous - start:.2f} s"


# -- the tests, in the order a viewer would notice ----------------------------------


def status_reads(network: Recorder) -> int:
    return sum(1 for url in network.urls if url.split("?")[0].endswith("/status"))


def test_live_stream_plays_and_keeps_playing_for_ten_seconds(page: Any, network: Recorder) -> None:
    wait_until(page, "window.__played === true", timeout=30)
    engine = page.evaluate("window.kubecastPlayer.engine")
    assert engine == "hls.js", "Chromium has MSE: the page must use hls.js, not native HLS"
    polls_before = status_reads(network)
    assert_time_advances(page, seconds=10, minimum=9.0)
    assert page.evaluate("document.getElementById('video').paused") is False
    # Polled every 2 s: about five reads in ten seconds.
    assert status_reads(network) - polls_before >= 4


def test_plays_within_two_segments_of_the_live_edge_for_30_s_without_a_stall(page: Any) -> None:
    """hls-live.js keeps hls.js 1.5 target durations behind a plain playlist's live edge
    (hls.js on its own: 3), so a viewer sees the picture seconds sooner; it must not
    cost stalls."""
    segment = SMALL_PROFILE["segmentSeconds"]
    stalls = page.evaluate("window.__stalls")
    behind = []  # hls.js's distance behind the playlist's live edge, once a second
    start = previous = current_time(page)
    for _ in range(30):
        page.wait_for_timeout(1000)
        now = current_time(page)
        assert now > previous + 0.3, f"playback stalled: currentTime {previous:.2f} → {now:.2f}"
        previous = now
        behind.append(page.evaluate("window.kubecastPlayer.hls.latency"))
    assert previous - start >= 28.0, f"currentTime advanced only {previous - start:.2f} s"
    assert page.evaluate("window.__stalls") - stalls == 0, "the video stalled (waiting)"
    typical = statistics.median(behind)
    assert 0 < typical <= 2 * segment, f"{typical:.2f} s behind the live edge: {behind}"


def test_state_and_figures_from_the_workers_status_are_shown(page: Any, live: Live) -> None:
    worker = live.worker.status()
    wait_until(page, "document.getElementById('input-bitrate').textContent !== '—'")
    state = page.locator("#state")
    assert state.inner_text() == "Live"
    assert state.get_attribute("aria-live") == "polite"
    assert page.locator("#title").inner_text() == worker["stream"] == "demo"
    # What the publisher sends: ffmpeg's 640x360 testsrc2 at 25 fps, H.264 and AAC.
    assert page.locator("#input-video").inner_text() == worker["input"]["videoCodec"] == "h264"
    assert page.locator("#input-audio").inner_text() == worker["input"]["audioCodec"] == "aac"
    assert page.locator("#input-resolution").inner_text() == f"640{X}360"
    assert page.locator("#input-fps").inner_text() == "25 fps"
    # Bitrates move from poll to poll: the page shows one in the right unit and range.
    input_rate = page.locator("#input-bitrate").inner_text()
    assert RATE.match(input_rate), input_rate
    assert 100 <= kbps(input_rate) <= 2500, "the publisher sends at most 1.3 Mb/s + 128 kb/s"
    output_rate = page.locator("#output-bitrate").inner_text()
    assert RATE.match(output_rate), output_rate
    assert 100 <= kbps(output_rate) <= 2000, "600 + 200 kb/s of video and the audio"
    assert re.fullmatch(rf"\d+\.\d\d{X}", page.locator("#speed").inner_text())
    assert int(page.locator("#dropped-frames").inner_text()) >= 0
    rows = page.locator("#renditions tr")
    assert rows.count() == len(LADDER)
    for index, (name, width, height) in enumerate(LADDER):
        cells = rows.nth(index).inner_text().split("\t")
        assert cells[:2] == [name, f"{width}{X}{height}"]
        assert RATE.match(cells[2]) and cells[3] == "active", cells


def kbps(text: str) -> float:
    value, unit = text.split(" ")
    return float(value) * (1000 if unit == "Mb/s" else 1)


def test_each_rendition_can_be_picked_and_keeps_playing(page: Any) -> None:
    picker = page.get_by_role("combobox", name="Rendition")
    options = picker.locator("option")
    labels = [options.nth(i).inner_text() for i in range(options.count())]
    assert labels[0] == "Auto"
    assert [label.split(" ")[0] for label in labels[1:]] == ["180p", "360p"]  # by bitrate
    levels = page.evaluate(
        "window.kubecastPlayer.hls.levels.map(l => ({width: l.width, height: l.height}))"
    )
    assert len(levels) == len(LADDER)

    for index, level in enumerate(levels):
        switches = page.evaluate("window.kubecastPlayer.switches.length")
        picker.select_option(str(index))
        wait_until(
            page,
            f"window.kubecastPlayer.hls.currentLevel === {index} &&"
            f" window.kubecastPlayer.switches.slice({switches}).includes({index})",
        )
        # The decoded picture really is that rendition's, not only hls.js' idea of it.
        wait_until(page, f"document.getElementById('video').videoHeight === {level['height']}")
        assert_time_advances(page, seconds=2, minimum=1.2)
        playing = page.locator("#playing-level").inner_text()
        assert f"{level['width']}{X}{level['height']}" in playing and playing.endswith("fixed")

    picker.select_option("-1")
    assert page.evaluate("window.kubecastPlayer.hls.autoLevelEnabled") is True
    assert page.locator("#playing-level").inner_text().endswith("Auto")
    assert_time_advances(page, seconds=2, minimum=1.2)


@pytest.mark.parametrize(
    ("device", "width", "height"), [("phone", 375, 812), ("desktop", 1366, 768)]
)
def test_page_fits_phone_and_desktop_widths(
    page: Any, device: str, width: int, height: int
) -> None:
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    overflow = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert overflow[0] <= overflow[1], f"horizontal overflow at {width}px: {overflow}"
    controls = [
        page.locator("#video"),
        page.get_by_role("combobox", name="Rendition"),
        page.get_by_role("textbox", name="Playback URL"),
        page.get_by_role("button", name="Copy playback URL"),
        page.get_by_role("textbox", name="Ingest URL"),
        page.get_by_role("button", name="Copy ingest URL"),
    ]
    for control in controls:
        control.scroll_into_view_if_needed()
        assert control.is_visible()
        box = control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (
            f"{control} sticks out at {width}px: {box}"
        )
    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"player-{device}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


UNNAMED_CONTROL = re.compile(r"^\s*- (button|combobox|textbox|checkbox|slider|link)\s*(?:$|[:\[])")

CONTRAST = """
() => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = parse(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const failures = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.checkVisibility() || el.closest('.visually-hidden')) continue;
    const style = getComputedStyle(el);
    const [a, b] = [lum(parse(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio >= (large ? 3 : 4.5)) continue;
    const text = el.textContent.trim().slice(0, 30);
    failures.push(`${el.tagName}#${el.id} "${text}": ${ratio.toFixed(2)}`);
  }
  return failures;
}
"""


def test_every_control_has_an_accessible_name_and_text_has_contrast(page: Any) -> None:
    page.set_viewport_size({"width": 1366, "height": 768})
    snapshot = page.locator("body").aria_snapshot()
    unnamed = [line for line in snapshot.splitlines() if UNNAMED_CONTROL.match(line)]
    assert not unnamed, f"controls without an accessible name:\n{snapshot}"
    assert 'combobox "Rendition"' in snapshot
    assert 'button "Copy playback URL"' in snapshot
    assert 'button "Copy ingest URL"' in snapshot
    assert 'textbox "Playback URL"' in snapshot
    assert 'textbox "Ingest URL"' in snapshot
    # Buttons are real buttons, and every form control has a label the browser knows.
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(el => !el.labels.length && !el.getAttribute('aria-label')).map(el => el.id)"
    )
    assert unlabelled == []
    assert page.locator("[role=button]:not(button)").count() == 0
    assert page.locator("[aria-live]").count() >= 2  # the state, and announcements
    assert page.evaluate(CONTRAST) == []


def test_urls_are_shown_with_copy_buttons_and_never_the_stream_key(
    page: Any, origin: str, live: Live, network: Recorder
) -> None:
    assert page.get_by_role("textbox", name="Playback URL").input_value() == f"{origin}/master.m3u8"
    # Where the publisher pushed, without the key it pushed with.
    shown = f"rtmp://127.0.0.1:{live.worker.rtmp_port}/live"
    assert page.get_by_role("textbox", name="Ingest URL").input_value() == shown
    assert page.locator("#key-hint").inner_text() == (
        f"Stream key: in Secret {KEY_SECRET} (never shown here)."
    )

    page.get_by_role("button", name="Copy playback URL").click()
    wait_until(page, "document.getElementById('announce').textContent.includes('playback URL')")

    visible = page.evaluate(
        "document.body.innerText + '\\n' + [...document.querySelectorAll('input, select')]"
        ".map(el => el.value + ' ' + el.placeholder).join('\\n') + '\\n' + document.title"
    )
    assert KEY not in visible
    assert KEY not in page.content()
    assert KEY not in "\n".join(network.urls)
    assert network.bodies, "no response was recorded"
    leaked = [url for url, body in network.bodies if KEY.encode() in body]
    assert leaked == []


def test_everything_comes_from_the_origin_and_relative_urls(
    page: Any, origin: str, network: Recorder
) -> None:
    # blob: URLs are made by the page itself (hls.js' worker), not fetched from a host.
    foreign = [u for u in network.urls if not u.startswith((origin + "/", f"blob:{origin}/"))]
    assert foreign == [], "the page loaded something from another host (a CDN?)"
    fetched = {url.removeprefix(origin) for url in network.urls}
    assert "/player/static/hls.min.js" in fetched
    assert "/master.m3u8" in fetched
    assert "/player/status" in fetched  # the viewer's share; /status is on the admin port


def test_a_dropped_publisher_shows_reconnecting_and_its_return_plays_on(
    page: Any, live: Live
) -> None:
    """Last on the shared page: the publisher drops inside the reconnect window."""
    stop_process(live.publisher)
    wait_until(
        page, "document.getElementById('state').dataset.state === 'reconnecting'", timeout=15
    )
    assert page.locator("#state").inner_text().startswith("Reconnecting")
    live.restart_publisher()
    wait_until(page, "document.getElementById('state').dataset.state === 'live'", timeout=20)
    assert page.locator("#state").inner_text() == "Live"
    # The same playlist goes on after a discontinuity; the page keeps playing it.
    wait_until(page, "document.getElementById('video').paused === false", timeout=20)
    page.wait_for_timeout(8000)  # past the segments of the gap
    assert_time_advances(page, seconds=3, minimum=2.0)


def test_page_opened_before_the_publisher_starts_playing_once_it_is_live(
    browser: Any, tmp_path: Path, live: Live
) -> None:
    """The usual first visit: the stream was just created and nobody publishes yet."""
    stop_process(live.publisher)  # one publisher and one worker at a time on two cores
    worker = start_worker(tmp_path / "idle-worker")
    context = browser.new_context(viewport={"width": 375, "height": 812})
    publisher: subprocess.Popen[bytes] | None = None
    try:
        page = context.new_page()
        page.add_init_script(PLAYED)
        page.goto(f"{worker.http}/")
        wait_until(page, "document.getElementById('state').dataset.state === 'idle'")
        assert page.locator("#state").inner_text() == "Idle · waiting for a publisher"
        wait_until(page, "!document.getElementById('notice').hidden")
        assert "No live stream yet" in page.locator("#notice").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "player-idle-phone.png"))

        publisher = start_publisher(worker)
        wait_until(page, "window.__played === true", timeout=40)
        assert_time_advances(page, seconds=2, minimum=1.2)
        assert page.locator("#state").inner_text() == "Live"
        assert page.locator("#notice").is_hidden()
    finally:
        context.close()
        if publisher is not None:
            stop_process(publisher)
        worker.stop()
