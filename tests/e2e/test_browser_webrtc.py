"""Headless Chromium publishes by WHIP and plays by WHEP, through the worker.

One tab publishes Chromium's fake camera and microphone (whip_publish.html, a file:
page: getUserMedia needs a secure context); another opens the worker's own player
page in its WebRTC mode (``/player?mode=whep``) and plays in its ``<video>``.

Network: Chromium runs inside the worker's network namespace (``nsenter --net``
wrapped around the browser that Playwright starts; Playwright drives it over a
pipe, which no namespace affects), so every ICE candidate on both sides is the
namespace's own 10.213.0.1: no loopback, no machine interface
(``--allow-loopback-in-peer-connection`` is then not needed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    needs_ffmpeg,
    timing,
    video_stream,
)
from in_namespace import scrape, status, wait_state, whep_viewers, whep_worker

from tests.integration import netns

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(240)]

KEY = "whip-browser-k3y-5b0e9d2c71a4"
ADDRESS = "10.213.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--use-fake-device-for-media-stream",  # a moving test picture and a beeping tone
    "--use-fake-ui-for-media-stream",  # grant the camera without asking
    "--autoplay-policy=no-user-gesture-required",
]
PUBLISH_PAGE = Path(__file__).with_name("whip_publish.html")
SMALL = {r["name"]: (r["width"], r["height"]) for r in SMALL_PROFILE["renditions"]}


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    with netns.private_namespace(f"kubecast-chromium-{os.getpid()}", ADDRESS) as path:
        yield path


@pytest.fixture(scope="module")
def worker(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with whep_worker(namespace, ADDRESS, tmp_path_factory.mktemp("chromium-webrtc"), key=KEY) as w:
        yield w


@pytest.fixture(scope="module")
def browser(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is missing at {CHROMIUM} (apt-get install -y chromium)")
    # Chromium as Playwright starts it, but inside the namespace.
    wrapper = tmp_path_factory.mktemp("chromium") / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec nsenter --net={namespace} -- {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def poll(page: Any, expression: str, *, timeout: float) -> Any:
    """Evaluate ``expression`` until it is truthy (not wait_for_function: the player's CSP
    forbids the eval it uses)."""
    deadline = page.evaluate("performance.now()") + timeout * 1000
    while not (value := page.evaluate(expression)):
        if page.evaluate("performance.now()") > deadline:
            pytest.fail(f"not true after {timeout:.0f} s: {expression}")
        page.wait_for_timeout(200)
    return value


def current_time(page: Any) -> float:
    return float(page.evaluate("document.getElementById('video').currentTime"))


def video_size(page: Any) -> list[int]:
    return list(
        page.evaluate("[document.getElementById('video').videoWidth,"
                      " document.getElementById('video').videoHeight]")
    )  # fmt: skip


def assert_plays(page: Any, seconds: int = 4) -> None:
    """currentTime grows in every second of ``seconds``."""
    previous = current_time(page)
    for _ in range(seconds):
        page.wait_for_timeout(1000)
        now = current_time(page)
        assert now > previous + 0.5, f"playback stalled: currentTime {previous:.2f} → {now:.2f}"
        previous = now


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_chromium_publishes_by_whip_and_another_tab_plays_by_whep(
    codec: str, browser: Any, worker: WorkerProcess, namespace: str
) -> None:
    context = browser.new_context()
    publisher = context.new_page()
    publisher.goto(PUBLISH_PAGE.as_uri())
    url = f"http://{ADDRESS}:{worker.rtmp_port}/whip/live"
    published = publisher.evaluate(
        "([url, key, codec]) => publish(url, key, codec)", [url, KEY, codec]
    )
    assert published["status"] == 201, published
    assert (published["width"], published["height"]) == SMALL["360p"], published
    wait_state(worker, namespace, "live")
    assert status(worker, namespace)["input"]["videoCodec"] == codec.lower()

    viewer = context.new_page()
    console: list[str] = []
    viewer.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    viewer.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    refused: list[str] = []  # what the page asked for and did not get
    viewer.on(
        "response",
        lambda r: r.status >= 400 and refused.append(f"{r.request.method} {r.url} {r.status}"),
    )
    viewer.goto(f"{worker.http}/player?mode=whep")
    assert viewer.evaluate("document.getElementById('mode').value") == "whep"
    poll(viewer, "window.kubecastPlayer.whep && window.kubecastPlayer.whep.location", timeout=20)
    poll(viewer, "document.getElementById('video').currentTime > 0.5", timeout=20)
    assert viewer.evaluate("window.kubecastPlayer.engine") == "whep"
    assert viewer.evaluate("window.kubecastPlayer.whep.pc.connectionState") == "connected"
    # "Auto" is the highest rendition: the publisher's own size, encoded by the ladder.
    assert video_size(viewer) == list(SMALL["360p"])
    assert_plays(viewer)
    assert whep_viewers(scrape(worker, namespace)) == {"360p": 1, "180p": 0}

    # Another rendition is another WHEP session: the picture changes size and plays on.
    viewer.select_option("#rendition", "180p")
    poll(viewer, f"document.getElementById('video').videoWidth === {SMALL['180p'][0]}", timeout=20)
    assert video_size(viewer) == list(SMALL["180p"])
    assert_plays(viewer, 3)
    assert whep_viewers(scrape(worker, namespace)) == {"360p": 0, "180p": 1}
    assert not refused, refused
    assert not [line for line in console if line.startswith(("pageerror", "error"))], console

    viewer.close()  # pagehide: the page DELETEs its session
    assert publisher.evaluate("unpublish()") == 200
    wait_state(worker, namespace, "idle")
    context.close()
    assert whep_viewers(scrape(worker, namespace)) == {}
    for name, (width, height) in SMALL.items():
        playlist = worker.out / name / "index.m3u8"
        video = video_stream(playlist)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", width, height)
        took = timing(playlist)
        assert took.video_seconds > 5.0, took  # about 12 s were published
        assert abs(took.audio_seconds - took.video_seconds) < 0.5, took
    assert KEY not in "\n".join(worker.raw)
