"""Reading the source: the origin's master playlist, one rendition, its segments.

The origin is the worker's HTTP server (``/master.m3u8`` linking one media
playlist per rendition). The recorder reads the rendition URIs from the master
rather than assuming a layout, so any HLS origin works as a source.

What a poll sees is an ``Observation``; the origin being down, a 404 or a
playlist with ``EXT-X-ENDLIST`` are all ordinary observations ("the stream is
idle"), never exceptions: a live stream comes and goes.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import m3u8

from kubecast_worker.recorder.tracking import SourceSegment

PLAYLIST_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


class SourceError(Exception):
    """The source did not give what was asked (unreachable, HTTP error, bad playlist)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status when the origin answered with an error.
        self.status = status


class RenditionNotFound(SourceError):
    """The master playlist has no rendition of the requested name."""


@dataclasses.dataclass(frozen=True)
class Observation:
    #: The media playlist was read.
    reachable: bool
    #: The playlist carries EXT-X-ENDLIST: the stream ended (the origin keeps
    #: serving the last window).
    ended: bool = False
    segments: tuple[SourceSegment, ...] = ()
    target_duration: float = 0.0
    error: str | None = None

    @property
    def live(self) -> bool:
        return self.reachable and not self.ended


@dataclasses.dataclass(frozen=True)
class Rendition:
    name: str
    url: str
    bandwidth: int


def rendition_names(uri: str, stable_id: str | None) -> list[str]:
    """Names a rendition answers to: its STABLE-VARIANT-ID, its folder, its file stem.

    ``720p/index.m3u8`` answers to ``720p``; ``720p.m3u8`` and ``stream_720p.m3u8``
    to ``720p`` as well.
    """
    path = urlsplit(uri).path
    names = [stable_id] if stable_id else []
    folder = posixpath.basename(posixpath.dirname(path))
    stem = posixpath.splitext(posixpath.basename(path))[0]
    names += [n for n in (folder, stem) if n]
    names += [stem.rsplit(sep, 1)[1] for sep in "_-" if sep in stem]
    return names


def choose_rendition(master: m3u8.M3U8, master_url: str, wanted: str | None) -> Rendition:
    """The named rendition, else the one of highest BANDWIDTH.

    A master that is itself a media playlist (no variants) is its own only rendition.
    """
    if not master.is_variant:
        return Rendition(name=wanted or "default", url=master_url, bandwidth=0)
    choices = []
    for playlist in master.playlists:
        info = playlist.stream_info
        names = rendition_names(playlist.uri, getattr(info, "stable_variant_id", None))
        choices.append(
            (
                names,
                Rendition(names[0], urljoin(master_url, playlist.uri), int(info.bandwidth or 0)),
            )
        )
    if not choices:
        raise SourceError(f"{master_url} lists no renditions")
    if wanted is None:
        return _with_audio(master, master_url, max(choices, key=lambda c: c[1].bandwidth)[1])
    for names, rendition in choices:
        if wanted in names:
            return _with_audio(master, master_url, dataclasses.replace(rendition, name=wanted))
    available = ", ".join(sorted({c[1].name for c in choices}))
    raise RenditionNotFound(
        f"rendition {wanted!r} is not in {master_url} (it has: {available});"
        " fix spec.rendition or the stream's TranscodeProfile"
    )


class SeparateAudio(SourceError):
    """The rendition's audio is in a playlist of its own, which this recorder does not follow."""


def _with_audio(master: m3u8.M3U8, master_url: str, rendition: Rendition) -> Rendition:
    """The rendition, unless its audio is apart (an EXT-X-MEDIA group, as a stream with
    DASH has): recording its video alone would lose the sound without a word."""
    for playlist in master.playlists:
        if urljoin(master_url, playlist.uri) == rendition.url and playlist.stream_info.audio:
            raise SeparateAudio(
                f"rendition {rendition.name!r} of {master_url} carries no audio: its audio is"
                f" the separate group {playlist.stream_info.audio!r} (a stream with"
                " spec.outputs.dash), which recordings do not follow yet; record a stream"
                " without DASH"
            )
    return rendition


def segments_of(playlist: m3u8.M3U8, playlist_url: str) -> tuple[SourceSegment, ...]:
    first = int(playlist.media_sequence or 0)
    found = []
    for index, segment in enumerate(playlist.segments):
        if segment.uri is None:
            continue  # low-latency HLS: the segment being written, listed by its parts only
        init = segment.init_section
        found.append(
            SourceSegment(
                sequence=first + index,
                url=urljoin(playlist_url, segment.uri),
                uri=segment.uri,
                duration=float(segment.duration or 0.0),
                discontinuity=bool(segment.discontinuity),
                init_url=urljoin(playlist_url, init.uri) if init is not None else None,
                program_date_time=segment.current_program_date_time,
            )
        )
    return tuple(found)


class Source(Protocol):
    """What the recorder needs from a source (the ``Origin``, or a script in tests)."""

    rendition: Rendition | None

    async def observe(self) -> Observation: ...

    async def fetch(self, url: str, *, timeout: float) -> bytes: ...


class Origin:
    """One rendition of the source, re-resolved from the master when it goes away."""

    def __init__(self, *, session: aiohttp.ClientSession, master_url: str, wanted: str | None):
        self.session = session
        self.master_url = master_url
        self.wanted = wanted
        self.rendition: Rendition | None = None

    async def _text(self, url: str) -> str:
        try:
            async with self.session.get(url, timeout=PLAYLIST_TIMEOUT) as response:
                if response.status != 200:
                    raise SourceError(f"GET {url}: HTTP {response.status}", status=response.status)
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as e:
            raise SourceError(f"GET {url}: {e or type(e).__name__}") from e

    async def resolve(self) -> Rendition:
        text = await self._text(self.master_url)
        try:
            master = m3u8.loads(text, uri=self.master_url)
        except Exception as e:  # m3u8 raises a variety of errors on garbage
            raise SourceError(f"{self.master_url} is not an HLS playlist: {e}") from e
        return choose_rendition(master, self.master_url, self.wanted)

    async def observe(self) -> Observation:
        """Read the rendition's media playlist once (the master first, when needed)."""
        try:
            if self.rendition is None:
                self.rendition = await self.resolve()
            url = self.rendition.url
            text = await self._text(url)
            playlist = m3u8.loads(text, uri=url)
        except SourceError as e:
            # NB: forget the rendition: a restarted worker may serve another layout.
            self.rendition = None
            return Observation(reachable=False, error=str(e))
        except Exception as e:  # a playlist m3u8 cannot parse
            self.rendition = None
            return Observation(reachable=False, error=f"unreadable playlist: {e}")
        if playlist.is_variant:
            self.rendition = None
            return Observation(reachable=False, error=f"{url} is a master, not a media playlist")
        return Observation(
            reachable=True,
            ended=bool(playlist.is_endlist),
            segments=segments_of(playlist, url),
            target_duration=float(playlist.target_duration or 0.0),
        )

    async def fetch(self, url: str, *, timeout: float) -> bytes:
        """The bytes of a segment (or an init section), exactly as served."""
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout, connect=2)
            ) as response:
                if response.status != 200:
                    raise SourceError(f"GET {url}: HTTP {response.status}", status=response.status)
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SourceError(f"GET {url}: {e or type(e).__name__}") from e
