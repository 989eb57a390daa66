"""Where the worker's settings come from: a config file, or flags for a person.

The operator renders a ``WorkerConfig`` (kubecast_api.worker_config) into the
stream's ConfigMap; ``kubecast-worker run --config FILE`` reads exactly that.
The flag form (``--listen``/``--pull``, ``--profile``, ``--out``, ``--http``,
``--admin``)
builds the same object, so both paths run the same code.

The stream key is never part of the config: it comes from ``streamKeyFile`` (a
mounted Secret), ``--stream-key-file``, ``--stream-key`` or the
``KUBECAST_STREAM_KEY`` environment variable. A pull URL with credentials is not
either: ``ingest.pull.urlFile`` names the file (a mounted Secret) that holds it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
import yaml

from kubecast_api import (
    TranscodeProfile,
    TranscodeProfileSpec,
    WorkerConfig,
    WorkerPull,
    describe_error,
)
from kubecast_api.livestream import PULL_URL
from kubecast_api.worker_config import WorkerIngest

STREAM_KEY_ENV = "KUBECAST_STREAM_KEY"


class ConfigError(Exception):
    """A setting a person can fix; the message says which and how."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    app: str
    protocol: str = "rtmp"
    latency_ms: int | None = None

    @property
    def url(self) -> str:
        """Where publishers push, without the key (safe to log and to show)."""
        if self.protocol == "srt":
            return f"srt://{self.host}:{self.port}"
        if self.protocol == "whip":
            return f"http://{self.host}:{self.port}/whip/{self.app}"
        return f"rtmp://{self.host}:{self.port}/{self.app}"


def _read_document(path: str | Path, what: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e.strerror}") from e
    try:
        document = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML/JSON: {e}") from e
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping, not {kind}")
    return document


def load_profile(path: str | Path) -> TranscodeProfileSpec:
    """Read a ladder from a TranscodeProfile manifest or from a bare spec.

    ``samples/transcodeprofile-default.yaml`` (a manifest) and a file holding just
    ``renditions: [...]`` are both accepted, so a profile can be tried out before
    it is applied to a cluster.
    """
    document = _read_document(path, "profile")
    try:
        if "kind" in document or "apiVersion" in document:
            if document.get("kind") != "TranscodeProfile":
                raise ConfigError(
                    f"profile {str(path)!r} is a {document.get('kind')!r}; expected a"
                    " TranscodeProfile manifest or a bare TranscodeProfile spec"
                )
            return TranscodeProfile.model_validate(document).spec
        return TranscodeProfileSpec.model_validate(document)
    except pydantic.ValidationError as e:
        prefix = "spec" if "kind" in document else ""
        details = describe_error(e, prefix=prefix)
        raise ConfigError(f"profile {str(path)!r} is invalid:\n{details}") from None


def load_config(path: str | Path) -> WorkerConfig:
    document = _read_document(path, "worker config")
    try:
        return WorkerConfig.model_validate(document)
    except pydantic.ValidationError as e:
        details = describe_error(e)
        raise ConfigError(f"worker config {str(path)!r} is invalid:\n{details}") from None


def parse_listen_url(url: str) -> ListenAddress:
    """``rtmp://127.0.0.1:1935/live`` → host, port, app; ``srt://127.0.0.1:9000``
    → host, port (SRT has no app). A key in the URL is refused."""
    parts = urlsplit(url)
    if parts.scheme == "srt" and parts.hostname:
        if parts.query or parts.path.strip("/"):
            raise ConfigError(
                "--listen takes srt://HOST:PORT without a passphrase or options; the"
                " stream key is the passphrase: pass it with --stream-key or --stream-key-file"
            )
        port = 9000 if parts.port is None else parts.port
        return ListenAddress(host=parts.hostname, port=port, app="live", protocol="srt")
    if parts.scheme not in ("rtmp", "whip") or not parts.hostname:
        raise ConfigError(
            "--listen must look like rtmp://HOST:PORT/APP, srt://HOST:PORT or"
            f" whip://HOST:PORT/APP, got {url!r}"
        )
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 1:
        raise ConfigError(
            "--listen takes rtmp://HOST:PORT/APP without the stream key; pass the key with"
            " --stream-key or --stream-key-file"
        )
    if parts.scheme == "whip":  # WHIP over HTTP: POST http://HOST:PORT/whip/APP
        port = 8889 if parts.port is None else parts.port
        return ListenAddress(host=parts.hostname, port=port, app=segments[0], protocol="whip")
    port = 1935 if parts.port is None else parts.port  # NB: 0 asks for any free port
    return ListenAddress(host=parts.hostname, port=port, app=segments[0])


def parse_host_port(value: str, *, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_address(config: WorkerConfig) -> ListenAddress | None:
    if config.ingest.listen is None:
        return None
    host, port = parse_host_port(config.ingest.listen, what="ingest.listen")
    ingest = config.ingest
    return ListenAddress(
        host=host,
        port=port,
        app=ingest.app,
        protocol=ingest.protocol,
        latency_ms=ingest.latency_milliseconds,
    )


def config_from_flags(
    *,
    stream: str,
    profile: str | None,
    out: str,
    http: str,
    admin: str | None = None,
    listen: str | None = None,
    pull: str | None = None,
    loop: bool = False,
    segment_type: str | None = None,
    dash: bool = False,
    low_latency: bool = False,
    window_segments: int | None = None,
    reconnect_window: int | None = None,
    event_playlist: bool = False,
) -> WorkerConfig:
    """The WorkerConfig a person means by ``kubecast-worker run --listen ... --profile ...``."""
    if (listen is None) == (pull is None):
        raise ConfigError(
            "give exactly one of --listen rtmp://HOST:PORT/APP (or srt://HOST:PORT, or"
            " whip://HOST:PORT/APP) or --pull URL"
        )
    if pull is not None and "://" not in pull:
        pull = Path(pull).resolve().as_uri()  # a plain path means a local file
    address = parse_listen_url(listen) if listen else None
    try:
        ingest = WorkerIngest(
            listen=f"{address.host}:{address.port}" if address else None,
            protocol=address.protocol if address else "rtmp",
            app=address.app if address else "live",
            pull=WorkerPull(url=pull, loop=loop) if pull else None,
        )
        document: dict[str, Any] = {
            "stream": stream,
            "ingest": ingest.model_dump(by_alias=True, exclude_none=True),
            "outputDir": out,
            "http": http,
            "admin": admin or default_admin(http),
        }
        hls: dict[str, Any] = {}
        if segment_type:
            hls["segmentType"] = segment_type
        if window_segments:
            hls["windowSegments"] = window_segments
        if event_playlist:
            hls["playlistType"] = "event"
        if low_latency:
            hls["lowLatency"] = True
        if hls:
            document["outputs"] = {"hls": hls}
        if dash:
            document.setdefault("outputs", {})["dash"] = {"enabled": True}
        if reconnect_window is not None:
            document["reconnectWindowSeconds"] = reconnect_window
        if profile:
            document["profile"] = load_profile(profile).model_dump(by_alias=True)
        return WorkerConfig.model_validate(document)
    except pydantic.ValidationError as e:
        raise ConfigError(describe_error(e)) from e


#: Where a person's worker answers /status and /metrics unless told (loopback only).
ADMIN_DEFAULT = "127.0.0.1:9090"


def default_admin(http: str) -> str:
    """The admin address when ``--admin`` is not given: ``127.0.0.1:9090``, or any free
    port when the playback port is one too (``--http HOST:0``, as tests and benchmarks
    ask, so that several workers run side by side)."""
    _, port = parse_host_port(http, what="--http")
    return "127.0.0.1:0" if port == 0 else ADMIN_DEFAULT


def read_stream_key(
    config: WorkerConfig, *, key: str | None = None, key_file: str | None = None
) -> str | None:
    """The stream key for push ingest, from the first place that has one.

    Order: ``--stream-key``, ``--stream-key-file``, the config's ``streamKeyFile``,
    then ``$KUBECAST_STREAM_KEY``. Pull ingest needs none.
    """
    if config.ingest.listen is None:
        return None
    if key:
        return key
    for path in (key_file, config.ingest.stream_key_file):
        if path:
            try:
                value = Path(path).read_text().strip()
            except OSError as e:
                raise ConfigError(f"cannot read the stream key file {path!r}: {e.strerror}") from e
            if not value:
                raise ConfigError(f"the stream key file {path!r} is empty")
            return value
    value = os.environ.get(STREAM_KEY_ENV, "").strip()
    if value:
        return value
    raise ConfigError(
        "push ingest needs a stream key: pass --stream-key, --stream-key-file, set"
        f" ingest.streamKeyFile in the config, or ${STREAM_KEY_ENV}"
    )


def read_pull_url(pull: WorkerPull) -> str:
    """The URL to pull: ``pull.url``, or what ``pull.urlFile`` holds now.

    Read at every (re)connect, so that a rotated Secret takes effect at the next one.
    NB: a file's content is a credential: no error here quotes it.
    """
    if pull.url is not None:
        return pull.url
    assert pull.url_file is not None
    try:
        value = Path(pull.url_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the pull URL file {pull.url_file!r}: {e.strerror}") from e
    if not re.match(PULL_URL, value):
        raise ConfigError(
            f"the pull URL file {pull.url_file!r} does not hold an rtmp(s)://, rtsp://,"
            " http(s):// or file:// URL"
        )
    return value


def with_bind_host(config: WorkerConfig, host: str) -> WorkerConfig:
    """The config with every listener bound to ``host`` (ports unchanged).

    In a pod the operator renders ``0.0.0.0`` (the pod IP for Services and
    probes, localhost for ``kubectl port-forward``); as a plain program, this
    lets several workers share one machine, each on its own address.
    """
    ingest = config.ingest
    if ingest.listen is not None:
        _, port = parse_host_port(ingest.listen, what="ingest.listen")
        ingest = ingest.model_copy(update={"listen": f"{host}:{port}"})
    _, http_port = parse_host_port(config.http, what="http")
    _, admin_port = parse_host_port(config.admin, what="admin")
    return config.model_copy(
        update={"ingest": ingest, "http": f"{host}:{http_port}", "admin": f"{host}:{admin_port}"}
    )
