"""The recording on disk: copied segments, the event playlist, a small state file.

Layout of ``--out``::

    recording.m3u8          EVENT playlist: plays from the start at any moment
    segments/000000.ts      segments, byte for byte as the origin served them
    segments/init-000.mp4   init sections (fMP4 sources only)
    recording.mp4           faststart MP4, written when the recording ends
    recording-fragmented.mp4  fragmented MP4 that grows with the recording (fmp4)
    recorder-state.json     what a restarted recorder needs to carry on

Crash safety comes from the order of writes, each one atomic (temp file, fsync,
``os.replace``): a segment is complete on disk before the playlist names it, and
the playlist is complete before the state file points past it. A SIGKILL at any
moment therefore leaves a playable playlist and loses at most the segment in
flight. The playlist is the record of what was recorded; on restart it is read
back (with the ``m3u8`` library) and continued, with a discontinuity.

Every failure to write is a ``StorageError`` whose message says what could not
be written, where, and why (``No space left on device``...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import posixpath
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import m3u8
from m3u8 import model

from kubecast_worker import files

PLAYLIST = "recording.m3u8"
MP4 = "recording.mp4"
FMP4 = "recording-fragmented.mp4"
STATE = "recorder-state.json"
SEGMENTS = "segments"
STATE_VERSION = 1

_INDEX = re.compile(r"^(\d+)\.")


class StorageError(Exception):
    """Writing the recording failed; the message is meant for the user."""


def describe_os_error(error: OSError, *, doing: str, path: Path) -> str:
    reason = error.strerror or str(error)
    hint = {
        errno.ENOSPC: "free space on the recording volume or make spec.storage.size larger",
        errno.EDQUOT: "the volume's quota is used up; make spec.storage.size larger",
        errno.EROFS: "the recording volume is mounted read-only",
        errno.EACCES: "the recorder may not write there; check the volume's permissions",
        errno.EPERM: "the recorder may not write there; check the volume's permissions",
    }.get(error.errno or 0)
    message = f"cannot {doing} {path}: {reason}"
    return f"{message} ({hint})" if hint else message


def write_atomically(path: Path, data: bytes, *, doing: str) -> None:
    """Replace ``path`` with ``data`` in one step, durably (``files.write_atomically``)."""
    try:
        files.write_atomically(path, data, durable=True)
    except OSError as e:
        raise StorageError(describe_os_error(e, doing=doing, path=path)) from e


@dataclasses.dataclass
class Segment:
    """A recorded segment: where it is (relative to --out) and what it holds."""

    name: str
    duration: float
    size: int
    discontinuity: bool = False
    init: str | None = None
    program_date_time: datetime | None = None


@dataclasses.dataclass
class State:
    """What the playlist does not say: lifecycle, times, where the source was."""

    state: str = "waiting"  # waiting | recording | finalizing | interrupted | completed
    source: str | None = None
    rendition: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    position: dict[str, Any] | None = None
    target_duration: int = 0
    #: The outputs written when the recording finished: name → duration.
    outputs: dict[str, float | None] = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Journal:
    """The recording directory. Blocking I/O: call from a thread, one at a time."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.segments: list[Segment] = []
        self.state = State()
        self.duration = 0.0
        self.bytes = 0
        self._next_index = 0
        self._inits: dict[str, str] = {}  # sha256 of an init section → its name

    # --- opening -------------------------------------------------------------

    def open(self) -> bool:
        """Make sure ``--out`` is writable and read back an earlier recording.

        Returns True when an earlier recording was found (and will be continued).
        """
        try:
            (self.directory / SEGMENTS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(
                describe_os_error(e, doing="create the recording directory", path=self.directory)
            ) from e
        probe = self.directory / ".write-test"
        write_atomically(probe, b"ok\n", doing="write to the recording directory")
        with contextlib.suppress(OSError):
            probe.unlink()
        state_path = self.directory / STATE
        if state_path.exists():
            try:
                self.state = State.from_json(json.loads(state_path.read_text()))
            except (OSError, ValueError, TypeError) as e:
                raise StorageError(f"cannot read the recorder state {state_path}: {e}") from e
        if (self.directory / PLAYLIST).exists():
            self._read_playlist()
        return bool(self.segments) or self.state.state in ("finalizing", "completed")

    def _read_playlist(self) -> None:
        path = self.directory / PLAYLIST
        try:
            playlist = m3u8.loads(path.read_text(), uri=str(path))
        except (OSError, ValueError) as e:
            raise StorageError(f"cannot read the recorded playlist {path}: {e}") from e
        for entry in playlist.segments:
            name = entry.uri
            try:
                size = (self.directory / name).stat().st_size
            except OSError:
                continue  # listed but gone: skip it rather than break the MP4
            init = entry.init_section.uri if entry.init_section is not None else None
            if init is not None:
                self._remember_init(init)
            self._add(
                Segment(
                    name=name,
                    duration=float(entry.duration or 0.0),
                    size=size,
                    discontinuity=bool(entry.discontinuity),
                    init=init,
                    program_date_time=entry.program_date_time,
                )
            )
        self.state.target_duration = max(
            self.state.target_duration, int(playlist.target_duration or 0)
        )

    def _remember_init(self, name: str) -> None:
        with contextlib.suppress(OSError):
            digest = hashlib.sha256((self.directory / name).read_bytes()).hexdigest()
            self._inits.setdefault(digest, name)

    def _add(self, segment: Segment) -> None:
        self.segments.append(segment)
        self.duration += segment.duration
        self.bytes += segment.size
        match = _INDEX.match(posixpath.basename(segment.name))
        if match:
            self._next_index = max(self._next_index, int(match.group(1)) + 1)

    # --- recording -----------------------------------------------------------

    def add_segment(
        self,
        data: bytes,
        *,
        source_uri: str,
        duration: float,
        discontinuity: bool,
        init: bytes | None,
        init_uri: str | None,
        program_date_time: datetime | None,
        target_duration: float,
    ) -> Segment:
        """Write a segment, then the playlist that names it. Returns the new segment."""
        init_name = self._store_init(init, init_uri) if init is not None else None
        name = f"{SEGMENTS}/{self._next_index:06d}{_extension(source_uri, '.ts')}"
        write_atomically(self.directory / name, data, doing="write the segment")
        segment = Segment(
            name=name,
            duration=duration,
            size=len(data),
            discontinuity=discontinuity and bool(self.segments),
            init=init_name,
            program_date_time=program_date_time,
        )
        self.state.target_duration = max(
            self.state.target_duration, math.ceil(target_duration), math.ceil(duration)
        )
        self._add(segment)
        try:
            self.write_playlist(ended=False)
        except StorageError:
            self._forget_last()
            raise
        return segment

    def _forget_last(self) -> None:
        segment = self.segments.pop()
        self.duration -= segment.duration
        self.bytes -= segment.size

    def _store_init(self, data: bytes, uri: str | None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._inits:
            name = f"{SEGMENTS}/init-{len(self._inits):03d}{_extension(uri or '', '.mp4')}"
            write_atomically(self.directory / name, data, doing="write the init section")
            self._inits[digest] = name
        return self._inits[digest]

    def render_playlist(self, *, ended: bool) -> str:
        playlist = m3u8.M3U8()
        playlist.version = 6 if any(s.init for s in self.segments) else 3
        playlist.playlist_type = "event"
        playlist.target_duration = max(1, self.state.target_duration)
        playlist.media_sequence = 0
        playlist.is_endlist = ended
        for s in self.segments:
            playlist.add_segment(
                model.Segment(
                    uri=s.name,
                    duration=s.duration,
                    discontinuity=s.discontinuity,
                    program_date_time=s.program_date_time,
                    init_section={"uri": s.init} if s.init else None,
                )
            )
        return playlist.dumps(infspec="milliseconds")

    def write_playlist(self, *, ended: bool) -> None:
        text = self.render_playlist(ended=ended)
        write_atomically(self.directory / PLAYLIST, text.encode(), doing="write the playlist")

    def save_state(self) -> None:
        data = json.dumps(self.state.to_json(), indent=2, sort_keys=True).encode()
        write_atomically(self.directory / STATE, data + b"\n", doing="write the recorder state")

    # --- reading back ----------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.directory / name

    def size_of(self, name: str) -> int:
        try:
            return (self.directory / name).stat().st_size
        except OSError:
            return 0

    def remove_hls(self) -> None:
        """Drop the playlist and segments (the recording asked for MP4 only)."""
        for segment in self.segments:
            with contextlib.suppress(OSError):
                (self.directory / segment.name).unlink()
        for name in set(self._inits.values()):
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()
        with contextlib.suppress(OSError):
            (self.directory / PLAYLIST).unlink()
        with contextlib.suppress(OSError):
            (self.directory / SEGMENTS).rmdir()


def _extension(uri: str, default: str) -> str:
    ext = posixpath.splitext(urlsplit(uri).path)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else default
