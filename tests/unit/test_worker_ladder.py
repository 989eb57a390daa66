"""Which renditions an input gets, and the encoder settings that keep them aligned."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest

from kubecast_api import TranscodeProfileSpec
from kubecast_worker import config, ladder
from kubecast_worker.status import InputState

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "transcodeprofile-default.yaml"


def source(
    width: int = 1280, height: int = 720, fps: float | None = 25.0, rate: Fraction | None = None
) -> InputState:
    return InputState(video_codec="h264", width=width, height=height, fps=fps, rate=rate)


def test_renditions_taller_than_the_input_are_dropped_with_a_reason() -> None:
    plan = ladder.plan(TranscodeProfileSpec(), source=source(1280, 720))
    assert [r.name for r in plan.rungs] == ["720p", "480p", "360p"]
    assert [d.name for d in plan.dropped] == ["1080p"]
    reason = plan.dropped[0].reason
    assert "upscale" in reason and "1280x720" in reason and "1920x1080" in reason


def test_a_1080p_input_keeps_the_whole_default_ladder() -> None:
    plan = ladder.plan(TranscodeProfileSpec(), source=source(1920, 1080, 30.0))
    assert [r.name for r in plan.rungs] == ["1080p", "720p", "480p", "360p"]
    assert plan.dropped == ()
    top = plan.rungs[0]
    assert (top.width, top.height, top.fps, top.video_kbps, top.maxrate_kbps) == (
        1920,
        1080,
        Fraction(30),
        4000,
        4280,
    )


def test_an_input_smaller_than_every_rendition_is_refused_with_what_to_do() -> None:
    with pytest.raises(ladder.LadderError, match="add a rendition at most 240 pixels tall"):
        ladder.plan(TranscodeProfileSpec(), source=source(320, 240))


def test_passthrough_survives_any_input_and_takes_the_source_size() -> None:
    profile = TranscodeProfileSpec.model_validate(
        {
            "renditions": [
                {"name": "source", "passthrough": True},
                {"name": "1080p", "width": 1920, "height": 1080, "videoBitrate": 4000},
            ]
        }
    )
    plan = ladder.plan(profile, source=source(640, 360, 25.0))
    assert [(r.name, r.passthrough, r.width, r.height) for r in plan.rungs] == [
        ("source", True, 640, 360)
    ]
    assert [d.name for d in plan.dropped] == ["1080p"]


def test_rendition_without_fps_keeps_the_input_rate() -> None:
    profile = TranscodeProfileSpec.model_validate(
        {"renditions": [{"name": "360p", "width": 640, "height": 360, "videoBitrate": 800}]}
    )
    ntsc = source(fps=29.97, rate=Fraction(30000, 1001))
    assert ladder.plan(profile, source=ntsc).rungs[0].fps == Fraction(30000, 1001)
    assert ladder.plan(profile, source=source(fps=25.0)).rungs[0].fps == Fraction(25)
    assert ladder.plan(profile, source=source(fps=None)).rungs[0].fps == Fraction(30)


def test_codecs_the_worker_cannot_make_yet_are_refused_by_field() -> None:
    profile = TranscodeProfileSpec.model_validate(
        {
            "renditions": [
                {"name": "360p", "width": 640, "height": 360, "videoBitrate": 800, "codec": "av1"}
            ]
        }
    )
    with pytest.raises(ladder.LadderError, match=r"spec\.renditions\[0\]\.codec: av1"):
        ladder.plan(profile, source=source())
    opus = TranscodeProfileSpec.model_validate({"audio": {"codec": "opus"}})
    with pytest.raises(ladder.LadderError, match=r"set spec\.audio\.codec to aac"):
        ladder.plan(opus, source=source())


def test_x264_options_fix_the_gop_and_forbid_scene_cut_keyframes() -> None:
    profile = config.load_profile(SAMPLE)
    plan = ladder.plan(profile, source=source(1920, 1080, 30.0))
    options = ladder.x264_options(plan.rungs[1], gop_seconds=plan.gop_seconds)
    assert options["g"] == options["keyint_min"] == "60"  # 2 s x 30 fps
    assert options["sc_threshold"] == "0"
    assert options["forced-idr"] == "1"
    assert "open-gop=0" in options["x264-params"]
    assert (options["b"], options["maxrate"], options["bufsize"]) == ("2500k", "2675k", "3750k")
    assert (options["preset"], options["profile"], options["level"]) == ("veryfast", "high", "3.1")


@pytest.mark.parametrize(
    ("extradata", "expected"),
    [
        (b"\x00\x00\x00\x01\x67\x64\x00\x1f\xac\xd9", "avc1.64001f"),  # Annex B, high 3.1
        (b"\x00\x00\x01\x09\xf0\x00\x00\x01\x67\x4d\x40\x1e\xab", "avc1.4d401e"),  # AUD first
        (b"\x01\x42\xc0\x0d\xff\xe1\x00\x19", "avc1.42c00d"),  # avcC (FLV, MP4)
        (b"", None),
        (None, None),
    ],
)
def test_avc1_codec_string_comes_from_the_sps(extradata: bytes | None, expected: str) -> None:
    assert ladder.avc1_codec(extradata) == expected


def test_forced_keyframes_fall_on_gop_boundaries_of_the_session_timeline() -> None:
    plan = ladder.plan(TranscodeProfileSpec(), source=source(1280, 720, 30.0))
    container = av.open("/dev/null", mode="w", format="mpegts")
    try:
        encoder = ladder.Encoder(
            rung=plan.rungs[0], ladder=plan, container=container, with_audio=False
        )
        keys = []
        for n in range(200):
            frame = av.VideoFrame(16, 16, "yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, 30)
            if encoder._keyframe_due(frame):
                keys.append(n)
        assert keys == [0, 60, 120, 180]
    finally:
        container.close()
