"""A Recording's status says what can be observed now, even once its recorder is gone.

While the recorder answers, status comes from its /status. Once it has exited, the
kubelet keeps its termination message: the recorder writes its last /status there
(``--termination-log``), and the operator reads it from the pod's status. A pod that
is gone altogether leaves a finished recording's facts, and a condition that says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp

from kubecast_operator import recordings, worker_client
from kubecast_worker.recorder import cli

RECORDING = {
    "apiVersion": "kubecast.dev/v1alpha1",
    "kind": "Recording",
    "metadata": {"name": "show", "namespace": "live", "generation": 1, "uid": "u1"},
    "spec": {"streamRef": {"name": "studio"}},
}

LAST = {
    "state": "completed",
    "duration_seconds": 12.03,
    "bytes": 2_000_000,
    "segments": 6,
    "files": [
        {"name": "recording.mp4", "format": "mp4", "size_bytes": 1_900_000,
         "duration_seconds": 12.03},
    ],
    "start_time": "2026-12-01T10:00:00Z",
    "end_time": "2026-12-01T10:00:12Z",
}  # fmt: skip


def pod(message: str, *, exit_code: int = 0, phase: str = "Running", **meta: Any) -> dict[str, Any]:
    ended = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "finishedAt": "2026-12-01T10:00:13Z",
        "message": message,
    }
    return {
        "metadata": {"name": "show-recorder", **meta},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "recorder", "state": {"terminated": ended}}],
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_the_recorder_writes_its_last_status_where_the_kubelet_keeps_it(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    cli.write_termination_log(log, LAST, logging.LoggerAdapter(logging.getLogger("t"), {}))
    written = json.loads(log.read_text())
    assert written["state"] == "completed"
    assert written["files"][0]["name"] == "recording.mp4"

    # Too many files for the kubelet's 4096 bytes: the figures stay, the list goes.
    many = {
        **LAST,
        "files": [
            {"name": f"part-{i:04d}.ts", "format": "hls", "size_bytes": 1, "duration_seconds": 2}
            for i in range(200)
        ],
    }
    cli.write_termination_log(log, many, logging.LoggerAdapter(logging.getLogger("t"), {}))
    assert len(log.read_bytes()) <= cli.TERMINATION_MESSAGE_LIMIT
    short = json.loads(log.read_text())
    assert short["files"] == [] and short["duration_seconds"] == 12.03


def test_a_recorder_that_exited_is_reported_from_its_termination_message() -> None:
    exited = recordings.recorder_exit(pod(json.dumps(LAST)))
    assert exited is not None
    status = recordings.compute_status(
        RECORDING, recorder=None, problem=None, pod_phase="Running", exited=exited
    )
    assert status["phase"] == "Completed"
    assert status["files"][0] == {
        "name": "recording.mp4",
        "format": "mp4",
        "sizeBytes": 1_900_000,
        "durationSeconds": 12.03,
    }
    ready = conditions(status)["Ready"]
    assert ready[:2] == ("False", "RecorderExited")
    assert ready[2] == "the recorder exited with code 0 (Completed) at 2026-12-01T10:00:13Z"


def test_a_recorder_killed_before_it_could_speak_says_how_it_ended() -> None:
    # SIGKILL or the OOM killer: no termination message, exit code 137.
    exited = recordings.recorder_exit(pod("", exit_code=137))
    assert exited is not None and exited[0] is None
    status = recordings.compute_status(
        RECORDING, recorder=None, problem=None, pod_phase="Running", exited=exited
    )
    assert status["phase"] == "Waiting"
    assert status["message"] == (
        "the recorder exited with code 137 (Error) at 2026-12-01T10:00:13Z;"
        " the kubelet restarts it, and the recording resumes"
    )
    assert not status.get("files")


def test_an_interrupted_recorder_whose_pod_is_deleted_resumes_in_a_new_pod() -> None:
    interrupted = {**LAST, "state": "interrupted", "end_time": None}
    deleting = pod(json.dumps(interrupted), deletionTimestamp="2026-12-01T10:00:12Z")
    exited = recordings.recorder_exit(deleting)
    status = recordings.compute_status(
        RECORDING, recorder=None, problem=None, pod_phase="Running", exited=exited
    )
    assert status["phase"] == "Waiting"
    assert conditions(status)["Ready"][2].endswith(
        "its pod is being deleted, and a new one resumes the recording"
    )
    assert status["durationSeconds"] == 12.03, "what it had recorded, from its own last word"


def test_a_finished_recording_whose_pod_is_gone_keeps_its_facts_and_says_so() -> None:
    finished = recordings.compute_status(
        RECORDING, recorder=LAST, problem=None, pod_phase="Running"
    )
    body = {**RECORDING, "status": finished}
    gone = recordings.compute_status(
        body, recorder=None, problem=None, pod_phase=None, pod_gone=True
    )
    assert gone["phase"] == "Completed"
    assert gone["files"] == finished["files"]
    assert conditions(gone)["Ready"][:2] == ("False", "RecorderGone")

    # A recording that had not finished is not Completed because its pod went away.
    running = {**RECORDING, "status": {**finished, "phase": "Recording"}}
    waiting = recordings.compute_status(
        running, recorder=None, problem=None, pod_phase=None, pod_gone=True
    )
    assert waiting["phase"] == "Waiting"
    assert not waiting.get("files") and "durationSeconds" not in waiting


def test_one_late_poll_of_a_recorder_leaves_the_recording_as_it_was() -> None:
    """Real HTTP on loopback: a recorder that answers, holds one poll past the
    operator's timeout, answers, then holds every poll. A miss after an answer reads
    as that answer (nothing to write, no phase Event); the second in a row is reported."""
    answering = {"state": "recording", "duration_seconds": 4.0, "bytes": 800_000, "segments": 2}
    plan = ["answer", "miss", "answer", "miss", "miss"]

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            if plan.pop(0) == "miss":
                time.sleep(worker_client.POLL_TIMEOUT_SECONDS + 0.5)  # the poll times out
                return
            body = json.dumps(answering).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    running = {
        "metadata": {"name": "show-recorder", "uid": "p1"},
        "spec": {"containers": [{"name": "recorder", "ports": [
            {"name": "admin", "containerPort": server.server_address[1]}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [
            {"name": "recorder", "restartCount": 0, "state": {"running": {}}}]},
    }  # fmt: skip
    body: dict[str, Any] = json.loads(json.dumps(RECORDING))
    last = worker_client.LastAnswer(max_age=2 * (1 + worker_client.POLL_TIMEOUT_SECONDS))

    async def polls() -> list[dict[str, Any]]:
        seen = []
        async with aiohttp.ClientSession() as session:
            for _ in range(len(plan)):
                recorder = await recordings.poll_recorder(session, running, last)
                body["status"] = recordings.compute_status(
                    body, recorder=recorder, problem=None, pod_phase="Running",
                    exited=recordings.recorder_exit(running) if recorder is None else None,
                )  # fmt: skip
                seen.append(body["status"])
        return seen

    try:
        answered, forgiven, answered_again, forgiven_again, reported = asyncio.run(polls())
    finally:
        server.shutdown()
        server.server_close()
    assert answered["phase"] == "Recording" and answered["durationSeconds"] == 4.0
    assert forgiven == answered_again == forgiven_again == answered
    assert reported["phase"] == "Waiting" and "durationSeconds" not in reported
    assert conditions(reported)["Ready"][:2] == ("False", "RecorderStarting")
