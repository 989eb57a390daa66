"""Credentials of pull URLs and restream targets stay out of logs, /status, status and Events.

The URL forms themselves are in test_redact.py; here each place that shows an error or
a URL is checked, and the way a URL from a Secret reaches the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import av
import pydantic
import pytest
import yaml

from kubecast_api import LiveStreamSpec, WorkerConfig, WorkerPull
from kubecast_operator import children, streams
from kubecast_operator.settings import Settings
from kubecast_worker import config as config_mod
from kubecast_worker import events, ingest, logs, restream
from kubecast_worker.status import Status

PASSWORD = "pa55-w0rd-c4m3ra"
TOKEN = "t0k3n-9f2e41aa"
TARGET_KEY = "live_4412_abcdefgh"
SETTINGS = Settings(worker_image="kubecast/worker:test")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def credentialed_url(port: int) -> str:
    return f"rtsp://cam:{PASSWORD}@127.0.0.1:{port}/live?token={TOKEN}"


def assert_clean(text: str) -> None:
    for secret in (PASSWORD, TOKEN, TARGET_KEY):
        assert secret not in text, f"{secret!r} in {text!r}"


# -- the worker -------------------------------------------------------------------------


def test_a_failed_pull_names_the_url_without_its_credentials() -> None:
    url = credentialed_url(closed_port())
    with pytest.raises(av.error.FFmpegError) as caught:
        ingest.open_pull(url)()  # a real FFmpeg "Connection refused"
    assert caught.value.filename == url  # FFmpeg's own error quotes the URL whole
    said = ingest.describe(caught.value)
    assert_clean(said)
    assert said.startswith("Connection refused (rtsp://cam:***@127.0.0.1:")


def test_status_last_error_is_masked_whatever_produced_it() -> None:
    status = Status(stream="s", mode="pull", ingest_url="")
    status.post(events.SecretsLearned(frozenset({PASSWORD})))
    status.post(
        events.ErrorReported(f"internal error: {credentialed_url(554)}; auth {PASSWORD} refused")
    )
    snapshot = json.dumps(status.snapshot())
    assert_clean(snapshot)
    assert "rtsp://cam:***@127.0.0.1:554/live?token=***" in snapshot


def test_log_lines_mask_urls_in_messages_extras_and_tracebacks() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.Redactor(None))
    log = logging.getLogger("kubecast.test-credentials")
    log.addHandler(handler)
    try:
        log.warning(
            "pull failed for %s",
            credentialed_url(554),
            extra={"source": f"https://cdn.example/x?sig={TOKEN}"},
        )
        try:
            raise OSError(f"cannot reach {credentialed_url(554)}")
        except OSError:
            log.exception("crashed")
    finally:
        log.removeHandler(handler)
    assert len(records) == 2
    for line in records:
        assert_clean(line)
    assert "rtsp://cam:***@127.0.0.1:554/live?token=***" in records[0]


def test_a_log_call_with_arguments_that_do_not_fit_is_reported_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.Redactor(None))
    log = logging.getLogger("kubecast.test-credentials-bad-args")
    log.addHandler(handler)
    log.propagate = False  # NB: pytest's own capture handler raises on a logging error
    try:
        log.warning("two %s %s but one", credentialed_url(554))  # logging reports, not raises
    finally:
        log.removeHandler(handler)
        log.propagate = True
    reported = capsys.readouterr().err
    assert "--- Logging error ---" in reported
    assert_clean(reported)


def test_a_restream_target_url_is_shown_without_its_credentials() -> None:
    state = restream.TargetState(
        "yt", f"rtmps://user:{PASSWORD}@live.example/app?auth={TOKEN}", last_error="x"
    )
    shown = state.to_json()
    assert shown["url"] == "rtmps://user:***@live.example/app?auth=***"


def test_a_restream_key_goes_into_the_path_before_a_query_string() -> None:
    assert restream.target_url("rtmp://h/live2/", "k3y") == "rtmp://h/live2/k3y"
    assert restream.target_url("rtmp://h/app?auth=x", "k3y") == "rtmp://h/app/k3y?auth=x"
    assert restream.target_url("rtmp://h/app", None) == "rtmp://h/app"


#: A stand-in for the restream child: the real one masks its own lines, so only a stand-in
#: can show that the parent masks what a child writes (a traceback, a library's output).
#: It prints what a leaky child would, and its environment's names.
LEAKY_CHILD = textwrap.dedent(
    """
    import json, os, sys
    key, target = os.environ.get("KUBECAST_RESTREAM_KEY"), os.environ["KUBECAST_RESTREAM_TARGET"]
    print(f"Traceback: could not open {target}/{key}", file=sys.stderr)
    print(json.dumps({"msg": "restream failed", "error": f"refused {key} at {target}"}),
          file=sys.stderr)
    print(json.dumps({"msg": "env", "names": sorted(os.environ)}), file=sys.stderr)
    sys.exit(1)
    """
)


def test_the_restream_child_gets_a_minimal_env_and_its_output_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "child.py"
    script.write_text(LEAKY_CHILD)
    key_file = tmp_path / "key"
    key_file.write_text(TARGET_KEY + "\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "an-unrelated-secret-of-the-pod")
    monkeypatch.setenv("KUBECAST_STREAM_KEY", "the-worker-own-stream-key")
    target = restream.Target(
        "yt", f"rtmp://user:{PASSWORD}@127.0.0.1:1/app?auth={TOKEN}", str(key_file), None
    )
    supervisor = restream.Supervisor(
        [target], is_live=lambda: True, source_for=lambda _: "http://x", log=logs.for_stream("s")
    )
    supervisor.child_command = (sys.executable, str(script))
    code, error = asyncio.run(supervisor._run_once(target, "http://127.0.0.1:1/x.m3u8"))
    assert code == 1
    relayed = capfd.readouterr().err
    assert_clean(relayed)
    assert_clean(error or "")
    assert "rtmp://user:***@127.0.0.1:1/app?auth=***" in relayed
    names = next(
        json.loads(line)["names"] for line in relayed.splitlines() if '"msg": "env"' in line
    )
    assert set(names) <= {
        *restream.CHILD_ENV,
        restream.KEY_ENV,
        restream.TARGET_ENV,
        "LC_CTYPE",  # Python's own locale coercion may add it in the child
    }, names
    assert "AWS_SECRET_ACCESS_KEY" not in names and "KUBECAST_STREAM_KEY" not in names


def test_a_pull_url_file_is_read_at_each_connect(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(credentialed_url(554) + "\n")
    pull = WorkerPull(url_file=str(url_file))
    assert config_mod.read_pull_url(pull) == credentialed_url(554)
    url_file.write_text("rtsp://cam:rotated-passw0rd@127.0.0.1:554/live\n")
    assert config_mod.read_pull_url(pull).endswith(":rotated-passw0rd@127.0.0.1:554/live")
    url_file.write_text(f"no scheme {PASSWORD}")
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.read_pull_url(pull)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(pydantic.ValidationError, match="exactly one of"):
        WorkerPull(url="rtsp://cam/live", url_file=str(url_file))


# -- the API and the operator ------------------------------------------------------------


def secret_stream() -> dict[str, Any]:
    return {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": "lobby", "namespace": "live", "uid": "uid-9", "generation": 1},
        "spec": {
            "ingest": {"pull": {"urlSecretRef": {"name": "lobby-camera-url"}}},
            "profileRef": {"name": "default"},
        },
    }


@pytest.mark.parametrize(
    "pull",
    [
        {},
        {"url": "rtsp://cam/live", "urlSecretRef": {"name": "cam-url"}},
    ],
    ids=["neither", "both"],
)
def test_a_pull_needs_exactly_one_of_url_and_url_secret_ref(pull: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError, match="exactly one of url or urlSecretRef"):
        LiveStreamSpec.model_validate({"ingest": {"pull": pull}, "profileRef": {"name": "d"}})


def test_a_url_from_a_secret_reaches_the_worker_as_a_mounted_file_not_in_the_config() -> None:
    stream = secret_stream()
    spec = LiveStreamSpec.model_validate(stream["spec"])
    assert spec.ingest.pull is not None and spec.ingest.pull.url_secret_ref is not None
    assert spec.ingest.pull.url_secret_ref.key == "url"
    from kubecast_api import TranscodeProfileSpec

    rendered = children.render_config(children.worker_config(stream, spec, TranscodeProfileSpec()))
    config = WorkerConfig.model_validate(yaml.safe_load(rendered))
    assert config.ingest.pull == WorkerPull(url_file="/etc/kubecast/pull-url/url")
    assert (
        "lobby-camera-url"
        not in children.worker_config_map(stream, rendered)["data"]["worker.yaml"]
    )
    pod = children.worker_deployment(stream, spec, rendered=rendered, settings=SETTINGS)
    template = pod["spec"]["template"]["spec"]
    volume = next(v for v in template["volumes"] if v["name"] == "pull-url")
    assert volume["secret"] == {
        "secretName": "lobby-camera-url",
        "items": [{"key": "url", "path": "url"}],
        "defaultMode": 0o440,
    }
    container = template["containers"][0]
    assert {"name": "pull-url", "mountPath": "/etc/kubecast/pull-url", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert all(
        "valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in container["env"]
    )


def test_status_and_events_show_what_a_worker_reports_with_credentials_masked() -> None:
    """The operator masks again: a worker of another version may report a URL whole."""
    stream = secret_stream()
    spec = LiveStreamSpec.model_validate(stream["spec"])
    leaky = credentialed_url(554)
    worker = {
        "state": "live",
        "publisher": leaky,
        "input": {"videoCodec": "h264", "width": 640, "height": 360, "publisher": leaky},
        "renditions": [],
        "lastError": f"cannot open the input: Connection refused ({leaky})",
        "restream": [
            {
                "name": "yt",
                "state": "Retrying",
                "lastError": f"refused at rtmp://h/app/{TARGET_KEY}",
                "restarts": 1,
            }
        ],
    }
    seen = streams.Observation(spec=spec, deployment={"status": {}}, worker=worker)
    status = streams.compute_status(stream, seen)
    assert_clean(json.dumps(status))
    # Events carry status.message (handlers._write_stream_status).
    assert status["message"] == (
        "cannot open the input: Connection refused (rtsp://cam:***@127.0.0.1:554/live?token=***)"
    )
    assert status["restream"][0]["message"] == "refused at rtmp://h/app/***"
