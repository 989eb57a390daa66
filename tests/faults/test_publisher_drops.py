"""A publisher that drops and comes back: 20 times within the reconnect window, then once
beyond it. Nothing here is simulated: one ``kubecast-worker run`` process, real
publishers (the ffmpeg CLI, PyAV, GStreamer's ``rtmp2sink``; see live_publishers.py), hls.js
in headless Chromium, and the recorder process, all on 127.0.0.1.

One module-scoped run, in the order a viewer lives it:

1. a publisher goes live; a recorder starts; hls.js starts playing;
2. 20 times: the publisher drops (SIGKILL, or its own clean stop), the worker says
   ``reconnecting``, another publisher (rotating ffmpeg, PyAV, GStreamer) comes back
   within ``reconnectWindowSeconds`` and the worker says ``live`` again;
3. the recorder is stopped; the publisher drops for longer than the window: ``idle``,
   playlists ended; a new publisher: ``live``, new playlists, and a new player plays.

All along a poller reads ``/status``, both media playlists and every segment over HTTP
(what any client sees), and the page samples ``video.currentTime`` and every hls.js
error. The tests then check what was recorded. Figures go to
test-artifacts/faults/publisher-drops.json (the source of docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import m3u8
import pytest

from kubecast_worker.player import routes
from tests.e2e import browsers
from tests.e2e.conftest import (
    REPO,
    WorkerProcess,
    ffprobe,
    free_port,
    http_get,
    launch_configured_worker,
    needs_ffmpeg,
    until,
)

from . import live_publishers as publishers

pytestmark = [pytest.mark.slow, pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(420)]

KEY = "drops-k3y-7c41e09b5d"
DROPS = 20
WINDOW_S = 15  # reconnectWindowSeconds: longer than any return takes, on a busy machine too
SEGMENT_S = 1
WINDOW_SEGMENTS = 6  # outputs.hls.windowSegments (the default)
#: New segments in every rendition after each return, before the next drop.
SEGMENTS_PER_RUN = 2
OFFLINE_S = 0.5  # how long the publisher stays away once the worker saw it go
PROFILE: dict[str, Any] = {
    "gopSeconds": 1,
    "segmentSeconds": SEGMENT_S,
    "audio": {"codec": "aac", "sampleRate": 48000, "channels": 2},
    "renditions": [
        {"name": "180p", "width": 320, "height": 180, "videoBitrate": 200, "maxrate": 250,
         "bufsize": 400, "audioBitrate": 64, "fps": 25, "preset": "ultrafast",
         "profile": "main"},
        {"name": "144p", "width": 256, "height": 144, "videoBitrate": 100, "maxrate": 150,
         "bufsize": 200, "audioBitrate": 64, "fps": 25, "preset": "ultrafast",
         "profile": "main"},
    ],
}  # fmt: skip
RENDITIONS = [r["name"] for r in PROFILE["renditions"]]
#: (publisher, how it goes) for each publish; the last one stays on. A kill just
#: closes the socket (a network or a laptop gone); "term"/"int" is the client's own end.
SCHEDULE = [
    ("ffmpeg", "kill"), ("pyav", "kill"), ("ffmpeg", "term"), ("gstreamer", "int"),
    ("ffmpeg", "kill"), ("pyav", "kill"), ("ffmpeg", "kill"), ("gstreamer", "kill"),
] * 3  # fmt: skip
#: currentTime not moving for longer than this (wall time) counts as a stall.
STALL_S = 0.75
#: A return must make the picture move again this soon after the worker is live.
RESUME_S = 10.0
ARTIFACT = REPO / "test-artifacts" / "faults" / "publisher-drops.json"

#: The viewer: hls.js as the origin serves it (/player/static/hls.min.js), made as the
#: preview page makes it (hls-live.js), but no recovery of our own: every error is recorded.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>drops</title></head><body>
<video id="video" muted playsinline></video>
<script src="/player/static/hls.min.js"></script>
<script src="/player/static/hls-live.js"></script>
<script>
  const video = document.getElementById('video');
  window.__errors = []; window.__samples = []; window.__events = [];
  const hls = window.kubecastHls();
  window.__hls = hls;
  hls.on(Hls.Events.ERROR, (_e, d) => window.__errors.push(
    { t: Date.now() / 1000, fatal: d.fatal, type: d.type, details: d.details }));
  hls.on(Hls.Events.MANIFEST_PARSED, () => { video.play(); });
  for (const name of ['waiting', 'playing', 'ended', 'stalled', 'error']) {
    video.addEventListener(name, () => window.__events.push([Date.now() / 1000, name]));
  }
  setInterval(() => window.__samples.push(
    [Date.now() / 1000, video.currentTime, video.paused, video.ended]), 100);
  hls.loadSource('/master.m3u8');
  hls.attachMedia(video);
</script></body></html>
"""


# -- what the poller sees ---------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    phase: str
    text: str
    playlist: Any  # m3u8.M3U8


@dataclass
class Served:
    """One segment as the origin served it."""

    uri: str
    sequence: int
    duration: float
    sha256: str
    discontinuity: bool
    phase: str
    seen: float  # when the poller first saw it listed


@dataclass
class Poller:
    """``/status``, each media playlist and each new segment, over HTTP, all along."""

    worker: WorkerProcess
    phase: str = "start"
    states: list[tuple[float, str, str]] = field(default_factory=list)
    snapshots: dict[str, list[Snapshot]] = field(default_factory=dict)
    served: dict[str, dict[str, Served]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # listed, but not served
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, AssertionError):
                self.poll()
            self.stop.wait(0.2)

    def poll(self) -> None:
        state = self.worker.status()["state"]
        self.states.append((time.time(), self.phase, state))
        for name in RENDITIONS:
            reply = http_get(self.worker.url(f"/{name}/index.m3u8"))
            if reply.status != 200:
                continue
            seen = self.snapshots.setdefault(name, [])
            if seen and seen[-1].text == reply.text:
                continue
            playlist = m3u8.loads(reply.text)
            seen.append(Snapshot(time.time(), self.phase, reply.text, playlist))
            served = self.served.setdefault(name, {})
            first = playlist.media_sequence or 0
            for index, segment in enumerate(playlist.segments):
                key = f"{name}/{segment.uri}"
                if segment.uri in served and index > 0:
                    continue
                got = http_get(self.worker.url(f"/{name}/{segment.uri}"))
                if got.status != 200:
                    # NB: the oldest listed one is fetched again each time: the one
                    # most at risk of being deleted while still listed.
                    self.missing.append(f"{key}: HTTP {got.status} ({self.phase})")
                    continue
                served.setdefault(
                    segment.uri,
                    Served(
                        uri=segment.uri,
                        sequence=first + index,
                        duration=float(segment.duration),
                        sha256=hashlib.sha256(got.body).hexdigest(),
                        discontinuity=bool(segment.discontinuity),
                        phase=self.phase,
                        seen=time.time(),
                    ),
                )

    def in_phase(self, name: str, *phases: str) -> list[Snapshot]:
        return [s for s in self.snapshots.get(name, []) if s.phase in phases]


# -- the recorder process ---------------------------------------------------------------


@dataclass
class Recorder:
    process: subprocess.Popen[bytes]
    out: Path
    log: Path

    def segments(self) -> list[Any]:
        with contextlib.suppress(OSError):
            return list(m3u8.loads((self.out / "recording.m3u8").read_text()).segments)
        return []

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def start_recorder(out: Path, source: str) -> Recorder:
    log = out.parent / "recorder.log"
    port = free_port()
    # The recorder's POST /stop needs a token (the operator's in a cluster); this
    # test stops it with SIGTERM, but the recorder will not start without one.
    token = out.parent / "stop-token"
    out.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(secrets.token_hex(16))
    command = [
        sys.executable, "-m", "kubecast_worker.recorder.cli",
        "--source", source, "--out", str(out), "--formats", "hls,mp4",
        "--idle-timeout", "120", "--admin", f"127.0.0.1:{port}", "--bind-host", "127.0.0.1",
        "--stop-token-file", str(token),
    ]  # fmt: skip
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=REPO
        )
    return Recorder(process, out, log)


# -- the run ---------------------------------------------------------------------------


@dataclass
class Publish:
    kind: str
    how: str  # how it ended: kill, term, int (or "" for the last one)
    started: float
    live: float = 0.0
    dropped: float = 0.0
    reconnecting: float = 0.0


@dataclass
class Run:
    worker: WorkerProcess
    poller: Poller
    publishes: list[Publish]
    samples: list[list[Any]]
    errors: list[dict[str, Any]]
    events: list[list[Any]]
    hls_version: str
    recorder: Recorder
    recorder_exit: int
    beyond: dict[str, Any]
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


def wait_state(
    worker: WorkerProcess,
    state: str,
    *,
    timeout: float,
    publisher: subprocess.Popen[bytes] | None = None,
    what: str = "",
) -> float:
    try:
        worker.wait_state(state, timeout=timeout)
    except AssertionError as e:
        status = worker.status()
        said = ""
        if publisher is not None and publisher.poll() is not None:
            assert publisher.stderr is not None
            said = (
                f"; the publisher exited {publisher.returncode}: {publisher.stderr.read()[-600:]!r}"
            )
        raise AssertionError(
            f"{e} ({what}): worker {status['state']}, lastError {status['lastError']!r},"
            f" ingest {status['ingest']['counters']}{said}\n" + "\n".join(worker.raw[-15:])
        ) from None
    return time.time()


def sequences_after(worker: WorkerProcess, name: str) -> int:
    """Media sequence number just past the last segment the origin lists now."""
    reply = http_get(worker.url(f"/{name}/index.m3u8"))
    if reply.status != 200:
        return -1
    playlist = m3u8.loads(reply.text)
    return (playlist.media_sequence or 0) + len(playlist.segments)


def wait_new_segments(worker: WorkerProcess, since: dict[str, int], count: int, what: str) -> None:
    try:
        until(
            lambda: all(sequences_after(worker, n) >= since[n] + count for n in RENDITIONS),
            timeout=30,
            what=f"{count} new segments in every rendition ({what})",
            every=0.1,
        )
    except AssertionError as e:
        status = worker.status()
        raise AssertionError(
            f"{e}; worker {status['state']}, lastError {status['lastError']!r}\n"
            + "\n".join(worker.raw[-15:])
        ) from None


def open_player(browser: Any, origin: str) -> tuple[Any, Any]:
    context = browser.new_context()
    page = context.new_page()
    page.route(
        f"{origin}/drops-player.html",
        lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE),
    )
    page.goto(f"{origin}/drops-player.html")
    return context, page


def wait_playing(page: Any, *, seconds: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while page.evaluate("document.getElementById('video').currentTime") < seconds:
        assert time.monotonic() < deadline, (
            f"hls.js did not play {seconds} s: {page.evaluate('window.__errors')}"
        )
        page.wait_for_timeout(200)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browsers.chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Run]:
    assert not publishers.missing(), f"missing publishers: {publishers.missing()}"
    assert routes.hls_js_built(), routes.NOT_BUILT
    directory = tmp_path_factory.mktemp("drops")
    worker = launch_configured_worker(
        directory / "worker",
        key=KEY,
        profile=PROFILE,
        reconnect_window=WINDOW_S,
        outputs={"hls": {"windowSegments": WINDOW_SEGMENTS}},
    )
    poller = Poller(worker)
    polling = threading.Thread(target=poller.run, daemon=True)
    publisher: subprocess.Popen[bytes] | None = None
    recorder: Recorder | None = None
    contexts: list[Any] = []
    publishes: list[Publish] = []
    started = time.monotonic()
    try:
        polling.start()
        url = worker.rtmp(key=KEY)
        # 1. live, recorded, played
        poller.phase = "window"
        for index, (kind, how) in enumerate(SCHEDULE[: DROPS + 1]):
            last = index == DROPS
            publish = Publish(kind=kind, how="" if last else how, started=time.time())
            publishes.append(publish)
            since = {n: max(sequences_after(worker, n), 0) for n in RENDITIONS}
            publisher = publishers.start(kind, url)
            publish.live = wait_state(
                worker, "live", timeout=20, publisher=publisher, what=f"publish {index}: {kind}"
            )
            wait_new_segments(
                worker, since, SEGMENTS_PER_RUN if index else 3, f"publish {index}: {kind}"
            )
            if index == 0:
                recorder = start_recorder(directory / "recording", worker.http)
                until(recorder.segments, timeout=30, what="the recorder's first segment")
                context, page = open_player(browser, worker.http)
                contexts.append(context)
                wait_playing(page, seconds=1.0)
            if last:
                break
            publish.dropped = time.time()
            publishers.drop(publisher, how)
            publish.reconnecting = wait_state(worker, "reconnecting", timeout=15)
            time.sleep(OFFLINE_S)
        # Play on past the last return, then finish the recording.
        wait_new_segments(
            worker, {n: sequences_after(worker, n) for n in RENDITIONS}, 4, "after the last return"
        )
        samples = page.evaluate("window.__samples")
        errors = page.evaluate("window.__errors")
        events = page.evaluate("window.__events")
        hls_version = page.evaluate("Hls.version")
        assert recorder is not None
        recorder.process.send_signal(signal.SIGTERM)
        recorder_exit = recorder.process.wait(timeout=60)

        # 3. beyond the window
        poller.phase = "beyond"
        assert publisher is not None
        gone = time.time()
        publishers.drop(publisher, "kill")
        publisher = None
        beyond: dict[str, Any] = {"dropped": gone}
        beyond["reconnecting"] = wait_state(worker, "reconnecting", timeout=15)
        beyond["idle"] = wait_state(worker, "idle", timeout=WINDOW_S + 15)
        beyond["ended"] = {n: http_get(worker.url(f"/{n}/index.m3u8")).text for n in RENDITIONS}
        beyond["page_after_idle"] = page.evaluate("window.__errors")
        time.sleep(1.0)  # a pause while idle, as a publisher back later would leave
        poller.phase = "again"
        beyond["started"] = time.time()
        publisher = publishers.start("ffmpeg", url)
        beyond["live"] = wait_state(worker, "live", timeout=20)
        # A client plays /status playbackUrl once it is there (the operator copies it to
        # the LiveStream): it must never point at a master playlist that is not served.
        offered_missing: list[int] = []

        def playable() -> bool:
            offered = worker.status()["playbackUrl"]
            if offered is None:
                return False
            got = http_get(worker.url(offered)).status
            # NB: a read of /status just before the new session withdraws the old master
            # can meet its deletion on the GET that follows (no server can close that
            # gap); what a client must never see is /status still offering it after.
            if got != 200 and worker.status()["playbackUrl"] == offered:
                again = http_get(worker.url(offered)).status
                if again != 200:
                    offered_missing.append(again)
                got = again
            return got == 200

        until(playable, timeout=30, what="a playbackUrl after the window", every=0.05)
        beyond["offered_missing"] = offered_missing
        beyond["playable"] = time.time()
        wait_new_segments(worker, {n: 0 for n in RENDITIONS}, 3, "after the window")
        context, fresh = open_player(browser, worker.http)
        contexts.append(context)
        wait_playing(fresh, seconds=2.0)
        beyond["fresh_errors"] = fresh.evaluate("window.__errors")
        beyond["fresh_time"] = fresh.evaluate("document.getElementById('video').currentTime")
        beyond["new"] = {n: http_get(worker.url(f"/{n}/index.m3u8")).text for n in RENDITIONS}
        beyond["master"] = http_get(worker.url("/master.m3u8")).status
        beyond["sessions"] = worker.status()["sessions"]
        yield Run(
            worker=worker,
            poller=poller,
            publishes=publishes,
            samples=samples,
            errors=errors,
            events=events,
            hls_version=hls_version,
            recorder=recorder,
            recorder_exit=recorder_exit,
            beyond=beyond,
            seconds=time.monotonic() - started,
        )
    finally:
        poller.stop.set()
        polling.join(timeout=10)
        for context in contexts:
            context.close()
        if publisher is not None:
            publishers.drop(publisher, "kill")
        if recorder is not None and recorder.process.poll() is None:
            recorder.process.kill()
            recorder.process.wait()
        worker.stop()


@pytest.fixture(scope="module", autouse=True)
def report(run: Run) -> Iterator[None]:
    """The figures of the run, written whatever the tests say about them."""
    yield
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(run.report, indent=2, sort_keys=True) + "\n")


# -- the tests ---------------------------------------------------------------------------


def test_every_return_within_the_window_goes_reconnecting_then_live(run: Run) -> None:
    drops = run.publishes[:-1]
    assert len(drops) == DROPS
    returns = [b.live - a.dropped for a, b in zip(drops, run.publishes[1:], strict=True)]
    to_reconnecting = [p.reconnecting - p.dropped for p in drops]
    to_live = [p.live - p.started for p in run.publishes]
    run.report["drops"] = {
        "count": len(drops),
        "publishers": {k: sum(1 for p in run.publishes if p.kind == k) for k in publishers.KINDS},
        "ended_by": {h: sum(1 for p in drops if p.how == h) for h in ("kill", "term", "int")},
        "drop_to_reconnecting_s": summary(to_reconnecting),
        "publisher_start_to_live_s": summary(to_live),
        "drop_to_live_again_s": summary(returns),
        "reconnect_window_s": WINDOW_S,
    }
    assert max(returns) < WINDOW_S, "a return took longer than the reconnect window"
    # Each drop: /status said reconnecting, then live again once the publisher was back.
    for drop, back in zip(drops, run.publishes[1:], strict=True):
        assert drop.dropped < drop.reconnecting < back.started < back.live
    # And a client polling it all along (every 0.2 s) never saw anything else: never idle.
    states = [s for _, phase, s in run.poller.states if phase == "window"]
    states = states[states.index("live") :]  # idle until the first publisher came
    changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert set(changes) == {"live", "reconnecting"}, changes
    assert changes[-1] == "live"
    run.report["drops"]["reconnecting_seen_by_poller"] = changes.count("reconnecting")


def test_each_rendition_keeps_one_playlist_with_a_discontinuity_at_each_drop(run: Run) -> None:
    figures = {}
    for name in RENDITIONS:
        snapshots = run.poller.in_phase(name, "window")
        assert snapshots, name
        by_sequence: dict[int, str] = {}
        breaks: set[int] = set()
        previous = None
        for snap in snapshots:
            playlist = snap.playlist
            first = playlist.media_sequence or 0
            listed = {first + i: s.uri for i, s in enumerate(playlist.segments)}
            assert not playlist.is_endlist, f"{name} ended within the window"
            for number, uri in listed.items():
                assert by_sequence.setdefault(number, uri) == uri, (
                    f"{name}: media sequence {number} was {by_sequence[number]}, now {uri}"
                )
            breaks |= {first + i for i, s in enumerate(playlist.segments) if s.discontinuity}
            if previous is not None:
                before_first, before = previous
                assert first >= before_first, f"{name}: media sequence went back"
                # Only the oldest go: every segment still in the window stays listed.
                assert set(before) - set(listed) <= set(range(before_first, first)), (
                    f"{name}: a segment disappeared before it slid out"
                )
            previous = (first, listed)
            # EXT-X-DISCONTINUITY-SEQUENCE counts the discontinuities already gone.
            gone = sum(1 for n in breaks if n < first)
            assert (playlist.discontinuity_sequence or 0) == gone, (
                f"{name}: EXT-X-DISCONTINUITY-SEQUENCE {playlist.discontinuity_sequence}"
                f" with {gone} discontinuities slid out:\n{snap.text}"
            )
        numbers = sorted(by_sequence)
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"{name}: a hole"
        # One discontinuity per drop, each where a new session (segment prefix) starts.
        session_starts = {
            n
            for n in numbers[1:]
            if by_sequence[n].split("-")[0] != by_sequence[n - 1].split("-")[0]
        }
        assert breaks == session_starts and len(breaks) == DROPS, (name, sorted(breaks))
        figures[name] = {
            "playlist_versions": len(snapshots),
            "segments_listed": len(numbers),
            "discontinuities": len(breaks),
            "discontinuity_sequence_last": snapshots[-1].playlist.discontinuity_sequence or 0,
        }
    run.report["playlists"] = figures
    assert run.poller.missing == [], "listed segments the origin did not serve"


def test_old_segments_are_deleted_once_they_slide_out(run: Run) -> None:
    """One segment per reconnect used to stay on the volume for good (FFmpeg's
    append_list forgets the earlier session's last ones)."""
    for name in RENDITIONS:
        on_disk = sorted(p.name for p in (run.worker.out / name).glob("*.ts"))
        # The window, the one just slid out, and at most one being written.
        assert len(on_disk) <= WINDOW_SEGMENTS + 3, (name, on_disk)


def test_hls_js_keeps_playing_across_every_drop(run: Run) -> None:
    samples = [(t, float(c), paused, ended) for t, c, paused, ended in run.samples]
    fatal = [e for e in run.errors if e["fatal"]]
    stalls = []  # (since, seconds) of each time currentTime stood still
    moved_at, previous = samples[0][0], samples[0][1]
    for t, current, _, _ in samples[1:]:
        if current > previous:
            if t - moved_at >= STALL_S:
                stalls.append((moved_at, t - moved_at))
            moved_at = t
        previous = current
    resumes = []  # from live again until the picture has moved on by 0.5 s
    for back in run.publishes[1:]:
        at_live = max((c for t, c, _, _ in samples if t <= back.live), default=0.0)
        later = [t for t, c, _, _ in samples if t > back.live and c > at_live + 0.5]
        assert later, f"playback never moved on after the return at {back.live}"
        resumes.append(later[0] - back.live)
    began = next(t for t, c, _, _ in samples if c > 0)
    played = samples[-1][1] - next(c for _, c, _, _ in samples if c > 0)
    wall = samples[-1][0] - began
    # The media the origin served while the page played (the highest rendition's).
    highest = run.poller.served[RENDITIONS[0]].values()
    served = sum(s.duration for s in highest if s.phase == "window" and s.seen >= began)
    run.report["player"] = {
        "hls_js": run.hls_version,
        "fatal_errors": len(fatal),
        "errors": sorted({f"{e['type']}/{e['details']}" for e in run.errors}),
        "error_count": len(run.errors),
        "stalls": len(stalls),
        "stall_seconds": summary([s for _, s in stalls]),
        "waiting_events": sum(1 for _, name in run.events if name == "waiting"),
        "played_seconds": round(played, 1),
        "served_seconds_meanwhile": round(served, 1),
        "wall_seconds": round(wall, 1),
        "moving_again_after_live_s": summary(resumes),
    }
    assert fatal == [], fatal
    assert not any(ended for *_, ended in samples), "the video ended"
    assert max(resumes) < RESUME_S, resumes
    # It played what was served, not a part of it (hls.js skipping ahead to the live
    # edge after each stall would lose media): all but the last few seconds it was
    # still behind the live edge with when the samples were taken.
    assert played >= served - 6 * SEGMENT_S, (played, served)


def test_the_recording_across_the_drops_has_every_served_segment(run: Run) -> None:
    recorder = run.recorder
    assert run.recorder_exit == 0, recorder.tail()
    recorded = recorder.segments()
    hashes = [hashlib.sha256((recorder.out / s.uri).read_bytes()).hexdigest() for s in recorded]
    # NB: by position, not by hash alone: every session starts the same test pattern
    # from the same timestamps, so equal segments recur, one per session.
    alignments = {}
    for name in RENDITIONS:
        served = sorted(
            (s for s in run.poller.served[name].values() if s.phase == "window"),
            key=lambda s: s.sequence,
        )
        numbers = [s.sequence for s in served]
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"{name}: not all fetched"
        digests = [s.sha256 for s in served]
        for k in range(len(served) - len(hashes) + 1):
            if digests[k : k + len(hashes)] == hashes:
                alignments[name] = (served, k)
    assert alignments, (
        "the recording is not one unbroken run of the segments served: one was lost,"
        " repeated or changed"
    )
    name, (served, k) = next(iter(alignments.items()))
    expected = served[k : k + len(hashes)]
    assert [s.discontinuity for s in expected[1:]] == [s.discontinuity for s in recorded[1:]]
    # It kept up across every drop: it reached into the session of the last return.
    last_session = max(s.sequence for s in served if s.discontinuity)
    assert expected[-1].sequence >= last_session, "the recording stopped before the last return"
    served_seconds = sum(s.duration for s in expected)
    mp4 = float(ffprobe(recorder.out / "recording.mp4", "format=duration")["format"]["duration"])
    run.report["recording"] = {
        "rendition": name,
        "segments_served": len(expected),
        "segments_recorded": len(hashes),
        "discontinuities": sum(1 for s in recorded if s.discontinuity),
        "served_seconds": round(served_seconds, 2),
        "mp4_seconds": round(mp4, 2),
        "first_sequence": expected[0].sequence,
        "last_sequence": expected[-1].sequence,
        "served_in_all": len(served),
    }
    assert sum(1 for s in recorded if s.discontinuity) == DROPS
    assert mp4 == pytest.approx(served_seconds, abs=SEGMENT_S)


def test_beyond_the_window_the_stream_goes_idle_then_live_on_new_playlists(run: Run) -> None:
    beyond = run.beyond
    idle_after = beyond["idle"] - beyond["dropped"]
    run.report["beyond_window"] = {
        "drop_to_idle_s": round(idle_after, 2),
        "start_to_live_s": round(beyond["live"] - beyond["started"], 2),
        "start_to_playback_url_s": round(beyond["playable"] - beyond["started"], 2),
        "fresh_player_seconds": round(beyond["fresh_time"], 1),
        "fresh_player_errors": len(beyond["fresh_errors"]),
        "module_seconds": round(run.seconds, 1),
    }
    # Idle once the window has passed, not before (status is polled every 0.1 s).
    assert WINDOW_S - 0.5 <= idle_after <= WINDOW_S + 3, idle_after
    for name, text in beyond["ended"].items():
        assert m3u8.loads(text).is_endlist, f"{name} not ended after the window:\n{text}"
    # Idle in between, and only there.
    states = [s for _, phase, s in run.poller.states if phase == "beyond"]
    assert "idle" in states
    # The return starts new playlists: from media sequence 0, no discontinuity, open.
    for name, text in beyond["new"].items():
        playlist = m3u8.loads(text)
        assert (playlist.media_sequence or 0) == 0, f"{name}:\n{text}"
        assert not playlist.is_endlist
        assert not any(s.discontinuity for s in playlist.segments), text
    assert beyond["master"] == 200
    assert beyond["offered_missing"] == [], "/status offered a master playlist not there"
    assert beyond["sessions"] == DROPS + 2
    assert [e for e in beyond["fresh_errors"] if e["fatal"]] == []
    assert beyond["fresh_time"] >= 2.0


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 2),
        "median": round(ordered[len(ordered) // 2], 2),
        "max": round(ordered[-1], 2),
    }
