"""TranscodeProfile: the adaptive-bitrate ladder a stream is transcoded into."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from kubecast_api.common import ApiModel, Condition, cel, validated_by


class VideoCodec(StrEnum):
    H264 = "h264"
    # Declared so profiles can name them; the worker refuses them until it
    # supports them (see Rendition.codec).
    H265 = "h265"
    AV1 = "av1"


class Preset(StrEnum):
    ULTRAFAST = "ultrafast"
    SUPERFAST = "superfast"
    VERYFAST = "veryfast"
    FASTER = "faster"
    FAST = "fast"
    MEDIUM = "medium"
    SLOW = "slow"
    SLOWER = "slower"
    VERYSLOW = "veryslow"


class H264Profile(StrEnum):
    BASELINE = "baseline"
    MAIN = "main"
    HIGH = "high"


class AudioCodec(StrEnum):
    AAC = "aac"
    OPUS = "opus"


# A WebRTC viewer decodes what it gets in arrival order, and a new one waits for the next
# keyframe: so a WHEP rung is encoded here (no B-frames, our GOP), never copied from the
# source, and its GOP is short.
WEBRTC_MAX_GOP_SECONDS = 2
WEBRTC_NEEDS_ENCODE = (
    "a webrtc rendition must be encoded, not passthrough: a copy of the source keeps its"
    " B-frames and keyframe interval, which WebRTC viewers cannot take"
)
WEBRTC_NEEDS_SHORT_GOP = (
    f"a profile with a webrtc rendition needs gopSeconds {WEBRTC_MAX_GOP_SECONDS} or less:"
    " a new WebRTC viewer waits up to one GOP for its first picture"
)


class Rendition(ApiModel):
    """One rung of the ladder, or the source copied as is (passthrough)."""

    model_config = validated_by(
        cel(
            "self.passthrough || (has(self.width) && has(self.height) && has(self.videoBitrate))",
            "width, height and videoBitrate are required unless passthrough is true",
        ),
        cel(
            "!self.passthrough || (!has(self.width) && !has(self.height)"
            " && !has(self.videoBitrate) && !has(self.fps))",
            "a passthrough rendition copies the source: do not set width, height,"
            " videoBitrate or fps",
        ),
        cel("!self.webrtc || !self.passthrough", WEBRTC_NEEDS_ENCODE, ".webrtc"),
        cel(
            "!has(self.width) || self.width % 2 == 0",
            "width must be even (H.264 4:2:0 needs even dimensions)",
            ".width",
        ),
        cel(
            "!has(self.height) || self.height % 2 == 0",
            "height must be even (H.264 4:2:0 needs even dimensions)",
            ".height",
        ),
        cel(
            "!has(self.maxrate) || !has(self.videoBitrate) || self.maxrate >= self.videoBitrate",
            "maxrate must be at least videoBitrate",
            ".maxrate",
        ),
        cel(
            "!has(self.bufsize) || has(self.maxrate)",
            "bufsize needs maxrate (VBV buffer without a rate cap has no effect)",
            ".bufsize",
        ),
    )

    name: str = Field(
        description="Name of the rendition, used in playlist and segment paths (e.g. 720p).",
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
    passthrough: bool = Field(
        strict=True,
        default=False,
        description="Copy the source video and audio without re-encoding. Width, height,"
        " bitrates and fps must then be unset.",
    )
    webrtc: bool = Field(
        strict=True,
        default=False,
        description="Offer this rendition to WebRTC (WHEP) viewers of streams with"
        " spec.outputs.webrtc on. It is then encoded without B-frames (WebRTC viewers do"
        " not reorder frames) and the profile's gopSeconds must be"
        f" {WEBRTC_MAX_GOP_SECONDS} or less. When no rendition of a profile sets it,"
        " WHEP offers every encoded rendition, all without B-frames.",
    )
    width: int | None = Field(
        strict=True, default=None, description="Output width in pixels (even).", ge=16, le=7680
    )
    height: int | None = Field(
        strict=True,
        default=None,
        description="Output height in pixels (even). A rendition taller than the source is"
        " dropped: kubecast never upscales.",
        ge=16,
        le=4320,
    )
    video_bitrate: int | None = Field(
        strict=True, default=None, description="Target video bitrate in kbit/s.", ge=1, le=200_000
    )
    maxrate: int | None = Field(
        strict=True,
        default=None,
        description="Peak video bitrate in kbit/s (VBV maxrate). Defaults to videoBitrate.",
        ge=1,
        le=200_000,
    )
    bufsize: int | None = Field(
        strict=True,
        default=None,
        description="VBV buffer size in kbit. Defaults to twice maxrate.",
        ge=1,
        le=400_000,
    )
    audio_bitrate: int = Field(
        strict=True, default=128, description="Audio bitrate in kbit/s.", ge=8, le=512
    )
    fps: int | None = Field(
        strict=True,
        default=None,
        description="Highest output frame rate. A source at or below it keeps its own rate"
        " (never raised by repeating frames); a faster one is reduced, evenly when it can"
        " (50 fps to 25 for 30). Unset keeps the source frame rate.",
        ge=1,
        le=120,
    )
    codec: VideoCodec = Field(
        default=VideoCodec.H264,
        description="Video codec. h264 is supported today; h265 and av1 are reserved.",
    )
    preset: Preset = Field(default=Preset.VERYFAST, description="Encoder speed/quality preset.")
    profile: H264Profile = Field(default=H264Profile.HIGH, description="H.264 profile.")
    level: str | None = Field(
        default=None,
        description="H.264 level, e.g. 4.1. Unset lets the encoder choose.",
        pattern=r"^[1-6](\.[0-2])?$",
        max_length=3,
    )

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int | None) -> int | None:
        if value is not None and value % 2:
            raise ValueError(f"{value} must be even (H.264 4:2:0 needs even dimensions)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        encoded = ("width", "height", "video_bitrate", "fps")
        if self.passthrough:
            given = [to_wire(f) for f in encoded if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    "a passthrough rendition copies the source: do not set " + ", ".join(given)
                )
        else:
            missing = [to_wire(f) for f in encoded[:3] if getattr(self, f) is None]
            if missing:
                raise ValueError(", ".join(missing) + " required unless passthrough is true")
        if self.maxrate is not None and self.video_bitrate and self.maxrate < self.video_bitrate:
            raise ValueError(
                f"maxrate ({self.maxrate}) must be at least videoBitrate ({self.video_bitrate})"
            )
        if self.bufsize is not None and self.maxrate is None:
            raise ValueError("bufsize needs maxrate (VBV buffer without a rate cap has no effect)")
        if self.webrtc and self.passthrough:
            raise ValueError(WEBRTC_NEEDS_ENCODE)
        return self


def to_wire(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


class AudioSettings(ApiModel):
    codec: AudioCodec = Field(default=AudioCodec.AAC, description="Audio codec of every rendition.")
    sample_rate: Literal[44100, 48000] = Field(
        default=48000, description="Audio sample rate in Hz."
    )
    channels: Literal[1, 2] = Field(default=2, description="Audio channels (1 mono, 2 stereo).")


def _rung(name: str, width: int, height: int, video: int, audio: int) -> Rendition:
    return Rendition(
        name=name,
        width=width,
        height=height,
        video_bitrate=video,
        maxrate=video * 107 // 100,
        bufsize=video * 3 // 2,
        audio_bitrate=audio,
        fps=30,
    )


#: The ladder used when a profile names none: 1080p to 360p at 30 fps.
DEFAULT_LADDER: tuple[Rendition, ...] = (
    _rung("1080p", 1920, 1080, 4000, 128),
    _rung("720p", 1280, 720, 2500, 128),
    _rung("480p", 854, 480, 1200, 96),
    _rung("360p", 640, 360, 800, 64),
)


class TranscodeProfileSpec(ApiModel):
    """What a stream is transcoded into."""

    model_config = validated_by(
        cel(
            "self.renditions.all(r, self.renditions.exists_one(o, o.name == r.name))",
            "rendition names must be unique",
            ".renditions",
        ),
        cel(
            "self.renditions.filter(r, r.passthrough).size() <= 1",
            "at most one rendition may be passthrough",
            ".renditions",
        ),
        cel(
            # NB: guarded, or gopSeconds 0 adds "modulus by zero" to the range error.
            "self.gopSeconds == 0 || self.segmentSeconds % self.gopSeconds == 0",
            "segmentSeconds must be a multiple of gopSeconds so that every segment"
            " starts on a keyframe",
            ".segmentSeconds",
        ),
        cel(
            f"!self.renditions.exists(r, r.webrtc) || self.gopSeconds <= {WEBRTC_MAX_GOP_SECONDS}",
            WEBRTC_NEEDS_SHORT_GOP,
            ".gopSeconds",
        ),
    )

    renditions: list[Rendition] = Field(
        default_factory=lambda: list(DEFAULT_LADDER),
        description="The renditions of the ladder, highest first. Defaults to 1080p, 720p,"
        " 480p and 360p at 30 fps.",
        min_length=1,
        max_length=8,
    )
    gop_seconds: int = Field(
        strict=True,
        default=2,
        description="Keyframe interval in seconds, the same in every rendition so players"
        " can switch between them at segment boundaries. Scene-cut keyframes are disabled.",
        ge=1,
        le=10,
    )
    segment_seconds: int = Field(
        strict=True,
        default=4,
        description="Target HLS/DASH segment duration in seconds; a multiple of gopSeconds.",
        ge=1,
        le=30,
    )
    audio: AudioSettings = Field(
        default_factory=AudioSettings, description="Audio settings shared by every rendition."
    )

    @field_validator("renditions")
    @classmethod
    def _unique_names(cls, renditions: list[Rendition]) -> list[Rendition]:
        names = [r.name for r in renditions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rendition names must be unique; repeated: {', '.join(duplicates)}")
        if sum(r.passthrough for r in renditions) > 1:
            raise ValueError("at most one rendition may be passthrough")
        return renditions

    @model_validator(mode="after")
    def _segments_start_on_keyframes(self) -> Self:
        if self.segment_seconds % self.gop_seconds:
            raise ValueError(
                f"segmentSeconds ({self.segment_seconds}) must be a multiple of gopSeconds"
                f" ({self.gop_seconds}) so that every segment starts on a keyframe"
            )
        if self.gop_seconds > WEBRTC_MAX_GOP_SECONDS and any(r.webrtc for r in self.renditions):
            raise ValueError(WEBRTC_NEEDS_SHORT_GOP + f" (gopSeconds is {self.gop_seconds})")
        return self

    def webrtc_renditions(self) -> list[str]:
        """The renditions WHEP offers when a stream turns WebRTC on: those marked
        ``webrtc``, or every encoded one when none is (profiles from before the field)."""
        encoded = [r for r in self.renditions if not r.passthrough]
        return [r.name for r in encoded if r.webrtc] or [r.name for r in encoded]


class TranscodeProfileStatus(ApiModel):
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last processed.", ge=0
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Valid: the profile can be used by streams."
    )
    used_by: int = Field(
        default=0, description="How many LiveStreams reference this profile.", ge=0
    )
    ladder: str | None = Field(
        default=None,
        description="The renditions in order, e.g. 1080p,720p,480p,360p (for kubectl get).",
        max_length=1024,
    )
    used_by_streams: list[str] = Field(
        default_factory=list,
        description="Names of the LiveStreams that reference this profile.",
        max_length=1000,
    )


class TranscodeProfile(ApiModel):
    """A named ABR ladder that LiveStreams reference with spec.profileRef."""

    api_version: Literal["kubecast.dev/v1alpha1"] = Field(
        default="kubecast.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["TranscodeProfile"] = "TranscodeProfile"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TranscodeProfileSpec = Field(default_factory=TranscodeProfileSpec)
    status: TranscodeProfileStatus | None = None
