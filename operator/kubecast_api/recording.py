"""Recording: a stream written to storage, playable while it grows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from kubecast_api.common import (
    ApiModel,
    Condition,
    LocalObjectReference,
    cel,
    validated_by,
)


class RecordingFormat(StrEnum):
    HLS = "hls"
    MP4 = "mp4"
    FMP4 = "fmp4"


class StartMode(StrEnum):
    NOW = "Now"
    NEXT_LIVE = "NextLive"
    WINDOW = "Window"


class Storage(ApiModel):
    size: str = Field(
        default="10Gi",
        description="Size of the PersistentVolumeClaim that holds the recording.",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
    )
    storage_class_name: str | None = Field(
        default=None,
        description="StorageClass of the claim; unset uses the cluster default.",
        max_length=253,
    )


class Schedule(ApiModel):
    model_config = validated_by(
        cel(
            "self.start != 'Window' || (has(self.startTime) && has(self.endTime))",
            "start Window needs startTime and endTime",
        ),
        cel(
            "!has(self.startTime) || !has(self.endTime) || self.endTime > self.startTime",
            "endTime must be after startTime",
            ".endTime",
        ),
    )

    start: StartMode = Field(
        default=StartMode.NOW,
        description="Now: record from now on (waits while the stream is idle). NextLive: wait"
        " for the next time the stream goes live. Window: record between startTime and endTime.",
    )
    start_time: datetime | None = Field(default=None, description="Window start (RFC 3339).")
    end_time: datetime | None = Field(default=None, description="Window end (RFC 3339).")

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _rfc3339_string(cls, value: Any) -> Any:
        # pydantic would read a number as a Unix timestamp; the API server (type
        # string, format date-time) refuses it.
        if value is not None and not isinstance(value, str | datetime):
            raise ValueError(f"must be an RFC 3339 date-time string, not {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start == StartMode.WINDOW and (self.start_time is None or self.end_time is None):
            raise ValueError("start Window needs startTime and endTime")
        if self.start_time and self.end_time and self.end_time <= self.start_time:
            raise ValueError("endTime must be after startTime")
        return self


class Retention(ApiModel):
    days: int | None = Field(
        strict=True,
        default=None,
        description="Delete the Recording (and its files) this many days after it completes."
        " Unset keeps it until deleted.",
        ge=1,
        le=3650,
    )


class RecordingSpec(ApiModel):
    stream_ref: LocalObjectReference = Field(description="LiveStream (same namespace) to record.")
    formats: list[RecordingFormat] = Field(
        default_factory=lambda: [RecordingFormat.HLS, RecordingFormat.MP4],
        description="hls: an event playlist that plays while it grows; mp4: one faststart file"
        " when the recording ends; fmp4: a fragmented MP4 that plays while it grows.",
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    rendition: str | None = Field(
        default=None,
        description="Rendition to record; defaults to the highest (or the passthrough one).",
        max_length=32,
    )
    storage: Storage = Field(default_factory=Storage, description="Where the files are written.")
    schedule: Schedule = Field(default_factory=Schedule, description="When to record.")
    max_duration_seconds: int | None = Field(
        strict=True,
        default=None,
        description="Stop after this much recorded media.",
        ge=1,
        le=7 * 86400,
    )
    idle_timeout_seconds: int = Field(
        strict=True,
        default=300,
        description="Finish the recording when the stream stays idle this long.",
        ge=0,
        le=86400,
    )
    retention: Retention = Field(default_factory=Retention, description="How long to keep it.")

    @field_validator("formats")
    @classmethod
    def _no_repeats(cls, formats: list[RecordingFormat]) -> list[RecordingFormat]:
        if len(set(formats)) != len(formats):
            raise ValueError("formats must not repeat")
        return formats


class RecordingPhase(StrEnum):
    WAITING = "Waiting"
    RECORDING = "Recording"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"


class RecordedFile(ApiModel):
    name: str = Field(description="Path of the file on the recording volume.")
    format: RecordingFormat = Field(description="Format of the file.")
    size_bytes: int = Field(description="Size in bytes.", ge=0)
    duration_seconds: float | None = Field(default=None, description="Media duration.")


class RecordingStatus(ApiModel):
    phase: RecordingPhase = Field(default=RecordingPhase.WAITING, description="Lifecycle phase.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last processed.", ge=0
    )
    conditions: list[Condition] = Field(default_factory=list, description="Recording conditions.")
    files: list[RecordedFile] = Field(default_factory=list, description="Files written so far.")
    start_time: datetime | None = Field(default=None, description="When recording started.")
    end_time: datetime | None = Field(default=None, description="When recording ended.")
    duration_seconds: float | None = Field(default=None, description="Media recorded so far.")
    segments: int | None = Field(default=None, description="Segments recorded so far.", ge=0)
    message: str | None = Field(default=None, description="Last error or notable event.")


class Recording(ApiModel):
    """A recording of a LiveStream to a PersistentVolumeClaim."""

    api_version: Literal["kubecast.dev/v1alpha1"] = Field(
        default="kubecast.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["Recording"] = "Recording"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: RecordingSpec
    status: RecordingStatus | None = None
