"""The preview page on the worker's HTTP origin: ``/``, ``/player`` and its assets.

The page plays ``master.m3u8`` with hls.js and polls ``status``, both by relative
URL, so it keeps working behind a CDN or a path prefix. hls.js is not checked in:
``build_assets.sh`` installs it from the npm registry at the version
``package-lock.json`` pins and copies ``hls.min.js`` into ``static/``. Until then
the asset answers 404 with a message that says how to build it, and the page
falls back to the browser's own HLS where there is one (Safari).

The stream key never reaches the page: the ingest URL is cut after the RTMP
application name, and at most the name of the Secret holding the key is shown.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

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


def render_page(*, ingest_url: str | None = None, stream_key_secret: str | None = None) -> str:
    template = PAGE_TEMPLATE.read_text(encoding="utf-8")
    values = {
        "ingest_url": ingest_url_without_key(ingest_url),
        "key_secret": stream_key_secret or "",
    }
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value, quote=True))
    return template


def hls_js_built(static_dir: Path = STATIC_DIR) -> bool:
    return (static_dir / HLS_JS).is_file()


def add_player_routes(
    app: web.Application,
    *,
    ingest_url: str | None = None,
    stream_key_secret: str | None = None,
) -> None:
    """Serve the preview page at ``/`` and ``/player``, its assets at ``/player/static/``.

    ``ingest_url`` is where publishers push (``rtmp://host:port/app``); anything after
    the application name is dropped. ``stream_key_secret`` names the Secret that
    holds the key, for the "key: in Secret …" hint; the key itself is never passed.
    ``ingest_url`` wins over the worker's own listen address from ``/status``.
    """
    page = render_page(ingest_url=ingest_url, stream_key_secret=stream_key_secret)
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

    app.router.add_get("/", serve_page)
    app.router.add_get("/player", serve_page)
    app.router.add_get("/player/", redirect_to_page)
    app.router.add_get("/player/static/{name}", serve_asset)
