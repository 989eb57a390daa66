"""One session of media — from an opened input to packaged renditions — in threads.

::

    ingest thread     Source: demux, decode once, rebase the timeline
                      Fanout: one reference of each video frame per rendition
                      AudioLadder: AAC, once per distinct bitrate
                        │ a queue per rendition (bounded; see "Falling behind"):
                        │ video frames, and the AAC packets of its bitrate
    rendition threads Encoder: fps → scale → libx264   (or Copier: passthrough)
     (one each)       HlsWriter: FFmpeg's hls muxer → segments + media playlist
                      (or llhls.LowLatencyWriter: parts too, for LL-HLS)
                        │
                      (the smallest also writes thumbnail.jpg every few seconds)
    ingest thread     the master playlist, once every rendition has a segment, and
                      again when new segments change its measured bitrates

The ingest thread is the caller's (worker.py runs ``run()`` through
``asyncio.to_thread``). Every PyAV object is owned by one thread: sources,
fanout graphs, decoders and AAC encoders by the ingest thread; video encoders,
their filter graphs and muxers by their rendition's thread. Frames and packets
cross over through the queues and are never touched by the sender again.

Audio is encoded once per distinct bitrate, in the ingest thread, and every
rendition with that bitrate gets a copy of each packet (the default ladder has
two 128 kbit/s renditions: three AAC encoders, not four). AAC is light (~2 % of
a core per encoder); encoding it where it is decoded means that no rendition
depends on another one for its audio.

Why a thread per rendition: PyAV drops the GIL in decode, filtering, encode and
mux calls, and x264's own threads never hold it, so a rendition's thread
overlaps with the others and with decoding. ``docs/benchmarks.md`` has the
measurements against one sequential loop (a mode the worker no longer has).

Falling behind: a live session never lets a rendition lag more than
``LIVE_BACKLOG_SECONDS`` behind the input. When its queue is that deep, that
rendition skips the frame and its ``fps`` filter repeats the previous one in its
place: the rendition keeps its frame rate and its keyframes (forced by
timestamp, see ladder.Encoder), so it stays aligned with the others, which
lose nothing. The renditions that are cheap to make stay smooth when the
machine cannot keep up with the expensive one. A one-shot transcode
(``live=False``) waits instead and never drops.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.packet import Packet
from av.video.frame import VideoFrame

from kubecast_api import TranscodeProfileSpec
from kubecast_worker import ingest, ladder, llhls, mpd, packager, thumbnail
from kubecast_worker.ingest import Media, Source
from kubecast_worker.logs import Log
from kubecast_worker.status import RenditionState, Status
from kubecast_worker.thumbnail import Thumbnailer

#: How far (in seconds of media) a live rendition may lag before frames are dropped.
LIVE_BACKLOG_SECONDS = 2.0
#: A frame decoded this long after real time (live sessions only) counts as late.
LATE_SECONDS = 1.0
#: Queue depth of a one-shot transcode: enough to keep every thread busy.
TRANSCODE_QUEUE = 8
#: The frame rate assumed of a source that does not say (low-latency part lengths).
DEFAULT_FPS = 30

_DONE = object()


class PipelineError(Exception):
    """The session failed; the message says why (it becomes ``/status`` lastError)."""


@dataclass(frozen=True)
class Settings:
    profile: TranscodeProfileSpec
    packaging: packager.Packaging
    #: live: bounded latency (drop when behind); not live: never drop, go as fast as possible
    live: bool = True
    #: libx264 threads per encoder (0: x264 decides from the core count)
    x264_threads: int = 0
    #: "frame" (overlapping frames, as the ffmpeg CLI) or "slice" (PyAV's default)
    x264_thread_type: str = "frame"
    #: called in each rendition's thread with the video packets it encoded, before they
    #: are muxed: (rendition, packets, the encoder's extradata); WHEP viewers (whep.py)
    video_tap: Callable[[str, list[Packet], bytes | None], None] | None = None
    #: called in the ingest thread with each decoded audio frame (WHEP's one Opus encode)
    audio_tap: Callable[[AudioFrame], None] | None = None


@dataclass
class Outcome:
    reason: Literal["eof", "stopped"]
    media_seconds: float
    wall_seconds: float
    renditions: list[dict[str, Any]] = field(default_factory=list)


class Rendition:
    """One rung: its encoder (or copier) and its HLS writer, in its own thread."""

    def __init__(
        self,
        *,
        rung: ladder.Rung,
        plan: ladder.Ladder,
        settings: Settings,
        state: RenditionState,
        source: Source,
        epoch: str,
        append: bool,
        started_at: float,
        stop: threading.Event,
    ) -> None:
        self.rung = rung
        self.state = state
        self.stop = stop
        self.error: BaseException | None = None
        self.writer = open_writer(
            rung=rung,
            plan=plan,
            packaging=settings.packaging,
            state=state,
            epoch=epoch,
            append=append,
            session_start=started_at,
        )
        container = self.writer.container
        self.encoder: ladder.Encoder | None = None
        self.copier: ladder.Copier | None = None
        #: where the AAC packets of our bitrate go (AudioLadder, in the ingest thread)
        self.aac: AudioStream | None = None
        # The DASH layout: video renditions without audio, which has renditions of its own.
        muxed_audio = source.has_audio and not settings.packaging.dash
        # A rung offered to WHEP viewers hands them its packets: no B-frames (see whep.py).
        offered = (
            settings.video_tap is not None and rung.name in settings.profile.webrtc_renditions()
        )
        if rung.passthrough:
            self.copier = ladder.Copier(
                container=container, video=source.video, audio=source.audio if muxed_audio else None
            )
            state.codecs = self.copier.codecs
        else:
            if not rung.audio_only:
                self.encoder = ladder.Encoder(
                    rung=rung,
                    ladder=plan,
                    container=container,
                    x264_threads=settings.x264_threads,
                    x264_thread_type=settings.x264_thread_type,
                    b_frames=not offered,
                )
            if rung.audio_only or muxed_audio:
                self.aac = ladder.aac_stream(container, ladder=plan, kbps=rung.audio_kbps)
            if rung.audio_only:
                state.codecs = ladder.AAC_LC
        self.video_tap = settings.video_tap if offered else None
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=0 if settings.live else TRANSCODE_QUEUE)
        self.thread: threading.Thread | None = None
        # Video frames queued and taken; each has one writer thread, so their
        # difference is an exact backlog (audio is not counted: it is light).
        self.video_in = 0
        self.video_out = 0

    # -- the ingest thread's side

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"rendition-{self.rung.name}", daemon=True
        )
        self.thread.start()

    def submit(self, media: Media) -> None:
        if media.kind == "video":
            self.video_in += 1
        self.queue.put(media)

    def backlog(self) -> int:
        """Video frames waiting for this rendition's thread."""
        return self.video_in - self.video_out

    def finish(self) -> None:
        if self.thread is not None:
            self.queue.put(_DONE)
            self.thread.join()

    # -- the rendition thread's side

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if self.error is None:
                self._guarded(item)
            if isinstance(item, Media) and item.kind == "video":
                self.video_out += 1
            if item is _DONE:
                return

    def _guarded(self, item: Any) -> None:
        try:
            if item is _DONE:
                self._close()
            else:
                self._handle(item)
        except BaseException as e:  # reported by the ingest thread, which stops the session
            self.error = e
            self.stop.set()
            if item is _DONE:
                self._close_quietly()

    def _handle(self, media: Media) -> None:
        if media.packet is not None:  # the source's (passthrough) or AudioLadder's
            packet = self._adopt(media.packet)
            if packet is not None:
                # Without video frames of our own, packets are what tell our media time.
                self.writer.write([packet], media_time=None if self.encoder else media.time)
            return
        assert self.encoder is not None and isinstance(media.frame, VideoFrame)
        packets = self.encoder.video(media.frame)
        if self.video_tap is not None and packets:
            ctx = self.encoder.video_stream.codec_context
            self.video_tap(self.rung.name, packets, ctx.extradata)
        self.writer.write(packets, media_time=media.time)
        if self.encoder.codecs and not self.state.codecs:
            self.state.codecs = self.encoder.codecs

    def _adopt(self, packet: Packet) -> Packet | None:
        if self.copier is not None:
            return self.copier.copy(packet)
        packet.stream = self.aac
        return packet

    def _close(self) -> None:
        if self.encoder is not None:
            self.writer.write(self.encoder.flush())
            if self.encoder.codecs and not self.state.codecs:
                self.state.codecs = self.encoder.codecs
        self.writer.close()

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def open_writer(
    *,
    rung: ladder.Rung,
    plan: ladder.Ladder,
    packaging: packager.Packaging,
    state: RenditionState,
    epoch: str,
    append: bool,
    session_start: float,
) -> packager.HlsWriter | llhls.LowLatencyWriter:
    """The rendition's packager: FFmpeg's hls muxer, or ours for low-latency HLS."""
    if not packaging.low_latency:
        return packager.HlsWriter(
            packaging=packaging,
            state=state,
            epoch=epoch,
            append=append,
            session_start=session_start,
        )
    if rung.audio_only:  # AAC frames; every one is a sync sample
        parts = llhls.PartPlan.of(
            frame_seconds=ladder.AAC_FRAME_SIZE / plan.audio_rate,
            group_seconds=plan.segment_seconds,
        )
    else:
        # NB: a passthrough rendition keeps the source's GOP, which nobody told us.
        parts = llhls.PartPlan.of(
            frame_seconds=float(1 / (rung.fps or DEFAULT_FPS)),
            group_seconds=None if rung.passthrough else plan.gop_seconds,
        )
    return llhls.LowLatencyWriter(
        packaging=packaging,
        state=state,
        epoch=epoch,
        append=append,
        session_start=session_start,
        parts=parts,
        keyframes_on_time=not rung.passthrough,
    )


def _copy(packet: Packet) -> Packet:
    copy = Packet(bytes(packet))
    copy.pts, copy.dts, copy.duration = packet.pts, packet.dts, packet.duration
    copy.time_base = packet.time_base
    copy.is_keyframe = packet.is_keyframe
    return copy


def _rendition_states(plan: ladder.Ladder, source: Source) -> list[RenditionState]:
    states = []
    for rung in plan.rungs:
        states.append(
            RenditionState(
                name=rung.name,
                width=rung.width,
                height=rung.height,
                fps=round(float(rung.fps), 3) if rung.fps else None,
                passthrough=rung.passthrough,
                nominal_kbps=rung.video_kbps,
                peak_kbps=rung.maxrate_kbps,
                playlist=f"/{rung.name}/{packager.PLAYLIST}",
            )
        )
    for dropped in plan.dropped:
        states.append(RenditionState(name=dropped.name, state="Dropped", reason=dropped.reason))
    return states


def _audio_state(rung: ladder.Rung) -> RenditionState:
    """An audio-only rendition's own state: not in ``/status`` renditions (the video ones)."""
    return RenditionState(
        name=rung.name,
        nominal_kbps=rung.audio_kbps,
        peak_kbps=rung.audio_kbps,
        playlist=f"/{rung.name}/{packager.PLAYLIST}",
    )


def run(
    *,
    source: Source,
    settings: Settings,
    status: Status,
    stop: threading.Event,
    claim: Callable[[], bool] | None = None,
    started_at: float | None = None,
    log: Log | None = None,
) -> Outcome:
    """Transcode and package one session until its input ends or ``stop`` is set.

    ``claim()`` is called once the input is open and the ladder planned; it
    answers whether to append to the previous session's playlists (a publisher
    back within the reconnect window) rather than start new ones. Without it the
    output directory starts afresh.
    Raises ``ingest.SourceError``, ``ladder.LadderError`` or ``PipelineError``.
    """
    log = log or logging.getLogger("kubecast.pipeline")
    started_at = started_at or time.time()
    packaging = settings.packaging
    info = source.open()
    try:
        plan = ladder.plan(settings.profile, source=info)
        with status.lock:
            status.input = info
        source.copy_video = source.copy_audio = any(r.passthrough for r in plan.rungs)
        states = _rendition_states(plan, source)
        continuing = claim() if claim is not None else False
        status.set_renditions(states)
        log.info(
            "input opened",
            extra={
                "input": f"{info.video_codec} {info.width}x{info.height} {info.fps}fps"
                + (f" + {info.audio_codec}" if info.audio_codec else ""),
                "renditions": [r.name for r in plan.rungs],
                "dropped": {d.name: d.reason for d in plan.dropped},
                "continuing": continuing,
            },
        )
        if not continuing:
            with status.lock:
                # NB: withdrawn before the old master is deleted, not after: /status
                # must never offer a master that is not there (a player would get a
                # 404, and give up), and it is polled while the files go.
                status.master_url = None
                status.dash_url = None
                status.thumbnail_url = None
            packager.reset(packaging.out_dir)
        packaging.out_dir.mkdir(parents=True, exist_ok=True)
        epoch = packager.new_epoch()
        renditions = [
            Rendition(
                rung=rung,
                plan=plan,
                settings=settings,
                state=state,
                source=source,
                epoch=epoch,
                append=continuing,
                started_at=started_at,
                stop=stop,
            )
            for rung, state in zip(plan.rungs, states, strict=False)
        ]
        if packaging.dash and source.has_audio:
            for rung in ladder.audio_rungs(plan, name=packager.audio_name):
                renditions.append(
                    Rendition(
                        rung=rung,
                        plan=plan,
                        settings=settings,
                        state=_audio_state(rung),
                        source=source,
                        epoch=epoch,
                        append=continuing,
                        started_at=started_at,
                        stop=stop,
                    )
                )
        encoded = [r for r in renditions if isinstance(r.encoder, ladder.Encoder)]
        if encoded:  # the still comes from the smallest picture already scaled
            smallest = min(encoded, key=lambda r: r.rung.width * r.rung.height)
            assert smallest.encoder is not None
            smallest.encoder.thumbnail = Thumbnailer(packaging.out_dir)
        status.playlists_open = True
    except BaseException:
        source.close()
        raise
    return _transcode(
        source=source,
        plan=plan,
        renditions=renditions,
        settings=settings,
        status=status,
        stop=stop,
        started_at=started_at,
        log=log,
    )


def _transcode(
    *,
    source: Source,
    plan: ladder.Ladder,
    renditions: list[Rendition],
    settings: Settings,
    status: Status,
    stop: threading.Event,
    started_at: float,
    log: Log,
) -> Outcome:
    encoded = [r for r in renditions if isinstance(r.encoder, ladder.Encoder)]
    copied = [r for r in renditions if r.copier is not None]
    stills = [r.encoder.thumbnail for r in encoded if r.encoder and r.encoder.thumbnail]
    # Every rendition with audio of its own (not the copier's) muxes AAC packets of its
    # bitrate: the default ladder's two 128 kbit/s renditions share one encoder.
    aac: dict[int, list[Rendition]] = {}
    for r in renditions:
        if r.aac is not None:
            aac.setdefault(r.rung.audio_kbps, []).append(r)
    audio_ladder = (
        ladder.AudioLadder(bitrates=aac, rate=plan.audio_rate, channels=plan.audio_channels)
        if aac
        else None
    )
    manifest = mpd.Reader(settings.packaging.out_dir) if settings.packaging.dash else None
    fanout = ladder.Fanout(outputs=len(encoded))
    fps = max((float(r.rung.fps) for r in encoded if r.rung.fps), default=30.0)
    backlog_limit = max(2, int(LIVE_BACKLOG_SECONDS * fps))
    master_written = False
    measured_segments = 0  # segments the master's bitrates have seen
    media_time = 0.0
    wall0 = time.time()
    reason: Literal["eof", "stopped"]
    skipped: dict[Rendition, Media] = {}

    def master() -> bool:
        if not all(r.state.segments and r.state.codecs for r in renditions):
            return False
        dash = _write_master(
            renditions, settings=settings, has_audio=source.has_audio, manifest=manifest
        )
        with status.lock:
            status.master_url = f"/{packager.MASTER}"
            status.dash_url = f"/{packager.MANIFEST}" if dash else None
        log.info(
            "playable",
            extra={
                "first_segment_seconds": {
                    r.rung.name: r.state.first_segment_seconds for r in renditions
                }
            },
        )
        return True

    def video(frame: VideoFrame, at: float) -> None:
        """Hand a decoded frame to every encoded rendition (see "Falling behind")."""
        now = time.time()
        anchor = source.wall_anchor if settings.live else None
        if anchor is not None and now - (anchor + at) > LATE_SECONDS:
            status.frames_late += 1
        dropped = False
        for r, ref in zip(encoded, fanout.video(frame), strict=True):
            item = Media("video", frame=ref, time=at)
            if anchor is not None and r.backlog() >= backlog_limit:
                r.state.frames_dropped += 1
                dropped = True
                skipped[r] = item  # kept in case it is the last one: see below
                continue
            skipped.pop(r, None)
            r.submit(item)
        status.frames_dropped += dropped
        status.sample_speed(wall=now, media=min(r.state.media_time for r in renditions))

    def audio(packets: dict[int, list[Packet]], at: float) -> None:
        """Hand each rendition its own copy of the AAC packets of its bitrate.

        NB: copies, because muxing rewrites a packet's timestamps into its stream's
        time base, and each rendition muxes in its own thread."""
        for kbps, mine in packets.items():
            for packet in mine:
                for r in aac[kbps]:
                    r.submit(Media("audio", packet=_copy(packet), time=at))

    for r in renditions:
        r.start()
    try:
        for media in source:
            if media.packet is not None:
                for r in copied:
                    r.submit(media)
            elif media.kind == "video":
                assert isinstance(media.frame, VideoFrame)
                media_time = media.time
                if encoded:
                    video(media.frame, media.time)
                if status.thumbnail_url is None and any(t.written for t in stills):
                    with status.lock:
                        status.thumbnail_url = f"/{thumbnail.NAME}"
                if not master_written:
                    master_written = master()
                elif sum(r.state.segments for r in renditions) != measured_segments:
                    # A new segment: BANDWIDTH and AVERAGE-BANDWIDTH follow what it measured.
                    measured_segments = sum(r.state.segments for r in renditions)
                    _write_master(
                        renditions,
                        settings=settings,
                        has_audio=source.has_audio,
                        manifest=manifest,
                    )
            elif audio_ladder is not None:
                assert isinstance(media.frame, AudioFrame)
                if settings.audio_tap is not None:
                    settings.audio_tap(media.frame)
                audio(audio_ladder.encode(media.frame), media.time)
            if stop.is_set():
                break
        reason = "stopped" if stop.is_set() else "eof"
        # A rendition that skipped the last frames still gets the very last one, so
        # that its fps filter fills up to the end of the input like the others.
        for r, item in skipped.items():
            r.submit(item)
        if audio_ladder is not None:
            audio(audio_ladder.finish(), media_time)  # the last samples, before finish()
    finally:
        for r in renditions:
            r.finish()
        source.close()
    errors = [r for r in renditions if r.error is not None]
    if errors:
        first = errors[0]
        raise PipelineError(
            f"rendition {first.rung.name} failed: {ingest.describe(first.error)}"  # type: ignore[arg-type]
        ) from first.error
    if not master_written:
        master()
    else:  # the last segments, flushed by finish(), are measured too
        _write_master(renditions, settings=settings, has_audio=source.has_audio, manifest=manifest)
    wall = time.time() - wall0
    return Outcome(
        reason=reason,
        media_seconds=media_time,
        wall_seconds=wall,
        renditions=[r.state.to_json() for r in renditions if not r.rung.audio_only],
    )


def _write_master(
    renditions: list[Rendition],
    *,
    settings: Settings,
    has_audio: bool,
    manifest: mpd.Reader | None,
) -> bool:
    """The HLS master, and the DASH manifest of the same renditions (``manifest``);
    returns whether the DASH manifest was written."""
    packaging = settings.packaging
    separate = packaging.dash
    audio: dict[int, tuple[packager.Variant, Rendition]] = {}
    for r in renditions:
        if r.rung.audio_only:
            audio[r.rung.audio_kbps] = (
                packager.variant(
                    r.state,
                    segment_type=packaging.segment_type,
                    audio_kbps=None,
                    video_codecs=ladder.AAC_LC,
                ),
                r,
            )
    variants, tracks = [], []
    for r in renditions:
        if r.rung.audio_only:
            continue
        state = r.state
        measured = None
        if state.passthrough and state.media_time > 0:
            measured = round(state.bytes_out * 8 / state.media_time / 1000)
        video = packager.variant(
            state,
            segment_type=packaging.segment_type,
            audio_kbps=r.rung.audio_kbps if has_audio and not separate else None,
            video_codecs=state.codecs or "avc1.640028",
            measured_kbps=measured,
        )
        tracks.append(
            mpd.Track(
                name=state.name,
                kind="video",
                bandwidth=video.bandwidth,
                codecs=video.codecs,
                width=video.width,
                height=video.height,
                frame_rate=r.rung.fps or video.frame_rate,
            )
        )
        if r.rung.audio_kbps in audio:
            group = audio[r.rung.audio_kbps][1].rung.name
            video = packager.with_audio(video, audio[r.rung.audio_kbps][0], group=group)
        variants.append(video)
    groups = []
    for kbps, (variant, r) in audio.items():
        groups.append(
            packager.AudioGroup(
                group_id=r.rung.name,
                uri=variant.uri,
                kbps=kbps,
                channels=settings.profile.audio.channels,
            )
        )
        tracks.append(
            mpd.Track(
                name=r.rung.name,
                kind="audio",
                bandwidth=variant.bandwidth,
                codecs=ladder.AAC_LC,
                sample_rate=settings.profile.audio.sample_rate,
                channels=settings.profile.audio.channels,
            )
        )
    packager.write_master(
        packaging.out_dir, variants, segment_type=packaging.segment_type, audio_groups=groups
    )
    if manifest is None:
        return False
    return mpd.write(
        manifest,
        tracks,
        segment_seconds=packaging.segment_seconds,
        window_seconds=packaging.window_seconds,
    )
