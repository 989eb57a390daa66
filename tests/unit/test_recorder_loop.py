"""The recording loop against a scripted source: when it starts, what it takes, where gaps go.

The source here is a script of observations (what each poll of the media playlist
shows); segments are a few bytes each and only HLS is written, so no media is
involved. The real pipeline is in tests/e2e/test_recorder.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import m3u8
import pytest

from kubecast_worker.recorder import journal, origin, tracking
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.options import Options
from kubecast_worker.recorder.recorder import Recorder


def seg(n: int, *, session: str = "a", discontinuity: bool = False) -> tracking.SourceSegment:
    uri = f"{session}-{n:05d}.ts"
    return tracking.SourceSegment(
        sequence=n, url=f"http://o/{uri}", uri=uri, duration=1.0, discontinuity=discontinuity
    )


def live(*segments: tracking.SourceSegment) -> origin.Observation:
    return origin.Observation(reachable=True, segments=segments, target_duration=0.5)


def ended(*segments: tracking.SourceSegment) -> origin.Observation:
    return origin.Observation(reachable=True, ended=True, segments=segments, target_duration=0.5)


DOWN = origin.Observation(reachable=False, error="GET http://o/master.m3u8: HTTP 404")


class Script:
    """A source that shows one observation per poll, then the last one forever."""

    def __init__(
        self, observations: Iterable[origin.Observation], *, missing: frozenset[str] = frozenset()
    ):
        self.observations = list(observations)
        self.missing = missing
        self.rendition: origin.Rendition | None = origin.Rendition(
            name="180p", url="http://o/index.m3u8", bandwidth=1
        )
        self.fetched: list[str] = []

    async def observe(self) -> origin.Observation:
        if len(self.observations) > 1:
            return self.observations.pop(0)
        return self.observations[0]

    async def fetch(self, url: str, *, timeout: float) -> bytes:
        if url.rsplit("/", 1)[1] in self.missing:
            raise origin.SourceError(f"GET {url}: HTTP 404", status=404)
        self.fetched.append(url.rsplit("/", 1)[1])
        return url.encode()


def record(tmp_path: Path, script: Script, **options: object) -> tuple[Recorder, m3u8.M3U8]:
    settings: dict[str, object] = {"formats": ("hls",), "idle_timeout": 0.0}
    settings.update(options)
    recorder = Recorder(
        options=Options(source="http://o", out=tmp_path, **settings),  # type: ignore[arg-type]
        metrics=Metrics("test"),
        logger=logging.getLogger("test.recorder"),
        source=script,
    )
    assert asyncio.run(asyncio.wait_for(recorder.run(), timeout=20)) is True
    return recorder, m3u8.loads((tmp_path / journal.PLAYLIST).read_text())


def uris(playlist: m3u8.M3U8) -> list[str]:
    return [s.uri for s in playlist.segments]


def cuts(playlist: m3u8.M3U8) -> list[int]:
    return [i for i, s in enumerate(playlist.segments) if s.discontinuity]


def test_recording_now_starts_at_the_newest_segment_and_ends_when_the_source_ends(
    tmp_path: Path,
) -> None:
    script = Script(
        [live(seg(1), seg(2), seg(3)), live(seg(2), seg(3), seg(4), seg(5)), ended(seg(5))]
    )
    recorder, playlist = record(tmp_path, script)
    assert script.fetched == ["a-00003.ts", "a-00004.ts", "a-00005.ts"]
    assert len(playlist.segments) == 3 and cuts(playlist) == [] and playlist.is_endlist
    status = recorder.status()
    assert status["state"] == "completed" and status["segments"] == 3
    assert status["duration_seconds"] == 3.0 and status["last_error"] is None
    assert [f["format"] for f in status["files"]] == ["hls"]


def test_a_source_that_is_not_up_yet_is_waited_for_and_recorded_from_its_start(
    tmp_path: Path,
) -> None:
    script = Script([DOWN, DOWN, live(seg(0)), live(seg(0), seg(1)), ended(seg(0), seg(1))])
    _, playlist = record(tmp_path, script)
    assert script.fetched == ["a-00000.ts", "a-00001.ts"]
    assert cuts(playlist) == []


def test_a_restarted_source_becomes_one_discontinuity(tmp_path: Path) -> None:
    script = Script(
        [
            live(seg(4), seg(5)),
            live(seg(5), seg(6)),
            live(seg(0, session="b"), seg(1, session="b")),  # new media sequence, same numbers
            ended(seg(0, session="b"), seg(1, session="b")),
        ]
    )
    _, playlist = record(tmp_path, script)
    assert script.fetched == ["a-00005.ts", "a-00006.ts", "b-00000.ts", "b-00001.ts"]
    assert cuts(playlist) == [2]


def test_new_media_after_endlist_starts_a_new_run_even_with_continued_numbers(
    tmp_path: Path,
) -> None:
    script = Script(
        [live(seg(1)), ended(seg(1), seg(2)), live(seg(1), seg(2), seg(3)), ended(seg(3))]
    )
    _, playlist = record(tmp_path, script, idle_timeout=5.0, max_duration=3.0)
    assert script.fetched == ["a-00001.ts", "a-00002.ts", "a-00003.ts"]
    assert cuts(playlist) == [2]


def test_the_sources_own_discontinuities_are_kept(tmp_path: Path) -> None:
    script = Script(
        [
            live(seg(1)),
            live(seg(1), seg(2), seg(3, session="c", discontinuity=True)),
            ended(seg(3, session="c", discontinuity=True)),
        ]
    )
    _, playlist = record(tmp_path, script)
    assert cuts(playlist) == [2]


def test_a_segment_gone_before_it_was_fetched_is_a_gap_not_a_stall(tmp_path: Path) -> None:
    script = Script(
        [live(seg(1)), live(seg(1), seg(2), seg(3)), ended(seg(3))],
        missing=frozenset({"a-00002.ts"}),
    )
    _, playlist = record(tmp_path, script)
    assert uris(playlist) == ["segments/000000.ts", "segments/000001.ts"]
    assert script.fetched == ["a-00001.ts", "a-00003.ts"]
    assert cuts(playlist) == [1]


def test_wait_for_next_live_skips_the_session_that_is_on_air(tmp_path: Path) -> None:
    script = Script(
        [
            live(seg(7), seg(8)),
            live(seg(8), seg(9)),  # still the old session: not recorded
            ended(seg(9)),  # it ends: the next media is the next live
            ended(seg(9)),
            live(seg(0, session="n")),
            live(seg(0, session="n"), seg(1, session="n")),
            ended(seg(1, session="n")),
        ]
    )
    recorder, playlist = record(tmp_path, script, wait_for_next_live=True)
    assert script.fetched == ["n-00000.ts", "n-00001.ts"]
    assert cuts(playlist) == []
    assert recorder.status()["start_time"] is not None


def test_max_duration_stops_after_the_segment_that_reaches_it(tmp_path: Path) -> None:
    script = Script(
        [live(seg(1)), live(seg(1), seg(2), seg(3), seg(4), seg(5))]  # never ends
    )
    recorder, playlist = record(tmp_path, script, max_duration=2.5, idle_timeout=60.0)
    assert len(playlist.segments) == 3 and playlist.is_endlist
    assert "max-duration" in (recorder.journal.state.stop_reason or "")


def test_a_stop_request_while_waiting_completes_an_empty_recording(tmp_path: Path) -> None:
    async def scenario() -> Recorder:
        recorder = Recorder(
            options=Options(source="http://o", out=tmp_path, formats=("hls", "mp4")),
            metrics=Metrics("test"),
            logger=logging.getLogger("test.recorder"),
            source=Script([DOWN]),
        )
        running = asyncio.create_task(recorder.run())
        await asyncio.sleep(0.3)
        assert recorder.status()["state"] == "waiting"
        assert "HTTP 404" in (recorder.status()["last_error"] or "")
        recorder.request_stop("POST /stop")
        assert await asyncio.wait_for(running, 5) is True
        return recorder

    recorder = asyncio.run(scenario())
    status = recorder.status()
    assert status["state"] == "completed" and status["files"] == []
    assert status["last_error"] is None


@pytest.mark.parametrize("state", ["completed"])
def test_a_completed_recording_is_not_recorded_again_after_a_restart(
    tmp_path: Path, state: str
) -> None:
    script = Script([live(seg(1)), ended(seg(1))])
    record(tmp_path, script)
    again = Script([live(seg(2)), ended(seg(2))])
    recorder, playlist = record(tmp_path, again)
    assert again.fetched == [] and len(playlist.segments) == 1
    assert recorder.status()["state"] == state


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_mp4_only_keeps_just_the_mp4_once_it_is_written(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-f", "lavfi", "-i", "sine",
            "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
            "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod",
            "-hls_segment_filename", str(media / "a-%05d.ts"), str(media / "index.m3u8"),
        ],
        check=True,
    )  # fmt: skip

    class Files(Script):
        async def fetch(self, url: str, *, timeout: float) -> bytes:
            await super().fetch(url, timeout=timeout)
            return (media / url.rsplit("/", 1)[1]).read_bytes()

    script = Files([live(seg(0)), live(seg(0), seg(1), seg(2)), ended(seg(2))])
    out = tmp_path / "rec"
    recorder = Recorder(
        options=Options(source="http://o", out=out, formats=("mp4",), idle_timeout=0),
        metrics=Metrics("test"),
        logger=logging.getLogger("test.recorder"),
        source=script,
    )
    assert asyncio.run(asyncio.wait_for(recorder.run(), timeout=20)) is True
    status = recorder.status()
    assert [f["name"] for f in status["files"]] == ["recording.mp4"]
    assert status["files"][0]["duration_seconds"] == pytest.approx(3.0, abs=0.15)
    assert sorted(p.name for p in out.iterdir()) == ["recorder-state.json", "recording.mp4"]
