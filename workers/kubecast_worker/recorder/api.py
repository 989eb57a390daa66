"""The recorder's HTTP face: what the operator polls, and how it says "finish"."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.recorder import Recorder

RECORDER: web.AppKey[Recorder] = web.AppKey("recorder", Recorder)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECORDER].status())


async def stop(request: web.Request) -> web.Response:
    """Finish the recording: ENDLIST, then the MP4. Answers at once; poll /status."""
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


def make_app(recorder: Recorder, registry: Metrics) -> web.Application:
    app = web.Application()
    app[RECORDER] = recorder
    app[METRICS] = registry
    app.router.add_get("/status", status)
    app.router.add_post("/stop", stop)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
