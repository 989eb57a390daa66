"""The preview page in a real browser: Debian's Chromium driven by Playwright.

One live source, one origin and one browser page are shared by the module (they take
a few seconds to start and the machine's two cores are shared): the tests run in file
order against the page while it keeps playing.

The live source is the ffmpeg CLI writing a two-rendition HLS ladder (aligned GOPs,
1 s segments) into a temporary directory, served next to ``add_player_routes`` and a
``/status`` shaped like the worker's ``Status.snapshot()``.
TODO(kubecast): switch to ``kubecast-worker run`` with an ffmpeg RTMP publish once the
worker's origin serves HLS; the page and the assertions stay the same.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiohttp import web

from kubecast_worker.player import routes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

KEY = "sk-4e1d9b7c2a6f3058"
KEY_SECRET = "demo-stream-key"
# NB: a configured ingest URL that wrongly carries the key: the page must still not show it.
CONFIGURED_INGEST_URL = f"rtmp://127.0.0.1:1935/live/{KEY}"
SHOWN_INGEST_URL = "rtmp://127.0.0.1:1935/live"


class Rung(NamedTuple):
    name: str
    width: int
    height: int
    kbps: int


LADDER = [Rung("360p", 640, 360, 800), Rung("180p", 320, 180, 300)]
SEGMENT_KINDS = (".ts", ".m4s", ".mp4", ".aac")
X = "\N{MULTIPLICATION SIGN}"  # the page writes sizes and speed with it, as typographers do


# -- the live source and the origin -------------------------------------------------


def start_ffmpeg_hls(out: Path) -> subprocess.Popen[bytes]:
    """A live 640x360 + 320x180 H.264/AAC ladder, the shape the worker writes."""
    split = f"[0:v]split={len(LADDER)}" + "".join(f"[s{i}]" for i in range(len(LADDER)))
    scales = "".join(f";[s{i}]scale={r.width}:{r.height}[v{i}]" for i, r in enumerate(LADDER))
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re"]
    args += ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]
    args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    args += ["-filter_complex", split + scales, "-t", "300"]
    for i, rung in enumerate(LADDER):
        args += ["-map", f"[v{i}]", "-map", "1:a"]
        args += [f"-b:v:{i}", f"{rung.kbps}k", f"-maxrate:v:{i}", f"{rung.kbps}k"]
        args += [f"-bufsize:v:{i}", f"{rung.kbps * 2}k"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-g", "30", "-keyint_min", "30", "-sc_threshold", "0"]
    args += ["-c:a", "aac", "-b:a", "64k"]
    args += ["-f", "hls", "-hls_time", "1", "-hls_list_size", "6"]
    args += ["-hls_flags", "delete_segments+independent_segments+temp_file"]
    args += ["-master_pl_name", "master.m3u8"]
    args += [
        "-var_stream_map",
        " ".join(f"v:{i},a:{i},name:{r.name}" for i, r in enumerate(LADDER)),
    ]
    args += ["-hls_segment_filename", "%v/seg_%05d.ts", "%v/index.m3u8"]
    return subprocess.Popen(args, cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(ffmpeg: subprocess.Popen[bytes]) -> None:
    ffmpeg.terminate()
    try:
        ffmpeg.wait(timeout=5)
    except subprocess.TimeoutExpired:
        ffmpeg.kill()
        ffmpeg.wait()


def wait_for_playlists(out: Path, ffmpeg: subprocess.Popen[bytes], *, segments: int = 3) -> None:
    deadline = time.monotonic() + 30
    playlists = [out / r.name / "index.m3u8" for r in LADDER]
    while time.monotonic() < deadline:
        if ffmpeg.poll() is not None:
            stderr = ffmpeg.stderr.read().decode() if ffmpeg.stderr else ""
            pytest.fail(f"ffmpeg (the live HLS source) exited {ffmpeg.returncode}: {stderr}")
        ready = (out / "master.m3u8").is_file() and all(
            p.is_file() and p.read_text().count("#EXTINF") >= segments for p in playlists
        )
        if ready:
            return
        time.sleep(0.2)
    pytest.fail("ffmpeg wrote no live HLS within 30 s")


class StatusSource:
    """A ``/status`` shaped like the worker's ``Status.snapshot()``; counts its readers."""

    def __init__(self) -> None:
        self.requests = 0
        self.state = "live"

    def document(self) -> dict[str, Any]:
        self.requests += 1
        live = self.state != "idle"
        return {
            "stream": "demo",
            "state": self.state,
            "ready": True,
            "ingest": {"mode": "push", "url": "rtmp://0.0.0.0:1935/live", "counters": {}},
            "publisher": "127.0.0.1:50312",
            "input": None
            if not live
            else {
                "videoCodec": "h264",
                "audioCodec": "aac",
                "width": 640,
                "height": 360,
                "resolution": "640x360",
                "fps": 30.0,
                "bitrateKbps": 1450,
            },
            "renditions": [
                {
                    "name": r.name,
                    "state": "Active",
                    "width": r.width,
                    "height": r.height,
                    "bitrateKbps": r.kbps - 20,
                    "targetBitrateKbps": r.kbps,
                    "playbackUrl": f"{r.name}/index.m3u8",
                }
                for r in LADDER
                if live
            ],
            "playbackUrl": "master.m3u8",
            "droppedFrames": self.requests,  # changes on every poll: proves the page polls
            "encodeSpeed": 1.0 if live else None,
        }


def origin_app(media: Path, status: StatusSource) -> web.Application:
    app = web.Application()
    routes.add_player_routes(app, ingest_url=CONFIGURED_INGEST_URL, stream_key_secret=KEY_SECRET)

    async def serve_status(request: web.Request) -> web.Response:
        return web.json_response(status.document(), headers={"Cache-Control": "no-store"})

    async def serve_media(request: web.Request) -> web.Response:
        relative = request.match_info["path"]
        path = (media / relative).resolve()
        if media not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        playlist = path.suffix == ".m3u8"
        return web.Response(
            body=path.read_bytes(),
            content_type="application/vnd.apple.mpegurl" if playlist else "video/mp2t",
            headers={"Cache-Control": "no-cache" if playlist else "max-age=60"},
        )

    app.router.add_get("/status", serve_status)
    app.router.add_get(r"/{path:[A-Za-z0-9_./-]+\.(?:m3u8|ts)}", serve_media)
    return app


class ThreadedOrigin:
    """An aiohttp app on a free loopback port, in its own thread and event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def status() -> StatusSource:
    return StatusSource()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, status: StatusSource) -> Iterator[str]:
    if not routes.hls_js_built():
        pytest.fail(f"{routes.NOT_BUILT} (make player does it)")
    if shutil.which("ffmpeg") is None:
        pytest.fail("the ffmpeg CLI is missing: apt-get install -y ffmpeg")
    media = tmp_path_factory.mktemp("hls").resolve()
    for rung in LADDER:
        (media / rung.name).mkdir()
    ffmpeg = start_ffmpeg_hls(media)
    server = ThreadedOrigin(origin_app(media, status))
    try:
        wait_for_playlists(media, ffmpeg)
        server.start()
        yield server.url
    finally:
        stop(ffmpeg)
        if server.port:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: .venv/bin/pip install playwright"
            " (the pip package only; Chromium comes from Debian, not `playwright install`)"
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: install Debian's with"
            " `apt-get install -y chromium` (the player tests drive a real browser)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


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
PLAYED = (
    "window.__played = false;"
    "document.addEventListener('playing', () => { window.__played = true; }, true);"
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


def test_live_stream_plays_and_keeps_playing_for_ten_seconds(
    page: Any, status: StatusSource
) -> None:
    wait_until(page, "window.__played === true", timeout=20)
    engine = page.evaluate("window.kubecastPlayer.engine")
    assert engine == "hls.js", "Chromium has MSE: the page must use hls.js, not native HLS"
    polls_before = status.requests
    assert_time_advances(page, seconds=10, minimum=9.0)
    assert page.evaluate("document.getElementById('video').paused") is False
    # Polled every 2 s: about five reads in ten seconds.
    assert status.requests - polls_before >= 4


def test_state_and_figures_from_status_are_shown(page: Any, status: StatusSource) -> None:
    state = page.locator("#state")
    assert state.inner_text() == "Live"
    assert state.get_attribute("aria-live") == "polite"
    assert page.locator("#title").inner_text() == "demo"
    assert page.locator("#input-video").inner_text() == "h264"
    assert page.locator("#input-audio").inner_text() == "aac"
    assert page.locator("#input-resolution").inner_text() == f"640{X}360"
    assert page.locator("#input-fps").inner_text() == "30 fps"
    assert page.locator("#input-bitrate").inner_text() == "1.45 Mb/s"
    assert page.locator("#output-bitrate").inner_text() == "1.06 Mb/s"  # 780 + 280 kb/s
    assert page.locator("#speed").inner_text() == f"1.00{X}"
    dropped = int(page.locator("#dropped-frames").inner_text())
    assert 1 <= dropped <= status.requests
    rows = page.locator("#renditions tr")
    assert rows.count() == len(LADDER)
    assert rows.nth(0).inner_text().split("\t") == ["360p", f"640{X}360", "780 kb/s", "active"]
    assert rows.nth(1).inner_text().split("\t") == ["180p", f"320{X}180", "280 kb/s", "active"]


def test_state_changes_reach_the_page_within_a_poll(page: Any, status: StatusSource) -> None:
    status.state = "reconnecting"
    try:
        wait_until(page, "document.getElementById('state').dataset.state === 'reconnecting'")
        assert page.locator("#state").inner_text().startswith("Reconnecting")
    finally:
        status.state = "live"
    wait_until(page, "document.getElementById('state').dataset.state === 'live'")
    assert page.locator("#state").inner_text() == "Live"


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
    page: Any, origin: str, network: Recorder
) -> None:
    assert page.get_by_role("textbox", name="Playback URL").input_value() == f"{origin}/master.m3u8"
    assert page.get_by_role("textbox", name="Ingest URL").input_value() == SHOWN_INGEST_URL
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
    assert "/status" in fetched


def test_page_opened_before_the_publisher_starts_playing_once_it_is_live(
    browser: Any, tmp_path: Path
) -> None:
    """The usual first visit: the stream was just created and nobody publishes yet."""
    media = tmp_path.resolve()
    for rung in LADDER:
        (media / rung.name).mkdir()
    status = StatusSource()
    status.state = "idle"
    server = ThreadedOrigin(origin_app(media, status))
    server.start()
    context = browser.new_context(viewport={"width": 375, "height": 812})
    ffmpeg: subprocess.Popen[bytes] | None = None
    try:
        page = context.new_page()
        page.add_init_script(PLAYED)
        page.goto(f"{server.url}/")
        wait_until(page, "document.getElementById('state').dataset.state === 'idle'")
        assert page.locator("#state").inner_text() == "Idle · waiting for a publisher"
        wait_until(page, "!document.getElementById('notice').hidden")
        assert "No live stream yet" in page.locator("#notice").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "player-idle-phone.png"))

        ffmpeg = start_ffmpeg_hls(media)
        wait_for_playlists(media, ffmpeg, segments=1)
        status.state = "live"
        wait_until(page, "window.__played === true", timeout=20)
        assert_time_advances(page, seconds=2, minimum=1.2)
        assert page.locator("#state").inner_text() == "Live"
        assert page.locator("#notice").is_hidden()
    finally:
        context.close()
        if ffmpeg is not None:
            stop(ffmpeg)
        server.stop()
