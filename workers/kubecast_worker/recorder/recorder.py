"""The recording loop: wait for the start, follow the source, stop, finalize.

``Recorder.run`` reads in the order a recording lives:

1. open the recording directory (and read back an earlier, interrupted run);
2. follow the source: poll its media playlist, copy new segments into the
   journal, until a stop condition holds (``POST /stop``, SIGTERM, ``--stop-at``,
   ``--max-duration``, or the source idle longer than ``--idle-timeout``);
3. finalize: close the playlist (ENDLIST), finish the fragmented MP4, remux
   the faststart MP4.

The asyncio side owns HTTP and timers; file writes go to worker threads, and
everything PyAV runs in one dedicated media thread.

When recording starts:

- now (default): with the newest segment the source lists; a source that is
  idle (no playlist yet) is waited for, and its whole first window is taken;
- ``--wait-for-next-live``: only media that follows a transition from idle to
  live (the master appears, the playlist ended and new media came, a new
  media sequence started);
- ``--start-at``: no earlier than that time (either of the above after it).

Idle means: the playlist carries ENDLIST, or it has not grown for three target
durations (at least 4 s; a source that stays unreachable is such a case). The
idle timeout only runs once something is recorded; before that the recorder
waits for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from kubecast_worker.recorder import journal, origin, remux, tracking
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.options import Options

#: A playlist that has not grown for this many target durations is idle.
STALL_TARGETS = 3
STALL_MIN_S = 4.0


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recorder:
    def __init__(
        self,
        *,
        options: Options,
        metrics: Metrics,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        source: origin.Source | None = None,
    ) -> None:
        self.options = options
        #: Where segments come from; by default the origin at --source.
        self.source = source
        self.metrics = metrics
        self.log = logger
        self.wall_clock = wall_clock
        self.journal = journal.Journal(options.out)
        self.state = "waiting"
        self.ready = False
        self.fatal_error: str | None = None
        self.source_problem: str | None = None
        self.stop_reason: str | None = None
        self.resumable = False
        self._wake = asyncio.Event()
        self._media = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder-media")
        self._growing: remux.GrowingMp4 | None = None
        self._growing_queue: asyncio.Queue[remux.Piece | None] = asyncio.Queue()
        self._growing_task: asyncio.Task[None] | None = None
        self._growing_duration: float | None = None
        self._growing_broken = False

    # --- control ---------------------------------------------------------------

    def request_stop(self, reason: str, *, resumable: bool = False) -> None:
        """Finish the recording (POST /stop, SIGTERM); safe to call more than once.

        ``resumable``: the pod is going away (deleted, evicted, drained), not the
        recording. What was recorded is written out all the same (playlist, MP4),
        so nothing is lost if no pod comes back; but the journal stays open, and
        the next recorder pod on the same claim resumes the same recording.
        """
        if self.stop_reason is None:
            self.stop_reason = reason
            self.resumable = resumable
            self.log.info("stop requested", extra={"reason": reason, "resumable": resumable})
        self._wake.set()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.log.info("recorder is %s", state, extra={"state": state})
        self.state = state
        self.metrics.set_state(state)

    @property
    def last_error(self) -> str | None:
        return self.fatal_error or self.source_problem

    # --- the whole life ----------------------------------------------------------

    async def run(self) -> bool:
        """Record until a stop condition; True when completed, False when failed."""
        try:
            return await self._run()
        except journal.StorageError as e:
            self.metrics.storage_errors.inc()
            self._fail(f"{e}{self._what_is_kept()}")
            return False
        except remux.RemuxError as e:
            self._fail(f"{e}{self._what_is_kept()}")
            return False
        except Exception as e:
            self.log.exception("unexpected error")
            self._fail(f"unexpected error: {type(e).__name__}: {e}")
            return False
        finally:
            await self._stop_growing(close=False)
            self._media.shutdown(wait=False, cancel_futures=True)

    def _what_is_kept(self) -> str:
        count = len(self.journal.segments)
        if not count:
            return ""
        return (
            f"; the {count} segments ({self.journal.duration:.0f}s) recorded so far stay"
            f" playable in {self.journal.path(journal.PLAYLIST)}"
        )

    def _fail(self, reason: str) -> None:
        self.fatal_error = reason
        self.log.error("recording failed: %s", reason)
        self._set_state("failed")

    async def _run(self) -> bool:
        try:
            resumed = await asyncio.to_thread(self.journal.open)
        finally:
            self.ready = True
        self._update_gauges()
        saved = self.journal.state
        if saved.state == "completed":
            self.log.info("the recording was already completed; serving its status")
            self._set_state("completed")
            return True
        if saved.state != "finalizing":
            if resumed:
                saved.restarts += 1
                self.log.info(
                    "resuming the recording",
                    extra={"segments": len(self.journal.segments), "restarts": saved.restarts},
                )
                self._set_state("recording")
            saved.source = self.options.source
            await asyncio.to_thread(self.journal.save_state)
            await self._start_growing()
            if self.source is not None:
                await self._follow(self.source, resumed=resumed)
            else:
                async with aiohttp.ClientSession() as session:
                    source = origin.Origin(
                        session=session,
                        master_url=self.options.master_url,
                        wanted=self.options.rendition,
                    )
                    await self._follow(source, resumed=resumed)
        await self._finalize()
        return True

    # --- following the source -------------------------------------------------

    def _stop_condition(self) -> str | None:
        if self.stop_reason:
            return self.stop_reason
        if self.options.stop_at and self.wall_clock() >= self.options.stop_at:
            return "reached --stop-at"
        max_duration = self.options.max_duration
        if max_duration is not None and self.journal.duration >= max_duration:
            return "reached --max-duration"
        return None

    async def _follow(self, source: origin.Source, *, resumed: bool) -> None:
        options = self.options
        saved = self.journal.state
        cursor = tracking.Position.from_json(saved.position) if resumed else None
        started = resumed  # the start condition already held in the earlier run
        looked = resumed
        armed = False
        # NB: the first segment after a restart (or after ENDLIST) opens a new run.
        gap_pending = resumed
        last_progress = time.monotonic()
        target = 1.0
        while (reason := self._stop_condition()) is None:
            observation = await source.observe()
            now = time.monotonic()
            self._note_source(observation)
            if observation.target_duration:
                target = observation.target_duration
            window = list(observation.segments)
            following = tracking.after(cursor, window)
            if following.segments:
                last_progress = now
            # NB: one failed poll is not idle; a source that stays unreachable stalls.
            stalled = now - last_progress > max(STALL_TARGETS * target, STALL_MIN_S)
            idle = observation.ended or stalled

            if not started:
                waiting_for_time = options.start_at and self.wall_clock() < options.start_at
                if waiting_for_time or not looked:
                    # Skip what is there now: the recording starts after this.
                    cursor = tracking.Position.of(window[-1]) if window else cursor
                    if not waiting_for_time:
                        looked = True
                        armed = not observation.live
                        if not options.wait_for_next_live:
                            started = True
                            if observation.live and window:
                                following = tracking.Next(window[-1:], contiguous=False)
                            else:
                                if not observation.reachable:
                                    cursor = None  # when it appears, take its whole window
                                following = tracking.Next([], contiguous=False)
                else:  # waiting for the next live
                    armed = armed or idle
                    if (
                        following.segments
                        and observation.live
                        and (armed or not following.contiguous)
                    ):
                        self.log.info("the source went live; recording starts")
                        started = True
                    elif following.segments:
                        cursor = tracking.Position.of(following.segments[-1])

            if started and following.segments:
                cursor, gap_pending = await self._record(
                    source,
                    following,
                    cursor=cursor,
                    gap_pending=gap_pending,
                    target=target,
                )
            if observation.ended:
                gap_pending = True

            if started and self.journal.segments and idle:
                idle_for = now - last_progress
                if idle_for >= options.idle_timeout:
                    reason = f"the source was idle for {idle_for:.0f}s (--idle-timeout)"
                    break
            await self._sleep(self._poll_interval(target))
        self.stop_reason = self.stop_reason or reason
        self.log.info("recording stops", extra={"reason": self.stop_reason})

    def _note_source(self, observation: origin.Observation) -> None:
        if observation.reachable:
            if self.source_problem:
                self.log.info("the source answers again")
            self.source_problem = None
            return
        self.metrics.source_error("playlist")
        problem = f"source not available: {observation.error}"
        if problem != self.source_problem:
            self.log.info("source not available", extra={"error": observation.error})
        self.source_problem = problem

    def _poll_interval(self, target: float) -> float:
        interval = min(max(target / 2, 0.25), 2.0)
        if self.options.start_at:
            until = (self.options.start_at - self.wall_clock()).total_seconds()
            if until > 0:
                interval = min(interval, max(until, 0.05))
        return interval

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _record(
        self,
        source: origin.Source,
        following: tracking.Next,
        *,
        cursor: tracking.Position | None,
        gap_pending: bool,
        target: float,
    ) -> tuple[tracking.Position | None, bool]:
        """Copy ``following`` into the journal, in order; returns (cursor, gap_pending)."""
        gap_pending = gap_pending or not following.contiguous
        for segment in following.segments:
            if self._stop_condition():
                break
            started = time.monotonic()
            try:
                data = await source.fetch(segment.url, timeout=max(10.0, 3 * target))
                init = (
                    await source.fetch(segment.init_url, timeout=10.0) if segment.init_url else None
                )
            except origin.SourceError as e:
                self.metrics.source_error("segment")
                if e.status in (404, 410):
                    # Gone from the origin before we got it: a hole, marked as a gap.
                    self.metrics.missed_segments.inc()
                    self.log.warning("segment missed", extra={"error": str(e)})
                    cursor, gap_pending = tracking.Position.of(segment), True
                    continue
                self.log.info("segment fetch failed; will retry", extra={"error": str(e)})
                break
            self.metrics.fetch_seconds.observe(time.monotonic() - started)
            discontinuity = gap_pending or segment.discontinuity
            now = self.wall_clock()
            self.journal.state.position = tracking.Position.of(segment).to_json()
            if self.journal.state.start_time is None:
                self.journal.state.start_time = rfc3339(now)
            stored = await asyncio.to_thread(
                self.journal.add_segment,
                data,
                source_uri=segment.url,
                duration=segment.duration,
                discontinuity=discontinuity,
                init=init,
                init_uri=segment.init_url,
                program_date_time=(
                    (segment.program_date_time or now - timedelta(seconds=segment.duration))
                    if discontinuity or not self.journal.segments
                    else None
                ),
                target_duration=target,
            )
            await asyncio.to_thread(self.journal.save_state)
            cursor, gap_pending = tracking.Position.of(segment), False
            self.metrics.segments_fetched.inc()
            if stored.discontinuity:
                self.metrics.discontinuities.inc()
            self._update_gauges()
            if self.state == "waiting":
                rendition = source.rendition
                self.log.info(
                    "recording",
                    extra={
                        "rendition": rendition.name if rendition else None,
                        "playlist": rendition.url if rendition else None,
                    },
                )
                self.journal.state.state = "recording"
                self._set_state("recording")
            self._grow(stored)
        return cursor, gap_pending

    def _update_gauges(self) -> None:
        self.metrics.recorded_seconds.set(self.journal.duration)
        self.metrics.recorded_bytes.set(self.journal.bytes)
        self.metrics.segments.set(len(self.journal.segments))

    # --- the fragmented MP4 that grows along -----------------------------------------

    def _piece(self, segment: journal.Segment) -> remux.Piece:
        return remux.Piece(
            path=self.journal.path(segment.name),
            discontinuity=segment.discontinuity,
            init=self.journal.path(segment.init) if segment.init else None,
        )

    async def _start_growing(self) -> None:
        if "fmp4" not in self.options.formats:
            return
        backlog = list(self.journal.segments)  # a restart rebuilds it from the segments
        self._growing = remux.GrowingMp4(
            self.journal.path(journal.FMP4), publish_after=len(backlog) + 1
        )
        self._growing_task = asyncio.create_task(self._grow_worker())
        for segment in backlog:
            self._growing_queue.put_nowait(self._piece(segment))

    def _grow(self, segment: journal.Segment) -> None:
        if self._growing is not None:
            self._growing_queue.put_nowait(self._piece(segment))

    async def _grow_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while (piece := await self._growing_queue.get()) is not None:
            growing = self._growing
            if growing is None:
                continue
            try:
                await loop.run_in_executor(self._media, growing.append, piece)
                self._growing_duration = growing.duration
            except Exception as e:
                # NB: not fatal while recording; the file is rebuilt at the end.
                self.log.warning("the fragmented MP4 stopped growing: %s", e)
                self._growing_broken = True
                await loop.run_in_executor(self._media, growing.abort)
                self._growing = None

    async def _stop_growing(self, *, close: bool) -> remux.Result | None:
        task, self._growing_task = self._growing_task, None
        if task is None:
            return None
        self._growing_queue.put_nowait(None)
        if close:
            await task
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        growing, self._growing = self._growing, None
        if growing is None:
            return None
        loop = asyncio.get_running_loop()
        if not close:
            with contextlib.suppress(RuntimeError):  # the executor may be gone already
                await loop.run_in_executor(self._media, growing.abort)
            return None
        return await loop.run_in_executor(self._media, growing.close)

    # --- finishing -------------------------------------------------------------------

    async def _finalize(self) -> None:
        saved = self.journal.state
        self._set_state("finalizing")
        saved.state = "finalizing"
        saved.stop_reason = saved.stop_reason or self.stop_reason
        saved.end_time = saved.end_time or rfc3339(self.wall_clock())
        await asyncio.to_thread(self.journal.save_state)
        segments = list(self.journal.segments)
        if segments:
            await asyncio.to_thread(self.journal.write_playlist, ended=True)
            loop = asyncio.get_running_loop()
            pieces = [self._piece(s) for s in segments]
            if "fmp4" in self.options.formats:
                result = await self._stop_growing(close=True)
                if result is None or self._growing_broken:
                    result = await loop.run_in_executor(
                        self._media,
                        lambda: remux.write_mp4(
                            self.journal.path(journal.FMP4), pieces, fragmented=True
                        ),
                    )
                saved.outputs[journal.FMP4] = round(result.duration, 3)
            if "mp4" in self.options.formats:
                self.log.info("writing the MP4", extra={"segments": len(pieces)})
                started = time.monotonic()
                result = await loop.run_in_executor(
                    self._media, lambda: remux.write_mp4(self.journal.path(journal.MP4), pieces)
                )
                saved.outputs[journal.MP4] = round(result.duration, 3)
                self.log.info(
                    "MP4 written",
                    extra={
                        "duration": round(result.duration, 3),
                        "dropped_packets": result.dropped_packets,
                        "skipped_segments": list(result.skipped),
                        "seconds": round(time.monotonic() - started, 2),
                    },
                )
            if "hls" not in self.options.formats:
                await asyncio.to_thread(self.journal.remove_hls)
        if self.resumable:
            # NB: not completed: the next pod resumes, and its end is the real end.
            saved.state, saved.stop_reason, saved.end_time = "interrupted", None, None
            await asyncio.to_thread(self.journal.save_state)
            self._set_state("interrupted")  # what /status (and the termination log) says
            self.log.info(
                "recording interrupted; what it has is written, and a new pod resumes it",
                extra={"segments": len(segments)},
            )
            return
        saved.state = "completed"
        await asyncio.to_thread(self.journal.save_state)
        self.source_problem = None  # the source's health no longer matters
        self._set_state("completed")

    # --- what /status shows ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        j = self.journal
        files = []
        formats = self.options.formats
        outputs = j.state.outputs
        if "hls" in formats and j.segments:
            files.append(
                {
                    "name": journal.PLAYLIST,
                    "format": "hls",
                    "size_bytes": j.bytes + j.size_of(journal.PLAYLIST),
                    "duration_seconds": round(j.duration, 3),
                }
            )
        if "mp4" in formats and journal.MP4 in outputs:
            files.append(
                {
                    "name": journal.MP4,
                    "format": "mp4",
                    "size_bytes": j.size_of(journal.MP4),
                    "duration_seconds": outputs[journal.MP4],
                }
            )
        if "fmp4" in formats and (size := j.size_of(journal.FMP4)):
            duration = outputs.get(journal.FMP4, self._growing_duration)
            files.append(
                {
                    "name": journal.FMP4,
                    "format": "fmp4",
                    "size_bytes": size,
                    "duration_seconds": round(duration, 3) if duration is not None else None,
                }
            )
        return {
            "state": self.state,
            "duration_seconds": round(j.duration, 3),
            "bytes": j.bytes,
            "segments": len(j.segments),
            "files": files,
            "start_time": j.state.start_time,
            "end_time": j.state.end_time,
            "last_error": self.last_error,
        }
