"""What the worker sees: a read-only projection of the events its threads post.

No thread writes the status: the ingest thread, the renditions' threads, the
ingest fronts and the asyncio supervisor each ``post()`` what happened (the
frozen events of ``kubecast_worker.events``), and ``Status`` applies them under
its lock. The readers (``/status``, ``/metrics``, the supervisor) take a
``view()``: a copy made under the same lock, so none sees half of an event.

``snapshot()`` is the ``/status`` document. Its field names follow the
LiveStream status of the API (``input.videoCodec``, ``renditions[].bitrateKbps``,
``droppedFrames``, ``encodeSpeed`` ...) so the operator can copy them across.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal

from kubecast_api import redact
from kubecast_worker import events

State = Literal["idle", "live", "reconnecting"]


class RateMeter:
    """Bits per second over a sliding window of a clock the caller chooses.

    Output renditions are measured against media time (kbit per second of
    video), the input against wall time (what the publisher really sends).
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._points: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, nbytes: int, at: float) -> None:
        self._total += nbytes
        points = self._points
        if points and at - points[-1][0] < 0.25:
            return  # one point per quarter second is plenty
        points.append((at, self._total))
        while len(points) > 2 and at - points[1][0] > self.window:
            points.popleft()

    def kbps(self) -> int | None:
        points = list(self._points)
        if len(points) < 2 or points[-1][0] - points[0][0] < 0.5:
            return None
        (t0, b0), (t1, b1) = points[0], points[-1]
        return round((b1 - b0) * 8 / (t1 - t0) / 1000)

    def reset(self) -> None:
        self._points.clear()
        self._total = 0


@dataclass
class RenditionState:
    """A rendition as ``/status`` shows it. The pipeline builds them as planned;
    ``Status`` keeps its own copies, changes them only in ``post()``, and hands
    readers copies again (``view()``)."""

    name: str
    state: Literal["Active", "Dropped"] = "Active"
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    passthrough: bool = False
    nominal_kbps: int | None = None
    peak_kbps: int | None = None
    codecs: str | None = None
    playlist: str | None = None
    segments: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    bytes_out: int = 0
    media_time: float = 0.0
    first_segment_seconds: float | None = None
    #: the live measurement (``RateMeter``), filled in by ``Status.view()``
    bitrate_kbps: int | None = None

    def to_json(self, *, live: bool = True) -> dict[str, Any]:
        """``bitrateKbps`` is a live measurement: null when no publish is running."""
        entry: dict[str, Any] = {"name": self.name, "state": self.state}
        if self.reason:
            entry["reason"] = self.reason
        if self.state == "Active":
            entry.update(
                {
                    "passthrough": self.passthrough,
                    "width": self.width,
                    "height": self.height,
                    "resolution": f"{self.width}x{self.height}" if self.width else None,
                    "fps": self.fps,
                    "targetBitrateKbps": self.nominal_kbps,
                    "bitrateKbps": self.bitrate_kbps if live else None,
                    "codecs": self.codecs,
                    "playbackUrl": self.playlist,
                    "segments": self.segments,
                    "frames": self.frames_out,
                    "droppedFrames": self.frames_dropped,
                    "bytes": self.bytes_out,
                    "firstSegmentSeconds": self.first_segment_seconds,
                }
            )
        return entry


@dataclass(frozen=True)
class InputState:
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    #: the exact frame rate (29.97 is 30000/1001), for the ladder; ``fps`` is for people
    rate: Fraction | None = None
    pix_fmt: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None

    def to_json(self, *, bitrate_kbps: int | None, publisher: str | None) -> dict[str, Any]:
        return {
            "videoCodec": self.video_codec,
            "audioCodec": self.audio_codec,
            "width": self.width,
            "height": self.height,
            "resolution": f"{self.width}x{self.height}" if self.width else None,
            "fps": self.fps,
            "bitrateKbps": bitrate_kbps,
            "publisher": publisher,
        }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Status:
    """The worker's observed state: a projection of the events its threads post.

    ``post()`` is the only writer; readers take ``snapshot()`` (the ``/status``
    document) or ``view()`` (a consistent copy, for ``/metrics`` and the supervisor).
    """

    def __init__(self, *, stream: str, mode: Literal["push", "pull"], ingest_url: str) -> None:
        self._lock = threading.Lock()
        self.stream = stream
        self.mode = mode
        self._ingest_url = ingest_url  # never holds the stream key
        self._started_at = time.time()
        self._state: State = "idle"
        self._state_since = self._started_at
        self._ready = False
        self._publisher: str | None = None
        self._input = InputState()
        self._input_bytes = 0
        self._input_meter = RateMeter(window=5.0)
        self._renditions: list[RenditionState] = []
        self._meters: dict[str, RateMeter] = {}
        self._frames_decoded = 0
        self._frames_dropped = 0
        self._frames_late = 0
        self._decode_errors = 0
        self._sessions_total = 0
        self._last_error: str | None = None
        #: credentials of the pull URL, masked in ``last_error`` wherever they appear
        self._secrets: frozenset[str] = frozenset()
        self._last_error_at: float | None = None
        self._last_live_time: float | None = None
        self._playlists_open = False
        self._master_url: str | None = None
        self._thumbnail_url: str | None = None
        #: the DASH manifest, once written (spec.outputs.dash)
        self._dash_url: str | None = None
        self._ingest_counters: Callable[[], dict[str, int]] | None = None
        self._restream: Callable[[], list[dict[str, Any]]] | None = None
        self._speed: deque[tuple[float, float]] = deque()

    # -- the one writer ------------------------------------------------------------

    def post(self, event: events.Event) -> None:
        """Apply what happened, under the lock (from any thread)."""
        with self._lock:
            self._apply(event)

    def _apply(self, event: events.Event) -> None:
        match event:
            case events.Demuxed(nbytes=nbytes, at=at, frames=frames, errors=errors):
                if nbytes:
                    self._input_bytes += nbytes
                    self._input_meter.add(nbytes, at)
                self._frames_decoded += frames
                self._decode_errors += errors
            case events.RenditionWrote(rendition=name, written=w, nbytes=nbytes):
                r = self._find(name)
                if r is None:  # an audio rendition of the DASH layout: not in /status
                    return
                r.frames_out, r.bytes_out, r.media_time = w.frames, w.bytes, w.media_time
                r.segments, r.first_segment_seconds = w.segments, w.first_segment_seconds
                if nbytes:
                    self._meters[name].add(nbytes, w.media_time)
            case events.FrameHandedOut(wall=wall, media=media, skipped=skipped, late=late):
                self._frames_late += late
                if skipped:
                    self._frames_dropped += 1
                    for name in skipped:
                        if (r := self._find(name)) is not None:
                            r.frames_dropped += 1
                self._sample_speed(wall=wall, media=media)
            case events.FramesDecoded(count=count):
                self._frames_decoded += count
            case events.FramesDropped(count=count):
                self._frames_dropped += count
            case events.CodecsKnown(rendition=name, codecs=codecs):
                if (r := self._find(name)) is not None:
                    r.codecs = codecs
            case events.StateChanged(state=state):
                if state != self._state:
                    self._state, self._state_since = state, time.time()
                if state == "live":
                    self._last_live_time = time.time()
            case events.ErrorReported(message=message):
                if message:
                    message = redact.text(message, secrets=set(self._secrets))
                self._last_error = message
                self._last_error_at = time.time() if message else None
            case events.SessionStarted(publisher=publisher):
                self._publisher = publisher
                self._sessions_total += 1
                self._input = InputState()
                self._input_meter.reset()
                self._renditions, self._meters = [], {}
                self._speed.clear()
            case events.SessionEnded():
                self._publisher = None
                self._speed.clear()
            case events.InputOpened(input=info):
                self._input = info
            case events.RenditionsPlanned(renditions=planned):
                self._renditions = [replace(r) for r in planned]
                self._meters = {r.name: RateMeter() for r in planned}
            case events.PlaylistsWithdrawn():
                self._master_url = self._dash_url = self._thumbnail_url = None
            case events.PlaylistsOpened():
                self._playlists_open = True
            case events.PlaylistsClosed():
                self._playlists_open = False
            case events.MasterWritten(url=url, dash_url=dash_url):
                self._master_url, self._dash_url = url, dash_url
            case events.ThumbnailWritten(url=url):
                self._thumbnail_url = url
            case events.IngestListening(url=url, counters=counters):
                self._ingest_url, self._ingest_counters, self._ready = url, counters, True
            case events.IngestUrl(url=url):
                self._ingest_url = url
            case events.Readiness(ready=ready):
                self._ready = ready
            case events.SecretsLearned(secrets=secrets):
                self._secrets |= secrets
            case events.RestreamAttached(targets=targets):
                self._restream = targets

    def _find(self, name: str) -> RenditionState | None:
        for r in self._renditions:
            if r.name == name:
                return r
        return None

    def _sample_speed(self, *, wall: float, media: float) -> None:
        """Record progress (media seconds encoded by the slowest rendition)."""
        speed = self._speed
        if speed and wall - speed[-1][0] < 0.5:
            return
        speed.append((wall, media))
        while len(speed) > 2 and wall - speed[1][0] > 5.0:
            speed.popleft()

    # -- readers -----------------------------------------------------------------

    def _encode_speed(self) -> float | None:
        """Media seconds encoded per wall second over the last ~5 s (ffmpeg's speed=)."""
        points = list(self._speed)
        if len(points) < 2 or points[-1][0] - points[0][0] < 1.0:
            return None
        (w0, m0), (w1, m1) = points[0], points[-1]
        return round((m1 - m0) / (w1 - w0), 2)

    @property
    def secrets(self) -> frozenset[str]:
        return self._secrets

    def view(self) -> View:
        """A consistent copy of what the status holds, taken under the lock."""
        with self._lock:
            live = self._state == "live"
            return View(
                state=self._state,
                state_since=self._state_since,
                ready=self._ready,
                ingest_url=self._ingest_url,
                publisher=self._publisher,
                input=self._input,
                input_bytes=self._input_bytes,
                input_kbps=self._input_meter.kbps() if live else None,
                renditions=tuple(
                    replace(r, bitrate_kbps=self._meters[r.name].kbps() if live else None)
                    if r.name in self._meters
                    else replace(r)
                    for r in self._renditions
                ),
                frames_decoded=self._frames_decoded,
                frames_dropped=self._frames_dropped,
                frames_late=self._frames_late,
                decode_errors=self._decode_errors,
                encode_speed=self._encode_speed() if live else None,
                sessions_total=self._sessions_total,
                last_live_time=self._last_live_time,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                playlists_open=self._playlists_open,
                master_url=self._master_url,
                thumbnail_url=self._thumbnail_url,
                dash_url=self._dash_url,
                ingest_counters=self._ingest_counters,
                restream=self._restream,
            )

    def snapshot(self) -> dict[str, Any]:
        """The ``/status`` document."""
        v = self.view()
        live = v.state == "live"
        return {
            "stream": self.stream,
            "state": v.state,
            "stateSince": _iso(v.state_since),
            "ready": v.ready,
            "ingest": {"mode": self.mode, "url": v.ingest_url, "counters": v.counters()},
            "publisher": v.publisher,
            "input": v.input.to_json(bitrate_kbps=v.input_kbps, publisher=v.publisher)
            if live
            else None,
            "renditions": [r.to_json(live=live) for r in v.renditions],
            "playbackUrl": v.master_url,
            "thumbnailUrl": v.thumbnail_url,
            "dashUrl": v.dash_url,
            "framesDecoded": v.frames_decoded,
            "droppedFrames": v.frames_dropped,
            "lateFrames": v.frames_late,
            "decodeErrors": v.decode_errors,
            "encodeSpeed": v.encode_speed,
            "sessions": v.sessions_total,
            "lastLiveTime": _iso(v.last_live_time),
            "lastError": v.last_error,
            "lastErrorTime": _iso(v.last_error_at),
            "restream": v.restream() if v.restream else [],
        }


@dataclass(frozen=True)
class View:
    """What ``Status`` held at one instant. The renditions are copies, and the
    callables (the fronts' counters, restream targets) are read when called."""

    state: State
    state_since: float
    ready: bool
    ingest_url: str
    publisher: str | None
    input: InputState
    input_bytes: int
    input_kbps: int | None
    renditions: tuple[RenditionState, ...]
    frames_decoded: int
    frames_dropped: int
    frames_late: int
    decode_errors: int
    encode_speed: float | None
    sessions_total: int
    last_live_time: float | None
    last_error: str | None
    last_error_at: float | None
    playlists_open: bool
    master_url: str | None
    thumbnail_url: str | None
    dash_url: str | None
    ingest_counters: Callable[[], dict[str, int]] | None
    restream: Callable[[], list[dict[str, Any]]] | None

    def counters(self) -> dict[str, int]:
        return dict(self.ingest_counters()) if self.ingest_counters else {}
