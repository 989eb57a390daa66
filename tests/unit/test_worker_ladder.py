"""Which renditions an input gets, and the encoder settings that keep them aligned."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import pytest

from kubecast_api import TranscodeProfileSpec
from kubecast_worker import config, ladder, packager
from kubecast_worker.status import InputState, RenditionState

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


@pytest.mark.parametrize(
    ("source_rate", "expected"),
    [
        (Fraction(25), Fraction(25)),  # never raised to 30 by repeating frames
        (Fraction(24000, 1001), Fraction(24000, 1001)),
        (Fraction(30000, 1001), Fraction(30000, 1001)),
        (Fraction(30), Fraction(30)),
        (Fraction(50), Fraction(25)),  # every other frame
        (Fraction(60000, 1001), Fraction(30000, 1001)),
        (Fraction(60), Fraction(30)),
        (Fraction(120), Fraction(30)),
        (Fraction(48), Fraction(24)),
        (Fraction(3001, 100), Fraction(30)),  # a hair above: no halving to 15
        (None, Fraction(30)),
    ],
)
def test_a_rendition_is_never_faster_than_its_source(
    source_rate: Fraction | None, expected: Fraction
) -> None:
    plan = ladder.plan(
        TranscodeProfileSpec(),
        source=source(1920, 1080, float(source_rate) if source_rate else None, rate=source_rate),
    )
    assert {r.fps for r in plan.rungs} == {expected}  # the default ladder asks for 30


def test_a_rate_asked_below_the_source_is_kept_when_no_even_step_is_near() -> None:
    assert ladder.rung_rate(24, source=Fraction(30)) == Fraction(24)  # 15 would be too far
    assert ladder.rung_rate(15, source=Fraction(30)) == Fraction(15)
    assert ladder.rung_rate(15, source=Fraction(25)) == Fraction(25, 2)
    assert ladder.rung_rate(None, source=Fraction(50)) == Fraction(50)


def test_the_master_playlist_says_the_rate_a_25_fps_source_really_gets() -> None:
    plan = ladder.plan(TranscodeProfileSpec(), source=source(1280, 720, 25.0, rate=Fraction(25)))
    rung = plan.rungs[0]
    assert ladder.gop_frames(rung, gop_seconds=plan.gop_seconds) == 50
    state = RenditionState(name=rung.name, width=rung.width, height=rung.height,
                           fps=float(rung.fps or 0), nominal_kbps=rung.video_kbps,
                           peak_kbps=rung.maxrate_kbps)  # fmt: skip
    text = packager.render_master(
        [packager.variant(state, segment_type="ts", audio_kbps=128, video_codecs="avc1.64001f")]
    )
    (variant,) = m3u8.loads(text).playlists
    assert variant.stream_info.frame_rate == 25.0


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
        encoder = ladder.Encoder(rung=plan.rungs[0], ladder=plan, container=container)
        keys = []
        for n in range(200):
            frame = av.VideoFrame(16, 16, "yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, 30)
            if encoder._keyframe_due(frame):
                keys.append(n)
        assert keys == [0, 60, 120, 180]
    finally:
        container.close()


#: How GStreamer (avenc_aac + flvmux, on a loaded machine) stamped 1024-sample AAC frames
#: at 44.1 kHz: milliseconds off the samples' own clock, from a recorded publish.
GSTREAMER_AUDIO_JITTER_MS = [0, -2, -2, -3, 7, -2, -2, 4, -3, -2, 1, 12, -3, -2, 8, 19, -3, 5]
GSTREAMER_AUDIO_JITTER_MS += [15, -2, 3, 12, -3, -1, 10, -2, -3, 6, 17, -2, 3, 13, -2, 1, 11, -3]


def jittered_audio(frames: int) -> list[av.AudioFrame]:
    out = []
    for k in range(frames):
        frame = av.AudioFrame(format="fltp", layout="stereo", samples=1024)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = 44100
        jitter = GSTREAMER_AUDIO_JITTER_MS[k % len(GSTREAMER_AUDIO_JITTER_MS)]
        frame.pts = round(k * 1024 / 44.1) + jitter
        frame.time_base = Fraction(1, 1000)  # FLV's millisecond timestamps
        out.append(frame)
    return out


def test_irregularly_stamped_audio_comes_out_on_one_continuous_timeline() -> None:
    audio = ladder.AudioLadder(bitrates=[128, 64, 128], rate=48000, channels=2)
    packets: dict[int, list[av.Packet]] = {128: [], 64: []}
    for frame in jittered_audio(200):
        for kbps, mine in audio.encode(frame).items():
            packets[kbps].extend(mine)
    for kbps, mine in audio.finish().items():
        packets[kbps].extend(mine)
    assert set(packets) == {128, 64}  # one encoder per distinct bitrate
    for mine in packets.values():
        assert len(mine) > 150
        # Every AAC frame starts where the previous one ended: nothing overlaps,
        # nothing goes back in time (which the AAC encoder and then the muxer refuse).
        for before, after in itertools.pairwise(mine):
            assert after.pts == before.pts + ladder.AAC_FRAME_SIZE, [p.pts for p in mine]
    # Both bitrates are cut from the same samples: the same timeline, packet for packet.
    assert [p.pts for p in packets[128]] == [p.pts for p in packets[64]]


def test_irregularly_stamped_audio_is_encoded_and_packaged_without_error(tmp_path: Path) -> None:
    plan = ladder.plan(TranscodeProfileSpec(), source=source(1280, 720, 30.0))
    audio = ladder.AudioLadder(bitrates=[128], rate=plan.audio_rate, channels=plan.audio_channels)
    out = av.open(str(tmp_path / "index.m3u8"), mode="w", format="hls", options={"hls_time": "1"})
    stream = ladder.aac_stream(out, ladder=plan, kbps=128)
    dts = []
    encoded = [audio.encode(frame)[128] for frame in jittered_audio(300)] + [audio.finish()[128]]
    for packets in encoded:
        for packet in packets:
            dts.append(packet.dts)
            packet.stream = stream
            out.mux(packet)  # raised EINVAL (non-monotonic DTS) before async=1
    out.close()
    assert dts == sorted(set(dts))
    segments = sorted(tmp_path.glob("*.ts"))
    assert segments
    probe = av.open(str(segments[0]))
    assert probe.streams.audio[0].codec_context.name == "aac"
    assert len([f for f in probe.decode(audio=0)]) > 10  # decodable: the stream's config fits
    probe.close()


def test_a_resolution_change_mid_stream_continues_the_rendition_timeline(tmp_path: Path) -> None:
    profile = TranscodeProfileSpec.model_validate(
        {"renditions": [{"name": "180p", "width": 320, "height": 180, "videoBitrate": 200,
                         "fps": 30, "preset": "ultrafast"}]}
    )  # fmt: skip
    plan = ladder.plan(profile, source=source(1280, 720, 30.0, rate=Fraction(30)))
    out = av.open(str(tmp_path / "index.m3u8"), mode="w", format="hls", options={"hls_time": "1"})
    encoder = ladder.Encoder(rung=plan.rungs[0], ladder=plan, container=out)
    packets = []
    for n in range(60):  # 1 s at 1280x720, then 1 s at 640x360: the publisher changed size
        width, height = (1280, 720) if n < 30 else (640, 360)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts, frame.time_base = n * 33, Fraction(1, 1000)  # FLV milliseconds
        for packet in encoder.video(frame):
            packets.append(packet.pts)
            out.mux(packet)  # raised EINVAL when the rebuilt fps filter restarted at 0
    for packet in encoder.flush():
        packets.append(packet.pts)
        out.mux(packet)
    out.close()
    assert sorted(packets) == list(range(len(packets)))  # one frame every 1/30 s, no repeat
    assert 58 <= len(packets) <= 61


def _reordered(options: dict[str, str], rung: ladder.Rung) -> int:
    """Packets whose pts differs from their dts, from libx264 with ``options``."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = rung.width, rung.height, "yuv420p"
    codec.time_base = Fraction(1, 25)
    codec.options = options
    codec.open()
    packets = []
    for i in range(40):
        frame = av.VideoFrame(rung.width, rung.height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 7) % 256]) * plane.buffer_size)
        frame.pts = i
        packets += codec.encode(frame)
    packets += codec.encode(None)
    return sum(1 for p in packets if p.pts != p.dts)


def test_whep_renditions_are_encoded_without_b_frames_whatever_the_preset() -> None:
    profile = TranscodeProfileSpec.model_validate(
        {"renditions": [{"name": "360p", "width": 640, "height": 360, "videoBitrate": 800,
                         "preset": "medium"}]}
    )  # fmt: skip
    rung = ladder.plan(profile, source=source(640, 360, 25.0)).rungs[0]
    assert _reordered(ladder.x264_options(rung, gop_seconds=2), rung) > 0, "medium has B-frames"
    options = ladder.x264_options(rung, gop_seconds=2, b_frames=False)
    assert options["bf"] == "0"
    assert _reordered(options, rung) == 0
