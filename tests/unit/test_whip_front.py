"""The WHIP front's HTTP side over loopback: who gets in, what is refused and counted.

Real HTTP (aiohttp) and real SDP offers from aiortc; no media flows here (that is
tests/e2e/test_worker_whip.py, in a network namespace). The front binds 127.0.0.1,
so its answers offer 127.0.0.1 as their one ICE candidate (webrtc_ice.only_addresses);
nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from kubecast_worker import whip
from kubecast_worker.rtmp.throttle import WrongKeyLimit

pytestmark = pytest.mark.timeout(60)

KEY = "unit-whip-key-3b8e"


@pytest.fixture(autouse=True)
def _restore_aioice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The front narrows aioice's host addresses for the whole process; undo it after.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=40))


@asynccontextmanager
async def front(**options: Any) -> AsyncIterator[whip.WhipIngest]:
    server = whip.WhipIngest(host="127.0.0.1", port=0, app="live", stream_key=KEY, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def offer(*, audio: bool = True, video: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video:
        pc.addTransceiver("video", direction="sendonly")
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def post(
    server: whip.WhipIngest,
    body: str,
    *,
    key: str | None = KEY,
    app: str = "live",
    content_type: str = "application/sdp",
) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    url = f"http://127.0.0.1:{server.port}/whip/{app}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


def test_the_right_key_gets_201_with_a_location_and_an_answer() -> None:
    async def scenario() -> None:
        async with front() as server:
            status, headers, answer = await post(server, await offer())
            assert status == 201, answer
            assert headers["Content-Type"].startswith("application/sdp")
            assert headers["Location"].startswith("/whip/live/")
            assert "m=video" in answer and "m=audio" in answer
            assert "a=recvonly" in answer
            assert "127.0.0.1" in answer  # the one candidate: the bound address
            assert server.counters.accepted == 1
            session = await asyncio.wait_for(server.accept(), 5)
            assert session.frames.has_audio and session.frames.video_codec in ("vp8", "h264")

    run(scenario())


def test_wrong_and_missing_keys_get_401_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with front() as server:
            sdp = await offer()
            for key in ("wrong", None, KEY + "x", ""):
                status, headers, _ = await post(server, sdp, key=key)
                assert status == 401
                assert headers["WWW-Authenticate"] == "Bearer"
            assert server.counters.refused_wrong_key == 4
            assert server.counters.accepted == 0 and server.current is None

    with caplog.at_level(logging.INFO):
        run(scenario())
    assert KEY not in caplog.text


def test_a_second_publisher_gets_409_until_the_first_is_deleted() -> None:
    async def scenario() -> None:
        async with front() as server:
            status, headers, _ = await post(server, await offer())
            assert status == 201
            second, _, _ = await post(server, await offer())
            assert second == 409
            assert server.counters.refused_busy == 1
            url = f"http://127.0.0.1:{server.port}"
            async with aiohttp.ClientSession() as http:
                async with http.delete(url + "/whip/live/not-the-session") as r:
                    assert r.status == 404
                async with http.patch(url + headers["Location"]) as r:
                    assert r.status == 405  # no trickle ICE: the answer has every candidate
                async with http.delete(url + headers["Location"]) as r:
                    assert r.status == 200
            assert server.current is None
            third, _, _ = await post(server, await offer())
            assert third == 201

    run(scenario())


def test_other_apps_and_bad_offers_are_refused_and_counted() -> None:
    async def scenario() -> None:
        async with front() as server:
            sdp = await offer()
            assert (await post(server, sdp, app="other"))[0] == 404
            assert server.counters.refused_unknown_app == 1
            assert (await post(server, sdp, content_type="text/plain"))[0] == 415
            assert (await post(server, await offer(video=False)))[0] == 400
            assert server.counters.protocol_errors == 2
            assert server.counters.accepted == 0

    run(scenario())


def test_too_many_wrong_keys_from_one_address_get_429() -> None:
    async def scenario() -> None:
        async with front(wrong_key_limit=WrongKeyLimit(2, 60, 60)) as server:
            sdp = await offer()
            assert (await post(server, sdp, key="a"))[0] == 401
            assert (await post(server, sdp, key="b"))[0] == 401
            status, headers, _ = await post(server, sdp)  # even the right key, for now
            assert status == 429 and int(headers["Retry-After"]) > 0
            assert server.counters.refused_rate_limited == 1

    run(scenario())


def test_a_publishing_page_on_another_origin_may_post() -> None:
    async def scenario() -> None:
        async with front() as server:
            url = f"http://127.0.0.1:{server.port}/whip/live"
            async with aiohttp.ClientSession() as http, http.options(url) as r:
                assert r.status == 204
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
                assert "Location" in r.headers["Access-Control-Expose-Headers"]

    run(scenario())
