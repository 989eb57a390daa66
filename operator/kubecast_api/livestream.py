"""LiveStream: one live channel, from ingest to playable HLS."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from kubecast_api.common import (
    DNS_LABEL,
    ApiModel,
    Condition,
    LocalObjectReference,
    SecretKeyReference,
    cel,
    validated_by,
)

PULL_URL = r"^(rtmps?|rtsp|https?|file)://.+"


class PushIngest(ApiModel):
    """A publisher (OBS, ffmpeg, GStreamer, a field encoder) pushes to the stream's
    ingest Service, over RTMP or SRT, with the stream's key."""

    model_config = validated_by(
        cel(
            "!has(self.latencyMilliseconds) || self.protocol == 'srt'",
            "latencyMilliseconds is only for protocol srt",
            ".latencyMilliseconds",
        )
    )

    protocol: Literal["rtmp", "srt", "whip"] = Field(
        default="rtmp",
        description="Ingest protocol. rtmp: publishers push to rtmp://<ingest>/<app>/<key>"
        " (TCP 1935). srt: publishers call srt://<ingest>:9000?passphrase=<key> (UDP 9000):"
        " the stream key is the SRT passphrase (AES encryption; 10 to 79 characters)."
        " whip: WebRTC publishers (OBS, a browser, GStreamer's whipclientsink) POST their"
        " offer to http://<ingest>:8889/whip/<app> with Authorization: Bearer <key>; the"
        " media then flows over UDP to the worker pod's own address (see docs/webrtc.md).",
    )
    app: str = Field(
        default="live",
        description="RTMP application name: publishers push to rtmp://<ingest>/<app>/<key>.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )
    stream_key_secret_ref: SecretKeyReference | None = Field(
        default=None,
        description="Secret holding the stream key. When unset, the operator generates a"
        " random key in a Secret named <stream>-stream-key.",
    )
    latency_milliseconds: int | None = Field(
        default=None,
        strict=True,
        ge=20,
        le=8000,
        description="SRT receive latency (protocol srt only; default 120): how long the"
        " receiver waits for lost packets to be sent again. Use about 4 times the round"
        " trip to the publisher on a lossy network.",
    )

    @model_validator(mode="after")
    def _latency_is_for_srt(self) -> Self:
        if self.latency_milliseconds is not None and self.protocol != "srt":
            raise ValueError("latencyMilliseconds is only for protocol srt")
        return self


class UrlSecretReference(ApiModel):
    name: str = Field(
        description="Name of a Secret in the same namespace.",
        min_length=1,
        max_length=253,
    )
    key: str = Field(
        default="url",
        description="Key inside the Secret whose value is the source URL.",
        min_length=1,
        max_length=253,
    )


class PullIngest(ApiModel):
    """The worker pulls the stream from a source that already exists."""

    model_config = validated_by(
        cel(
            "has(self.url) != has(self.urlSecretRef)",
            "exactly one of url or urlSecretRef must be set; put a URL with credentials"
            " in a Secret and name it in urlSecretRef",
        ),
        cel(
            "!self.loop || (has(self.url) && self.url.startsWith('file://'))",
            "loop is only possible for file:// sources",
            ".loop",
        ),
    )

    url: str | None = Field(
        default=None,
        description="Source URL: rtmp(s)://, rtsp://, http(s):// (HLS) or file://. A URL"
        " with credentials (a password, a ?token=, a stream key) belongs in a Secret:"
        " use urlSecretRef instead, so it is never stored in the LiveStream or the"
        " worker's ConfigMap.",
        max_length=2048,
        pattern=PULL_URL,
    )
    url_secret_ref: UrlSecretReference | None = Field(
        default=None,
        description="Secret holding the source URL, for a URL with credentials"
        " (rtsp://user:password@camera/..., https://.../index.m3u8?token=...). The worker"
        " pod reads it from the mounted Secret, again at every reconnect; status, Events"
        " and logs show it with the credentials masked. Exactly one of url or"
        " urlSecretRef.",
    )
    loop: bool = Field(
        strict=True,
        default=False,
        description="Play a file:// source in a loop (for test channels).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError(
                "exactly one of url or urlSecretRef must be set; put a URL with credentials"
                " in a Secret and name it in urlSecretRef"
            )
        if self.loop and not (self.url or "").startswith("file://"):
            raise ValueError("loop is only possible for file:// sources")
        return self


class Ingest(ApiModel):
    """Where the stream comes from: exactly one of push or pull."""

    model_config = validated_by(
        cel(
            "has(self.push) != has(self.pull)",
            "exactly one of spec.ingest.push or spec.ingest.pull must be set",
        )
    )

    push: PushIngest | None = Field(default=None, description="Accept an RTMP publisher.")
    pull: PullIngest | None = Field(default=None, description="Pull from a source URL.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.push is None) == (self.pull is None):
            raise ValueError("exactly one of spec.ingest.push or spec.ingest.pull must be set")
        return self


class SegmentType(StrEnum):
    TS = "ts"
    FMP4 = "fmp4"


class PlaylistType(StrEnum):
    LIVE = "live"
    EVENT = "event"


LOW_LATENCY_NEEDS_FMP4 = (
    "spec.outputs.hls.lowLatency needs CMAF segments: set spec.outputs.hls.segmentType to"
    " fmp4 (partial segments are fragments of fragmented MP4), or turn lowLatency off"
)


class HlsOutput(ApiModel):
    model_config = validated_by(
        cel(
            "!(has(self.lowLatency) && self.lowLatency)"
            " || (has(self.segmentType) && self.segmentType == 'fmp4')",
            LOW_LATENCY_NEEDS_FMP4,
            field_path=".lowLatency",
        )
    )

    segment_type: SegmentType = Field(
        default=SegmentType.TS,
        description="Segment container: ts (MPEG-TS, which every HLS player plays) or fmp4"
        " (CMAF: fragmented MP4, which HLS and DASH share; spec.outputs.dash needs it).",
    )
    window_segments: int = Field(
        strict=True,
        default=6,
        description="Segments kept in the live playlist (the DVR window is this times"
        " segmentSeconds). Ignored by an event playlist, which keeps every segment.",
        ge=3,
        le=1000,
    )
    playlist_type: PlaylistType = Field(
        default=PlaylistType.LIVE,
        description="live: a sliding window of windowSegments. event: every segment of the"
        " publish stays listed (#EXT-X-PLAYLIST-TYPE:EVENT), so viewers can seek back to the"
        " start; each new publish starts a new playlist.",
    )
    low_latency: bool = Field(
        strict=True,
        default=False,
        description="Low-Latency HLS (RFC 8216bis; Apple's LL-HLS): each segment is also"
        " published in parts of about a third of a second (#EXT-X-PART, PART-TARGET) as"
        " soon as each is encoded, with #EXT-X-PRELOAD-HINT naming the next one, and the"
        " origin answers blocking playlist reloads (?_HLS_msn=&_HLS_part=). Players in"
        " low-latency mode then play about a second behind live; others play the whole"
        " segments as before. Needs segmentType fmp4. A CDN in front must keep query"
        " strings in its cache key (see docs/low-latency-hls.md).",
    )

    @model_validator(mode="after")
    def _low_latency_needs_fmp4(self) -> Self:
        if self.low_latency and self.segment_type != SegmentType.FMP4:
            raise ValueError(LOW_LATENCY_NEEDS_FMP4)
        return self


class DashOutput(ApiModel):
    enabled: bool = Field(
        strict=True,
        default=False,
        description="Also publish a live DASH manifest (/manifest.mpd) of the same CMAF"
        " segments as HLS; needs spec.outputs.hls.segmentType fmp4. Audio then goes in a"
        " rendition of its own (one per distinct audioBitrate), which the HLS master"
        " offers as an audio group, as DASH players need.",
    )


class WebrtcOutput(ApiModel):
    enabled: bool = Field(
        strict=True,
        default=False,
        description="Also offer each rendition to WebRTC viewers by WHEP: POST an SDP offer"
        " to <playback>/whep/<rendition>. Viewers share the rendition's one encode; the"
        " media flows over UDP to the worker pod's own address (see docs/webrtc.md).",
    )


DASH_NEEDS_FMP4 = (
    "spec.outputs.dash needs CMAF segments: set spec.outputs.hls.segmentType to fmp4"
    " (HLS and DASH then share the same segments), or turn DASH off"
)


class Outputs(ApiModel):
    model_config = validated_by(
        cel(
            "!(has(self.dash) && has(self.dash.enabled) && self.dash.enabled)"
            " || (has(self.hls) && has(self.hls.segmentType) && self.hls.segmentType == 'fmp4')",
            DASH_NEEDS_FMP4,
            field_path=".dash",
        )
    )

    hls: HlsOutput = Field(default_factory=HlsOutput, description="HLS output (always on).")
    dash: DashOutput = Field(default_factory=DashOutput, description="Optional DASH output.")
    webrtc: WebrtcOutput = Field(
        default_factory=WebrtcOutput, description="Optional WebRTC (WHEP) playback."
    )

    @model_validator(mode="after")
    def _dash_needs_fmp4(self) -> Self:
        if self.dash.enabled and self.hls.segment_type != SegmentType.FMP4:
            raise ValueError(DASH_NEEDS_FMP4)
        return self


class RestreamTarget(ApiModel):
    name: str = Field(
        description="Name of the target, unique within the stream.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    url: str = Field(
        description="RTMP(S) URL without the key, e.g. rtmp://a.rtmp.youtube.com/live2.",
        max_length=2048,
        pattern=r"^rtmps?://.+",
    )
    stream_key_secret_ref: SecretKeyReference | None = Field(
        default=None, description="Secret holding the target's stream key."
    )
    rendition: str | None = Field(
        default=None,
        description="Rendition to send; defaults to the highest one.",
        max_length=32,
    )


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class ServiceExposure(ApiModel):
    type: ServiceType = Field(
        default=ServiceType.CLUSTER_IP,
        description="Service type. Use LoadBalancer or NodePort to reach it from outside the"
        " cluster.",
    )
    node_port: int | None = Field(
        strict=True,
        default=None,
        description="Fixed node port for type NodePort (30000-32767); unset picks one.",
        ge=30000,
        le=32767,
    )


class ResourceList(ApiModel):
    cpu: str | None = Field(
        default=None,
        description="CPU quantity, e.g. 2 or 1500m.",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
    )
    memory: str | None = Field(
        default=None,
        description="Memory quantity, e.g. 1Gi.",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmgtpe])?$",
    )


class WorkerResources(ApiModel):
    requests: ResourceList = Field(
        default_factory=ResourceList, description="Resources the worker is guaranteed."
    )
    limits: ResourceList = Field(
        default_factory=ResourceList, description="Resources the worker may not exceed."
    )


#: A restream copies one rendition's HLS, audio included; with DASH its audio is apart.
RESTREAM_WITHOUT_DASH = (
    "spec.restream cannot be combined with spec.outputs.dash yet: a restream copies one"
    " rendition, and with DASH its audio is in a rendition of its own; remove the restream"
    " targets or turn DASH off"
)


class LiveStreamSpec(ApiModel):
    model_config = validated_by(
        cel(
            "!has(self.restream) || self.restream.all(t,"
            " self.restream.exists_one(o, o.name == t.name))",
            "restream target names must be unique",
            ".restream",
        ),
        cel(
            "self.ingestService.type == 'NodePort' || !has(self.ingestService.nodePort)",
            "nodePort is only valid when type is NodePort",
            ".ingestService.nodePort",
        ),
        cel(
            "self.playbackService.type == 'NodePort' || !has(self.playbackService.nodePort)",
            "nodePort is only valid when type is NodePort",
            ".playbackService.nodePort",
        ),
        cel(
            "!has(self.restream) || size(self.restream) == 0 || !has(self.outputs)"
            " || !has(self.outputs.dash) || !has(self.outputs.dash.enabled)"
            " || !self.outputs.dash.enabled",
            RESTREAM_WITHOUT_DASH,
            ".restream",
        ),
    )

    ingest: Ingest = Field(description="Where the stream comes from: push or pull.")
    profile_ref: LocalObjectReference = Field(
        description="TranscodeProfile (same namespace) that defines the ABR ladder."
    )
    outputs: Outputs = Field(default_factory=Outputs, description="Packaging of the output.")
    reconnect_window_seconds: int = Field(
        strict=True,
        default=30,
        description="How long a dropped publisher may take to return and continue the same"
        " playlist (phase Reconnecting) before the stream goes Idle and the playlist ends.",
        ge=0,
        le=3600,
    )
    restream: list[RestreamTarget] = Field(
        default_factory=list,
        description="Other RTMP destinations that receive a copy of one rendition (no"
        " re-encode) while the stream is live; status.restream shows each one's state.",
        max_length=8,
    )
    resources: WorkerResources = Field(
        default_factory=WorkerResources, description="CPU and memory of the worker pod."
    )
    ingest_service: ServiceExposure = Field(
        default_factory=ServiceExposure,
        description="How the RTMP ingest endpoint (port 1935) is exposed to publishers.",
    )
    playback_service: ServiceExposure = Field(
        default_factory=ServiceExposure,
        description="How the HLS origin (port 8080) is exposed to players or a CDN.",
    )

    @field_validator("restream")
    @classmethod
    def _unique_targets(cls, targets: list[RestreamTarget]) -> list[RestreamTarget]:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError("restream target names must be unique")
        return targets

    @model_validator(mode="after")
    def _node_port_needs_type(self) -> Self:
        for name, service in (
            ("ingestService", self.ingest_service),
            ("playbackService", self.playback_service),
        ):
            if service.node_port is not None and service.type != ServiceType.NODE_PORT:
                raise ValueError(f"{name}.nodePort is only valid when type is NodePort")
        return self

    @model_validator(mode="after")
    def _restream_without_dash(self) -> Self:
        if self.restream and self.outputs.dash.enabled:
            raise ValueError(RESTREAM_WITHOUT_DASH)
        return self


class StreamPhase(StrEnum):
    PENDING = "Pending"
    IDLE = "Idle"
    LIVE = "Live"
    RECONNECTING = "Reconnecting"
    ERROR = "Error"
    TERMINATING = "Terminating"


class InputStatus(ApiModel):
    video_codec: str | None = Field(default=None, description="Input video codec, e.g. h264.")
    audio_codec: str | None = Field(default=None, description="Input audio codec, e.g. aac.")
    width: int | None = Field(default=None, description="Input width in pixels.")
    height: int | None = Field(default=None, description="Input height in pixels.")
    resolution: str | None = Field(default=None, description="Input resolution as WxH.")
    fps: float | None = Field(default=None, description="Input frame rate.")
    bitrate_kbps: int | None = Field(
        default=None, description="Input bitrate in kbit/s, measured over the last seconds."
    )
    publisher: str | None = Field(
        default=None, description="Address of the connected publisher (never the key)."
    )


class RenditionStatus(ApiModel):
    name: str = Field(description="Rendition name from the profile.")
    state: Literal["Active", "Dropped"] = Field(
        description="Active, or Dropped when it would upscale the source."
    )
    reason: str | None = Field(default=None, description="Why the rendition was dropped.")
    width: int | None = Field(default=None, description="Output width.")
    height: int | None = Field(default=None, description="Output height.")
    bitrate_kbps: int | None = Field(default=None, description="Measured output bitrate.")
    playback_url: str | None = Field(default=None, description="Media playlist URL.")


class RestreamStatus(ApiModel):
    name: str = Field(description="Target name from spec.restream.")
    state: Literal["Idle", "Connecting", "Live", "Retrying"] = Field(
        description="Idle (the stream is not live), Connecting, Live (sending), or"
        " Retrying after a failure (see message)."
    )
    message: str | None = Field(default=None, description="The last failure, if any.")
    restarts: int | None = Field(
        default=None, description="Failed attempts since the worker started.", ge=0
    )


class LiveStreamStatus(ApiModel):
    phase: StreamPhase = Field(default=StreamPhase.PENDING, description="Lifecycle phase.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last processed.", ge=0
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (the worker answers, accepts publishers and runs the current"
        " config), Progressing (True while a new config rolls out to the worker pod),"
        " IngestConnected (publisher connected), Transcoding (ladder producing segments),"
        " OutputsReady (every requested output, restream targets included, is produced).",
    )
    ingest_url: str | None = Field(
        default=None,
        description="Where publishers push, without the stream key: rtmp://<host>:<port>/<app>.",
    )
    stream_key_secret: str | None = Field(
        default=None, description="Name of the Secret holding the stream key (never the key)."
    )
    playback_url: str | None = Field(default=None, description="HLS master playlist URL.")
    thumbnail_url: str | None = Field(
        default=None,
        description="A JPEG still of the stream, refreshed every 5 seconds while it is live"
        " (from the smallest rendition's pictures; the last one stays while Idle).",
    )
    dash_url: str | None = Field(
        default=None,
        description="DASH manifest URL (spec.outputs.dash), once the worker has written it.",
    )
    whep_url: str | None = Field(
        default=None,
        description="WHEP endpoint of the top rendition (spec.outputs.webrtc): POST an SDP"
        " offer here to watch over WebRTC. Each rendition has its own:"
        " <playback>/whep/<rendition>.",
    )
    input: InputStatus | None = Field(default=None, description="What the worker receives.")
    renditions: list[RenditionStatus] = Field(
        default_factory=list, description="Per-rendition output state and bitrate."
    )
    restream: list[RestreamStatus] = Field(
        default_factory=list, description="Per-target state of the restream copies."
    )
    dropped_frames: int | None = Field(
        default=None, description="Frames dropped or late since the worker started.", ge=0
    )
    encode_speed: float | None = Field(
        default=None, description="Encoding speed as a multiple of real time."
    )
    refused_publishes: int | None = Field(
        default=None,
        description="Publish attempts refused: wrong key or app, already live, or refused"
        " at accept after too many wrong keys from one address (rate-limited).",
        ge=0,
    )
    last_live_time: datetime | None = Field(
        default=None, description="When the stream was last seen Live."
    )
    worker_restarts: int | None = Field(
        default=None,
        description="How often the kubelet restarted the worker container of the current pod.",
        ge=0,
    )
    last_worker_exit: str | None = Field(
        default=None,
        description="How the worker container last ended, e.g. 'exit code 137 (Error) at <time>'.",
    )
    message: str | None = Field(default=None, description="Last error or notable event.")


class LiveStream(ApiModel):
    """A live channel: ingest, ABR transcode, HLS playback."""

    api_version: Literal["kubecast.dev/v1alpha1"] = Field(
        default="kubecast.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["LiveStream"] = "LiveStream"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LiveStreamSpec
    status: LiveStreamStatus | None = None
