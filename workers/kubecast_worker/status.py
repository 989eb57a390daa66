"""What the worker sees, as one object the media threads write and HTTP reads.

Each field has a single writer: the ingest thread writes the input side and the
frame counters, each rendition's thread writes its own ``RenditionState``, and
the asyncio supervisor writes ``state``, ``publisher`` and ``last_error``. The
HTTP side (``/status``, ``/metrics``) only reads, through ``snapshot()`` under the
lock, so a reader never sees a half-replaced list.

``snapshot()`` is the ``/status`` document. Its field names follow the
LiveStream status of the API (``input.videoCodec``, ``renditions[].bitrateKbps``,
``droppedFrames``, ``encodeSpeed`` ...) so the operator can copy them across.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal

from kubecast_api import redact

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


class SegmentBitrates:
    """Bitrates of the segments a rendition has written, for the master's BANDWIDTH.

    HLS (RFC 8216bis, 4.4.6.2) defines BANDWIDTH as the peak segment bit rate: the
    largest bit rate of any run of contiguous segments whose total duration is
    between 0.5 and 1.5 times the target duration; AVERAGE-BANDWIDTH is the
    average over the stream. A short last segment alone is no peak, but counts
    with its neighbour.
    """

    #: a run of segments is never longer than 1.5 target durations: a few suffice
    RECENT = 8

    def __init__(self, target_seconds: float) -> None:
        self.target = target_seconds
        self.count = 0
        self.peak_kbps = 0.0
        self.bits = 0
        self.seconds = 0.0
        self._recent: deque[tuple[float, int]] = deque(maxlen=self.RECENT)

    def add(self, duration: float, nbytes: int) -> None:
        if duration <= 0:
            return
        self.count += 1
        self.bits += nbytes * 8
        self.seconds += duration
        self._recent.append((duration, nbytes * 8))
        seconds, bits = 0.0, 0
        for d, b in reversed(self._recent):  # every run that ends with this segment
            seconds, bits = seconds + d, bits + b
            if seconds > 1.5 * self.target:
                break
            if seconds >= 0.5 * self.target:
                self.peak_kbps = max(self.peak_kbps, bits / seconds / 1000)

    def average_kbps(self) -> float | None:
        return self.bits / self.seconds / 1000 if self.seconds else None

    def reset(self) -> None:
        self.__init__(self.target)  # type: ignore[misc]


@dataclass
class RenditionState:
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
    meter: RateMeter = field(default_factory=RateMeter)
    #: measured from the written segments (the rendition's thread adds, the master reads)
    segment_bitrates: SegmentBitrates = field(default_factory=lambda: SegmentBitrates(2.0))

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
                    "bitrateKbps": self.meter.kbps() if live else None,
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


@dataclass
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
    """The worker's observed state. See the module docstring for who writes what."""

    def __init__(self, *, stream: str, mode: Literal["push", "pull"], ingest_url: str) -> None:
        self.lock = threading.Lock()
        self.stream = stream
        self.mode = mode
        self.ingest_url = ingest_url  # never holds the stream key
        self.started_at = time.time()
        self.state: State = "idle"
        self.state_since = self.started_at
        self.ready = False
        self.publisher: str | None = None
        self.input = InputState()
        self.input_bytes = 0
        self.input_meter = RateMeter(window=5.0)
        self.renditions: list[RenditionState] = []
        self.frames_decoded = 0
        self.frames_dropped = 0
        self.frames_late = 0
        self.decode_errors = 0
        self.sessions_total = 0
        self.session_started_at: float | None = None
        self.last_error: str | None = None
        #: credentials of the pull URL, masked in ``last_error`` wherever they appear
        self.secrets: set[str] = set()
        self.last_error_at: float | None = None
        self.last_live_time: float | None = None
        self.playlists_open = False
        self.master_url: str | None = None
        self.thumbnail_url: str | None = None
        #: the DASH manifest, once written (spec.outputs.dash)
        self.dash_url: str | None = None
        self.ingest_counters: Callable[[], dict[str, int]] | None = None
        self.restream: Callable[[], list[dict[str, Any]]] | None = None
        self._speed: deque[tuple[float, float]] = deque()

    # -- writers -----------------------------------------------------------------

    def set_state(self, state: State) -> None:
        with self.lock:
            if state != self.state:
                self.state, self.state_since = state, time.time()
            if state == "live":
                self.last_live_time = time.time()

    def set_error(self, message: str | None) -> None:
        """The last error, as ``/status`` shows it: with every credential masked."""
        if message:
            message = redact.text(message, secrets=self.secrets)
        with self.lock:
            self.last_error = message
            self.last_error_at = time.time() if message else None

    def begin_session(self, *, publisher: str | None) -> None:
        with self.lock:
            self.publisher = publisher
            self.sessions_total += 1
            self.session_started_at = time.time()
            self.input = InputState()
            self.input_meter.reset()
            self.renditions = []
            self._speed.clear()

    def end_session(self) -> None:
        with self.lock:
            self.publisher = None
            self.session_started_at = None
            self._speed.clear()

    def set_renditions(self, renditions: list[RenditionState]) -> None:
        with self.lock:
            self.renditions = renditions

    def sample_speed(self, *, wall: float, media: float) -> None:
        """Record progress (media seconds encoded by the slowest rendition)."""
        speed = self._speed
        if speed and wall - speed[-1][0] < 0.5:
            return
        speed.append((wall, media))
        while len(speed) > 2 and wall - speed[1][0] > 5.0:
            speed.popleft()

    # -- readers -----------------------------------------------------------------

    def encode_speed(self) -> float | None:
        """Media seconds encoded per wall second over the last ~5 s (ffmpeg's speed=)."""
        points = list(self._speed)
        if len(points) < 2 or points[-1][0] - points[0][0] < 1.0:
            return None
        (w0, m0), (w1, m1) = points[0], points[-1]
        return round((m1 - m0) / (w1 - w0), 2)

    def counters(self) -> dict[str, int]:
        return dict(self.ingest_counters()) if self.ingest_counters else {}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            live = self.state == "live"
            return {
                "stream": self.stream,
                "state": self.state,
                "stateSince": _iso(self.state_since),
                "ready": self.ready,
                "ingest": {"mode": self.mode, "url": self.ingest_url, "counters": self.counters()},
                "publisher": self.publisher,
                "input": self.input.to_json(
                    bitrate_kbps=self.input_meter.kbps() if live else None,
                    publisher=self.publisher,
                )
                if live
                else None,
                "renditions": [r.to_json(live=live) for r in self.renditions],
                "playbackUrl": self.master_url,
                "thumbnailUrl": self.thumbnail_url,
                "dashUrl": self.dash_url,
                "framesDecoded": self.frames_decoded,
                "droppedFrames": self.frames_dropped,
                "lateFrames": self.frames_late,
                "decodeErrors": self.decode_errors,
                "encodeSpeed": self.encode_speed() if live else None,
                "sessions": self.sessions_total,
                "lastLiveTime": _iso(self.last_live_time),
                "lastError": self.last_error,
                "lastErrorTime": _iso(self.last_error_at),
                "restream": self.restream() if self.restream else [],
            }
