"""The preview page's routes and assets, without a browser (e2e/test_player_browser.py has one)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubecast_worker import events
from kubecast_worker.player import add_player_routes, routes
from kubecast_worker.status import InputState, RenditionState, Status

KEY = "sk-0c9d8e7f6a5b4c3d"

Scenario = Callable[[TestClient[web.Request, web.Application]], Awaitable[None]]


def run(scenario: Scenario, *, status: Status | None = None, **options: str | None) -> None:
    status = status or Status(stream="unit", mode="push", ingest_url="rtmp://0.0.0.0:1935/live")

    async def main() -> None:
        app = web.Application()
        add_player_routes(app, status=status, **options)
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def static_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the checked-in assets, without a built hls.js."""
    for name in ("player.js", "hls-live.js", "player.css"):
        shutil.copy(routes.STATIC_DIR / name, tmp_path / name)
    monkeypatch.setattr(routes, "STATIC_DIR", tmp_path)
    return tmp_path


def test_page_is_served_at_root_and_at_player() -> None:
    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        for path in ("/", "/player"):
            response = await client.get(path)
            assert response.status == 200
            assert response.content_type == "text/html"
            text = await response.text()
            assert '<video id="video"' in text
            assert response.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]

        response = await client.get("/player/", allow_redirects=False)
        assert response.status == 301
        assert response.headers["Location"] == "../player"  # relative: keeps a path prefix

    run(scenario)


def test_the_webrtc_choice_is_offered_only_by_a_worker_that_answers_whep() -> None:
    assert 'data-whep=""' in routes.render_page()
    assert 'data-whep="360p 180p"' in routes.render_page(whep=["360p", "180p"])


def test_page_refers_to_everything_by_relative_url() -> None:
    """Behind a CDN or a path prefix, /x or http://host/x would point at the wrong place."""
    page = routes.render_page()
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert "player/static/hls.min.js" in references
    assert "player/static/hls-live.js" in references
    assert "player/static/player.js" in references
    assert [r for r in references if r.startswith("/") or "//" in r] == []

    script = (routes.STATIC_DIR / "player.js").read_text()
    assert "const MASTER = 'master.m3u8';" in script
    assert "const STATUS = 'player/status';" in script
    assert "const WHEP = 'whep/';" in script  # WebRTC offers go to this origin too
    assert re.findall(r"""['"`]/[a-z]""", script) == []  # no root-relative URL
    assert re.findall(r"https?://", script + (routes.STATIC_DIR / "player.css").read_text()) == []


@pytest.mark.parametrize(
    ("configured", "shown"),
    [
        ("rtmp://live.example.net:1935/live", "rtmp://live.example.net:1935/live"),
        (f"rtmp://live.example.net:1935/live/{KEY}", "rtmp://live.example.net:1935/live"),
        (f"rtmps://live.example.net/live/{KEY}?token=1", "rtmps://live.example.net/live"),
        (f"rtmp://user:{KEY}@10.0.0.7:1935/live", "rtmp://10.0.0.7:1935/live"),
        (f"srt://10.0.0.7:9000?streamid={KEY}", "srt://10.0.0.7:9000"),
        (
            f"https://cdn.example.net/live/master.m3u8?key={KEY}",
            "https://cdn.example.net/live/master.m3u8",
        ),
        ("rtmp://10.0.0.7:1935", "rtmp://10.0.0.7:1935"),
        ("not a url", ""),
        (None, ""),
    ],
)
def test_ingest_url_is_shown_without_anything_that_could_be_the_key(
    configured: str | None, shown: str
) -> None:
    assert routes.ingest_url_without_key(configured) == shown
    page = routes.render_page(ingest_url=configured)
    assert f'data-ingest-url="{shown}"' in page
    assert KEY not in page


def test_the_page_and_the_server_cut_the_key_the_same_way() -> None:
    """player.js cuts URLs from /status, routes.py configured ones: they must agree."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing (it also builds hls.js): apt-get install -y nodejs npm")
    script = (routes.STATIC_DIR / "player.js").read_text()
    match = re.search(r"^  function withoutKey\(url\) \{\n.*?^  \}\n", script, re.S | re.M)
    assert match, "withoutKey() not found in player.js"
    urls = [
        f"rtmp://h:1935/live/{KEY}",
        f"rtmp://u:{KEY}@h/live",
        f"srt://h:9000?streamid={KEY}",
        f"http://h/x/master.m3u8#{KEY}",
        "rtmp://0.0.0.0:1935/live",
        "rtmp://[::1]:1935/app/",
        "garbage",
        "",
    ]
    program = match.group(0) + f"console.log(JSON.stringify({json.dumps(urls)}.map(withoutKey)));"
    out = subprocess.run([node, "-e", program], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [routes.ingest_url_without_key(u) for u in urls]


def test_ingest_url_and_secret_name_are_escaped_into_the_page() -> None:
    page = routes.render_page(
        ingest_url='rtmp://h/"><script>alert(1)</script>', stream_key_secret="a&b"
    )
    assert "<script>alert" not in page
    assert 'data-key-secret="a&amp;b"' in page


def test_missing_hls_js_answers_404_saying_how_to_build_it(static_dir: Path) -> None:
    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.get("/player/static/hls.min.js")
        assert response.status == 404
        text = await response.text()
        assert "hls.js is not built" in text
        assert "build_assets.sh" in text

        # The page itself still loads and says so when its script is absent.
        assert (await client.get("/player")).status == 200
        assert (await client.get("/player/static/player.js")).status == 200

    run(scenario)
    assert not routes.hls_js_built(static_dir)


def test_assets_are_served_with_their_types_and_nothing_else(static_dir: Path) -> None:
    (static_dir / routes.HLS_JS).write_text("/* hls.js */")
    (static_dir / ".hidden").write_text("no")

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        for name, kind in [
            ("hls.min.js", "javascript"),
            ("player.js", "javascript"),
            ("player.css", "text/css"),
        ]:
            response = await client.get(f"/player/static/{name}")
            assert response.status == 200, name
            assert kind in response.content_type
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        for path in (
            "/player/static/.hidden",
            "/player/static/nope.js",
            "/player/static/..%2Froutes.py",
            "/player/static/%2e%2e%2f%2e%2e%2fconfig.py",
        ):
            response = await client.get(path)
            assert response.status == 404, path
            assert (await response.text()).startswith("no player asset named")

    run(scenario)
    assert routes.hls_js_built(static_dir)


def test_hls_js_is_pinned_to_one_version_by_package_json_and_its_lock() -> None:
    package = json.loads((routes.PACKAGE_DIR / "package.json").read_text())
    lock = json.loads((routes.PACKAGE_DIR / "package-lock.json").read_text())
    wanted = package["dependencies"]["hls.js"]
    assert re.fullmatch(r"1\.\d+\.\d+", wanted), f"pin hls.js exactly, not {wanted!r}"
    locked = lock["packages"]["node_modules/hls.js"]
    assert locked["version"] == wanted
    assert locked["integrity"].startswith("sha512-")
    assert lock["packages"][""]["dependencies"] == package["dependencies"]


def test_build_script_is_executable_and_its_output_is_ignored_by_git() -> None:
    script = routes.PACKAGE_DIR / "build_assets.sh"
    assert script.stat().st_mode & 0o111
    assert "npm ci" in script.read_text()
    ignored = (routes.PACKAGE_DIR / ".gitignore").read_text().split()
    assert "/static/hls.min.js" in ignored
    assert "/node_modules/" in ignored


def live_status(mode: str = "push", url: str = "rtmp://0.0.0.0:1935/live") -> Status:
    status = Status(stream="demo", mode=mode, ingest_url=url)  # type: ignore[arg-type]
    status.post(events.SessionStarted(publisher="198.51.100.7:50123"))
    status.post(
        events.InputOpened(
            InputState(video_codec="h264", audio_codec="aac", width=640, height=360, fps=25)
        )
    )
    status.post(
        events.RenditionsPlanned(
            (
                RenditionState(name="360p", width=640, height=360, playlist="360p/index.m3u8"),
                RenditionState(name="1080p", state="Dropped", reason="would upscale"),
            )
        )
    )
    status.post(events.StateChanged("live"))
    status.post(
        events.ErrorReported(f"restream youtube: rtmp://a.rtmp.youtube.com/live2/{KEY} refused")
    )
    status.post(events.RestreamAttached(lambda: [{"name": "youtube", "state": "Failing"}]))
    return status


def test_the_page_reads_figures_from_player_status_without_the_publisher_or_errors() -> None:
    """The playback port is for viewers: state and media figures, nothing about the
    publisher, the worker's errors or its restream targets."""

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.get("/player/status")
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        doc = await response.json()
        assert doc["stream"] == "demo" and doc["state"] == "live"
        assert doc["input"]["videoCodec"] == "h264" and doc["input"]["width"] == 640
        assert doc["renditions"][0]["name"] == "360p"
        assert doc["renditions"][1] == {"name": "1080p", "state": "Dropped"}
        assert doc["ingest"] == {"mode": "push", "url": "rtmp://0.0.0.0:1935/live"}
        text = await response.text()
        for private in ("198.51.100.7", "youtube", KEY, "lastError", "publisher", "restream"):
            assert private not in text, private

    run(scenario, status=live_status())


def test_a_pulled_source_url_is_not_shown_to_viewers() -> None:
    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        doc = await (await client.get("/player/status")).json()
        assert doc["ingest"] == {"mode": "pull"}

    run(scenario, status=live_status("pull", "rtsp://camera.example.net/stream"))
