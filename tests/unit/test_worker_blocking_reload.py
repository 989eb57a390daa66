"""Blocking playlist reload at the origin, over real loopback HTTP (RFC 8216bis 6.2.5.2).

The playlists are written by the test the way the packager writes them (renamed
into place), while requests wait on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from kubecast_worker import files, origin
from kubecast_worker.status import Status

HEAD = (
    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:40\n"
    "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.9\n"
    '#EXT-X-PART-INF:PART-TARGET=0.25\n#EXT-X-MAP:URI="a-init.mp4"\n'
    "#EXTINF:1.0,\na-00040.m4s\n#EXTINF:1.0,\na-00041.m4s\n"
)


def version(parts: int) -> str:
    """The playlist with ``parts`` parts of segment 42 listed, and the next one hinted."""
    listed = "".join(
        f'#EXT-X-PART:DURATION=0.25,URI="a-00042.{n}.m4s"{",INDEPENDENT=YES" if n == 0 else ""}\n'
        for n in range(parts)
    )
    return HEAD + listed + f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="a-00042.{parts}.m4s"\n'


Scenario = Callable[[aiohttp.ClientSession, Path], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    root = tmp_path / "out"
    (root / "360p").mkdir(parents=True)
    files.write_atomically(root / "360p" / "index.m3u8", version(1))
    (root / "360p" / "a-00042.0.m4s").write_bytes(b"part 0")
    (root / "old").mkdir()
    (root / "old" / "index.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nx.ts\n")
    status = Status(stream="unit", mode="push", ingest_url="rtmp://127.0.0.1:1/live")

    async def main() -> None:
        runner, port = await origin.start(host="127.0.0.1", port=0, root=root, status=status)
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                await scenario(http, root / "360p")
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 30))


async def later(seconds: float, path: Path, data: str | bytes) -> float:
    await asyncio.sleep(seconds)
    files.write_atomically(path, data)
    return time.monotonic()


def test_a_request_for_the_next_part_is_answered_once_it_is_listed(tmp_path: Path) -> None:
    async def scenario(http: aiohttp.ClientSession, rendition: Path) -> None:
        writing = asyncio.create_task(later(0.4, rendition / "index.m3u8", version(2)))
        asked = time.monotonic()
        async with http.get("/360p/index.m3u8?_HLS_msn=42&_HLS_part=1") as reply:
            answered = time.monotonic()
            body = await reply.text()
            assert reply.status == 200
            assert reply.headers["Cache-Control"] == "public, max-age=1"
        written = await writing
        assert answered >= written and answered - asked >= 0.4
        assert 'URI="a-00042.1.m4s"' in body
        # What is there already is answered at once: a part, a whole segment.
        for query in ("_HLS_msn=42&_HLS_part=0", "_HLS_msn=41", "_HLS_msn=40&_HLS_part=5"):
            started = time.monotonic()
            async with http.get(f"/360p/index.m3u8?{query}") as reply:
                assert reply.status == 200 and time.monotonic() - started < 0.3, query

    run(tmp_path, scenario)


def test_directives_out_of_reach_are_refused_and_a_wait_ends(tmp_path: Path) -> None:
    async def scenario(http: aiohttp.ClientSession, rendition: Path) -> None:
        # The last segment is 41: 43 may be waited for, 44 is a bad request at once.
        for query in ("_HLS_msn=44&_HLS_part=0", "_HLS_part=1", "_HLS_msn=x"):
            async with http.get(f"/360p/index.m3u8?{query}") as reply:
                assert reply.status == 400, query
                assert reply.headers["Cache-Control"] == "no-store"
        # Three target durations (1 s here) without the part: 503, not a hang.
        started = time.monotonic()
        async with http.get("/360p/index.m3u8?_HLS_msn=43&_HLS_part=0") as reply:
            assert reply.status == 503 and reply.headers["Cache-Control"] == "no-store"
        assert 2.9 <= time.monotonic() - started < 4.5

    run(tmp_path, scenario)


def test_an_ended_or_ordinary_playlist_is_answered_as_it_is(tmp_path: Path) -> None:
    async def scenario(http: aiohttp.ClientSession, rendition: Path) -> None:
        async with http.get("/old/index.m3u8?_HLS_msn=99&_HLS_part=0") as reply:
            assert reply.status == 200 and "x.ts" in await reply.text()
        ending = asyncio.create_task(
            later(0.3, rendition / "index.m3u8", version(1) + "#EXT-X-ENDLIST\n")
        )
        async with http.get("/360p/index.m3u8?_HLS_msn=43&_HLS_part=0") as reply:
            assert reply.status == 200 and "#EXT-X-ENDLIST" in await reply.text()
        await ending

    run(tmp_path, scenario)


def test_the_hinted_part_is_held_until_it_exists(tmp_path: Path) -> None:
    async def scenario(http: aiohttp.ClientSession, rendition: Path) -> None:
        async def publish() -> float:
            await later(0.3, rendition / "a-00042.1.m4s", b"part 1")
            return await later(0.0, rendition / "index.m3u8", version(2))

        writing = asyncio.create_task(publish())
        async with http.get("/360p/a-00042.1.m4s") as reply:
            answered = time.monotonic()
            assert reply.status == 200 and await reply.read() == b"part 1"
        assert answered >= await writing
        # A part no playlist hints at is not waited for.
        started = time.monotonic()
        async with http.get("/360p/a-00042.7.m4s") as reply:
            assert reply.status == 404 and time.monotonic() - started < 0.3

    run(tmp_path, scenario)


def test_a_delta_update_skips_what_the_playlist_offers_to(tmp_path: Path) -> None:
    long = (
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:EVENT\n"
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1,CAN-SKIP-UNTIL=12\n"
        '#EXT-X-PART-INF:PART-TARGET=0.34\n#EXT-X-MAP:URI="a-init.mp4"\n'
        + "".join(f"#EXTINF:2.0,\na-{n:05d}.m4s\n" for n in range(10))
    )

    async def scenario(http: aiohttp.ClientSession, rendition: Path) -> None:
        files.write_atomically(rendition / "index.m3u8", long)
        async with http.get("/360p/index.m3u8?_HLS_skip=YES") as reply:
            text = await reply.text()
        # 20 s listed: the 4 segments that start more than 12 s before the end go.
        assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n" in text
        assert "a-00003.m4s" not in text and "a-00004.m4s" in text
        assert text.index('#EXT-X-MAP:URI="a-init.mp4"') > text.index("#EXT-X-SKIP")
        async with http.get("/360p/index.m3u8?_HLS_skip=NO") as reply:
            assert reply.status == 400
        async with http.get("/old/index.m3u8?_HLS_skip=YES") as reply:
            assert reply.status == 200 and "#EXT-X-SKIP" not in await reply.text()

    run(tmp_path, scenario)
