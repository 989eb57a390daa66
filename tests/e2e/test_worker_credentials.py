"""No key, password or token of a stream ever leaves a real worker process.

Two ``kubecast-worker run`` processes, configured as the operator configures them:

- a pull worker whose URL (from a file, the mounted Secret of ``urlSecretRef``) carries a
  password and a token, pointing at loopback sources that fail: first a closed port, then
  (the file rotated) an HLS server that asks for credentials and refuses them;
- a push worker with a stream key, publishers trying wrong keys until their address is
  rate-limited, and a restream target whose URL carries a password and a token besides
  its key, pointing at a loopback port that never answers.

Then every byte they wrote is searched: stdout, stderr (the logs, the restream child's
lines relayed by the worker), every ``/status`` document and the ``/metrics`` text,
labels included. The sources are checked to have received the credentials: they were
used, only never shown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SMALL_PROFILE,
    WorkerProcess,
    free_port,
    launch_configured_worker,
    launch_worker,
    needs_ffmpeg,
    publish,
    publisher_command,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_ffmpeg, pytest.mark.timeout(240)]

PULL_PASSWORD = "camPa55-0f3e9d"
PULL_TOKEN = "tok-41c7aa90e2"
ROTATED_PASSWORD = "r0tated-b7e1c4"
ROTATED_TOKEN = "tok-rot-93d0f1"
STREAM_KEY = "push-k3y-d41c9a07"
WRONG_KEYS = [f"guess-{i}-8b1e2f" for i in range(6)]
TARGET_KEY = "rs-key-5a9c03bd"
TARGET_PASSWORD = "rsPa55-77e2c1"
TARGET_TOKEN = "rs-tok-c0ffee12"
CANARY = "canary-5ecret-of-the-pod"  # in the worker's environment, never anywhere else
SECRETS = [
    PULL_PASSWORD,
    PULL_TOKEN,
    ROTATED_PASSWORD,
    ROTATED_TOKEN,
    STREAM_KEY,
    *WRONG_KEYS,
    TARGET_KEY,
    TARGET_PASSWORD,
    TARGET_TOKEN,
    CANARY,
]


#: What a restream child may inherit (restream.CHILD_ENV, and the two it is handed), and
#: LC_CTYPE, which Python's locale coercion may set in the child itself.
CHILD_ENV = {
    "PATH",
    "PYTHONPATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "KUBECAST_RESTREAM_KEY",
    "KUBECAST_RESTREAM_TARGET",
}


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


class Collected:
    """Everything a worker showed over HTTP, kept for the search at the end."""

    def __init__(self) -> None:
        self.documents: list[str] = []

    def status(self, worker: WorkerProcess) -> dict[str, Any]:
        status = worker.status()
        self.documents.append(json.dumps(status))
        return status

    def metrics(self, worker: WorkerProcess) -> str:
        text = worker.metrics()
        self.documents.append(text)
        return text


class GuardedHls(BaseHTTPRequestHandler):
    """An HLS source behind Basic auth that refuses every password (403)."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        type(self).seen.append((self.path, auth))
        if auth is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
        else:
            self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def guarded_hls() -> Iterator[int]:
    GuardedHls.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), GuardedHls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def test_credentials_of_a_pulled_url_never_leave_the_worker(
    tmp_path: Path, guarded_hls: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECAST_TEST_CANARY", CANARY)
    url_file = tmp_path / "pull-url"  # the mounted Secret of spec.ingest.pull.urlSecretRef
    closed = free_port()
    url_file.write_text(f"rtsp://viewer:{PULL_PASSWORD}@127.0.0.1:{closed}/cam?token={PULL_TOKEN}")
    seen = Collected()
    worker = launch_worker(
        tmp_path / "pull",
        config={
            "stream": "lobby",
            "ingest": {"pull": {"urlFile": str(url_file)}},
            "profile": SMALL_PROFILE,
            "http": "127.0.0.1:0",
            "reconnectWindowSeconds": 0,
        },
    )
    try:
        first = until(
            lambda: (s := seen.status(worker))["lastError"] and s,
            timeout=30,
            what="the first pull to fail",
        )
        assert "Connection refused" in first["lastError"], first
        assert f"rtsp://viewer:***@127.0.0.1:{closed}/cam?token=***" in first["lastError"]
        assert first["ingest"]["url"] == f"rtsp://viewer:***@127.0.0.1:{closed}/cam?token=***"

        # The Secret changes: the next reconnect reads the new URL.
        url_file.write_text(
            f"http://viewer:{ROTATED_PASSWORD}@127.0.0.1:{guarded_hls}/cam/index.m3u8"
            f"?token={ROTATED_TOKEN}\n"
        )
        refused = until(
            lambda: "403" in ((s := seen.status(worker))["lastError"] or "") and s,
            timeout=40,
            what="the pull with the rotated URL to be refused by the source",
        )
        assert "http://viewer:***@127.0.0.1:" in refused["lastError"], refused
        seen.metrics(worker)
    finally:
        worker.stop()

    # The source did get the credentials: they were used, only never shown.
    paths = [path for path, _ in GuardedHls.seen]
    assert all(path == f"/cam/index.m3u8?token={ROTATED_TOKEN}" for path in paths), paths
    sent = {base64.b64decode(a.split()[1]).decode() for _, a in GuardedHls.seen if a}
    assert sent == {f"viewer:{ROTATED_PASSWORD}"}

    assert worker.logged("pull source dropped; retrying")
    everything = "\n".join(worker.raw + worker.stdout + seen.documents)
    assert leaks(everything) == []


def test_keys_and_restream_credentials_never_leave_the_worker(
    tmp_path: Path, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECAST_TEST_CANARY", CANARY)
    key_file = tmp_path / "target-key"
    key_file.write_text(TARGET_KEY + "\n")
    silent = f"rtmp://rs:{TARGET_PASSWORD}@127.0.0.1:{silent_port}/live2?auth={TARGET_TOKEN}"
    closed = f"rtmp://rs:{TARGET_PASSWORD}@127.0.0.1:{free_port()}/live2?auth={TARGET_TOKEN}"
    seen = Collected()
    worker = launch_configured_worker(
        tmp_path / "push",
        key=STREAM_KEY,
        stream="studio",
        restream=[
            {"name": "silent", "url": silent, "streamKeyFile": str(key_file)},
            {"name": "refused", "url": closed, "streamKeyFile": str(key_file)},
        ],
    )
    try:
        publisher = publish(worker.rtmp(key=STREAM_KEY), seconds=40, wait=False)
        until(
            lambda: (
                seen.status(worker)["restream"][0]["state"] == "Connecting"
                and children_of(worker.process.pid)
            ),
            timeout=40,
            what="the restream child connecting to the silent target",
        )
        # The real children (the silent target's waits): only the environment they need.
        inspected = 0
        for child in children_of(worker.process.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                argv = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
                inspected += 1
                names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
                assert "KUBECAST_TEST_CANARY" not in names and "KUBECAST_STREAM_KEY" not in names
                assert names <= CHILD_ENV, names
                assert leaks(argv) == [], "the child's argv (what ps shows) holds a credential"
        assert inspected >= 1

        # Wrong keys from this address, while the right publisher is live: five are
        # refused as wrong, then the address is refused at accept.
        for wrong in WRONG_KEYS:
            attempt = subprocess.run(
                publisher_command(worker.rtmp(key=wrong), seconds=1),
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert attempt.returncode != 0
        counters = seen.status(worker)["ingest"]["counters"]
        assert (counters["refused_wrong_key"], counters["refused_rate_limited"]) == (5, 1)
        metrics = seen.metrics(worker)
        assert 'kubecast_ingest_refused_total{reason="rate_limited",stream="studio"} 1.0' in (
            metrics
        )
        assert seen.status(worker)["state"] == "live", "the live publisher is not limited"

        def both_failed() -> list[dict[str, Any]] | None:
            targets: list[dict[str, Any]] = seen.status(worker)["restream"]
            return targets if all(t["restarts"] and t["lastError"] for t in targets) else None

        silent_state, refused_state = until(
            both_failed, timeout=60, what="both restream targets to fail and be retried"
        )
        assert silent_state["url"] == f"rtmp://rs:***@127.0.0.1:{silent_port}/live2?auth=***"
        assert "did not take the stream within 30 s" in silent_state["lastError"], silent_state
        assert refused_state["lastError"].startswith("Connection refused"), refused_state
        publisher.kill()
        publisher.wait(timeout=10)
        seen.metrics(worker)
    finally:
        worker.stop()

    relayed = [e for e in worker.logs if e.get("logger") == "kubecast.restream"]
    assert any(e.get("msg") == "restream failed" for e in relayed), "no line of the child"
    assert worker.logged("rtmp address refused for 60 s after 5 wrong stream key(s) within 60 s")
    everything = "\n".join(worker.raw + worker.stdout + seen.documents)
    assert leaks(everything) == []
