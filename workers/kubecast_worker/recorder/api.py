"""The recorder's admin port: what the operator polls, and how it says "finish".

    GET  /status    the recording's state, duration, files
    POST /stop      finish the recording (ENDLIST, then the MP4); needs the stop token
    GET  /metrics   Prometheus text format
    GET  /healthz, /readyz

The recorder serves no media, so this is its only port. ``POST /stop`` ends a
recording for good, so it takes ``Authorization: Bearer <token>``: the token
is in a Secret the operator derives for this one Recording and the pod mounts
(``--stop-token-file``). Without one, ``/stop`` is refused (a person stops a
local recorder with SIGTERM; it then stays resumable).
"""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubecast_api.worker_status import RecorderStatus
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.recorder import Recorder

RECORDER: web.AppKey[Recorder] = web.AppKey("recorder", Recorder)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
STOP_TOKEN: web.AppKey[bytes | None] = web.AppKey("stop_token", bytes)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kubecast-recorder"'}


async def status(request: web.Request) -> web.Response:
    # Through the contract's model: what the operator will validate, checked here.
    document = RecorderStatus.model_validate(request.app[RECORDER].status())
    return web.json_response(text=document.model_dump_json(exclude_unset=True))


def authorized(header: str | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time.

    NB: hmac.compare_digest takes as long for a wrong first byte as for a wrong
    last one, so the answer's timing says nothing about how much of a guess was
    right.
    """
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token)


async def stop(request: web.Request) -> web.Response:
    """Finish the recording: ENDLIST, then the MP4. Answers at once; poll /status."""
    token = request.app[STOP_TOKEN]
    if token is None:
        return web.json_response(
            {"error": "this recorder was started without --stop-token-file; stop it with"
             " SIGTERM (it stays resumable)"},
            status=403,
        )  # fmt: skip
    if not authorized(request.headers.get("Authorization"), token):
        return web.json_response(
            {"error": "POST /stop needs Authorization: Bearer <the Recording's stop token>"},
            status=401,
            headers=CHALLENGE,
        )
    recorder = request.app[RECORDER]
    if recorder.state in ("waiting", "recording"):
        recorder.request_stop("POST /stop")
    return web.json_response(recorder.status(), status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    if not recorder.ready:
        return web.Response(status=503, text="starting\n")
    return web.Response(text=f"{recorder.state}\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    recorder: Recorder, registry: Metrics, *, stop_token: bytes | None = None
) -> web.Application:
    app = web.Application()
    app[RECORDER] = recorder
    app[METRICS] = registry
    app[STOP_TOKEN] = stop_token or None
    app.router.add_get("/status", status)
    app.router.add_post("/stop", stop)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
