"""A publish that starts new playlists (the first, or one after the reconnect window)
never leaves /status offering a master playlist that is not there."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from kubecast_api import TranscodeProfileSpec
from kubecast_worker import events, ingest, packager, pipeline
from kubecast_worker.status import Status

PROFILE = {
    "gopSeconds": 1,
    "segmentSeconds": 1,
    "audio": {"codec": "aac", "sampleRate": 48000, "channels": 2},
    "renditions": [
        {"name": "144p", "width": 256, "height": 144, "videoBitrate": 100, "maxrate": 150,
         "bufsize": 200, "audioBitrate": 64, "fps": 25, "preset": "ultrafast",
         "profile": "main"},
    ],
}  # fmt: skip


def clip(path: Path, *, seconds: int = 2) -> Path:
    """A small H.264 file, made with PyAV (no ffmpeg CLI needed)."""
    source = av.open("testsrc2=size=256x144:rate=25", format="lavfi")
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "25"}
        for index, frame in enumerate(source.decode(video=0)):
            if index >= seconds * 25:
                break
            frame.pts, frame.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    source.close()
    return path


def test_status_drops_the_old_master_until_the_new_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    (out / "144p").mkdir(parents=True)
    (out / "master.m3u8").write_text("#EXTM3U\n")  # the last session's, ended
    (out / "144p" / "index.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
    status = Status(stream="unit", mode="pull", ingest_url="file:")
    status.post(events.MasterWritten("/master.m3u8"))  # what the last session left
    offered: list[tuple[str | None, bool]] = []
    real_write_master = packager.write_master

    def write_master(out_dir: Path, variants: Any, **options: Any) -> None:
        # Just before the new master exists: what /status offers, and whether it is there.
        offered.append((status.view().master_url, (out_dir / packager.MASTER).exists()))
        real_write_master(out_dir, variants, **options)

    monkeypatch.setattr(packager, "write_master", write_master)
    media = clip(tmp_path / "clip.mp4")
    stop = threading.Event()
    source = ingest.Source(opener=ingest.open_pull(media.as_uri()), status=status, stop=stop)
    settings = pipeline.Settings(
        profile=TranscodeProfileSpec.model_validate(PROFILE),
        packaging=packager.Packaging(out_dir=out, segment_seconds=1),
        live=False,
    )
    pipeline.run(source=source, settings=settings, status=status, stop=stop, claim=lambda: False)
    # The first write: nothing offered until the master exists. Later writes (the
    # master follows the measured bitrates) replace a master that is there.
    assert offered[0] == (None, False)
    assert all(url == "/master.m3u8" and there for url, there in offered[1:]), offered
    assert status.view().master_url == "/master.m3u8"
    assert (out / "master.m3u8").exists()
