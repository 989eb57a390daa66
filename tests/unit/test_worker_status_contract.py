"""The worker↔operator contract: what ``/status`` says is what the models say.

A real ``Status`` (the worker's) and a real recorder document go through
``kubecast_api.worker_status``; a field renamed or added on either side fails here.
"""

from __future__ import annotations

import json

import pydantic
import pytest

from kubecast_api.worker_status import RecorderStatus, WorkerStatus
from kubecast_worker import events
from kubecast_worker.restream import TargetState
from kubecast_worker.status import InputState, RenditionState, Status
from kubecast_worker.tally import Written


def live_status() -> Status:
    status = Status(stream="studio", mode="push", ingest_url="rtmp://0.0.0.0:1935/live")
    status.post(
        events.IngestListening(
            "rtmp://0.0.0.0:1935/live", lambda: {"accepted": 1, "refused_wrong_key": 2}
        )
    )
    status.post(events.SessionStarted(publisher="198.51.100.4:50000"))
    status.post(events.StateChanged("live"))
    status.post(
        events.InputOpened(
            InputState(video_codec="h264", audio_codec="aac", width=1280, height=720, fps=30.0)
        )
    )
    status.post(
        events.RenditionsPlanned(
            (
                RenditionState(
                    name="720p",
                    width=1280,
                    height=720,
                    fps=30.0,
                    nominal_kbps=2500,
                    peak_kbps=2675,
                    playlist="/720p/index.m3u8",
                ),
                RenditionState(name="1080p", state="Dropped", reason="would upscale"),
            )
        )
    )
    status.post(events.CodecsKnown("720p", "avc1.64001f"))
    # Two writes, as a rendition's thread posts them: the meter needs two points.
    for frames, nbytes, seconds, segments in ((90, 500_000, 3.0, 1), (180, 1_000_000, 6.0, 3)):
        written = Written(
            frames=frames,
            bytes=nbytes,
            media_time=seconds,
            segments=segments,
            first_segment_seconds=2.1,
        )
        status.post(events.RenditionWrote("720p", written, nbytes=500_000))
    status.post(events.FrameHandedOut(wall=1.0, media=5.5, skipped=("720p",), late=True))
    status.post(events.Demuxed(nbytes=4_000, at=1.0, frames=1))
    status.post(events.MasterWritten("/master.m3u8"))
    status.post(events.ThumbnailWritten("/thumbnail.jpg"))
    target = TargetState(name="youtube", url="rtmp://a.rtmp.youtube.com/live2")
    status.post(events.RestreamAttached(lambda: [target.to_json()]))
    status.post(events.ErrorReported("cannot open the input: Connection refused"))
    return status


@pytest.mark.parametrize("state", ["idle", "live", "reconnecting"])
def test_a_real_worker_status_round_trips_through_the_model(state: str) -> None:
    status = live_status()
    status.post(events.StateChanged(state))  # type: ignore[arg-type]
    snapshot = status.snapshot()
    model = WorkerStatus.model_validate(snapshot)
    dumped = model.model_dump_json(by_alias=True, exclude_unset=True)
    assert json.loads(dumped) == json.loads(json.dumps(snapshot))


def test_a_renamed_field_is_refused_with_its_name() -> None:
    snapshot = live_status().snapshot()
    snapshot["droppedFrame"] = snapshot.pop("droppedFrames")
    with pytest.raises(pydantic.ValidationError, match="droppedFrame"):
        WorkerStatus.model_validate(snapshot)


def test_a_recorder_status_round_trips_through_the_model() -> None:
    document = {
        "state": "recording",
        "duration_seconds": 12.5,
        "bytes": 123456,
        "segments": 6,
        "files": [
            {"name": "index.m3u8", "format": "hls", "size_bytes": 123456, "duration_seconds": 12.5}
        ],
        "start_time": "2026-12-02T01:00:00+00:00",
        "end_time": None,
        "last_error": None,
    }
    model = RecorderStatus.model_validate(document)
    assert json.loads(model.model_dump_json(exclude_unset=True)) == document
    with pytest.raises(pydantic.ValidationError, match="state"):
        RecorderStatus.model_validate({**document, "state": "paused"})
