"""SRT ingest: a listener for publishers that call over SRT (field encoders, OBS, ffmpeg).

PyAV's wheels are built without libsrt, so the listener is a child process:
``srt-live-transmit``, the sample application that Haivision ships with libsrt
itself (Debian's ``srt-tools``, on ``libsrt1.5-openssl``). It is kept in step
with the library, has no media code of its own and is a few hundred kB, where
Debian's ffmpeg would add a whole second FFmpeg to the image. It accepts one
caller and writes the MPEG-TS it receives to its stdout; the worker demuxes that
pipe like any other input (``ingest.open_mpegts``), into the same decode-once
pipeline as RTMP.

Authentication is SRT's own: the stream key is the passphrase, and libsrt
refuses a caller with a wrong or missing one during the handshake (AES keys are
derived from it, so a caller that does not know it could not send media anyway).
Those refusals never reach us as connections; we count them from libsrt's log
lines on the child's stderr, which also name the caller's address.

One publisher at a time: the child listens until it has accepted one caller and
then stops listening, so a second caller gets no answer until the first leaves.

The child's stderr is never copied out as it is: its first line repeats the
listen URL with the passphrase. Lines are parsed, and only what they mean is
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO

from kubecast_worker.front_counters import IngestCounters

BINARY = "srt-live-transmit"
#: libsrt's default receive latency.
DEFAULT_LATENCY_MS = 120
#: SRT passphrases are 10 to 79 characters (SRTO_PASSPHRASE); ours travel in a URL query.
PASSPHRASE = re.compile(r"^[A-Za-z0-9._~-]{10,79}$")

_REQUEST_FROM = re.compile(r"request from: (\S+)")
_REJECT = re.compile(r"rsp\(REJECT\): (\d+) - (.*)$")
#: libsrt's rejection codes for a passphrase that is wrong (BADSECRET) or missing (UNSECURE).
_KEY_REJECTIONS = ("1010", "1011")


class SrtError(Exception):
    """SRT ingest cannot start; the message says what to fix."""


def check_passphrase(key: str) -> None:
    if not PASSPHRASE.match(key):
        raise SrtError(
            "SRT ingest uses the stream key as its passphrase, which must be 10 to 79"
            " characters of A-Z, a-z, 0-9, '.', '_', '~' or '-' (the key has "
            f"{len(key)} characters); generate one, or set such a key in the Secret"
        )


class ArrivingBytes:
    """The child's stdout as a demuxer should read a live pipe: ``read(n)`` returns the
    bytes that have arrived (at most ``n``) and blocks only while there are none.

    NB: a ``BufferedReader``'s ``read(n)`` waits until it has all ``n``. PyAV reads 32 KB
    at a time, a fifth of a second of a 1.5 Mbit/s stream, which it would hold back
    (the RTMP front's ``FlvPipe`` reads the same way as this). No ``seek``: a live stream.
    """

    name = "srt-ingest.ts"

    def __init__(self, stdout: IO[bytes]) -> None:
        self._stdout = stdout

    def read(self, n: int = -1) -> bytes:
        return self._stdout.read1(n)  # type: ignore[attr-defined]


@dataclass
class SrtSession:
    """One accepted caller: the MPEG-TS it sends, readable (blocking) from ``stream``."""

    peer: str
    stream: ArrivingBytes
    _process: subprocess.Popen[bytes] = field(repr=False)

    def close(self) -> None:
        """End the session (any thread): the child exits, and ``stream`` reaches EOF."""
        with contextlib.suppress(ProcessLookupError):
            self._process.terminate()


class SrtListener:
    """Listens on ``host:port`` (UDP) for one SRT caller at a time."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        passphrase: str,
        latency_ms: int | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        binary: str = BINARY,
    ) -> None:
        check_passphrase(passphrase)
        found = shutil.which(binary)
        if found is None:
            raise SrtError(f"SRT ingest needs {binary} (Debian package srt-tools) on PATH")
        self.host, self.port = host, port
        self.latency_ms = latency_ms or DEFAULT_LATENCY_MS
        self.counters = IngestCounters()
        self._binary = found
        self._passphrase = passphrase
        self._log = log or logging.getLogger("kubecast.srt")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where publishers call, without the passphrase (safe to log and to show)."""
        return f"srt://{self.host}:{self.port}"

    def rotate_key(self, passphrase: str) -> None:
        """The next listener takes the new key; a caller already live stays on."""
        check_passphrase(passphrase)
        self._passphrase = passphrase

    def _command(self) -> list[str]:
        query = "&".join(
            [
                "mode=listener",
                f"passphrase={self._passphrase}",
                f"latency={self.latency_ms}",
                # a caller that vanishes without a shutdown is gone after this long
                "peeridletimeo=5000",
            ]
        )
        # -a:no: exit when the caller leaves (the worker starts the next listener);
        # note: libsrt logs each connection request with the caller's address.
        return [self._binary, "-a:no", "-loglevel:note", f"srt://{self.host}:{self.port}?{query}",
                "file://con"]  # fmt: skip

    async def accept(self) -> SrtSession:
        """Listen until a caller is accepted and its first bytes arrive."""
        while True:
            session = await asyncio.to_thread(self._listen_once)
            if session is not None:
                return session
            await asyncio.sleep(1.0)  # the child could not listen: say why, try again

    def _listen_once(self) -> SrtSession | None:
        process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # The child needs nothing of ours: no key file paths, no tokens.
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        accepted = threading.Event()
        peer: list[str] = []
        reader = threading.Thread(
            target=self._read_log,
            args=(process.stderr, accepted, peer),
            name="srt-log",
            daemon=True,
        )
        reader.start()
        stdout: IO[bytes] = process.stdout
        first = stdout.peek(1) if hasattr(stdout, "peek") else b""  # blocks until media
        if not first:
            process.wait()
            reader.join(timeout=1)
            if process.returncode not in (0, -15):
                self._log.warning(
                    "srt listener exited", extra={"code": process.returncode, "listen": self.url}
                )
            return None
        self.counters.accepted += 1
        who = peer[-1] if peer else "unknown"
        self._log.info("srt publisher accepted", extra={"peer": who})
        return SrtSession(peer=who, stream=ArrivingBytes(stdout), _process=process)

    def _read_log(self, stderr: IO[bytes], accepted: threading.Event, peer: list[str]) -> None:
        """libsrt's log lines, read for what they mean; never copied out whole."""
        for raw in stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if match := _REQUEST_FROM.search(line):
                if not peer or peer[-1] != match.group(1):
                    peer.append(match.group(1))
                    del peer[:-4]
            elif match := _REJECT.search(line):
                code, why = match.groups()
                who = peer[-1] if peer else "unknown"
                if code in _KEY_REJECTIONS:
                    self.counters.refused_wrong_key += 1
                    self._log.warning(
                        "srt caller refused: wrong or missing passphrase",
                        extra={"peer": who, "reason": "wrong_key"},
                    )
                else:
                    self.counters.protocol_errors += 1
                    self._log.warning(
                        "srt caller refused", extra={"peer": who, "reason": why, "code": code}
                    )
            elif "Accepted SRT source connection" in line:
                accepted.set()
            elif "SRT source disconnected" in line:
                self._log.info("srt publisher gone", extra={"peer": peer[-1] if peer else None})
            elif ("*E:" in line or "!W:" in line) and "passphrase" not in line.lower():
                # Other errors and warnings, without the passphrase or the listen URL.
                self._log.debug("libsrt: %s", line.split(": ", 1)[-1])

    def stop(self) -> None:
        """Stop listening (and end a session in progress)."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
