"""FlvPipe: bytes from the event loop to one blocking reader thread.

The asyncio side owns the socket and ``feed()``s FLV bytes in; a worker thread holds a
PyAV container opened on the pipe and ``read()``s them out. The pipe never blocks the
event loop: the loop instead awaits :meth:`FlvPipe.drained` when the reader falls behind,
which stops it reading the socket, so TCP pushes the backlog back to the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque


class FlvPipe:
    """A thread-safe, file-like byte stream of one publish session.

    ``read(n)`` blocks until at least one byte is there and returns at most ``n``; it
    returns ``b''`` once the publisher has gone (after every byte it sent) or after the
    reader called :meth:`close`. There is no ``seek``, so PyAV treats it as a live stream.
    """

    name = "rtmp-ingest.flv"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already read
        self._size = 0
        self._finished = False  # writer side: no more bytes will come
        self._closed = False  # reader side: gave up, buffered bytes are dropped
        self._read_total = 0
        self._drain_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int] | None
        self._drain_waiter = None

    # -- reader side (any thread) ---------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            if n < 0:
                while not (self._finished or self._closed):
                    self._cond.wait()
                n = self._size
            else:
                while not self._size and not (self._finished or self._closed):
                    self._cond.wait()
            if self._closed or n == 0:
                return b""
            data = self._take(n)
            self._read_total += len(data)
            self._wake_drain_waiter()
            return data

    def close(self) -> None:
        """The reader gives up: later reads return b'' and buffered bytes are dropped.

        The ingest side notices and drops the publisher, since nobody consumes it.
        """
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._size = self._head = 0
            self._cond.notify_all()
            self._wake_drain_waiter(force=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writer side (the event loop) -----------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append bytes; never blocks. Ignored once finished or closed."""
        if not data:
            return
        with self._cond:
            if self._finished or self._closed:
                return
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify_all()

    def finish(self) -> None:
        """No more bytes will come; the reader sees b'' after the buffered ones. Thread-safe."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()
            self._wake_drain_waiter(force=True)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def buffered(self) -> int:
        """Bytes fed and not read yet."""
        return self._size

    @property
    def read_total(self) -> int:
        """Bytes the reader has taken so far; the loop compares it to see progress."""
        return self._read_total

    async def drained(self, *, low_water: int, timeout: float) -> bool:
        """Wait until at most ``low_water`` bytes are buffered (or the pipe ends).

        Returns False if ``timeout`` passed first. Only one waiter at a time: the one
        connection that feeds this pipe.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._size <= low_water or self._finished or self._closed:
                return True
            future: asyncio.Future[None] = loop.create_future()
            self._drain_waiter = (loop, future, low_water)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._cond:
                self._drain_waiter = None

    # -- internals (hold self._cond) ------------------------------------------------------

    def _take(self, n: int) -> bytes:
        parts: list[bytes] = []
        wanted = n
        while wanted and self._chunks:
            chunk = self._chunks[0]
            available = len(chunk) - self._head
            if available <= wanted:
                parts.append(chunk[self._head :] if self._head else chunk)
                self._chunks.popleft()
                self._head = 0
                wanted -= available
            else:
                parts.append(chunk[self._head : self._head + wanted])
                self._head += wanted
                wanted = 0
        data = b"".join(parts)
        self._size -= len(data)
        return data

    def _wake_drain_waiter(self, *, force: bool = False) -> None:
        if self._drain_waiter is None:
            return
        loop, future, low_water = self._drain_waiter
        if force or self._size <= low_water:
            self._drain_waiter = None
            # NB: the reader runs on another thread; futures are only touched on their loop.
            # A closed loop raises RuntimeError: then nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
