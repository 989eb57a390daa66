"""RtmpIngestServer: the worker's RTMP port, admitting one publisher with the right key.

FFmpeg's own RTMP listen mode takes any app and any key, one publisher per open, so the
worker listens itself: it reads ``connect`` and ``publish``, checks the app and the key,
keeps a second publisher out while one is live, and hands the accepted one's media on as
FLV (:class:`PublishSession`). Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubecast_worker.front_counters import IngestCounters
from kubecast_worker.rtmp.connection import (
    Limits,
    Refused,
    RtmpConnection,
    format_peer,
    normalize_app,
)
from kubecast_worker.rtmp.errors import ProtocolError, SilentPeer
from kubecast_worker.rtmp.session import PublishSession
from kubecast_worker.rtmp.throttle import WrongKeyLimit, WrongKeyThrottle

OnPublish = Callable[[PublishSession], Awaitable[None] | None]


class RtmpIngestServer:
    """Listens for RTMP publishers and admits the one that knows the stream key.

    The stream key is never logged, nor is anything a peer sent as a key or app name
    (publishers put keys in the wrong field often enough). Refusals and protocol errors
    are logged with the peer address and a reason, and counted in :attr:`counters`.

    Wrong keys are limited per source address (``wrong_key_limit``, see
    :mod:`kubecast_worker.rtmp.throttle`): an address over the limit has its new
    connections refused at accept for the back-off, each counted as
    ``refused_rate_limited``; only the start of a back-off is logged, so that a
    guesser cannot flood the log either.
    """

    # Tunables: class attributes, so that tests and callers can adjust them per instance
    # without widening the constructor others code against.
    idle_timeout = 15.0  # a publisher silent this long is gone (think half-open TCP)
    reader_stall_timeout = 10.0  # a FLV reader taking nothing this long drops the publisher
    flv_high_water = 8 * 1024 * 1024  # unread FLV bytes before we stop reading the socket
    max_connections = 32  # connections at once, publisher included; more are refused
    stop_timeout = 5.0

    def __init__(
        self,
        *,
        host: str,
        port: int,
        app: str,
        stream_key: str,
        on_publish: OnPublish,
        logger: logging.Logger | None = None,
        handshake_timeout: float = 10.0,
        wrong_key_limit: WrongKeyLimit | None = None,
    ) -> None:
        if not stream_key:
            raise ValueError("stream_key is empty; an empty key would let anyone publish")
        self.host = host
        self.port = port
        self.app = normalize_app(app)
        self.counters = IngestCounters()
        self.current: PublishSession | None = None
        self.handshake_timeout = handshake_timeout
        self.throttle = WrongKeyThrottle(wrong_key_limit or WrongKeyLimit())
        self._key = stream_key.encode("utf-8")
        self._on_publish = on_publish
        self._log = logger or logging.getLogger(__name__)
        self._server: asyncio.Server | None = None
        self._connections: dict[RtmpConnection, asyncio.Task[Any]] = {}
        self._callbacks: set[asyncio.Task[None]] = set()

    def rotate_key(self, stream_key: str) -> None:
        """Accept ``stream_key`` from the next publish on; a live publisher stays."""
        if not stream_key:
            raise ValueError("stream_key is empty; an empty key would let anyone publish")
        self._key = stream_key.encode("utf-8")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._event(
            logging.INFO,
            "rtmp.listening",
            "rtmp ingest listening",
            host=self.host,
            port=self.port,
            app=self.app,
        )

    async def stop(self) -> None:
        """Stop listening, drop every connection (the publisher too), wait for them."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.drop("server_stopping")
        tasks = list(self._connections.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # NB: on_publish coroutines now see their sessions end (b'' from the pipe) and get
        # the same grace to finish their tail (flush encoders, close playlists); then they
        # are cancelled, as the server that started them is going away.
        callbacks = list(self._callbacks)
        if callbacks:
            _, pending = await asyncio.wait(callbacks, timeout=self.stop_timeout)
            for callback in pending:
                callback.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- connections ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = format_peer(writer.get_extra_info("peername"))
        if self.throttle.blocked_for(_host(peer)) > 0:
            # NB: before the handshake: a guesser's connection costs us no more than this.
            self.counters.refused_rate_limited += 1
            writer.transport.abort()
            return
        if len(self._connections) >= self.max_connections:
            self._protocol_error(peer, "too many connections at once", phase="accept")
            writer.transport.abort()
            return
        connection = RtmpConnection(
            reader=reader,
            writer=writer,
            peer=peer,
            admission=self,
            limits=Limits(
                handshake_timeout=self.handshake_timeout,
                idle_timeout=self.idle_timeout,
                reader_stall_timeout=self.reader_stall_timeout,
                flv_high_water=self.flv_high_water,
            ),
        )
        task = asyncio.current_task()
        assert task is not None
        self._connections[connection] = task
        graceful = False
        try:
            await connection.run()
            graceful = True
        except Refused:
            graceful = True  # counted and logged by the admission; the refusal gets flushed
        except SilentPeer:
            self._log.debug("rtmp connection closed without data (a probe?) peer=%s", peer)
        except ProtocolError as exc:
            self._protocol_error(peer, str(exc), phase=connection.phase, unless=connection)
        except TimeoutError:  # NB: before OSError, of which it is a subclass
            reason = f"timed out in the {connection.phase} phase"
            self._protocol_error(peer, reason, phase=connection.phase, unless=connection)
        except asyncio.IncompleteReadError:
            reason = f"connection closed during the {connection.phase} phase"
            self._protocol_error(peer, reason, phase=connection.phase, unless=connection)
        except OSError as exc:
            reason = f"connection failed during the {connection.phase} phase ({type(exc).__name__})"
            self._protocol_error(peer, reason, phase=connection.phase, unless=connection)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug of ours must cost one connection, never the worker.
            self.counters.protocol_errors += 1
            self._log.exception("rtmp connection failed unexpectedly peer=%s", peer)
        finally:
            if connection.session is not None and connection.end_reason is None:
                connection.end_reason = "protocol_error"
            await connection.close(graceful=graceful)
            del self._connections[connection]

    def _protocol_error(
        self, peer: str, reason: str, *, phase: str, unless: RtmpConnection | None = None
    ) -> None:
        if unless is not None and unless.dropped:
            return  # we dropped it ourselves (stop, consumer); the fallout is not its fault
        self.counters.protocol_errors += 1
        self._event(
            logging.WARNING,
            "rtmp.protocol_error",
            "rtmp protocol error",
            peer=peer,
            phase=phase,
            reason=reason,
        )

    # -- admission (called by connections) ---------------------------------------------------

    def check_app(self, *, peer: str, app: str) -> str | None:
        if app == self.app:
            return None
        self.counters.refused_unknown_app += 1
        # NB: the attempted app is not logged: a key pasted into the URL's app part is
        # still a key. The expected app is configuration, and tells the reader what to fix.
        self._event(
            logging.WARNING,
            "rtmp.refused",
            "rtmp connect refused: unknown app",
            peer=peer,
            reason="unknown_app",
            expected_app=self.app,
        )
        return "unknown_app"

    def open_session(
        self, *, connection: RtmpConnection, app: str, stream_key: str
    ) -> PublishSession | str:
        # Constant time, so the answer's timing does not leak how much of a guess was right.
        host = _host(connection.peer)
        if not hmac.compare_digest(stream_key.encode("utf-8"), self._key):
            self.counters.refused_wrong_key += 1
            self._event(
                logging.WARNING,
                "rtmp.refused",
                "rtmp publish refused: wrong stream key",
                peer=connection.peer,
                reason="wrong_key",
            )
            if self.throttle.wrong_key(host):
                limit = self.throttle.limit
                self._event(
                    logging.WARNING,
                    "rtmp.rate_limited",
                    f"rtmp address refused for {limit.backoff:g} s after {limit.attempts}"
                    f" wrong stream key(s) within {limit.window:g} s",
                    peer=connection.peer,
                    reason="rate_limited",
                    backoff_s=limit.backoff,
                )
            return "wrong_key"
        self.throttle.right_key(host)
        if self.current is not None:
            self.counters.refused_busy += 1
            self._event(
                logging.WARNING,
                "rtmp.refused",
                "rtmp publish refused: another publisher is live",
                peer=connection.peer,
                reason="busy",
                live_peer=self.current.peer,
            )
            return "busy"
        session = PublishSession(
            peer=connection.peer, app=app, loop=asyncio.get_running_loop(), drop=connection.drop
        )
        self.current = session
        self.counters.accepted += 1
        self._event(
            logging.INFO, "rtmp.accepted", "rtmp publisher accepted", peer=connection.peer, app=app
        )
        return session

    def session_started(self, session: PublishSession) -> None:
        try:
            result = self._on_publish(session)
        except Exception:
            self._log.exception("on_publish failed; dropping the publisher peer=%s", session.peer)
            session.close()
            return
        if inspect.isawaitable(result):
            # NB: run alongside, not awaited: the consumer typically waits for the session
            # to end, and the session needs this connection to keep reading meanwhile.
            task = asyncio.create_task(_await(result), name=f"on_publish {session.peer}")
            self._callbacks.add(task)
            task.add_done_callback(functools.partial(self._callback_done, session))

    def session_ended(self, session: PublishSession) -> None:
        if self.current is session:
            self.current = None
        # A publisher that left, or that we were asked to drop, is business as usual;
        # silence, a stalled reader or a broken stream is worth a look.
        expected = session.close_reason in (
            "publisher_left",
            "closed_by_consumer",
            "server_stopping",
        )
        self._event(
            logging.INFO if expected else logging.WARNING,
            "rtmp.ended",
            f"rtmp publisher gone: {session.close_reason}",
            peer=session.peer,
            reason=session.close_reason or "unknown",
            duration_s=round(time.time() - session.started_at, 3),
            media_bytes=session.bytes_received,
        )

    def _callback_done(self, session: PublishSession, future: asyncio.Task[None]) -> None:
        self._callbacks.discard(future)
        if future.cancelled() or future.exception() is None:
            return
        self._log.error(
            "on_publish failed; dropping the publisher peer=%s",
            session.peer,
            exc_info=future.exception(),
        )
        if not session.closed:
            session.close()

    def _event(self, level: int, event: str, text: str, **fields: Any) -> None:
        """One structured line: a short text, and the fields in ``extra``.

        The worker's formatters (kubecast_worker.logs) print the extra fields, as JSON or
        as key=value, so they are not repeated in the text.
        """
        self._log.log(level, text, extra={"event": event, **fields})


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


def _host(peer: str) -> str:
    """``[::1]:5000`` → ``::1``, ``10.0.0.7:5000`` → ``10.0.0.7`` (format_peer's forms)."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    return peer.rpartition(":")[0] or peer
