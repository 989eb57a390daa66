"""The session pipeline in-process: what happens when one rendition cannot keep up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SMALL_PROFILE, make_media, needs_ffmpeg, timing

from kubecast_api import TranscodeProfileSpec
from kubecast_worker import ingest, ladder, packager, pipeline
from kubecast_worker.status import Status

pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(60)]


def test_a_rendition_that_falls_behind_skips_frames_but_stays_aligned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = make_media(tmp_path / "clip.mp4", seconds=4)
    slow = "360p"
    real_video = ladder.Encoder.video

    def video(self: ladder.Encoder, frame: Any) -> Any:
        if self.rung.name == slow and frame.pts and frame.time_base * frame.pts > 1:
            time.sleep(0.1)  # from 1 s on, 10 fps at most: 2.5x slower than real time
        return real_video(self, frame)

    monkeypatch.setattr(ladder.Encoder, "video", video)
    monkeypatch.setattr(pipeline, "LIVE_BACKLOG_SECONDS", 0.3)  # 9 frames
    status = Status(stream="unit", mode="pull", ingest_url=clip.as_uri())
    stop = threading.Event()
    source = ingest.Source(
        opener=ingest.open_pull(clip.as_uri()), status=status, stop=stop, realtime=True
    )
    profile = TranscodeProfileSpec.model_validate(yaml.safe_load(yaml.safe_dump(SMALL_PROFILE)))
    settings = pipeline.Settings(
        profile=profile,
        packaging=packager.Packaging(out_dir=tmp_path / "out", segment_seconds=2),
        live=True,
    )
    outcome = pipeline.run(source=source, settings=settings, status=status, stop=stop)
    packager.end(tmp_path / "out", ["360p", "180p"])

    rungs = {r["name"]: r for r in outcome.renditions}
    assert rungs[slow]["droppedFrames"] > 10
    assert rungs["180p"]["droppedFrames"] == 0  # the others lose nothing
    assert status.view().frames_dropped == rungs[slow]["droppedFrames"]
    slow_t = timing(tmp_path / "out" / slow / "index.m3u8")
    fast_t = timing(tmp_path / "out" / "180p" / "index.m3u8")
    assert slow_t.keyframes == fast_t.keyframes  # still aligned
    assert abs(slow_t.video_seconds - fast_t.video_seconds) < 0.05  # frames repeated, not lost
    assert rungs[slow]["frames"] == rungs["180p"]["frames"]
