"""What the worker's threads tell ``Status``: one frozen event per thing that happened.

The media threads (ingest, renditions), the RTMP/SRT/WHIP fronts and the asyncio
supervisor never write the status themselves: they ``Status.post()`` one of these,
and ``Status`` applies it under its lock (as aiortc's objects emit events rather
than share their state). Counters on the hot path come batched: one event per
demuxed packet or per write, however many frames it carried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kubecast_worker.status import InputState, RenditionState
    from kubecast_worker.tally import Written

State = Literal["idle", "live", "reconnecting"]

# -- the supervisor (asyncio) -----------------------------------------------------------


@dataclass(frozen=True)
class IngestListening:
    """The ingest is open at ``url``; the worker is ready (``/readyz``)."""

    url: str
    counters: Callable[[], dict[str, int]] | None = None


@dataclass(frozen=True)
class IngestUrl:
    """Where the worker pulls from now, credentials masked (a pull URL can change)."""

    url: str


@dataclass(frozen=True)
class Readiness:
    ready: bool


@dataclass(frozen=True)
class SecretsLearned:
    """Credentials of the pull URL: ``lastError`` masks them wherever they appear."""

    secrets: frozenset[str]


@dataclass(frozen=True)
class RestreamAttached:
    targets: Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class StateChanged:
    state: State


@dataclass(frozen=True)
class ErrorReported:
    """The last error (None: cleared)."""

    message: str | None


@dataclass(frozen=True)
class SessionStarted:
    publisher: str | None


@dataclass(frozen=True)
class SessionEnded:
    pass


@dataclass(frozen=True)
class PlaylistsClosed:
    """The previous session's playlists were ended: nothing to continue."""


# -- the ingest thread ------------------------------------------------------------------


@dataclass(frozen=True)
class Demuxed:
    """One packet read from the input: its size, and what decoding it gave."""

    nbytes: int
    at: float
    frames: int = 0
    errors: int = 0


@dataclass(frozen=True)
class FramesDecoded:
    """Video frames that came decoded (WHIP: aiortc decodes)."""

    count: int = 1


@dataclass(frozen=True)
class InputOpened:
    input: InputState


@dataclass(frozen=True)
class RenditionsPlanned:
    """The session's renditions, as planned (dropped ones included)."""

    renditions: tuple[RenditionState, ...]


@dataclass(frozen=True)
class PlaylistsWithdrawn:
    """A new session starts afresh: no master, manifest or still to offer yet."""


@dataclass(frozen=True)
class PlaylistsOpened:
    pass


@dataclass(frozen=True)
class MasterWritten:
    """The master playlist is there to play (``url``), and the DASH manifest if any."""

    url: str
    dash_url: str | None = None


@dataclass(frozen=True)
class ThumbnailWritten:
    url: str


@dataclass(frozen=True)
class FrameHandedOut:
    """A decoded video frame, given to every encoded rendition but ``skipped`` (they
    were too far behind); ``late``: decoded over a second behind real time; ``media``:
    what the slowest rendition has encoded, for ``encodeSpeed``."""

    wall: float
    media: float
    skipped: tuple[str, ...] = ()
    late: bool = False


@dataclass(frozen=True)
class FramesDropped:
    """Input frames dropped before any rendition saw them (a stale WHIP queue)."""

    count: int = 1


# -- a rendition's thread ---------------------------------------------------------------


@dataclass(frozen=True)
class RenditionWrote:
    """A rendition's writer wrote ``nbytes`` more: ``written`` is its running total."""

    rendition: str
    written: Written
    nbytes: int


@dataclass(frozen=True)
class CodecsKnown:
    rendition: str
    codecs: str


Event = (
    IngestListening
    | IngestUrl
    | Readiness
    | SecretsLearned
    | RestreamAttached
    | StateChanged
    | ErrorReported
    | SessionStarted
    | SessionEnded
    | PlaylistsClosed
    | Demuxed
    | FramesDecoded
    | InputOpened
    | RenditionsPlanned
    | PlaylistsWithdrawn
    | PlaylistsOpened
    | MasterWritten
    | ThumbnailWritten
    | FrameHandedOut
    | FramesDropped
    | RenditionWrote
    | CodecsKnown
)
