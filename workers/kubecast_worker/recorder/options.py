"""What the recorder was asked to do, parsed and checked once at startup."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

FORMATS = ("hls", "mp4", "fmp4")


class OptionsError(ValueError):
    """A flag a person can fix; the message names it."""


@dataclasses.dataclass(frozen=True)
class Options:
    source: str
    out: Path
    formats: tuple[str, ...] = ("hls", "mp4")
    idle_timeout: float = 300.0
    #: The admin port (the recorder's only one): /status, /stop, /metrics, probes.
    http_host: str = "0.0.0.0"
    http_port: int = 9090
    #: File holding the token POST /stop needs (a mounted Secret); None: /stop is refused.
    stop_token_file: Path | None = None
    #: Where the last /status goes on exit (the pod's terminationMessagePath); None: nowhere.
    termination_log: Path | None = None
    rendition: str | None = None
    max_duration: float | None = None
    wait_for_next_live: bool = False
    start_at: datetime | None = None
    stop_at: datetime | None = None
    #: How long a failed recorder keeps answering /status before it exits
    #: non-zero, so that the operator (polling every few seconds) sees why.
    fail_linger: float = 30.0

    @property
    def master_url(self) -> str:
        """``<source>/master.m3u8``; a source that already names a playlist is used as is."""
        if urlsplit(self.source).path.endswith(".m3u8"):
            return self.source
        return self.source.rstrip("/") + "/master.m3u8"

    @property
    def stream_name(self) -> str:
        """``<stream>`` of ``http://<stream>-playback.<ns>.svc...``, for logs and metrics."""
        host = urlsplit(self.source).hostname or "stream"
        if host.replace(".", "").isdigit() or ":" in host:
            return host  # an address names no stream
        return host.split(".")[0].removesuffix("-playback")


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise OptionsError(
            f"--formats {text!r}: expected a comma-separated list of {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(formats))


def parse_time(text: str, flag: str) -> datetime:
    """RFC 3339 (``2025-05-01T18:00:00Z``, ``...+02:00``); a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError as e:
        raise OptionsError(f"{flag} {text!r} is not an RFC 3339 time: {e}") from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_listen(text: str, flag: str = "--admin") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionsError(f"{flag} {text!r}: expected HOST:PORT, for example 0.0.0.0:9090")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_stop_token(path: Path | None) -> bytes | None:
    """The token from ``--stop-token-file``; an empty or unreadable file is an error,
    so that a recorder never runs with a /stop that anyone may call."""
    if path is None:
        return None
    try:
        token = path.read_bytes().strip()
    except OSError as e:
        raise OptionsError(f"--stop-token-file {str(path)!r}: {e.strerror}") from e
    if not token:
        raise OptionsError(f"--stop-token-file {str(path)!r} is empty")
    return token


def check(options: Options) -> Options:
    scheme = urlsplit(options.source).scheme
    if scheme not in ("http", "https"):
        raise OptionsError(
            f"--source {options.source!r}: expected the origin's http(s) base URL,"
            " for example http://demo-playback.live.svc.cluster.local:8080"
        )
    if options.idle_timeout < 0:
        raise OptionsError("--idle-timeout must be 0 or more seconds")
    if options.max_duration is not None and options.max_duration <= 0:
        raise OptionsError("--max-duration must be more than 0 seconds")
    if options.start_at and options.stop_at and options.stop_at <= options.start_at:
        raise OptionsError("--stop-at must be after --start-at")
    return options
