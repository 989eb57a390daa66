"""The config a media worker runs from.

The operator renders it into the stream's ConfigMap from the LiveStream and its
TranscodeProfile; a person runs the same thing from the command line. The
stream key is never part of it, nor a pull URL from a Secret: the worker reads
them from files (mounted Secrets) so that the ConfigMap can be read by anyone who
may read the stream's settings.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from kubecast_api.common import ApiModel
from kubecast_api.livestream import PULL_URL, Outputs
from kubecast_api.profile import TranscodeProfileSpec


class WorkerPull(ApiModel):
    """The source to pull: its URL, or the file (a mounted Secret) that holds it."""

    url: str | None = Field(
        default=None, description="Source URL, when it holds no credentials.", pattern=PULL_URL
    )
    url_file: str | None = Field(
        default=None,
        description="File holding the source URL (the LiveStream's spec.ingest.pull."
        "urlSecretRef, mounted); read again at every reconnect, so a rotated Secret is"
        " picked up without a restart.",
    )
    loop: bool = Field(default=False, description="Play a file:// source in a loop.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("exactly one of ingest.pull.url or ingest.pull.urlFile must be set")
        return self


class WorkerIngest(ApiModel):
    listen: str | None = Field(
        default=None,
        description="Listen address host:port for push ingest, e.g. 0.0.0.0:1935 (RTMP, TCP),"
        " 0.0.0.0:9000 (SRT, UDP) or 0.0.0.0:8889 (WHIP: HTTP, with WebRTC media on"
        " ephemeral UDP ports of the same host).",
    )
    protocol: Literal["rtmp", "srt", "whip"] = Field(
        default="rtmp", description="What publishers speak on the listen address."
    )
    latency_milliseconds: int | None = Field(
        default=None, ge=20, le=8000, description="SRT receive latency (default 120)."
    )
    app: str = Field(default="live", description="RTMP application name publishers must use.")
    stream_key_file: str | None = Field(
        default=None, description="File holding the stream key (a mounted Secret)."
    )
    stream_key_secret: str | None = Field(
        default=None,
        description="Name of the Secret holding the key, for the preview page's hint; the"
        " key itself never appears in the config.",
    )
    pull: WorkerPull | None = Field(default=None, description="Source to pull instead.")
    service_url: str | None = Field(
        default=None,
        description="Where publishers inside the cluster push (the ingest Service's name,"
        " rtmp://<stream>-ingest.<namespace>.svc.cluster.local:1935/<app>), for the preview"
        " page; the address from outside is the LiveStream's status.ingestUrl.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.listen is None) == (self.pull is None):
            raise ValueError("exactly one of ingest.listen or ingest.pull must be set")
        return self


class WorkerRestreamTarget(ApiModel):
    name: str = Field(description="Name of the target, for status and logs.")
    url: str = Field(description="rtmp(s)://host/app, without the key.")
    stream_key_file: str | None = Field(
        default=None, description="File holding the target's key (a mounted Secret)."
    )
    rendition: str | None = Field(
        default=None, description="Rendition to send; the highest active one when unset."
    )


class WorkerConfig(ApiModel):
    stream: str = Field(description="Stream name, used in logs and as the metrics label.")
    namespace: str | None = Field(default=None, description="Namespace of the LiveStream.")
    ingest: WorkerIngest = Field(description="Where the media comes from.")
    profile: TranscodeProfileSpec = Field(
        default_factory=TranscodeProfileSpec, description="The resolved ladder."
    )
    outputs: Outputs = Field(default_factory=Outputs, description="Packaging of the output.")
    reconnect_window_seconds: int = Field(default=30, ge=0, le=3600)
    restream: list[WorkerRestreamTarget] = Field(
        default_factory=list, description="Other RTMP destinations that get a copy."
    )
    output_dir: str = Field(default="/var/lib/kubecast/media", description="Where HLS is written.")
    http: str = Field(
        default="0.0.0.0:8080",
        description="Playback port listen address host:port: media, the player page, probes.",
    )
    admin: str = Field(
        default="0.0.0.0:9090",
        description="Admin port listen address host:port: /status and /metrics, for the"
        " operator and Prometheus; no playback Service exposes it.",
    )
