"""The preview page on the worker's HTTP origin: ``/``, ``/player`` and its assets.

The page plays ``master.m3u8`` with hls.js and polls ``player/status``, both by
relative URL, so it keeps working behind a CDN or a path prefix. ``player/status``
is the viewer's share of the worker's status (``viewer_status``): state, input
format, renditions and figures; the publisher's address, errors, a pull source and
restream targets stay on the admin port's ``/status``. hls.js is not checked in:
``build_assets.sh`` installs it from the npm registry at the version
``package-lock.json`` pins and copies ``hls.min.js`` into ``static/``. Until then
the asset answers 404 with a message that says how to build it, and the page
falls back to the browser's own HLS where there is one (Safari).

With ``whep=True`` (the worker's ``--whep``) the page also offers WebRTC playback:
a "Playback" choice of HLS or WebRTC (WHEP), or ``?mode=whep`` in its URL; it then
POSTs its offer to ``whep/<rendition>`` on this origin (``kubecast_worker.whep``).

The stream key never reaches the page: the ingest URL is cut after the RTMP
application name, and at most the name of the Secret holding the key is shown.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from kubecast_worker.status import Status

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
PAGE_TEMPLATE = PACKAGE_DIR / "page.html"
HLS_JS = "hls.min.js"

NOT_BUILT = (
    "hls.js is not built on this origin: run workers/kubecast_worker/player/build_assets.sh"
    " (npm ci, then copies node_modules/hls.js/dist/hls.min.js into static/). Until then"
    " the master playlist plays in Safari, VLC or ffplay."
)

# NB: hls.js feeds media through blob: URLs (MSE) and runs its demuxer in a blob: worker.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
    ]
)

_URL = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^@/?#]*@)?(?P<host>[^/?#]*)(?P<path>[^?#]*)", re.I
)
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def ingest_url_without_key(url: str | None) -> str:
    """``rtmp://host:1935/live/KEY?x#y`` → ``rtmp://host:1935/live``; ``""`` if not a URL.

    Publishers put the key after the application name, so a configured URL that
    carries one by mistake still shows only the part that is safe to share. User
    info, queries (SRT's ``streamid``) and fragments are dropped for every scheme.
    """
    match = _URL.match(url or "")
    if not match:
        return ""
    scheme, host, path = match["scheme"], match["host"], match["path"]
    if scheme.lower().startswith(("rtmp", "srt")):
        app = next((segment for segment in path.split("/") if segment), "")
        return f"{scheme}{host}/{app}" if app else f"{scheme}{host}"
    return f"{scheme}{host}{path}"


#: What a viewer may see of the input and of each rendition (not the publisher).
_INPUT_FIELDS = ("videoCodec", "audioCodec", "width", "height", "fps", "bitrateKbps")
_RENDITION_FIELDS = ("name", "state", "width", "height", "bitrateKbps")


def viewer_status(doc: dict[str, Any]) -> dict[str, Any]:
    """The page's share of a worker ``/status`` document: by allow-list, so a field
    added to the worker's status stays off the playback port until added here."""
    ingest = doc.get("ingest") or {}
    shown_ingest: dict[str, Any] = {"mode": ingest.get("mode")}
    if ingest.get("mode") == "push":
        # Where publishers push, cut after the application name: a pull source
        # may carry credentials and is not shown at all.
        shown_ingest["url"] = ingest_url_without_key(ingest.get("url"))
    source = doc.get("input")
    return {
        "stream": doc.get("stream"),
        "state": doc.get("state"),
        "ingest": shown_ingest,
        "input": {k: source.get(k) for k in _INPUT_FIELDS} if source else None,
        "renditions": [
            {k: r[k] for k in _RENDITION_FIELDS if k in r} for r in doc.get("renditions") or []
        ],
        "droppedFrames": doc.get("droppedFrames"),
        "encodeSpeed": doc.get("encodeSpeed"),
        "thumbnailUrl": doc.get("thumbnailUrl"),  # the poster: served on this port anyway
    }


def render_page(
    *,
    ingest_url: str | None = None,
    stream_key_secret: str | None = None,
    whep: Sequence[str] = (),
) -> str:
    template = PAGE_TEMPLATE.read_text(encoding="utf-8")
    values = {
        "ingest_url": ingest_url_without_key(ingest_url),
        "key_secret": stream_key_secret or "",
        "whep": " ".join(whep),  # the renditions offered to WebRTC; none: HLS only
    }
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value, quote=True))
    return template


def hls_js_built(static_dir: Path = STATIC_DIR) -> bool:
    return (static_dir / HLS_JS).is_file()


def add_player_routes(
    app: web.Application,
    *,
    status: Status,
    ingest_url: str | None = None,
    stream_key_secret: str | None = None,
    whep: Sequence[str] = (),
) -> None:
    """Serve the preview page at ``/`` and ``/player``, its assets at ``/player/static/``
    and what it shows at ``/player/status`` (``viewer_status``).

    ``ingest_url`` is where publishers push (``rtmp://host:port/app``); anything after
    the application name is dropped. ``stream_key_secret`` names the Secret that
    holds the key, for the "key: in Secret …" hint; the key itself is never passed.
    ``ingest_url`` wins over the worker's own listen address from ``player/status``.
    ``whep``: the renditions the origin offers WHEP viewers; the page then offers WebRTC
    playback of those.
    """
    page = render_page(ingest_url=ingest_url, stream_key_secret=stream_key_secret, whep=whep)
    static_dir = STATIC_DIR

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    async def redirect_to_page(request: web.Request) -> web.StreamResponse:
        # NB: relative, so that a path prefix in front of the origin is kept.
        raise web.HTTPMovedPermanently(location="../player")

    async def serve_asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = static_dir / name
        if not _ASSET_NAME.match(name) or not path.is_file():
            if name == HLS_JS:
                raise web.HTTPNotFound(text=NOT_BUILT)
            raise web.HTTPNotFound(text=f"no player asset named {name!r}")
        return web.FileResponse(
            path,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def serve_status(request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(viewer_status(status.snapshot())),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_get("/", serve_page)
    app.router.add_get("/player", serve_page)
    app.router.add_get("/player/", redirect_to_page)
    app.router.add_get("/player/status", serve_status)
    app.router.add_get("/player/static/{name}", serve_asset)
