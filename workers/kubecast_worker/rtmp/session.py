"""PublishSession: one accepted publisher, as the rest of the worker sees it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from kubecast_worker.rtmp.pipe import FlvPipe


class PublishSession:
    """An accepted publisher and its media, as an FLV byte stream in :attr:`flv`.

    Created on the event loop by the ingest server. :meth:`close` may be called from any
    thread; everything else is read-only for callers.
    """

    def __init__(
        self,
        *,
        peer: str,
        app: str,
        loop: asyncio.AbstractEventLoop,
        drop: Callable[[str], None],
    ) -> None:
        self.peer = peer
        self.app = app
        self.started_at = time.time()
        self.flv = FlvPipe()
        self.bytes_received = 0
        #: The publisher's onMetaData properties (width, height, framerate, codec ids...).
        self.metadata: dict[str, Any] = {}
        #: Why the session ended ("publisher_left", "idle_timeout", "reader_stalled"...).
        self.close_reason: str | None = None
        self._loop = loop
        self._drop = drop
        self._closed = asyncio.Event()

    async def wait_closed(self) -> None:
        """Return once the publisher is gone and the socket is closed."""
        await self._closed.wait()

    def close(self) -> None:
        """Drop the publisher. Thread-safe; the reader still gets the bytes already sent."""
        self.flv.finish()
        # The loop may already be gone at shutdown; then so is the publisher.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drop, "closed_by_consumer")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _mark_closed(self, reason: str) -> None:
        """Called on the loop by the connection, once, when it is done."""
        if self.close_reason is None:
            self.close_reason = reason
        self.flv.finish()
        self._closed.set()

    def __repr__(self) -> str:
        return f"<PublishSession peer={self.peer} app={self.app!r}>"
