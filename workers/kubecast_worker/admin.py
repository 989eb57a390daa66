"""The worker's admin port: what the operator and Prometheus read, never viewers.

    GET /status     the worker's Status as JSON (publisher address, errors, restream)
    GET /metrics    Prometheus text format
    GET /healthz    200 while the process serves requests
    GET /readyz     200 once the ingest front listens (or the pull loop runs)

It listens apart from the playback port (``origin``), so that a NodePort or
LoadBalancer playback Service, which exposes only that port, shows viewers
media and the player page and nothing about the publisher. The stream's
NetworkPolicy lets only the operator's pods reach this port.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kubecast_api.worker_status import WorkerStatus
from kubecast_worker.status import Status

NO_STORE = {"Cache-Control": "no-store"}


def add_probe_routes(app: web.Application, *, status: Status) -> None:
    """``/healthz`` and ``/readyz``: they say nothing but ok, so both ports answer them."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=NO_STORE)

    async def readyz(request: web.Request) -> web.Response:
        if status.view().ready:
            return web.Response(text="ready\n", headers=NO_STORE)
        return web.Response(status=503, text="not ready\n", headers=NO_STORE)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def make_app(*, status: Status, registry: CollectorRegistry) -> web.Application:
    async def status_json(request: web.Request) -> web.Response:
        return web.Response(
            # Through the contract's model: what the operator will validate, checked here.
            text=WorkerStatus.model_validate(status.snapshot()).model_dump_json(
                by_alias=True, exclude_unset=True, indent=1
            ),
            content_type="application/json",
            headers=NO_STORE,
        )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, **NO_STORE},
        )

    app = web.Application()
    app.router.add_get("/status", status_json)
    app.router.add_get("/metrics", metrics)
    add_probe_routes(app, status=status)
    return app


async def start(
    *, host: str, port: int, status: Status, registry: CollectorRegistry
) -> tuple[web.AppRunner, int]:
    """Serve until ``runner.cleanup()``. Returns the runner and the bound port."""
    runner = web.AppRunner(make_app(status=status, registry=registry), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
