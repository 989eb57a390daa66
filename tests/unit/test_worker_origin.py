"""The HTTP origin over real loopback HTTP: headers players need, and nothing else served."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from kubecast_worker import admin, events, metrics, origin
from kubecast_worker.status import RenditionState, Status

Scenario = Callable[[str, int], Awaitable[None]]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    (root / "360p").mkdir(parents=True)
    (root / "master.m3u8").write_text("#EXTM3U\n")
    (root / "360p" / "index.m3u8").write_text("#EXTM3U\n#EXTINF:2.0,\nab-00001.ts\n")
    (root / "360p" / "ab-00001.ts").write_bytes(b"\x47" * 188 * 10)
    (root / "360p" / "ab-00002.m4s").write_bytes(b"moof")
    (root / "360p" / "ab-init.mp4").write_bytes(b"ftyp")
    (root / "360p" / "ab-00003.ts.tmp").write_bytes(b"half")
    (root / "360p" / ".hidden.ts").write_bytes(b"x")
    (root / "360p" / "notes.txt").write_text("not media")
    secret = tmp_path / "secret.ts"
    secret.write_text("outside the root")
    (root / "360p" / "escape.ts").symlink_to(secret)
    return root


def serve(root: Path, scenario: Scenario, *, status: Status | None = None) -> None:
    status = status or Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1/live")

    async def main() -> None:
        runner, port = await origin.start(host="127.0.0.1", port=0, root=root, status=status)
        try:
            await scenario("127.0.0.1", port)
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))


async def raw_get(host: str, port: int, target: str) -> int:
    """Send the request line exactly as given (no client-side path normalization)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readline()
    writer.close()
    return int(head.split()[1])


def test_playlists_and_segments_have_player_content_types_and_caching(tree: Path) -> None:
    expected = {
        "/master.m3u8": ("application/vnd.apple.mpegurl", "public, max-age=1"),
        "/360p/index.m3u8": ("application/vnd.apple.mpegurl", "public, max-age=1"),
        "/360p/ab-00001.ts": ("video/mp2t", "public, max-age=31536000, immutable"),
        "/360p/ab-00002.m4s": ("video/mp4", "public, max-age=31536000, immutable"),
        "/360p/ab-init.mp4": ("video/mp4", "public, max-age=31536000, immutable"),
    }

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for path, (content_type, cache) in expected.items():
                async with http.get(path) as r:
                    assert r.status == 200, path
                    assert r.headers["Content-Type"] == content_type, path
                    assert r.headers["Cache-Control"] == cache, path
                    assert r.headers["Access-Control-Allow-Origin"] == "*"
                    assert await r.read() == (tree / path.lstrip("/")).read_bytes()
                async with http.head(path) as r:
                    assert r.status == 200 and r.headers["Content-Type"] == content_type

    serve(tree, scenario)


def test_segments_answer_range_requests(tree: Path) -> None:
    async def scenario(host: str, port: int) -> None:
        async with (
            aiohttp.ClientSession(f"http://{host}:{port}") as http,
            http.get("/360p/ab-00001.ts", headers={"Range": "bytes=188-375"}) as r,
        ):
            assert r.status == 206
            assert r.headers["Content-Range"] == "bytes 188-375/1880"
            assert len(await r.read()) == 188

    serve(tree, scenario)


def test_a_playlist_the_packager_replaces_is_served_new_at_once(tree: Path) -> None:
    """The origin keeps the files viewers ask for in memory: never a stale one."""
    playlist = tree / "360p" / "index.m3u8"

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for sequence in range(2, 6):
                async with http.get("/360p/index.m3u8") as r:
                    assert await r.read() == playlist.read_bytes()
                tmp = playlist.with_name(".index.m3u8.tmp")
                tmp.write_text(f"#EXTM3U\n#EXTINF:2.0,\nab-{sequence:05d}.ts\n")
                tmp.rename(playlist)  # as FFmpeg's hls muxer does (temp_file)
                async with http.get("/360p/index.m3u8") as r:
                    assert (await r.text()).endswith(f"ab-{sequence:05d}.ts\n")

    serve(tree, scenario)


def test_segments_can_be_revalidated(tree: Path) -> None:
    """A CDN's conditional GET gets 304 with the ETag the full answer gave."""
    # NB: whole seconds: aiohttp compares If-Modified-Since with the exact mtime.
    os.utime(tree / "360p" / "ab-00001.ts", (1_700_000_000, 1_700_000_000))

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/360p/ab-00001.ts") as r:
                assert r.status == 200 and r.headers["Accept-Ranges"] == "bytes"
                etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
            async with http.get("/360p/ab-00001.ts", headers={"If-None-Match": etag}) as r:
                assert r.status == 304
                assert r.headers["ETag"] == etag
            async with http.get("/360p/ab-00001.ts", headers={"If-Modified-Since": modified}) as r:
                assert r.status == 304
            (tree / "360p" / "ab-00001.ts").unlink()  # deleted from the live window
            async with http.get("/360p/ab-00001.ts") as r:
                assert r.status == 404

    serve(tree, scenario)


def test_cors_preflight_is_answered_for_any_path(tree: Path) -> None:
    async def scenario(host: str, port: int) -> None:
        headers = {"Origin": "https://player.example", "Access-Control-Request-Method": "GET"}
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for path in ("/master.m3u8", "/360p/ab-00001.ts", "/player/status"):
                async with http.options(path, headers=headers) as r:
                    assert r.status == 204
                    assert r.headers["Access-Control-Allow-Origin"] == "*"
                    assert "GET" in r.headers["Access-Control-Allow-Methods"]
                    assert "Range" in r.headers["Access-Control-Allow-Headers"]

    serve(tree, scenario)


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.ts",
        "/360p/../../secret.ts",
        "/%2e%2e/secret.ts",
        "/360p/%2e%2e/%2e%2e/secret.ts",
        "/360p/..%2f..%2fsecret.ts",
        "/360p/..%5c..%5csecret.ts",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/360p/escape.ts",  # a symlink out of the root
        "/360p/ab-00003.ts.tmp",  # a segment still being written
        "/360p/.hidden.ts",
        "/360p/notes.txt",  # not a media file
        "/360p/ab-00009.ts",  # does not exist
        "/a/b/c.ts",
        "/360p",
    ],
)
def test_nothing_outside_the_media_files_is_served(tree: Path, target: str) -> None:
    async def scenario(host: str, port: int) -> None:
        assert await raw_get(host, port, "/360p/ab-00001.ts") == 200  # the same client works
        assert await raw_get(host, port, target) in (400, 404)

    serve(tree, scenario)


def test_not_found_is_not_cached(tree: Path) -> None:
    async def scenario(host: str, port: int) -> None:
        async with (
            aiohttp.ClientSession(f"http://{host}:{port}") as http,
            http.get("/720p/index.m3u8") as r,
        ):
            assert r.status == 404
            assert r.headers["Cache-Control"] == "no-cache"

    serve(tree, scenario)


def serve_admin(scenario: Scenario, *, status: Status) -> None:
    async def main() -> None:
        runner, port = await admin.start(
            host="127.0.0.1", port=0, status=status, registry=metrics.registry_for(status)
        )
        try:
            await scenario("127.0.0.1", port)
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_health_and_readiness_are_answered_on_the_playback_port(tree: Path) -> None:
    status = Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1935/live")

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/healthz") as r:
                assert r.status == 200
            async with http.get("/readyz") as r:
                assert r.status == 503
            status.post(events.Readiness(True))
            async with http.get("/readyz") as r:
                assert r.status == 200

    serve(tree, scenario, status=status)


def test_status_and_metrics_are_not_on_the_playback_port(tree: Path) -> None:
    """A NodePort or LoadBalancer playback Service must not show viewers the
    publisher's address, errors or restream state."""
    status = Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1935/live")
    status.post(events.SessionStarted(publisher="198.51.100.7:50000"))
    status.post(events.ErrorReported("restream youtube failed"))

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for path in ("/status", "/metrics", "/status/", "/metrics?x=1"):
                async with http.get(path) as r:
                    assert r.status == 404, path
                    body = await r.text()
                    assert "198.51.100.7" not in body and "restream" not in body

    serve(tree, scenario, status=status)


def test_the_admin_port_serves_status_and_metrics(tree: Path) -> None:
    status = Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1935/live")
    dropped = RenditionState(name="1080p", state="Dropped", reason="would upscale")
    status.post(events.RenditionsPlanned((dropped,)))

    async def scenario(host: str, port: int) -> None:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/status") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
                assert r.headers["Cache-Control"] == "no-store"
                doc = json.loads(await r.text())
                assert doc["state"] == "idle" and doc["stream"] == "unit"
                assert doc["renditions"] == [
                    {"name": "1080p", "state": "Dropped", "reason": "would upscale"}
                ]
            async with http.get("/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
                assert 'kubecast_stream_state{state="idle",stream="unit"} 1.0' in text
                assert 'kubecast_rendition_active{rendition="1080p",stream="unit"} 0.0' in text
            async with http.get("/readyz") as r:
                assert r.status == 503
            async with http.get("/master.m3u8") as r:
                assert r.status == 404, "the admin port serves no media"

    serve_admin(scenario, status=status)


async def raw_request(host: str, port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    head = await reader.readline()
    writer.close()
    return int(head.split()[1])


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT"])
@pytest.mark.parametrize("target", ["/master.m3u8", "/360p/ab-00001.ts", "/status", "/player"])
def test_the_playback_port_has_no_write_or_other_method(
    tree: Path, method: str, target: str
) -> None:
    """Only GET, HEAD and OPTIONS: nothing a viewer sends can change what is served."""

    async def scenario(host: str, port: int) -> None:
        request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        code = await raw_request(host, port, (request + "Connection: close\r\n\r\n").encode())
        assert code == 405, f"{method} {target} answered {code}"
        assert await raw_get(host, port, "/360p/ab-00001.ts") == 200
        assert (tree / "360p" / "ab-00001.ts").stat().st_size == 188 * 10

    serve(tree, scenario)


def test_a_huge_header_is_refused_and_the_origin_serves_on(tree: Path) -> None:
    async def scenario(host: str, port: int) -> None:
        request = (
            "GET /master.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 64 * 1024 + "\r\n"
            "Connection: close\r\n\r\n"
        )
        assert await raw_request(host, port, request.encode()) in (400, 431)
        assert await raw_get(host, port, "/master.m3u8") == 200

    serve(tree, scenario)
