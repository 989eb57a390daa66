"""What a worker and a recorder report on their admin port's ``/status``.

The worker and the recorder emit these documents, the operator validates what it
reads against them, and a unit test sends a real ``Status.snapshot()`` through
``WorkerStatus``: a field renamed on one side fails a test instead of quietly
turning into a missing value on the LiveStream.

Unknown fields are refused (``ApiModel``), in both directions: a worker newer than
its operator is reported as such, not half-read. The worker's document is camelCase
like the LiveStream status it feeds; the recorder's is snake_case (it predates
this contract and is read by people with ``curl`` too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from kubecast_api.common import ApiModel

#: Field names as they are, for documents that are snake_case on the wire.
SNAKE_CASE = ConfigDict(**{**ApiModel.model_config, "alias_generator": None})


class IngestCounters(ApiModel):
    model_config = SNAKE_CASE

    accepted: int = 0
    refused_wrong_key: int = 0
    refused_unknown_app: int = 0
    refused_busy: int = 0
    refused_rate_limited: int = 0
    protocol_errors: int = 0


class WorkerIngestStatus(ApiModel):
    mode: Literal["push", "pull"]
    url: str | None = Field(description="Where publishers push (no key), or the pull source.")
    counters: IngestCounters = Field(default_factory=IngestCounters)


class WorkerInput(ApiModel):
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    fps: float | None = None
    bitrate_kbps: int | None = None
    publisher: str | None = None


class WorkerRendition(ApiModel):
    name: str
    state: Literal["Active", "Dropped"]
    reason: str | None = None
    passthrough: bool | None = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    fps: float | None = None
    target_bitrate_kbps: int | None = None
    bitrate_kbps: int | None = None
    codecs: str | None = None
    playback_url: str | None = None
    segments: int | None = None
    frames: int | None = None
    dropped_frames: int | None = None
    bytes: int | None = None
    first_segment_seconds: float | None = None


class WorkerRestream(ApiModel):
    name: str
    url: str
    state: Literal["Idle", "Connecting", "Live", "Retrying"]
    last_error: str | None = None
    restarts: int = 0


class WorkerStatus(ApiModel):
    """``GET /status`` of a media worker."""

    stream: str
    state: Literal["idle", "live", "reconnecting"]
    state_since: str | None = None
    ready: bool
    ingest: WorkerIngestStatus
    publisher: str | None = None
    input: WorkerInput | None = None
    renditions: list[WorkerRendition] = Field(default_factory=list)
    playback_url: str | None = None
    thumbnail_url: str | None = None
    dash_url: str | None = None
    frames_decoded: int = 0
    dropped_frames: int = 0
    late_frames: int = 0
    decode_errors: int = 0
    encode_speed: float | None = None
    sessions: int = 0
    last_live_time: str | None = None
    last_error: str | None = None
    last_error_time: str | None = None
    restream: list[WorkerRestream] = Field(default_factory=list)


class RecorderFile(ApiModel):
    model_config = SNAKE_CASE

    name: str
    format: Literal["hls", "mp4", "fmp4"]
    size_bytes: int | None = None
    duration_seconds: float | None = None


class RecorderStatus(ApiModel):
    """``GET /status`` of a recorder."""

    model_config = SNAKE_CASE

    state: Literal["waiting", "recording", "finalizing", "interrupted", "completed", "failed"]
    duration_seconds: float = 0.0
    bytes: int = 0
    segments: int = 0
    files: list[RecorderFile] = Field(default_factory=list)
    start_time: str | None = None
    end_time: str | None = None
    last_error: str | None = None
