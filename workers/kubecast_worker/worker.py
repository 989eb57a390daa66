"""The worker: one stream, from ingest to the HTTP origin.

``Worker.run()`` reads in the order data flows::

    origin      HTTP, the playback port: playlists, segments, the player, /healthz, /readyz,
                and WHEP viewers (--whep), who get the renditions' packets as encoded
    admin       HTTP, the admin port: /status, /metrics (for the operator and Prometheus)
    ingest      the RTMP front (checks app and stream key), the SRT listener
                (the key is its passphrase), the WHIP front (the key is its bearer
                token; aiortc decodes the WebRTC media), or a pull loop
    per publish pipeline.run() in a thread: decode once → ladder → packager
    afterwards  reconnecting for reconnectWindowSeconds, then ENDLIST and idle

asyncio owns the sockets, the HTTP server and the timers; the media work runs
in one thread per session (plus its rendition threads, see pipeline.py), and
the two sides meet in ``Status`` (each posts events to it) and in the publish queue.

Between publishes the playlists stay open (no ENDLIST) for the reconnect
window. A publisher that returns in time continues them after an
``#EXT-X-DISCONTINUITY``; after the window they end, the worker is idle, and
the next publish starts new playlists (see packager.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kubecast_api import WorkerConfig, redact
from kubecast_worker import (
    admin,
    events,
    ingest,
    ladder,
    metrics,
    origin,
    packager,
    pipeline,
    restream,
)
from kubecast_worker import config as config_mod
from kubecast_worker.front_counters import IngestCounters
from kubecast_worker.logs import for_stream
from kubecast_worker.logs import redact as redact_secret
from kubecast_worker.status import Status

if TYPE_CHECKING:
    from kubecast_worker.rtmp.throttle import WrongKeyLimit
    from kubecast_worker.whep import WhepHub

#: Pull retries wait 1, 2, 4 … seconds, at most this long.
MAX_BACKOFF = 30.0


def safe_url(url: str) -> str:
    """A pull URL fit for logs and /status: its credentials masked (kubecast_api.redact)."""
    return redact.url(url)


#: How often the key file is re-read for a rotated key.
KEY_FILE_POLL_SECONDS = 5.0


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        stream_key: str | None = None,
        stream_key_file: str | None = None,
        x264_threads: int = 0,
        x264_thread_type: str = "frame",
        wrong_key_limit: WrongKeyLimit | None = None,  # None: its defaults
        whep: bool = False,
    ) -> None:
        self.config = config
        self.wrong_key_limit = wrong_key_limit
        self.stream_key = stream_key
        self.stream_key_file = stream_key_file  # re-read: a rotated Secret needs no restart
        self.log = for_stream(config.stream)
        self.out_dir = Path(config.output_dir)
        self.listen = config_mod.listen_address(config)
        pull = config.ingest.pull
        self.status = Status(
            stream=config.stream,
            mode="push" if self.listen else "pull",
            ingest_url=self.listen.url if self.listen else "",
        )
        if pull is not None:
            # NB: read once here, so that an unreadable URL file stops the start.
            self.status.post(events.IngestUrl(safe_url(self._pull_url())))
        self.whep: WhepHub | None = None
        if whep:
            from kubecast_worker.whep import WhepHub

            http_host, _ = config_mod.parse_host_port(config.http, what="http")
            self.whep = WhepHub(
                host=http_host,
                offered=config.profile.webrtc_renditions(),
                renditions=self._playing,
                log=self.log,
            )
        self.registry = metrics.registry_for(self.status, self.whep)
        self.settings = pipeline.Settings(
            profile=config.profile,
            packaging=packager.Packaging(
                out_dir=self.out_dir,
                segment_seconds=config.profile.segment_seconds,
                segment_type=config.outputs.hls.segment_type.value,
                window_segments=config.outputs.hls.window_segments,
                event=config.outputs.hls.playlist_type == "event",
                dash=config.outputs.dash.enabled,
                low_latency=config.outputs.hls.low_latency,
            ),
            live=True,
            x264_threads=x264_threads,
            x264_thread_type=x264_thread_type,
            video_tap=self.whep.tap if self.whep else None,
            audio_tap=self.whep.audio_tap if self.whep else None,
        )
        self.http_port: int | None = None
        self.admin_port: int | None = None
        self.rtmp_port: int | None = None
        self._publishes: asyncio.Queue[Any] = asyncio.Queue()
        self._session_stop: threading.Event | None = None
        self._session_close: Callable[[], None] | None = None
        self._end_timer: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()

    # -- the data flow -------------------------------------------------------------

    async def run(self, *, started: asyncio.Event | None = None) -> None:
        """Serve until ``stop()``; ``started`` is set once both ports listen."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._adopt_open_playlists()
        host, port = config_mod.parse_host_port(self.config.http, what="http")
        runner, self.http_port = await origin.start(
            host=host,
            port=port,
            root=self.out_dir,
            status=self.status,
            stream_key_secret=self.config.ingest.stream_key_secret,
            ingest_url=self.config.ingest.service_url,
            whep=self.whep,
        )
        self.log.info("origin listening", extra={"http": f"{host}:{self.http_port}"})
        admin_host, admin_port = config_mod.parse_host_port(self.config.admin, what="admin")
        try:
            admin_runner, self.admin_port = await admin.start(
                host=admin_host, port=admin_port, status=self.status, registry=self.registry
            )
        except BaseException:
            await runner.cleanup()
            raise
        self.log.info("admin listening", extra={"admin": f"{admin_host}:{self.admin_port}"})
        copies = self._restream(host)
        try:
            if self.listen is not None and self.listen.protocol == "srt":
                await self._serve_srt(started)
            elif self.listen is not None and self.listen.protocol == "whip":
                await self._serve_whip(started)
            elif self.listen is not None:
                await self._serve_push(started)
            else:
                await self._serve_pull(started)
        finally:
            self.status.post(events.Readiness(False))
            self._end_playlists()
            if copies is not None:
                await copies.stop()
            if self.whep is not None:
                await self.whep.stop()
            await admin_runner.cleanup()
            await runner.cleanup()
            self.log.info("stopped")

    def _playing(self) -> list[str]:
        """The renditions a WHEP viewer may join now: offered to WebRTC, and live."""
        view = self.status.view()
        if view.state != "live":
            return []
        offered = self.whep.offered if self.whep else []
        return [r.name for r in view.renditions if r.state == "Active" and r.name in offered]

    def _restream(self, host: str) -> restream.Supervisor | None:
        """Start following the restream targets, if the stream has any."""
        if not self.config.restream:
            return None
        origin_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        base = f"http://{origin_host}:{self.http_port}"

        def is_live() -> bool:
            return self.status.view().state in ("live", "reconnecting")

        def source_for(rendition: str | None) -> str | None:
            # The named rendition, or the highest active one (the ladder is ordered
            # highest first), once its playlist lists a segment.
            active = [r for r in self.status.view().renditions if r.state == "Active"]
            chosen = next((r for r in active if rendition in (None, r.name)), None)
            if chosen is None or chosen.segments < 1:
                return None
            return f"{base}/{chosen.name}/{packager.PLAYLIST}"

        supervisor = restream.Supervisor(
            [
                restream.Target(t.name, t.url, t.stream_key_file, t.rendition)
                for t in self.config.restream
            ],
            is_live=is_live,
            source_for=source_for,
            log=self.log,
        )
        self.status.post(events.RestreamAttached(supervisor.snapshot))
        supervisor.start()
        return supervisor

    async def _serve_push(self, started: asyncio.Event | None) -> None:
        from kubecast_worker import rtmp  # the RTMP front checks app and key

        assert self.listen is not None and self.stream_key
        server = rtmp.RtmpIngestServer(
            host=self.listen.host,
            port=self.listen.port,
            app=self.listen.app,
            stream_key=self.stream_key,
            on_publish=self._publishes.put_nowait,
            logger=logging.getLogger("kubecast.rtmp"),
            wrong_key_limit=self.wrong_key_limit,
        )
        await server.start()
        self.rtmp_port = server.port
        url = f"rtmp://{self.listen.host}:{server.port}/{self.listen.app}"
        self.status.post(events.IngestListening(url, lambda: _counters(server.counters)))
        self.log.info("ingest listening", extra={"ingest": url})
        if started:
            started.set()
        watcher = asyncio.create_task(self._follow_key_file(server))
        try:
            await self._publishers(
                self._publishes.get, lambda session: ingest.open_push(session.flv)
            )
        finally:
            watcher.cancel()
            await server.stop()

    async def _serve_srt(self, started: asyncio.Event | None) -> None:
        """SRT callers, one at a time, through the srt-live-transmit child (srt.py)."""
        from kubecast_worker import srt

        assert self.listen is not None and self.stream_key
        listener = srt.SrtListener(
            host=self.listen.host,
            port=self.listen.port,
            passphrase=self.stream_key,
            latency_ms=self.listen.latency_ms,
            log=self.log,
        )
        self.status.post(events.IngestListening(listener.url, lambda: _counters(listener.counters)))
        self.log.info("ingest listening", extra={"ingest": listener.url})
        if started:
            started.set()
        watcher = asyncio.create_task(self._follow_key_file(listener))
        try:
            await self._publishers(
                listener.accept, lambda session: ingest.open_mpegts(session.stream)
            )
        finally:
            watcher.cancel()
            listener.stop()

    async def _serve_whip(self, started: asyncio.Event | None) -> None:
        """WebRTC publishers (WHIP), one at a time: aiortc decodes, the ladder encodes."""
        from kubecast_worker import whip
        from kubecast_worker.ingest_frames import FrameSource

        assert self.listen is not None and self.stream_key
        passthrough = [r.name for r in self.config.profile.renditions if r.passthrough]
        if passthrough:
            raise config_mod.ConfigError(
                f"rendition {passthrough[0]} is a passthrough, which WHIP ingest cannot offer"
                " (the media arrives as RTP, not as a stream to copy); encode it instead"
            )
        front = whip.WhipIngest(
            host=self.listen.host,
            port=self.listen.port,
            app=self.listen.app,
            stream_key=self.stream_key,
            wrong_key_limit=self.wrong_key_limit,
            # WHEP viewers hear the publisher's own Opus, not a second encode of it
            opus_sink=self.whep.opus_packet if self.whep else None,
            log=self.log,
        )
        await front.start()
        self.rtmp_port = front.port
        self.status.post(events.IngestListening(front.url, lambda: _counters(front.counters)))
        self.log.info("ingest listening", extra={"ingest": front.url})
        if started:
            started.set()
        watcher = asyncio.create_task(self._follow_key_file(front))

        def source(session: whip.WhipSession, stop: threading.Event) -> ingest.Source:
            return FrameSource(
                frames=session.frames,
                status=self.status,
                stop=stop,
                media_timeout=session.media_timeout,
                log=self.log,
            )

        try:
            await self._publishers(front.accept, source=source)
        finally:
            watcher.cancel()
            await front.stop()

    async def _publishers(
        self,
        accept: Callable[[], Awaitable[Any]],
        opener: Callable[[Any], ingest.Opener] | None = None,
        *,
        source: Callable[[Any, threading.Event], ingest.Source] | None = None,
    ) -> None:
        """One accepted publisher after another (RTMP, SRT or WHIP alike), until stopped.

        ``accept()`` gives the next session: anything with ``peer`` and ``close()``.
        Its media is demuxed by ``opener(session)``, or comes decoded from
        ``source(session, stop)`` (WebRTC: aiortc has decoded it).
        """
        while not self._stopping.is_set():
            session = await self._next(accept())
            if session is None:
                return
            self._session_close = session.close
            try:
                await self._session(
                    opener=opener(session) if opener else None,
                    source=functools.partial(source, session) if source else None,
                    publisher=session.peer,
                    realtime=False,
                )
            finally:
                self._session_close = None
                session.close()
            self._between_sessions()

    async def _follow_key_file(self, server: Any) -> None:
        """Take a new key from the key file without a restart.

        The kubelet updates a mounted Secret in place (an atomic symlink swap), so a
        rotated key reaches the file within about a minute. The next publish must use
        it; a publisher already live stays on, and the old key is refused from then.
        """
        if not self.stream_key_file:
            return
        path, current = Path(self.stream_key_file), self.stream_key
        while True:
            await asyncio.sleep(KEY_FILE_POLL_SECONDS)
            try:
                value = path.read_text().strip()
            except OSError:
                continue  # mid-swap, or the volume went away: keep the key we have
            if value and value != current:
                redact_secret(value)
                server.rotate_key(value)
                current = value
                self.log.info("stream key rotated", extra={"file": str(path)})

    def _pull_url(self) -> str:
        """The pull URL as of now (a URL file is read again), its secrets made known
        to the log filter and to /status, which mask them wherever they appear."""
        pull = self.config.ingest.pull
        assert pull is not None
        url = config_mod.read_pull_url(pull)
        new = redact.secrets_of(url) - self.status.secrets
        for secret in new:
            redact_secret(secret)
        if new:
            self.status.post(events.SecretsLearned(frozenset(new)))
        return url

    async def _serve_pull(self, started: asyncio.Event | None) -> None:
        pull = self.config.ingest.pull
        assert pull is not None
        url = self._pull_url()
        self.status.post(events.Readiness(True))
        self.log.info("pulling", extra={"source": safe_url(url), "loop": pull.loop})
        if started:
            started.set()
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                url = self._pull_url()  # a rotated Secret applies from the next connect
            except config_mod.ConfigError as e:
                self.log.warning("keeping the pull URL read before", extra={"error": str(e)})
            is_file = urlsplit(url).scheme == "file"
            self.status.post(events.IngestUrl(safe_url(url)))
            outcome = await self._session(
                opener=ingest.open_pull(url),
                publisher=safe_url(url),
                realtime=ingest.paced_by_default(url),
                loop=pull.loop,
            )
            if outcome is not None and outcome.reason == "eof" and is_file and not pull.loop:
                self.log.info("the input file ended", extra={"seconds": outcome.media_seconds})
                self._end_playlists()
                await self._stopping.wait()  # a finished file stays finished
                return
            if outcome is not None and outcome.media_seconds > 0:
                backoff = 1.0
            self._between_sessions()
            if self._stopping.is_set():
                return
            self.log.info("pull source dropped; retrying", extra={"in_seconds": backoff})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _session(
        self,
        *,
        opener: ingest.Opener | None,
        publisher: str,
        realtime: bool,
        loop: bool = False,
        source: Callable[[threading.Event], ingest.Source] | None = None,
    ) -> pipeline.Outcome | None:
        """One publish, ingest to playlists. Errors end up in /status, not raised."""
        started_at = time.time()
        stop = self._session_stop = threading.Event()
        self.status.post(events.SessionStarted(publisher))
        self.log.info("publish started", extra={"publisher": publisher})
        loop_ = asyncio.get_running_loop()

        def claim() -> bool:
            """From the session thread, once the input is open: go live (on the loop)."""
            answer: concurrent.futures.Future[bool] = concurrent.futures.Future()

            def go_live() -> None:
                # NB: on the loop, so it cannot interleave with the reconnect timer:
                # either the playlists are still open and continue, or they ended.
                self._cancel_end_timer()
                self.status.post(events.StateChanged("live"))
                self.status.post(events.ErrorReported(None))
                answer.set_result(self.status.view().playlists_open)

            loop_.call_soon_threadsafe(go_live)
            return answer.result(timeout=30)

        if source is not None:
            media = source(stop)
        else:
            assert opener is not None
            media = ingest.Source(
                opener=opener,
                status=self.status,
                stop=stop,
                loop=loop,
                realtime=realtime,
                log=self.log,
            )
        outcome = None
        try:
            outcome = await asyncio.to_thread(
                pipeline.run,
                source=media,
                settings=self.settings,
                status=self.status,
                stop=stop,
                claim=claim,
                started_at=started_at,
                log=self.log,
            )
            self.status.post(events.ErrorReported(None))
            self.log.info(
                "publish ended",
                extra={
                    "publisher": publisher,
                    "media_seconds": round(outcome.media_seconds, 3),
                    "wall_seconds": round(outcome.wall_seconds, 3),
                },
            )
        except (ingest.SourceError, ladder.LadderError, pipeline.PipelineError) as e:
            self.status.post(events.ErrorReported(str(e)))
            self.log.warning("publish failed", extra={"publisher": publisher, "error": str(e)})
        except Exception as e:  # a bug: keep serving, say what happened
            self.status.post(events.ErrorReported(f"internal error: {ingest.describe(e)}"))
            self.log.exception("publish crashed", extra={"publisher": publisher})
        finally:
            self._session_stop = None
            self.status.post(events.SessionEnded())
        return outcome

    def _between_sessions(self) -> None:
        """Keep the playlists open for the reconnect window, then end them.

        The window runs from when the publisher left: failed reconnect attempts (a
        pull source that is still down) do not restart it.
        """
        if not self.status.view().playlists_open:
            self.status.post(events.StateChanged("idle"))
            return
        window = self.config.reconnect_window_seconds
        if window <= 0:
            self._end_playlists()
            return
        self.status.post(events.StateChanged("reconnecting"))
        if self._end_timer is None:
            self._end_timer = asyncio.get_running_loop().call_later(window, self._end_playlists)

    def _adopt_open_playlists(self) -> None:
        """Continue the playlists a crashed run left open, as if its publisher left.

        A container the kubelet restarts (SIGKILL, OOM) keeps its pod's media
        volume, with playlists that never got their ENDLIST. Within the reconnect
        window (counted from their last write) they stay open: the next publish
        appends to them after a discontinuity, and players keep their place, as on
        any reconnect. Older, or ended, playlists start over as before.
        """
        window = self.config.reconnect_window_seconds
        if window <= 0:
            return
        now, ages = time.time(), []
        for rendition in self.config.profile.renditions:
            path = self.out_dir / rendition.name / packager.PLAYLIST
            try:
                if packager.ENDLIST in path.read_text():
                    return
                ages.append(now - path.stat().st_mtime)
            except FileNotFoundError:
                continue
        if not ages or min(ages) >= window:
            return
        self.status.post(events.PlaylistsOpened())
        self.status.post(events.StateChanged("reconnecting"))
        left = window - min(ages)
        self._end_timer = asyncio.get_running_loop().call_later(left, self._end_playlists)
        self.log.info(
            "continuing the playlists a previous run left open",
            extra={"window_left_s": round(left, 1)},
        )

    def _end_playlists(self) -> None:
        self._cancel_end_timer()
        if self.status.view().playlists_open:
            names = [r.name for r in self.config.profile.renditions]
            ended = packager.end(self.out_dir, names)
            self.status.post(events.PlaylistsClosed())
            self.log.info("playlists ended", extra={"renditions": ended})
        self.status.post(events.StateChanged("idle"))

    def _cancel_end_timer(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    # -- stopping ------------------------------------------------------------------

    async def _next(self, waiter: Any) -> Any:
        """Await ``waiter`` unless the worker is told to stop first (then None)."""
        task = asyncio.ensure_future(waiter)
        stopping = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stopping.cancel()
            return task.result()
        task.cancel()
        return None

    def stop(self) -> None:
        """Finish the current publish (its last segment is kept), end playlists, exit."""
        if not self._stopping.is_set():
            self.log.info("stopping")
        self._stopping.set()
        if self._session_stop is not None:
            self._session_stop.set()
        if self._session_close is not None:
            self._session_close()


def _counters(counters: IngestCounters) -> dict[str, int]:
    return dataclasses.asdict(counters)


async def serve(config: WorkerConfig, *, stream_key: str | None, **options: Any) -> None:
    """Run a worker until SIGINT/SIGTERM (the CLI's ``run``)."""
    import signal

    worker = Worker(config, stream_key=stream_key, **options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
