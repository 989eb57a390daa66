"""Restream: send a copy of the live stream to other RTMP destinations.

Each target gets its own child process (``kubecast-worker restream``) that reads
one rendition's live HLS from the worker's origin and remuxes it, without
re-encoding, to ``rtmp://.../<app>/<key>``. A process per target, not a thread in
the worker, because PyAV's network output blocks while it holds the GIL: a slow
or unreachable destination must never stall the ladder or the other targets.
Reading the worker's own HLS (rather than tapping the encoder) costs a segment or
two of latency, which nobody notices on a restream, and means a target sees
exactly what viewers see.

The parent side (``Supervisor``) starts a target's process when the stream goes
live, restarts it with backoff while the stream stays live, and reports each
target's state in ``/status``. The key is read from its file (a mounted Secret)
at every start, so a rotated key is picked up, and is handed to the child in its
environment with the target URL (which may carry credentials of its own), never
in argv (``ps`` shows argv) and never in a log line.

The child gets only the environment it needs (``CHILD_ENV``): not the worker's,
which holds whatever the pod was given. What it writes to stderr reaches the
pod's log only through the parent, which masks the key and the URL's
credentials in every line first (the child's own log filter does too; this
holds for a traceback or a library's output as well).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubecast_api import redact
from kubecast_worker import logs

KEY_ENV = "KUBECAST_RESTREAM_KEY"
TARGET_ENV = "KUBECAST_RESTREAM_TARGET"
#: What the child may inherit: the program search path, the module path its parent
#: imports from, the locale and time zone, and where TLS (rtmps) finds its CA
#: certificates. Not proxies: the child reads the worker's own origin on loopback.
CHILD_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
OPEN_TIMEOUT = 10.0
READ_TIMEOUT = 20.0
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 30.0
#: A child that has not started sending this long after it started is ended. NB: the
#: timeouts above do not cover the output's connection and RTMP handshake (PyAV opens
#: it at the first packet, without its interrupt callback): a target that takes the TCP
#: connection and never answers would hold the child, Connecting, for ever.
START_TIMEOUT = OPEN_TIMEOUT + READ_TIMEOUT

log = logging.getLogger("kubecast.restream")


def target_url(url: str, key: str | None) -> str:
    """``rtmp://host/app`` plus the key as the stream name, as every RTMP service expects.

    A query string stays at the end (``rtmp://host/app/<key>?auth=...``).
    """
    if not key:
        return url
    base, question, query = url.partition("?")
    return f"{base.rstrip('/')}/{key}{question}{query}"


# -- the child: one target, one remux ----------------------------------------------------


def remux(source: str, target: str, *, name: str) -> int:
    """Copy ``source`` (a live HLS playlist) to ``target`` (RTMP) until the source ends.

    Returns the number of packets sent. Timestamps are rebased so that the target
    sees the stream start at zero (the packager writes them with an offset).
    """
    import av

    # NB: live_start_index -1 starts at the newest segment: the least latency.
    inp = av.open(
        source,
        options={"live_start_index": "-1"},
        timeout=(OPEN_TIMEOUT, READ_TIMEOUT),
    )
    try:
        out = av.open(target, "w", format="flv", timeout=(OPEN_TIMEOUT, READ_TIMEOUT))
        try:
            streams = {
                s.index: out.add_stream_from_template(s)
                for s in inp.streams
                if s.type in ("video", "audio")
            }
            base: int | None = None
            last_dts: dict[int, int] = {}
            sent = 0
            for packet in inp.demux(*[inp.streams[i] for i in streams]):
                if packet.dts is None or packet.pts is None or packet.time_base is None:
                    continue
                index = packet.stream.index
                if base is None:
                    base = packet.dts
                dts, pts = packet.dts - base, packet.pts - base
                if dts < 0 or dts <= last_dts.get(index, -1):
                    continue  # before the start, or a repeat across a playlist reload
                packet.dts, packet.pts = dts, pts
                packet.stream = streams[index]
                out.mux(packet)
                last_dts[index] = dts
                sent += 1
                if sent == 1:
                    log.info("restreaming", extra={"target": name})
            return sent
        finally:
            out.close()
    finally:
        inp.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kubecast-worker restream",
        description="Copy a live HLS rendition to an RTMP destination (the key comes from"
        f" ${KEY_ENV}).",
    )
    parser.add_argument("--source", required=True, help="the rendition's live HLS playlist URL")
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV),
        help=f"rtmp(s)://host/app, without the key (default ${TARGET_ENV}: a URL with"
        " credentials does not belong in argv)",
    )
    parser.add_argument("--name", default="target", help="the target's name, for logs")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    if not args.target:
        parser.error(f"give --target or ${TARGET_ENV}")
    key = os.environ.get(KEY_ENV, "").strip() or None
    logs.setup(fmt=args.log_format, secret=key)
    for secret in redact.secrets_of(args.target):
        logs.redact(secret)
    try:
        sent = remux(args.source, target_url(args.target, key), name=args.name)
    except Exception as error:  # every failure is reported the same way
        from kubecast_worker.ingest import describe

        log.error("restream failed", extra={"target": args.name, "error": describe(error)})
        return 1
    log.info("restream ended", extra={"target": args.name, "packets": sent})
    return 0


# -- the parent: start, restart and report ------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    key_file: str | None
    rendition: str | None


@dataclass
class TargetState:
    name: str
    url: str
    state: str = "Idle"  # Idle, Connecting, Live, Retrying
    last_error: str | None = None
    since: float = 0.0
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            # The key is not part of it; a password or token someone put in is masked.
            "url": redact.url(self.url),
            "state": self.state,
            "lastError": redact.text(self.last_error) if self.last_error else None,
            "restarts": self.restarts,
        }


class Supervisor:
    """Run every target's child process while the stream is live."""

    #: The child's program; its options follow. Tests may point it elsewhere.
    child_command: tuple[str, ...] = (sys.executable, "-m", "kubecast_worker.cli", "restream")

    def __init__(
        self,
        targets: list[Target],
        *,
        is_live: Callable[[], bool],
        source_for: Callable[[str | None], str | None],
        log: logs.Log,
    ) -> None:
        self.targets = targets
        self.is_live = is_live
        self.source_for = source_for
        self.log = log
        self.states = {t.name: TargetState(t.name, t.url, since=time.time()) for t in targets}
        self._tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> list[dict[str, Any]]:
        return [state.to_json() for state in self.states.values()]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(t)) for t in self.targets]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _set(self, name: str, state: str, error: str | None = None) -> None:
        current = self.states[name]
        if current.state != state:
            current.state, current.since = state, time.time()
        if error is not None:
            current.last_error = error

    async def _follow(self, target: Target) -> None:
        backoff = BACKOFF_FIRST
        while True:
            source = self.source_for(target.rendition) if self.is_live() else None
            if source is None:
                self._set(target.name, "Idle")
                backoff = BACKOFF_FIRST
                await asyncio.sleep(1.0)
                continue
            self._set(target.name, "Connecting")
            started = time.monotonic()
            code, error = await self._run_once(target, source)
            if not self.is_live():
                continue  # the publish ended, and with it the copy: not a failure
            state = self.states[target.name]
            state.restarts += 1
            if time.monotonic() - started > 60:
                backoff = BACKOFF_FIRST  # it ran a good while: a fresh failure
            message = error or f"the restream process exited with code {code}"
            self._set(target.name, "Retrying", message)
            self.log.warning(
                "restream target failed; retrying",
                extra={"target": target.name, "error": message, "in_seconds": backoff},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_once(self, target: Target, source: str) -> tuple[int, str | None]:
        env = {name: os.environ[name] for name in CHILD_ENV if name in os.environ}
        env[TARGET_ENV] = target.url
        key = None
        if target.key_file:
            try:
                key = env[KEY_ENV] = Path(target.key_file).read_text().strip()
            except OSError as e:
                return 1, f"cannot read the target's key file: {e.strerror}"
            logs.redact(key)
        url_secrets = redact.secrets_of(target.url) | redact.secrets_of(target_url(target.url, key))
        process = await asyncio.create_subprocess_exec(
            *self.child_command,
            "--source", source, "--name", target.name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        error: str | None = None
        started = False
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        try:
            assert process.stderr is not None
            while True:
                try:
                    async with asyncio.timeout_at(None if started else deadline):
                        raw = await process.stderr.readline()
                except TimeoutError:
                    error = f"the target did not take the stream within {START_TIMEOUT:g} s"
                    process.kill()
                    break
                if not raw:
                    break
                line = scrub(raw.decode(errors="replace").rstrip("\n"), key, url_secrets)
                # To the pod's log: the child's lines, with its secrets masked once more.
                sys.stderr.write(line + "\n")
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("msg") == "restreaming":
                        started = True
                        self._set(target.name, "Live")
                        self.states[target.name].last_error = None
                    elif entry.get("msg") == "restream failed":
                        error = entry.get("error")
                if not self.is_live() and process.returncode is None:
                    process.terminate()
            return await process.wait(), error
        except asyncio.CancelledError:
            if process.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 5)
                if process.returncode is None:
                    process.kill()
            raise


def scrub(line: str, key: str | None, secrets: set[str]) -> str:
    """A line of the child's output without the key or the target URL's credentials."""
    if key:
        # NB: the key whatever its length: it is known to be a secret, unlike the
        # pieces of a URL that ``redact.text`` skips when short.
        line = line.replace(key, logs.REDACTED)
    return redact.text(line, secrets=secrets)
