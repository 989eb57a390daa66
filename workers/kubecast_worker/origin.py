"""The HTTP origin, the playback port: playlists and segments for players (and a
CDN), the preview page, and the probes. Nothing else.

    GET /master.m3u8, /<rendition>/index.m3u8     application/vnd.apple.mpegurl, max-age=1
    GET /<rendition>/<epoch>-00042.ts              video/mp2t, immutable
    GET /<rendition>/<epoch>-00042.m4s | -init.mp4 video/mp4, immutable
    GET /<rendition>/<epoch>-00042.3.m4s           a part (low-latency HLS), immutable
    GET /<rendition>/index.m3u8?_HLS_msn=42&_HLS_part=3
                    low-latency HLS: held until that part is listed (blocking_reload.py)
    GET /<rendition>/index.m3u8?_HLS_skip=YES      its delta update (delta_update.py)
    GET /manifest.mpd                              application/dash+xml, max-age=1 (DASH)
    GET /thumbnail.jpg                             image/jpeg, max-age=1 (a still, every 5 s)
    GET /healthz    200 while the process serves requests
    GET /readyz     200 once the ingest front listens (or the pull loop runs)
    GET /, /player  the preview page and /player/status, its share of the status
                    (kubecast_worker.player)
    POST /whep/<rendition>, DELETE /whep/<rendition>/<id>
                    WebRTC viewers (WHEP), when the worker offers them (kubecast_worker.whep)

``/status`` and ``/metrics`` are on the admin port (``kubecast_worker.admin``):
a playback Service may be a NodePort or a LoadBalancer, and what the worker
knows of its publisher and its errors is not for viewers. The probes stay here
too, so that the kubelet checks the listener that Services send viewers to.

Segments can be cached forever because the packager never reuses a segment
name; playlists change every segment, so they are cached for a second (a
low-latency one too, as with AWS MediaPackage: a player's later requests carry
``_HLS_msn``/``_HLS_part``, which a CDN must keep in its cache key, so each is a
URL of its own). Refusals of those (400, 503) are never cached.

Only files of the packager's own shape are served: ``master.m3u8`` or
``<dir>/<file>`` with a media suffix, no dot-files (which also excludes the
muxer's ``.tmp`` files while they are being written), no ``..``, and the
resolved path must stay inside the output directory (no symlink escapes).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from kubecast_worker import admin, delta_update, player
from kubecast_worker.blocking_reload import BadDirective, BlockingReloads, Directives, hold_seconds
from kubecast_worker.hot_files import HotFiles
from kubecast_worker.status import Status

if TYPE_CHECKING:
    from kubecast_worker.whep import WhepHub

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/mp4",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}
#: Files replaced in place (by rename) as the stream goes on: read whole, cached briefly.
CHANGING = (".m3u8", ".mpd", ".jpg")
PLAYLIST_CACHE = "public, max-age=1"
SEGMENT_CACHE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
NO_STORE = "no-store"
#: The query parameters of a blocking playlist reload (RFC 8216bis 6.2.5.2).
DIRECTIVES = ("_HLS_msn", "_HLS_part", "_HLS_skip")
#: _HLS_skip=v2 also asks to skip date ranges, of which there are none here.
SKIP_VALUES = ("YES", "v2")
#: /whep/: a viewer's page POSTs its offer and DELETEs its session (kubecast_worker.whep).
WHEP_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
    "Access-Control-Max-Age": "86400",
}
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, Origin, Accept, Content-Type",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Date, Age",
    "Access-Control-Max-Age": "86400",
}


def resolve(root: Path, tail: str) -> Path | None:
    """The file under ``root`` that the request path ``tail`` names, or None."""
    if not tail or "\\" in tail or "\x00" in tail:
        return None
    parts = tail.split("/")
    if len(parts) > 2 or any(not p or p.startswith(".") for p in parts):
        return None
    if Path(parts[-1]).suffix not in CONTENT_TYPES:
        return None
    base = _real(root)
    # NB: no part is "..", and ``base`` has no symlink in it, so only a symlink among
    # the one or two names under it can lead out: lstat those rather than resolve the
    # whole path from / for every request (that was a quarter of the origin's time
    # under 1,000 viewers; so are strings here rather than Path objects).
    name = base
    try:
        for part in parts:
            name = f"{name}/{part}"
            st = os.lstat(name)
            if stat.S_ISLNK(st.st_mode):
                return _through_link(Path(base), Path(base, *parts))
    except OSError:
        return None
    return Path(name) if stat.S_ISREG(st.st_mode) else None


@functools.lru_cache(maxsize=16)
def _real(root: Path) -> str:
    return str(root.resolve())


def _through_link(base: Path, path: Path) -> Path | None:
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(base) or not real.is_file():
        return None
    return real


#: Requests that aiohttp's FileResponse answers (206, 304, 412) instead of the copy
#: in memory.
CONDITIONAL = (
    hdrs.RANGE, hdrs.IF_RANGE, hdrs.IF_MATCH, hdrs.IF_NONE_MATCH, hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)  # fmt: skip


def _not_found() -> web.Response:
    return web.Response(status=404, text="not found\n", headers={"Cache-Control": NO_CACHE})


def make_app(
    *,
    root: Path,
    status: Status,
    stream_key_secret: str | None = None,
    ingest_url: str | None = None,
    whep: WhepHub | None = None,
) -> web.Application:
    @web.middleware
    async def cors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if whep is not None and request.path.startswith("/whep/"):
            # WebRTC viewers: POST an offer, DELETE the session (kubecast_worker.whep).
            if request.method == "OPTIONS":
                return web.Response(status=204, headers=WHEP_CORS)
            response = await handler(request)
            response.headers.update(WHEP_CORS)
            return response
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS)
        if request.method not in ("GET", "HEAD"):
            # NB: before routing: a method no route takes (CONNECT, TRACE) would
            # otherwise answer 404, as if the path were the problem.
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "OPTIONS"])
        try:
            response = await handler(request)
        except web.HTTPException as e:
            e.headers.update(CORS)
            raise
        response.headers.update(CORS)
        return response

    hot_files = HotFiles()
    reloads = BlockingReloads(hot_files)

    async def media(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        path = resolve(root, tail)
        if path is None:
            path = await hinted_part(tail)
        if path is None:
            return _not_found()
        if path.suffix == ".m3u8" and any(d in request.query for d in DIRECTIVES):
            return await blocking_reload(request, path)
        # Playlists and the thumbnail change in place (by rename): cached briefly.
        playlist = path.suffix in CHANGING
        headers = {
            "Content-Type": CONTENT_TYPES[path.suffix],
            "Cache-Control": PLAYLIST_CACHE if playlist else SEGMENT_CACHE,
        }
        # NB: a playlist is always answered whole (one version: the packager replaces
        # it by rename); a segment too, unless asked for a range or revalidated.
        if playlist or not any(h in request.headers for h in CONDITIONAL):
            try:
                hot = hot_files.get(path)
            except OSError:
                return _not_found()
            if hot is not None:
                if not playlist:
                    headers.update(hot.headers, **{"Accept-Ranges": "bytes"})
                return web.Response(body=hot.body, headers=headers)
        return web.FileResponse(path, headers=headers)

    async def blocking_reload(request: web.Request, path: Path) -> web.StreamResponse:
        """A playlist request with delivery directives: answered once the playlist
        has what they ask for (blocking_reload.py)."""
        headers = {"Content-Type": CONTENT_TYPES[".m3u8"], "Cache-Control": PLAYLIST_CACHE}
        skip = request.query.get("_HLS_skip")
        try:
            if skip is not None and skip not in SKIP_VALUES:
                raise BadDirective("_HLS_skip is YES or v2")
            directives = Directives.of(dict(request.query))
            edge = reloads.edge(path)
            if edge is None:
                return _not_found()
            if directives is not None and edge.blocking:
                directives.check(edge)
            else:
                directives = None  # nothing to wait for, or a playlist that never blocks
        except BadDirective as e:
            return web.Response(status=400, text=f"{e}\n", headers={"Cache-Control": NO_STORE})
        if directives is None:
            try:
                found = hot_files.get(path)
            except OSError:
                return _not_found()
            if found is None:
                return web.FileResponse(path, headers=headers)
        else:
            wanted = directives
            found = await reloads.wait(
                path, lambda e: e.has(wanted.msn, wanted.part), timeout=hold_seconds
            )
            if found is None:
                return web.Response(
                    status=503,
                    text="the playlist did not reach that part in three target durations\n",
                    headers={"Cache-Control": NO_STORE},
                )
        if skip is not None:  # a delta update, when the playlist offers them
            return web.Response(text=delta_update.delta(found.body.decode()), headers=headers)
        return web.Response(body=found.body, headers=headers)

    async def hinted_part(tail: str) -> Path | None:
        """The part a low-latency playlist's EXT-X-PRELOAD-HINT names, once it exists:
        a player may ask for it before (RFC 8216bis 6.2.5.3)."""
        directory, _, name = tail.rpartition("/")
        playlist = resolve(root, f"{directory}/index.m3u8") if directory else None
        if playlist is None or not name.endswith(".m4s"):
            return None
        edge = reloads.edge(playlist)
        if edge is None or not edge.blocking or edge.hint != name:
            return None
        # NB: the packager writes a part before it publishes the playlist naming the next.
        await reloads.wait(playlist, lambda e: e.hint != name or e.ended, timeout=hold_seconds)
        return resolve(root, tail)

    app = web.Application(middlewares=[cors])
    admin.add_probe_routes(app, status=status)
    # The preview page (/, /player): before the catch-all below, which would take /player.
    # NB: ingest_url is the operator's (the ingest Service's name); without one, the
    # page reads the worker's own from player/status, which has the port really bound
    # (the RTMP listener starts after this app is built).
    player.add_player_routes(
        app,
        status=status,
        ingest_url=ingest_url,
        stream_key_secret=stream_key_secret,
        whep=whep.offered if whep is not None else (),
    )
    if whep is not None:
        whep.add_routes(app)  # before the catch-all, which would take /whep/...
    app.router.add_get("/{tail:.+}", media)  # also answers HEAD
    return app


async def start(
    *,
    host: str,
    port: int,
    root: Path,
    status: Status,
    stream_key_secret: str | None = None,
    ingest_url: str | None = None,
    whep: WhepHub | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve until ``runner.cleanup()``. Returns the runner and the bound port."""
    app = make_app(
        root=root,
        status=status,
        stream_key_secret=stream_key_secret,
        ingest_url=ingest_url,
        whep=whep,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
