"""Structured logs: one JSON object per line (or ``key=value`` text for people).

Every record carries the stream name. The stream key is a secret: nothing in the
worker formats it into a message, and as a second line of defence the
``Redactor`` filter replaces it wherever it would still appear (an exception
text from a library that echoed a URL, say). The same filter masks the
credentials of every URL in a record (``kubecast_api.redact``): a pull URL's
password or token, a restream target's key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TypeAlias

from kubecast_api import redact as redaction

#: Attributes every LogRecord has; everything else came in through ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

REDACTED = "<redacted>"

#: What the worker's functions accept as ``log``: a logger, or one with stream=<name>.
Log: TypeAlias = "logging.Logger | logging.LoggerAdapter[logging.Logger]"


class Redactor(logging.Filter):
    """Blank out secrets (the stream key, the keys it was rotated from, a pull URL's
    credentials) and mask the credentials of any URL, in messages and extra fields."""

    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secrets: set[str] = {secret} if secret else set()

    def add(self, secret: str) -> None:
        if secret:
            self.secrets.add(secret)

    def scrub(self, text: str) -> str:
        # Longest first: a secret that contains another is replaced whole.
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redaction.text(text) if "://" in text else text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # NB: a call with arguments that do not fit its format; emit() reports it
            # (logging's handleError, which prints them), a filter must not raise it.
            message = None
            record.msg = self.scrub(str(record.msg))
            if isinstance(record.args, tuple):
                record.args = tuple(self.scrub(str(arg)) for arg in record.args)
        if message is not None and (scrubbed := self.scrub(message)) != message:
            record.msg, record.args = scrubbed, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                scrubbed = self.scrub(value)
                if scrubbed != value:
                    setattr(record, key, scrubbed)
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            scrubbed = self.scrub(text)
            if scrubbed != text:
                record.exc_info = None
                record.exc_text = scrubbed
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class StreamAdapter(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    """Adds ``stream=<name>`` to every record, merged with the call's own ``extra``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def setup(*, fmt: str = "json", level: str = "info", secret: str | None = None) -> None:
    """Configure the root logger once for the process (the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(Redactor(secret))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log line per segment request is noise at info level.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def redact(secret: str) -> None:
    """From now on, blank out ``secret`` too (a rotated stream key, a pull URL's token)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, Redactor):
                log_filter.add(secret)


def for_stream(name: str, component: str = "worker") -> StreamAdapter:
    return StreamAdapter(logging.getLogger(f"kubecast.{component}"), {"stream": name})
