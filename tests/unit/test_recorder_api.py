"""The recorder's admin API over real loopback HTTP: POST /stop needs the Recording's token."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubecast_worker.recorder import api, cli
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.options import Options
from kubecast_worker.recorder.recorder import Recorder

TOKEN = b"4f1c2d9e8b7a6c5d4e3f2a1b0c9d8e7f"
Client = TestClient[web.Request, web.Application]


def serve(
    tmp_path: Path, scenario: Callable[[Client, Recorder], Awaitable[None]], **app: Any
) -> None:
    async def main() -> None:
        recorder = Recorder(
            options=Options(source="http://127.0.0.1:9", out=tmp_path),
            metrics=Metrics("test"),
            logger=logging.LoggerAdapter(logging.getLogger("test.recorder")),
        )
        application = api.make_app(recorder, Metrics("test"), **app)
        async with TestClient(TestServer(application)) as client:
            await scenario(client, recorder)

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN.decode()[:-1]}",  # one byte short
        f"Bearer {TOKEN.decode()}x",
        f"Basic {TOKEN.decode()}",
        TOKEN.decode(),
    ],
)
def test_stop_without_the_right_token_is_refused_and_the_recording_goes_on(
    tmp_path: Path, authorization: str | None
) -> None:
    async def scenario(client: Client, recorder: Recorder) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await client.post("/stop", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Bearer" in (await response.json())["error"]
        assert recorder.stop_reason is None, "a refused /stop must not end the recording"

    serve(tmp_path, scenario, stop_token=TOKEN)


def test_stop_with_the_token_finishes_the_recording(tmp_path: Path) -> None:
    async def scenario(client: Client, recorder: Recorder) -> None:
        recorder.state = "recording"
        response = await client.post("/stop", headers={"Authorization": f"Bearer {TOKEN.decode()}"})
        assert response.status == 202
        assert recorder.stop_reason == "POST /stop"
        # Reading stays open to the operator: /status needs no token.
        assert (await client.get("/status")).status == 200

    serve(tmp_path, scenario, stop_token=TOKEN)


def test_a_recorder_without_a_token_refuses_every_stop(tmp_path: Path) -> None:
    async def scenario(client: Client, recorder: Recorder) -> None:
        recorder.state = "recording"
        response = await client.post("/stop", headers={"Authorization": "Bearer "})
        assert response.status == 403
        assert "--stop-token-file" in (await response.json())["error"]
        assert recorder.stop_reason is None

    serve(tmp_path, scenario)


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check goes through hmac.compare_digest with the whole presented value.

    NB: a spy, not a timing measurement: on a shared 2-core machine a timing test
    would measure the machine's load. compare_digest is the standard library's
    constant-time comparison; the spy proves the API has no shortcut around it
    (a length check or ``==`` first would answer faster for a wrong length).
    """
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    for given in (b"x", TOKEN[:-1] + b"0", TOKEN, TOKEN + b"extra"):
        api.authorized(f"Bearer {given.decode()}", TOKEN)
    assert seen == [
        (b"x", TOKEN),
        (TOKEN[:-1] + b"0", TOKEN),
        (TOKEN, TOKEN),
        (TOKEN + b"extra", TOKEN),
    ]


def test_an_empty_or_missing_token_file_stops_the_recorder_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    base = ["--source", "http://127.0.0.1:9", "--out", str(tmp_path / "rec")]
    assert cli.main([*base, "--stop-token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert cli.main([*base, "--stop-token-file", str(tmp_path / "missing")]) == 2
    assert "--stop-token-file" in capsys.readouterr().err
