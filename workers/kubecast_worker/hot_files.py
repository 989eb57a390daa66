"""The files every viewer of a live stream asks for, kept in memory.

A live stream's viewers all want the same few files at once: each rendition's
playlist and its newest segment or two. Reading them from disk for every request
(open, stat, read or sendfile, close, two trips to a thread pool for aiohttp's
``FileResponse``) was most of the origin's time under 1,000 viewers; one ``stat``
tells whether the copy in memory is still the file on disk.

A copy is keyed by what ``stat`` says of the file (inode, size, modification and
change times), read from the same open file, so it is never a mix of two versions.
The packager never changes a file in place: playlists are replaced by rename and
segments are written under a temporary name and renamed once complete, so a new
version is a new inode. Least recently used copies go first when ``budget`` bytes
are held; a file larger than ``largest`` is not kept (the caller streams it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class HotFile:
    body: bytes
    #: ETag and Last-Modified, as aiohttp's FileResponse gives them for the same file
    headers: dict[str, str]

    @classmethod
    def of(cls, body: bytes, st: os.stat_result) -> HotFile:
        return cls(
            body,
            {
                "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
                "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            },
        )


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HotFiles:
    def __init__(self, *, budget: int = 32 * MiB, largest: int = 8 * MiB) -> None:
        self.budget = budget
        self.largest = largest
        self.held = 0  # bytes
        self._files: OrderedDict[Path, tuple[tuple[int, ...], HotFile]] = OrderedDict()

    def get(self, path: Path) -> HotFile | None:
        """The file as it is now, from memory when unchanged. None when it is larger
        than ``largest``. Raises OSError (FileNotFoundError) when it cannot be read."""
        try:
            st = os.stat(path)
        except OSError:
            self._drop(path)  # a segment the packager deleted: free its copy now
            raise
        held = self._files.get(path)
        if held is not None and held[0] == _key(st):
            self._files.move_to_end(path)
            return held[1]
        if st.st_size > self.largest:
            return None
        # NB: read in the event loop, not a thread pool: the file was just written
        # (it is in the page cache), and the first request for a new segment is
        # followed by hundreds more that this one read then answers.
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            body = f.read()
        hot = HotFile.of(body, st)
        if len(body) == st.st_size:  # else it changed while read: answer, never keep
            self._store(path, _key(st), hot)
        return hot

    def _drop(self, path: Path) -> None:
        old = self._files.pop(path, None)
        if old is not None:
            self.held -= len(old[1].body)

    def _store(self, path: Path, key: tuple[int, ...], hot: HotFile) -> None:
        self._drop(path)
        self._files[path] = (key, hot)
        self.held += len(hot.body)
        while self.held > self.budget and self._files:
            _, (_, evicted) = self._files.popitem(last=False)
            self.held -= len(evicted.body)

    def __len__(self) -> int:
        return len(self._files)
