"""The API models accept what users write and refuse mistakes by field name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from kubecast_api import (
    DEFAULT_LADDER,
    LiveStream,
    Recording,
    TranscodeProfile,
    TranscodeProfileSpec,
    describe_error,
    parse_manifest,
)

SAMPLES = Path(__file__).parents[2] / "samples"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / name).read_text())


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_is_accepted(path: Path) -> None:
    model = parse_manifest(yaml.safe_load(path.read_text()))
    assert model.metadata["name"]


def test_default_ladder_is_the_documented_one() -> None:
    ladder = [
        (r.name, r.width, r.height, r.video_bitrate, r.audio_bitrate, r.fps) for r in DEFAULT_LADDER
    ]
    assert ladder == [
        ("1080p", 1920, 1080, 4000, 128, 30),
        ("720p", 1280, 720, 2500, 128, 30),
        ("480p", 854, 480, 1200, 96, 30),
        ("360p", 640, 360, 800, 64, 30),
    ]
    assert TranscodeProfileSpec().renditions == list(DEFAULT_LADDER)


def test_sample_profile_is_the_default_ladder() -> None:
    sample = TranscodeProfile.model_validate(load("transcodeprofile-default.yaml"))
    assert [(r.name, r.width, r.height, r.video_bitrate) for r in sample.spec.renditions] == [
        (r.name, r.width, r.height, r.video_bitrate) for r in DEFAULT_LADDER
    ]


def test_wire_format_is_camel_case_and_round_trips() -> None:
    stream = LiveStream.model_validate(load("livestream-push.yaml"))
    wire = stream.to_api()
    assert wire["spec"]["profileRef"] == {"name": "default"}
    assert wire["spec"]["reconnectWindowSeconds"] == 30
    assert LiveStream.model_validate(wire) == stream


def _profile(**changes: Any) -> dict[str, Any]:
    doc = load("transcodeprofile-default.yaml")
    doc["spec"].update(changes)
    return doc


def _rendition(index: int = 0, **changes: Any) -> dict[str, Any]:
    doc = load("transcodeprofile-default.yaml")
    doc["spec"]["renditions"][index].update(changes)
    return doc


def _stream(sample: str = "livestream-push.yaml", **changes: Any) -> dict[str, Any]:
    doc = load(sample)
    doc["spec"].update(changes)
    return doc


def _recording(**changes: Any) -> dict[str, Any]:
    doc = load("recording.yaml")
    doc["spec"].update(changes)
    return doc


def _without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, manifest, field path the message must name, words it must contain)
    ("odd-width", _rendition(0, width=1919), "spec.renditions[0].width", "even"),
    ("odd-height", _rendition(1, height=721), "spec.renditions[1].height", "even"),
    (
        "zero-bitrate",
        _rendition(0, videoBitrate=0),
        "spec.renditions[0].videoBitrate",
        "greater than or equal to 1",
    ),
    (
        "negative-audio",
        _rendition(2, audioBitrate=-96),
        "spec.renditions[2].audioBitrate",
        "greater than or equal to 8",
    ),
    ("maxrate-below-bitrate", _rendition(0, maxrate=100), "spec.renditions[0]", "maxrate"),
    (
        "bufsize-without-maxrate",
        _without(_rendition(0), "spec", "renditions", 0, "maxrate"),
        "spec.renditions[0]",
        "bufsize needs maxrate",
    ),
    ("duplicate-names", _rendition(1, name="1080p"), "spec.renditions", "unique"),
    (
        "missing-size",
        _without(_rendition(0), "spec", "renditions", 0, "height"),
        "spec.renditions[0]",
        "height",
    ),
    ("passthrough-with-size", _rendition(0, passthrough=True), "spec.renditions[0]", "passthrough"),
    ("unknown-codec", _rendition(0, codec="vp9"), "spec.renditions[0].codec", "h264"),
    ("bad-preset", _rendition(0, preset="fastest"), "spec.renditions[0].preset", "veryfast"),
    ("bad-rendition-name", _rendition(0, name="Full HD"), "spec.renditions[0].name", "pattern"),
    (
        "gop-not-dividing-segment",
        _profile(gopSeconds=3, segmentSeconds=4),
        "spec",
        "segmentSeconds",
    ),
    ("no-renditions", _profile(renditions=[]), "spec.renditions", "at least 1"),
    ("typo-field", _profile(segmentSecond=4), "spec.segmentSecond", "not permitted"),
    ("bad-sample-rate", _profile(audio={"sampleRate": 22050}), "spec.audio.sampleRate", "44100"),
    (
        "both-push-and-pull",
        _stream(ingest={"push": {"app": "live"}, "pull": {"url": "rtmp://cam/live"}}),
        "spec.ingest",
        "exactly one of spec.ingest.push or spec.ingest.pull",
    ),
    ("neither-push-nor-pull", _stream(ingest={}), "spec.ingest", "exactly one"),
    (
        "pull-bad-scheme",
        _stream("livestream-pull.yaml", ingest={"pull": {"url": "ftp://x/y"}}),
        "spec.ingest.pull.url",
        "pattern",
    ),
    (
        "loop-on-network-source",
        _stream("livestream-pull.yaml", ingest={"pull": {"url": "rtsp://cam/1", "loop": True}}),
        "spec.ingest.pull",
        "file://",
    ),
    (
        "missing-profile-ref",
        _without(_stream(), "spec", "profileRef"),
        "spec.profileRef",
        "required",
    ),
    (
        "bad-segment-type",
        _stream(outputs={"hls": {"segmentType": "webm"}}),
        "spec.outputs.hls.segmentType",
        "fmp4",
    ),
    (
        "low-latency-with-ts",
        _stream(outputs={"hls": {"lowLatency": True}}),
        "spec.outputs.hls",
        "set spec.outputs.hls.segmentType to fmp4",
    ),
    (
        "reconnect-negative",
        _stream(reconnectWindowSeconds=-1),
        "spec.reconnectWindowSeconds",
        "greater than or equal to 0",
    ),
    (
        "nodeport-on-clusterip",
        _stream(ingestService={"type": "ClusterIP", "nodePort": 30001}),
        "spec",
        "nodePort",
    ),
    (
        "bad-service-type",
        _stream(ingestService={"type": "External"}),
        "spec.ingestService.type",
        "LoadBalancer",
    ),
    (
        "restream-not-rtmp",
        _stream(restream=[{"name": "yt", "url": "http://example.com/x"}]),
        "spec.restream[0].url",
        "pattern",
    ),
    (
        "restream-duplicate",
        _stream(
            restream=[{"name": "yt", "url": "rtmp://a/b"}, {"name": "yt", "url": "rtmp://c/d"}]
        ),
        "spec.restream",
        "unique",
    ),
    (
        "bad-app-name",
        _stream(ingest={"push": {"app": "Live/Main"}}),
        "spec.ingest.push.app",
        "pattern",
    ),
    ("recording-no-formats", _recording(formats=[]), "spec.formats", "at least 1"),
    ("recording-bad-format", _recording(formats=["avi"]), "spec.formats[0]", "hls"),
    (
        "recording-window-without-times",
        _recording(schedule={"start": "Window"}),
        "spec.schedule",
        "startTime and endTime",
    ),
    (
        "recording-window-backwards",
        _recording(
            schedule={
                "start": "Window",
                "startTime": "2026-01-02T00:00:00Z",
                "endTime": "2026-01-01T00:00:00Z",
            }
        ),
        "spec.schedule",
        "endTime must be after startTime",
    ),
    ("recording-bad-size", _recording(storage={"size": "lots"}), "spec.storage.size", "pattern"),
    (
        "recording-zero-duration",
        _recording(maxDurationSeconds=0),
        "spec.maxDurationSeconds",
        "greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_spec_is_refused_naming_the_field(
    manifest: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        parse_manifest(manifest)
    message = describe_error(caught.value)
    assert any(line.startswith(field) for line in message.splitlines()), message
    assert words in message, message


def test_bad_specs_cover_at_least_fifteen_distinct_mistakes() -> None:
    assert len({b[0] for b in BAD}) >= 15


def test_foreign_documents_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"apiVersion must be kubecast\.dev/v1alpha1"):
        parse_manifest({"apiVersion": "v1", "kind": "ConfigMap"})
    with pytest.raises(ValueError, match="unknown kind 'Channel'"):
        parse_manifest({"apiVersion": "kubecast.dev/v1alpha1", "kind": "Channel"})


def test_recording_defaults_to_hls_and_mp4_from_now() -> None:
    recording = Recording.model_validate(
        {
            "apiVersion": "kubecast.dev/v1alpha1",
            "kind": "Recording",
            "metadata": {"name": "r"},
            "spec": {"streamRef": {"name": "studio"}},
        }
    )
    assert [f.value for f in recording.spec.formats] == ["hls", "mp4"]
    assert recording.spec.schedule.start == "Now"
    assert recording.spec.storage.size == "10Gi"
