"""The operator's side of the recorder's stop token: derived, handed over in a
Secret, sent as a bearer token. Against the real recorder API on loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web

from kubecast_operator import children, recordings, tokens
from kubecast_operator.settings import Settings
from kubecast_worker.recorder import api
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.options import Options
from kubecast_worker.recorder.recorder import Recorder

KEY = b"k" * 32


def recording(uid: str = "uid-1", name: str = "show") -> dict[str, Any]:
    return {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "Recording",
        "metadata": {"name": name, "namespace": "live", "uid": uid},
    }


def test_each_recording_gets_its_own_token_and_the_key_is_needed_to_make_one() -> None:
    signer = tokens.Signer(KEY)
    token = recordings.stop_token(signer, recording())
    assert token == recordings.stop_token(tokens.Signer(KEY), recording()), "an operator restart"
    assert len(token) == 64
    others = {
        recordings.stop_token(signer, recording(uid="uid-2")),  # deleted and created again
        recordings.stop_token(signer, recording(name="other")),
        recordings.stop_token(tokens.Signer(b"x" * 32), recording()),  # another key
    }
    assert token not in others and len(others) == 3
    assert KEY.decode() not in repr(signer)


def test_the_secret_holds_the_token_and_is_owned_by_the_recording() -> None:
    token = recordings.stop_token(tokens.Signer(KEY), recording())
    secret = children.stop_token_secret(recording(), token=token)
    assert secret["metadata"]["name"] == "show-stop-token"
    assert secret["stringData"] == {children.STOP_TOKEN_FIELD: token}
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("Recording", "uid-1")


def test_the_key_file_is_read_and_a_bad_one_stops_the_operator(tmp_path: Path) -> None:
    good = tmp_path / "key"
    good.write_bytes(base64.b64encode(b"\x01" * 32) + b"\n")
    assert tokens.Signer.from_file(str(good)).key == base64.b64encode(b"\x01" * 32)
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ValueError, match="at least 16"):
        tokens.Signer.from_file(str(short))
    with pytest.raises(ValueError, match="KUBECAST_SIGNING_KEY_FILE"):
        tokens.Signer.from_file(str(tmp_path / "missing"))
    # Unset (a local run): a key for this process, different every time.
    assert tokens.Signer.from_file(None).key != tokens.Signer.from_file(None).key


def test_the_operator_stops_a_recorder_with_its_token_and_a_wrong_key_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token file the pod mounts, the recorder's real API, the operator's real call."""
    body = recording()
    token = recordings.stop_token(tokens.Signer(KEY), body)
    memo = kopf.Memo(settings=Settings())
    memo["signer"] = tokens.Signer(KEY)
    assert recordings.signer(memo).key == KEY
    # The recorder never finishes here (no source): return after the stop, not in 120 s.
    monkeypatch.setattr(recordings, "FINALIZE_TIMEOUT_S", 0)

    async def main() -> tuple[str | None, str | None]:
        recorder = Recorder(
            options=Options(source="http://127.0.0.1:9", out=tmp_path / "rec"),
            metrics=Metrics("test"),
            logger=logging.LoggerAdapter(logging.getLogger("test.recorder")),
        )
        recorder.state = "recording"
        app = api.make_app(recorder, Metrics("test"), stop_token=token.encode())
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        logger = logging.getLogger("test.operator")
        try:
            async with aiohttp.ClientSession() as http:
                wrong = recordings.stop_token(tokens.Signer(b"w" * 32), body)
                for given in (wrong, token):
                    await recordings._stop_and_wait(
                        http,
                        "127.0.0.1",
                        logger,
                        token=given,
                        port=port,  # type: ignore[arg-type]
                    )
                    if given is wrong:
                        after_wrong = recorder.stop_reason
                return after_wrong, recorder.stop_reason
        finally:
            await runner.cleanup()

    after_wrong, after_right = asyncio.run(asyncio.wait_for(main(), 30))
    assert after_wrong is None, "a wrong token must not end the recording"
    assert after_right == "POST /stop"


def test_a_recorder_pod_from_before_the_admin_port_is_still_read_on_its_old_port() -> None:
    """Pods are immutable: one made by the previous operator version records on."""
    from kubecast_api import RecordingSpec
    from kubecast_operator import worker_client

    body = recording()
    spec = RecordingSpec.model_validate({"streamRef": {"name": "studio"}})
    pod = children.recorder_pod(body, spec, source="http://x:8080", settings=Settings())
    assert worker_client.admin_port(pod) == 9090
    old = {"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}}
    assert worker_client.admin_port(old) == 8080
