"""``Status`` as the projection of what the worker's threads post.

The media threads post events at the same time as ``/status`` and ``/metrics``
read; what a reader sees must add up (no lost counts, no half-applied event).
"""

from __future__ import annotations

import threading

from kubecast_worker import events
from kubecast_worker.status import RenditionState, Status
from kubecast_worker.tally import Written

WRITES = 5_000


def live_status(names: list[str]) -> Status:
    status = Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1935/live")
    status.post(events.SessionStarted(publisher="198.51.100.4:50000"))
    status.post(events.StateChanged("live"))
    status.post(events.RenditionsPlanned(tuple(RenditionState(name=n) for n in names)))
    return status


def test_counts_posted_by_many_threads_while_readers_read_add_up() -> None:
    names = ["720p", "480p", "360p"]
    status = live_status(names)
    go = threading.Event()

    def rendition(name: str) -> None:
        go.wait()
        for i in range(1, WRITES + 1):
            written = Written(frames=i, bytes=1_000 * i, media_time=i / 30, segments=i // 60)
            status.post(events.RenditionWrote(name, written, nbytes=1_000))

    def ingest() -> None:
        go.wait()
        for i in range(WRITES):
            status.post(events.Demuxed(nbytes=500, at=i / 30, frames=1))
            status.post(events.FrameHandedOut(wall=i / 30, media=i / 30, skipped=("360p",)))

    seen: list[tuple[int, int]] = []

    def reader() -> None:
        go.wait()
        for _ in range(200):
            doc = status.snapshot()
            seen.append((doc["framesDecoded"], doc["droppedFrames"]))
            # One event is applied whole: a skipped frame is in both counts or in neither.
            (slow,) = [r for r in doc["renditions"] if r["name"] == "360p"]
            assert slow["droppedFrames"] <= doc["droppedFrames"]

    threads = [threading.Thread(target=rendition, args=(n,)) for n in names]
    threads += [threading.Thread(target=ingest), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()

    doc = status.snapshot()
    assert doc["framesDecoded"] == WRITES
    assert doc["droppedFrames"] == WRITES
    assert doc["input"]["bitrateKbps"] == round(500 * 30 * 8 / 1000)  # 500 B per 1/30 s
    for r in doc["renditions"]:
        assert (r["frames"], r["bytes"]) == (WRITES, 1_000 * WRITES)
        assert r["segments"] == WRITES // 60
        assert r["bitrateKbps"] == round(1_000 * 30 * 8 / 1000)  # per second of media
        assert r["droppedFrames"] == (WRITES if r["name"] == "360p" else 0)
    for counts in zip(*seen, strict=True):
        assert list(counts) == sorted(counts), "a reader never sees a count go back"


def test_a_new_session_starts_its_figures_afresh_and_idle_shows_no_live_bitrates() -> None:
    status = live_status(["360p"])
    for i in (1, 2):
        written = Written(frames=30 * i, bytes=100_000 * i, media_time=float(i), segments=i)
        status.post(events.RenditionWrote("360p", written, nbytes=100_000))
    (r,) = status.snapshot()["renditions"]
    assert r["bitrateKbps"] == 800 and r["segments"] == 2
    status.post(events.StateChanged("idle"))
    idle = status.snapshot()
    assert idle["renditions"][0]["bitrateKbps"] is None and idle["input"] is None
    status.post(events.SessionStarted(publisher=None))
    assert status.snapshot()["renditions"] == []
    assert status.snapshot()["sessions"] == 2
