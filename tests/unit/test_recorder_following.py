"""Following the source: new segments and gaps, choosing a rendition, reading the flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import m3u8
import pytest

from kubecast_worker import packager
from kubecast_worker.recorder import cli, origin, tracking
from kubecast_worker.recorder.options import OptionsError, parse_formats, parse_time

MASTER_URL = "http://demo-playback.live.svc.cluster.local:8080/master.m3u8"
MASTER = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=5000000,RESOLUTION=1920x1080
1080p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360
stream_360p.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=6000000,RESOLUTION=1920x1080,STABLE-VARIANT-ID="passthrough"
source/index.m3u8
"""


def window(first: int, count: int, *, prefix: str = "a") -> list[tracking.SourceSegment]:
    return [
        tracking.SourceSegment(
            sequence=n, url=f"http://o/{prefix}{n}.ts", uri=f"{prefix}{n}.ts", duration=2.0
        )
        for n in range(first, first + count)
    ]


def test_nothing_seen_yet_takes_the_whole_window_as_a_gap() -> None:
    following = tracking.after(None, window(5, 3))
    assert [s.sequence for s in following.segments] == [5, 6, 7]
    assert not following.contiguous


def test_segments_after_the_last_recorded_one_follow_without_a_gap() -> None:
    position = tracking.Position(sequence=6, uri="a6.ts")
    following = tracking.after(position, window(4, 5))
    assert [s.sequence for s in following.segments] == [7, 8]
    assert following.contiguous


def test_nothing_new_when_the_window_has_not_moved() -> None:
    following = tracking.after(tracking.Position(sequence=8, uri="a8.ts"), window(4, 5))
    assert following.segments == [] and following.contiguous


def test_a_window_starting_right_after_the_position_is_contiguous() -> None:
    following = tracking.after(tracking.Position(sequence=3, uri="a3.ts"), window(4, 2))
    assert [s.sequence for s in following.segments] == [4, 5]
    assert following.contiguous


def test_falling_behind_the_window_is_a_gap() -> None:
    following = tracking.after(tracking.Position(sequence=1, uri="a1.ts"), window(10, 3))
    assert [s.sequence for s in following.segments] == [10, 11, 12]
    assert not following.contiguous


def test_a_restarted_source_reusing_numbers_and_names_is_a_gap() -> None:
    # ffmpeg restarted: media sequence 0 again; sequence 1 exists but is another segment.
    position = tracking.Position(sequence=1, uri="b1.ts")
    following = tracking.after(position, window(0, 3, prefix="a"))
    assert [s.uri for s in following.segments] == ["a0.ts", "a1.ts", "a2.ts"]
    assert not following.contiguous


def test_position_round_trips_through_json_and_ignores_garbage() -> None:
    position = tracking.Position(sequence=42, uri="x-00042.ts")
    assert tracking.Position.from_json(position.to_json()) == position
    assert tracking.Position.from_json({"sequence": "nope"}) is None
    assert tracking.Position.from_json(None) is None


def test_default_rendition_is_the_highest_bandwidth() -> None:
    master = m3u8.loads(MASTER, uri=MASTER_URL)
    chosen = origin.choose_rendition(master, MASTER_URL, None)
    assert chosen.url == "http://demo-playback.live.svc.cluster.local:8080/source/index.m3u8"
    assert chosen.bandwidth == 6_000_000


@pytest.mark.parametrize(
    ("wanted", "path"),
    [
        ("720p", "720p/index.m3u8"),  # the folder
        ("360p", "stream_360p.m3u8"),  # the end of the file name
        ("passthrough", "source/index.m3u8"),  # STABLE-VARIANT-ID
        ("source", "source/index.m3u8"),
    ],
)
def test_a_named_rendition_is_found_by_folder_file_or_stable_id(wanted: str, path: str) -> None:
    master = m3u8.loads(MASTER, uri=MASTER_URL)
    chosen = origin.choose_rendition(master, MASTER_URL, wanted)
    assert chosen.url.endswith("/" + path)
    assert chosen.name == wanted


def test_an_unknown_rendition_says_which_ones_exist() -> None:
    master = m3u8.loads(MASTER, uri=MASTER_URL)
    with pytest.raises(origin.RenditionNotFound) as caught:
        origin.choose_rendition(master, MASTER_URL, "4k")
    message = str(caught.value)
    assert "'4k'" in message and "720p" in message and "spec.rendition" in message


def test_a_rendition_whose_audio_is_a_separate_group_is_refused_with_the_reason() -> None:
    # What a worker with spec.outputs.dash serves: video-only variants, audio apart.
    text = packager.render_master(
        [
            packager.Variant(
                uri="720p/index.m3u8", bandwidth=3_000_000, average_bandwidth=2_800_000,
                width=1280, height=720, codecs="avc1.64001f,mp4a.40.2", frame_rate=30,
                audio_group="audio-128k",
            )
        ],
        segment_type="fmp4",
        audio_groups=[packager.AudioGroup("audio-128k", "audio-128k/index.m3u8", 128, 2)],
    )  # fmt: skip
    master = m3u8.loads(text, uri=MASTER_URL)
    for wanted in (None, "720p"):
        with pytest.raises(origin.SeparateAudio) as caught:
            origin.choose_rendition(master, MASTER_URL, wanted)
        assert "no audio" in str(caught.value) and "spec.outputs.dash" in str(caught.value)


def test_a_media_playlist_as_source_is_its_own_rendition() -> None:
    media = m3u8.loads("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n", uri=MASTER_URL)
    assert origin.choose_rendition(media, MASTER_URL, None).url == MASTER_URL


def test_source_segments_get_absolute_urls_sequence_numbers_and_init_sections() -> None:
    text = (
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n"
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXT-X-PROGRAM-DATE-TIME:2025-05-01T18:00:00.000Z\n#EXTINF:2.0,\ns41.m4s\n"
        "#EXT-X-DISCONTINUITY\n#EXTINF:2.0,\ns42.m4s\n"
    )
    url = "http://o:8080/720p/index.m3u8"
    first, second = origin.segments_of(m3u8.loads(text, uri=url), url)
    assert (first.sequence, second.sequence) == (41, 42)
    assert first.url == "http://o:8080/720p/s41.m4s" and first.uri == "s41.m4s"
    assert first.init_url == "http://o:8080/720p/init.mp4"
    assert second.discontinuity and not first.discontinuity
    assert first.program_date_time == datetime(2025, 5, 1, 18, 0, tzinfo=UTC)


def test_a_low_latency_playlist_gives_its_complete_segments_only() -> None:
    text = (
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.001\n"
        '#EXT-X-PART-INF:PART-TARGET=0.33334\n#EXT-X-MAP:URI="e-init.mp4"\n'
        '#EXT-X-PART:DURATION=0.33333,URI="e-00007.0.m4s",INDEPENDENT=YES\n'
        "#EXTINF:2.0,\ne-00007.m4s\n"
        '#EXT-X-PART:DURATION=0.33333,URI="e-00008.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="e-00008.1.m4s"\n'
    )
    url = "http://o:8080/720p/index.m3u8"
    (only,) = origin.segments_of(m3u8.loads(text, uri=url), url)
    # The segment still being written (its parts) is recorded once it is whole.
    assert (only.sequence, only.uri) == (7, "e-00007.m4s")


def test_flags_are_parsed_as_the_operator_renders_them(tmp_path: Path) -> None:
    args = cli.parser().parse_args(
        [
            "--source", "http://demo-playback.live.svc.cluster.local:8080",
            "--out", str(tmp_path), "--formats", "hls,mp4,fmp4", "--idle-timeout", "300",
            "--admin", "0.0.0.0:9090", "--bind-host", "10.0.0.7", "--rendition", "720p",
            "--max-duration", "3600", "--wait-for-next-live",
            "--start-at", "2025-05-01T18:00:00+00:00", "--stop-at", "2025-05-01T19:00:00Z",
        ]
    )  # fmt: skip
    options = cli.options_from(args)
    assert options.master_url == "http://demo-playback.live.svc.cluster.local:8080/master.m3u8"
    assert options.stream_name == "demo"
    assert (options.http_host, options.http_port) == ("10.0.0.7", 9090)
    assert options.formats == ("hls", "mp4", "fmp4")
    assert options.stop_at is not None and options.start_at is not None
    assert options.stop_at - options.start_at == timedelta(hours=1)


def test_bad_flags_are_refused_with_the_flag_named(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="--formats"):
        parse_formats("hls,avi")
    with pytest.raises(OptionsError, match="--start-at"):
        parse_time("tomorrow", "--start-at")
    assert parse_time("2025-05-01T20:00:00+02:00", "--stop-at").utcoffset() == timedelta(hours=2)
    assert parse_time("2025-05-01T18:00:00", "--stop-at").tzinfo in (UTC, UTC)
    code = cli.main(["--source", "ftp://x", "--out", str(tmp_path)])
    assert code == 2
