"""Blocking playlist reload for low-latency HLS (RFC 8216bis 6.2.5.2, 6.2.6).

A player asks ``index.m3u8?_HLS_msn=42&_HLS_part=3`` for the playlist version
that has part 3 of segment 42 (or anything later), and the origin holds the
request until the packager (llhls.py) has published it:

- the answer comes as soon as the playlist lists that part, or the whole segment 42,
  or a later one (or has ended);
- after three target durations without it: 503, as the RFC says;
- ``_HLS_msn`` more than two beyond the last segment listed, or ``_HLS_part``
  without ``_HLS_msn``, or either not a number: 400, at once;
- a request for the part that ``EXT-X-PRELOAD-HINT`` names, before it exists, is held
  the same way until it does (6.2.5.3).

Only playlists that say ``CAN-BLOCK-RELOAD=YES`` are held; others are answered as
they are (the directives are a request a server may ignore).

Waiting costs the event loop nothing per request: one task per playlist being
waited on stats the file every ``POLL_SECONDS`` (through HotFiles, which also reads
it once per version) and wakes every request waiting on it when it changes. The
origin only knows the files, so it works the same whoever writes them; the
packager renames each version into place, so a version is always whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubecast_worker.hot_files import HotFile, HotFiles

#: How often a playlist being waited on is looked at: a small part of a part target.
POLL_SECONDS = 0.02
#: How long a request may be held, in target durations (RFC 8216bis 6.2.5.2).
HOLD_TARGETS = 3
_NUMBER = re.compile(r"^(0|[1-9][0-9]{0,17})$")
_HINT = re.compile(r'^#EXT-X-PRELOAD-HINT:.*\bURI="([^"]+)"', re.MULTILINE)


class BadDirective(ValueError):
    """The request's delivery directives cannot be answered (HTTP 400)."""


@dataclass(frozen=True)
class Edge:
    """Where a media playlist's live edge is."""

    #: media sequence number of the segment after the last complete one (the one
    #: being written, whose parts are listed)
    next_msn: int
    #: parts listed of that segment, and of the last complete one
    open_parts: int
    last_parts: int
    target_duration: float
    blocking: bool
    ended: bool
    #: the part EXT-X-PRELOAD-HINT names, if any
    hint: str | None

    @classmethod
    def of(cls, text: str) -> Edge:
        first, target, complete = 0, 6.0, 0
        parts = [0]  # parts after each segment line: [.., last complete's, open's]
        for line in text.splitlines():
            if line.startswith("#EXT-X-PART:"):
                parts[-1] += 1
            elif line.startswith("#EXTINF:"):
                complete += 1
            elif line and not line.startswith("#"):
                parts.append(0)  # a segment's URI: its parts were the ones before
            elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                first = int(line.split(":", 1)[1])
            elif line.startswith("#EXT-X-TARGETDURATION:"):
                target = float(line.split(":", 1)[1])
        hint = _HINT.search(text)
        return cls(
            next_msn=first + complete,
            open_parts=parts[-1],
            last_parts=parts[-2] if len(parts) > 1 else 0,
            target_duration=target,
            blocking="CAN-BLOCK-RELOAD=YES" in text,
            ended="#EXT-X-ENDLIST" in text,
            hint=hint.group(1) if hint else None,
        )

    def has(self, msn: int, part: int | None) -> bool:
        """Whether this version lists segment ``msn`` (``part`` None), or part
        ``part`` of it, or something later."""
        if self.ended or msn < self.next_msn - 1:
            return True
        if part is None:
            return msn <= self.next_msn - 1
        if msn == self.next_msn - 1:
            # the last complete segment: all its parts are there, and past its last
            # one the next is the open segment's first
            return part < self.last_parts or self.open_parts > 0 or self.last_parts == 0
        if msn == self.next_msn:
            return part < self.open_parts
        return False


@dataclass(frozen=True)
class Directives:
    msn: int
    part: int | None

    @classmethod
    def of(cls, query: dict[str, str]) -> Directives | None:
        """The request's ``_HLS_msn``/``_HLS_part``, None when there are none."""
        msn, part = query.get("_HLS_msn"), query.get("_HLS_part")
        if msn is None:
            if part is not None:
                raise BadDirective("_HLS_part without _HLS_msn")
            return None
        if not _NUMBER.match(msn) or (part is not None and not _NUMBER.match(part)):
            raise BadDirective("_HLS_msn and _HLS_part are decimal integers")
        return cls(int(msn), int(part) if part is not None else None)

    def check(self, edge: Edge) -> None:
        if self.msn > edge.next_msn - 1 + 2:
            raise BadDirective(
                f"_HLS_msn={self.msn} is more than two beyond the last segment"
                f" ({edge.next_msn - 1})"
            )


class _Watch:
    """One playlist's current version, and an event set each time it changes."""

    def __init__(self, path: Path, hot_files: HotFiles) -> None:
        self.path = path
        self.hot_files = hot_files
        self.waiters = 0
        self.changed = asyncio.Event()
        self.current, self.edge = self._read()
        self.task: asyncio.Task[None] | None = None

    def _read(self) -> tuple[HotFile | None, Edge | None]:
        try:
            hot = self.hot_files.get(self.path)
        except OSError:
            return None, None
        return hot, Edge.of(hot.body.decode()) if hot is not None else None

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            hot, edge = self._read()
            if hot is not self.current:  # HotFiles keeps one object per version
                self.current, self.edge = hot, edge
                changed, self.changed = self.changed, asyncio.Event()
                changed.set()


class BlockingReloads:
    def __init__(self, hot_files: HotFiles) -> None:
        self.hot_files = hot_files
        self._watches: dict[Path, _Watch] = {}

    async def wait(
        self, path: Path, until: Callable[[Edge], bool], *, timeout: Callable[[Edge], float]
    ) -> HotFile | None:
        """The first version of the playlist at ``path`` of which ``until`` holds;
        None after ``timeout(edge)`` seconds without one (or when it is gone)."""
        watch = self._watches.get(path)
        if watch is None:
            watch = self._watches[path] = _Watch(path, self.hot_files)
            watch.task = asyncio.get_running_loop().create_task(watch.poll())
        watch.waiters += 1
        loop = asyncio.get_running_loop()
        try:
            if watch.edge is None:
                return None
            deadline = loop.time() + timeout(watch.edge)
            while True:
                if watch.edge is None:
                    return None
                if until(watch.edge):
                    return watch.current
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.changed.wait(), remaining)
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                del self._watches[path]
                if watch.task is not None:
                    watch.task.cancel()

    def edge(self, path: Path) -> Edge | None:
        """The playlist's edge now, read once (no waiting)."""
        try:
            hot = self.hot_files.get(path)
        except OSError:
            return None
        return Edge.of(hot.body.decode()) if hot is not None else None


def hold_seconds(edge: Edge) -> float:
    return HOLD_TARGETS * edge.target_duration
