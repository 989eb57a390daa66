"""FrameSource: decoded WebRTC frames onto the session timeline.

Frames are real PyAV frames stamped as aiortc stamps them (RTP timestamps: video
at 90 kHz, Opus at 48 kHz, each track from its own random origin); the arrival
times are given, so that the rebasing can be checked to the tick.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import pytest
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from kubecast_worker.ingest import SourceError
from kubecast_worker.ingest_frames import FrameSource
from kubecast_worker.status import Status
from kubecast_worker.whip import FrameQueue

pytestmark = pytest.mark.timeout(30)


def video(pts: int) -> VideoFrame:
    frame = VideoFrame(64, 36, "yuv420p")
    frame.pts, frame.time_base = pts, Fraction(1, 90000)
    return frame


def audio(pts: int) -> AudioFrame:
    frame = AudioFrame(format="s16", layout="stereo", samples=960)
    frame.sample_rate = 48000
    frame.pts, frame.time_base = pts, Fraction(1, 48000)
    return frame


class Feed(FrameQueue):
    """A FrameQueue whose arrival times are the test's, not the clock's."""

    def at(self, kind: str, frame: object, arrived: float) -> None:
        self._queue.put_nowait((kind, frame, arrived))  # type: ignore[arg-type]


def source(feed: Feed, timeout: float = 0.5) -> FrameSource:
    status = Status(stream="t", mode="push", ingest_url="")
    return FrameSource(frames=feed, status=status, stop=threading.Event(), media_timeout=timeout)


def test_tracks_start_where_they_arrived_and_run_on_their_rtp_clocks() -> None:
    feed = Feed(video_codec="vp8", has_audio=True)
    t0, v0, a0 = time.time(), 3_000_000_000, 17  # random RTP origins, one near the wrap
    feed.at("audio", audio(a0 - 960), t0 - 0.02)  # before the first picture: dropped
    for i in range(30):  # 25 fps for 1.2 s; audio from 0.1 s on, every 20 ms
        feed.at("video", video(v0 + i * 3600), t0 + i * 0.04)
    for i in range(50):
        feed.at("audio", audio(a0 + i * 960), t0 + 0.1 + i * 0.02)
    feed.end()
    src = source(feed)
    info = src.open()
    assert (info.video_codec, info.width, info.height) == ("vp8", 64, 36)
    assert info.rate == 25 and info.audio_codec == "opus" and src.has_audio
    items = list(src)
    videos = [m for m in items if m.kind == "video"]
    audios = [m for m in items if m.kind == "audio"]
    assert [round(m.time, 3) for m in videos[:3]] == [0.0, 0.04, 0.08]
    assert round(videos[-1].time, 3) == round(29 * 0.04, 3)
    assert len(audios) == 50  # the one before the first picture is gone
    assert round(audios[0].time, 3) == 0.1 and round(audios[-1].time, 3) == 0.1 + 0.98
    assert all(m.frame.time_base == Fraction(1, 90000) for m in videos)  # type: ignore[union-attr]


def test_the_rtp_clock_wrapping_keeps_the_timeline_going() -> None:
    feed = Feed(video_codec="h264", has_audio=False)
    start, t0 = (1 << 32) - 2 * 3600, time.time()
    for i in range(5):
        feed.at("video", video((start + i * 3600) % (1 << 32)), t0 + i * 0.04)
    feed.end()
    src = source(feed)
    src.open()
    assert [round(m.time, 2) for m in src] == [0.0, 0.04, 0.08, 0.12, 0.16]


def test_silence_ends_the_session_after_the_media_timeout() -> None:
    feed = Feed(video_codec="vp8", has_audio=False)
    for i in range(3):
        feed.at("video", video(i * 3600), time.time())
    src = source(feed, timeout=0.3)
    src.open()
    began = time.monotonic()
    assert len(list(src)) == 3  # and then nothing: the iterator ends by itself
    assert 0.25 < time.monotonic() - began < 2.0


def test_a_publisher_that_sends_no_video_fails_the_session() -> None:
    feed = Feed(video_codec="vp8", has_audio=True)
    feed.at("audio", audio(0), time.time())
    feed.end()
    with pytest.raises(SourceError, match="no video"):
        source(feed).open()


def test_video_that_waited_too_long_is_skipped_and_audio_is_kept() -> None:
    """A starved ingest thread: frames that queued for over a second are not sent on
    (the ladder repeats the previous picture), so latency does not build up."""
    feed = Feed(video_codec="vp8", has_audio=True)
    t0 = time.time()
    for i in range(30):  # the first 1.2 s: read by open() to measure the rate
        feed.at("video", video(i * 3600), t0 + i * 0.04)
    stale = t0 - 5  # then frames that have waited five seconds
    feed.at("video", video(30 * 3600), stale)
    feed.at("audio", audio(0), t0 + 0.1)
    feed.at("audio", audio(960), stale)
    feed.end()
    src = source(feed)
    src.open()
    items = list(src)
    assert [m.kind for m in items].count("video") == 30
    assert [m.kind for m in items].count("audio") == 2
    assert src.skipped == 1 and src.status.view().frames_dropped == 1
