"""How each kind is served by the API server: names, columns, categories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pydantic

from kubecast_api.common import API_VERSION, ApiModel
from kubecast_api.livestream import LiveStream, LiveStreamSpec, LiveStreamStatus
from kubecast_api.profile import TranscodeProfile, TranscodeProfileSpec, TranscodeProfileStatus
from kubecast_api.recording import Recording, RecordingSpec, RecordingStatus


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[ApiModel]
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    printer_columns: tuple[dict[str, Any], ...] = field(default=())
    categories: tuple[str, ...] = ("kubecast",)


def column(name: str, path: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, **extra}


AGE = column("Age", ".metadata.creationTimestamp", "date")

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="TranscodeProfile",
        plural="transcodeprofiles",
        singular="transcodeprofile",
        short_names=("tp", "tprofile"),
        model=TranscodeProfile,
        spec=TranscodeProfileSpec,
        status=TranscodeProfileStatus,
        description="A named adaptive-bitrate ladder that LiveStreams reference.",
        printer_columns=(
            column("Ladder", ".status.ladder"),
            column("GOP", ".spec.gopSeconds", "integer"),
            column("Segment", ".spec.segmentSeconds", "integer"),
            column("Used-By", ".status.usedBy", "integer"),
            AGE,
        ),
    ),
    Kind(
        kind="LiveStream",
        plural="livestreams",
        singular="livestream",
        short_names=("ls", "lstream"),
        model=LiveStream,
        spec=LiveStreamSpec,
        status=LiveStreamStatus,
        description="A live channel: RTMP ingest or pull, ABR transcode, HLS playback.",
        printer_columns=(
            column("Phase", ".status.phase"),
            column("Profile", ".spec.profileRef.name"),
            column("Input", ".status.input.resolution"),
            column(
                "Bitrate",
                ".status.input.bitrateKbps",
                "integer",
                description="Input bitrate in kbit/s",
            ),
            column("Playback", ".status.playbackUrl"),
            column("Ingest", ".status.ingestUrl", priority=1),
            AGE,
        ),
    ),
    Kind(
        kind="Recording",
        plural="recordings",
        singular="recording",
        short_names=("rec",),
        model=Recording,
        spec=RecordingSpec,
        status=RecordingStatus,
        description="A recording of a LiveStream: an HLS event playlist and a final MP4.",
        printer_columns=(
            column("Phase", ".status.phase"),
            column("Stream", ".spec.streamRef.name"),
            column("Duration", ".status.durationSeconds", "number"),
            column("Start", ".status.startTime", "date"),
            AGE,
        ),
    ),
)

BY_KIND = {k.kind: k for k in KINDS}


def parse_manifest(document: dict[str, Any]) -> ApiModel:
    """Validate one manifest of any kubecast kind.

    Raises ``ValueError`` naming the kind for foreign or unknown documents, and
    ``pydantic.ValidationError`` (see ``describe_error``) for invalid ones.
    """
    if document.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION}, got {document.get('apiVersion')!r}")
    kind = BY_KIND.get(document.get("kind", ""))
    if kind is None:
        raise ValueError(f"unknown kind {document.get('kind')!r}; expected one of {list(BY_KIND)}")
    return kind.model.model_validate(document)


__all__ = ["BY_KIND", "KINDS", "Kind", "parse_manifest", "pydantic"]
