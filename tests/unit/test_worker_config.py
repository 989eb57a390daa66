"""The worker's settings from a config file or from flags, and where the key comes from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kubecast_api import WorkerConfig
from kubecast_worker import cli, config, logs, worker

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "transcodeprofile-default.yaml"


def test_profile_reads_a_manifest_or_a_bare_spec(tmp_path: Path) -> None:
    manifest = config.load_profile(SAMPLE)
    assert [r.name for r in manifest.renditions] == ["1080p", "720p", "480p", "360p"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"gopSeconds": 1, "segmentSeconds": 2}))
    assert config.load_profile(bare).segment_seconds == 2


def test_an_invalid_profile_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubecast.dev/v1alpha1\nkind: TranscodeProfile\nmetadata: {name: x}\n"
        "spec:\n  renditions:\n    - {name: odd, width: 641, height: 360, videoBitrate: 800}\n"
    )
    with pytest.raises(config.ConfigError, match=r"spec\.renditions\[0\]\.width: .*even"):
        config.load_profile(bad)
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: kubecast.dev/v1alpha1\nkind: LiveStream\n")
    with pytest.raises(config.ConfigError, match="expected a TranscodeProfile"):
        config.load_profile(other)


def test_worker_config_file_in_camel_case(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(
        "stream: demo\ningest: {listen: '0.0.0.0:1935', app: live, streamKeyFile: /k}\n"
        "outputs: {hls: {segmentType: fmp4, windowSegments: 5}}\n"
        "reconnectWindowSeconds: 10\noutputDir: /tmp/x\nhttp: '127.0.0.1:9000'\n"
    )
    loaded = config.load_config(path)
    assert loaded.outputs.hls.segment_type.value == "fmp4"
    assert config.listen_address(loaded) == config.ListenAddress("0.0.0.0", 1935, "live")
    path.write_text("stream: demo\ningest: {listen: '0.0.0.0:1935'}\nsegmentSecond: 3\n")
    with pytest.raises(config.ConfigError, match="segmentSecond"):
        config.load_config(path)


def test_listen_url_takes_no_key() -> None:
    assert config.parse_listen_url("rtmp://127.0.0.1:1935/live") == config.ListenAddress(
        "127.0.0.1", 1935, "live"
    )
    assert config.parse_listen_url("rtmp://0.0.0.0/live").port == 1935
    assert config.parse_listen_url("rtmp://127.0.0.1:0/live").port == 0
    with pytest.raises(config.ConfigError, match="without the stream key"):
        config.parse_listen_url("rtmp://127.0.0.1:1935/live/secret")
    with pytest.raises(config.ConfigError, match="rtmp://HOST:PORT/APP"):
        config.parse_listen_url("http://127.0.0.1/live")


def test_flags_build_the_same_worker_config(tmp_path: Path) -> None:
    built = config.config_from_flags(
        stream="demo",
        profile=str(SAMPLE),
        out=str(tmp_path),
        http="127.0.0.1:8080",
        listen="rtmp://127.0.0.1:1935/live",
        segment_type="fmp4",
        low_latency=True,
        window_segments=4,
        reconnect_window=5,
    )
    assert built.ingest.listen == "127.0.0.1:1935" and built.ingest.app == "live"
    assert built.outputs.hls.low_latency
    assert built.outputs.hls.window_segments == 4 and built.reconnect_window_seconds == 5
    assert len(built.profile.renditions) == 4
    pulled = config.config_from_flags(
        stream="demo", profile=None, out=str(tmp_path), http=":8080", pull="clip.mp4", loop=True
    )
    assert pulled.ingest.pull is not None and pulled.ingest.pull.url.startswith("file:///")
    with pytest.raises(config.ConfigError, match="exactly one of --listen"):
        config.config_from_flags(stream="d", profile=None, out="o", http=":1")


def test_the_admin_port_is_its_own_listener_on_loopback_unless_told() -> None:
    """/status and /metrics are not on the playback port; a person's worker keeps
    them on loopback, and tests asking for free ports get a free admin port too."""

    def flags(**kw: str) -> WorkerConfig:
        return config.config_from_flags(stream="d", profile=None, out="o", pull="x.mp4", **kw)

    assert flags(http="0.0.0.0:8080").admin == "127.0.0.1:9090"
    assert flags(http="127.0.0.1:0").admin == "127.0.0.1:0"
    assert flags(http="0.0.0.0:8080", admin="0.0.0.0:9191").admin == "0.0.0.0:9191"
    bound = config.with_bind_host(flags(http="0.0.0.0:8080", admin="0.0.0.0:9090"), "10.0.0.7")
    assert (bound.http, bound.admin) == ("10.0.0.7:8080", "10.0.0.7:9090")


def test_stream_key_comes_from_flag_file_config_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    push = config.config_from_flags(
        stream="d", profile=None, out="o", http=":1", listen="rtmp://h:1/live"
    )
    monkeypatch.setenv(config.STREAM_KEY_ENV, "from-env")
    assert config.read_stream_key(push, key="from-flag", key_file=str(key_file)) == "from-flag"
    assert config.read_stream_key(push, key_file=str(key_file)) == "from-file"
    assert config.read_stream_key(push) == "from-env"
    monkeypatch.delenv(config.STREAM_KEY_ENV)
    with pytest.raises(config.ConfigError, match="needs a stream key"):
        config.read_stream_key(push)
    pull = config.config_from_flags(stream="d", profile=None, out="o", http=":1", pull="x.mp4")
    assert config.read_stream_key(pull) is None


def test_cli_reports_a_bad_profile_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("renditions: []\n")
    code = cli.main(["transcode", "x.mp4", "--profile", str(bad), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("kubecast-worker: profile") and "renditions" in err


def test_the_stream_key_is_redacted_from_every_log_line() -> None:
    record = logging.LogRecord("kubecast", logging.INFO, __file__, 1, "url %s", ("k/s3cr3t",), None)
    record.url = "rtmp://h/live/s3cr3t"
    logs.Redactor("s3cr3t").filter(record)
    line = logs.JsonFormatter().format(record)
    assert "s3cr3t" not in line and "<redacted>" in line


def test_a_rotated_key_is_redacted_as_well_as_the_one_before() -> None:
    redactor = logs.Redactor("old-s3cr3t")
    redactor.add("new-s3cr3t")
    message = "publish to live/old-s3cr3t then live/new-s3cr3t"
    record = logging.LogRecord("kubecast", logging.INFO, __file__, 1, message, None, None)
    redactor.filter(record)
    assert record.getMessage() == "publish to live/<redacted> then live/<redacted>"


def test_pull_urls_are_shown_without_credentials_or_keys() -> None:
    assert worker.safe_url("rtmp://host:1935/live/KEY123") == "rtmp://host:1935/live/***"
    assert worker.safe_url("https://user:pw@cdn.example/a/index.m3u8?token=t") == (
        "https://user:***@cdn.example/a/index.m3u8?token=***"
    )
    assert worker.safe_url("file:///media/clip.mp4") == "file:///media/clip.mp4"
