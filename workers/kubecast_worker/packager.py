"""Package: an HLS media playlist per rendition, and the master playlist.

Media playlists and segments are written by FFmpeg's ``hls`` muxer (through
PyAV), one muxer per rendition, with ``temp_file``: every segment and playlist
is written to ``<name>.tmp`` and renamed when complete, so a reader never sees
half a file (the origin refuses ``.tmp`` names). The master playlist is ours,
written with the ``m3u8`` library and ``files.write_atomically``, again whenever a
new segment changes its measured bitrates. A low-latency rendition is packaged by
llhls.LowLatencyWriter instead, in the same layout, with its parts beside its segments.

Layout of the output directory::

    master.m3u8
    manifest.mpd                       (DASH, of the same fMP4 segments: mpd.py)
    thumbnail.jpg                      (a still of the smallest rendition)
    <rendition>/index.m3u8
    <rendition>/<epoch>-00000.ts       (or .m4s, with <epoch>-init.mp4)
    <rendition>/<epoch>-00000.2.m4s    (low-latency HLS: segment 0's third part)
    audio-<kbps>k/index.m3u8           (with DASH: the audio, in renditions of its own)

``epoch`` is new for every session, so a segment name is never reused for
different bytes and caches may keep segments forever (``immutable``).

Across publishes:
- the muxers always run with ``omit_endlist``: a publisher that drops and comes
  back within the reconnect window continues the *same* playlists; FFmpeg's
  ``append_list`` reopens them and writes ``#EXT-X-DISCONTINUITY`` before the
  first new segment, and media sequence numbers keep counting;
- when the window passes (or a file source ends), ``end()`` appends
  ``#EXT-X-ENDLIST`` to every media playlist;
- a publish after that starts *new* playlists: the directory is emptied first,
  and the master playlist is written again once every rendition has a segment.

The muxer writes its playlist to a dot-file (``.index.m3u8``, which the origin never
serves), and every version of it is published as ``index.m3u8`` with what FFmpeg
leaves out (``published()``): ``#EXT-X-DISCONTINUITY-SEQUENCE``, counted up each
time a discontinuity slides out of the window (RFC 8216 6.2.1; players tell the
renditions' timelines apart by it). Publishing also removes the segments of earlier
sessions that slid out, which FFmpeg's ``append_list`` forgets (one per reconnect).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import m3u8
from av.packet import Packet

from kubecast_worker import files, mpd, thumbnail
from kubecast_worker.status import RenditionState
from kubecast_worker.tally import Measured, Tally, Written

MASTER = "master.m3u8"
MANIFEST = mpd.NAME
#: Directory names of the audio-only renditions (DASH): ``audio-128k``.
AUDIO_PREFIX = "audio-"
THUMBNAIL = thumbnail.NAME
PLAYLIST = "index.m3u8"
ENDLIST = "#EXT-X-ENDLIST"
SEGMENT_SUFFIX = {"ts": ".ts", "fmp4": ".m4s"}
#: Files of ours, the only ones ``reset()`` removes.
OUR_SUFFIXES = (".m3u8", ".ts", ".m4s", ".mp4", ".tmp")
#: Container overhead on top of the codec bitrates, for BANDWIDTH.
OVERHEAD = {"ts": 1.10, "fmp4": 1.03}
AAC_LC = "mp4a.40.2"
#: Seconds added to every output timestamp (see HlsWriter): more than any decode delay.
TIMESTAMP_OFFSET = 10
#: Microseconds every TS access unit arrives before its decode time (PCR ahead of DTS).
MUX_DELAY_US = 700_000

_MEDIA_SEQUENCE = re.compile(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)", re.MULTILINE)
_DISCONTINUITY_SEQUENCE = re.compile(r"^#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)\n?", re.MULTILINE)
#: The muxer's own playlist, beside the published one; a dot-file, so never served.
MUXER_PLAYLIST = "." + PLAYLIST


@dataclass(frozen=True)
class Packaging:
    out_dir: Path
    segment_seconds: int
    segment_type: str = "ts"
    window_segments: int = 6
    #: an EVENT playlist keeps every segment (DVR from the start) instead of a window
    event: bool = False
    #: also a DASH manifest (fmp4 only): video-only renditions, audio in its own
    dash: bool = False
    #: low-latency HLS (fmp4 only): parts, preload hints, blocking reloads (llhls.py)
    low_latency: bool = False

    def __post_init__(self) -> None:
        if self.dash and self.segment_type != "fmp4":
            raise ValueError("DASH needs fmp4 segments (spec.outputs.hls.segmentType: fmp4)")
        if self.low_latency and self.segment_type != "fmp4":
            raise ValueError(
                "low-latency HLS needs fmp4 segments (spec.outputs.hls.segmentType: fmp4)"
            )

    @property
    def window_seconds(self) -> int | None:
        """How far back a live playlist reaches (None: an event playlist, from the start)."""
        return None if self.event else self.window_segments * self.segment_seconds


def audio_name(kbps: int) -> str:
    return f"{AUDIO_PREFIX}{kbps}k"


def new_epoch() -> str:
    """A short, sortable, unique-per-session prefix for segment names."""
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return out


def reset(out_dir: Path) -> None:
    """Remove the previous session's playlists and segments (ours only)."""
    (out_dir / MASTER).unlink(missing_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    (out_dir / THUMBNAIL).unlink(missing_ok=True)
    if not out_dir.is_dir():
        return
    for child in out_dir.iterdir():
        if not child.is_dir() or not (child / PLAYLIST).exists():
            continue
        for f in child.iterdir():
            if f.is_file() and f.name.endswith(OUR_SUFFIXES):
                f.unlink(missing_ok=True)
        if not any(child.iterdir()):
            shutil.rmtree(child, ignore_errors=True)


def end_playlist(path: Path) -> bool:
    """Append ``#EXT-X-ENDLIST`` (once). Returns whether the playlist exists."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    if ENDLIST not in text:
        files.write_atomically(path, text.rstrip("\n") + f"\n{ENDLIST}\n")
    return True


def end(out_dir: Path, names: Iterable[str]) -> list[str]:
    """End every media playlist (the audio-only ones too) and the DASH manifest;
    returns the names that had a playlist."""
    names = list(names)
    if out_dir.is_dir():
        names += sorted(d.name for d in out_dir.glob(AUDIO_PREFIX + "*") if d.is_dir())
    ended = [name for name in names if end_playlist(out_dir / name / PLAYLIST)]
    mpd.end(out_dir / MANIFEST)
    return ended


def segment_count(text: str) -> int:
    """Media sequence number just past the last segment listed (a running count)."""
    match = _MEDIA_SEQUENCE.search(text)
    first = int(match.group(1)) if match else 0
    return first + text.count("#EXTINF:")


def _listed(text: str) -> list[tuple[int, str, bool]]:
    """(media sequence number, URI, follows a discontinuity) of each listed segment."""
    match = _MEDIA_SEQUENCE.search(text)
    number = int(match.group(1)) if match else 0
    segments, discontinuity, pending = [], False, False
    for line in text.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif line.startswith("#EXTINF:"):
            pending = True
        elif pending and line and not line.startswith("#"):
            segments.append((number, line, discontinuity))
            number, discontinuity, pending = number + 1, False, False
    return segments


def discontinuity_sequence(text: str) -> int:
    match = _DISCONTINUITY_SEQUENCE.search(text)
    return int(match.group(1)) if match else 0


def published(previous: str | None, current: str) -> str:
    """The muxer's playlist ``current`` as players get it, after ``previous``.

    ``#EXT-X-DISCONTINUITY-SEQUENCE`` counts the discontinuities that slid out
    of the window: those of ``previous`` before ``current``'s first segment. It
    goes right after ``#EXT-X-MEDIA-SEQUENCE``, and only once it is above 0.
    """
    current = _DISCONTINUITY_SEQUENCE.sub("", current)
    sequence = 0
    if previous is not None:
        first = _MEDIA_SEQUENCE.search(current)
        start = int(first.group(1)) if first else 0
        gone = sum(1 for n, _, d in _listed(previous) if d and n < start)
        sequence = discontinuity_sequence(previous) + gone
    if sequence == 0:
        return current
    tag = f"#EXT-X-DISCONTINUITY-SEQUENCE:{sequence}"
    lines = current.splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if _MEDIA_SEQUENCE.match(line)), 1)
    return "\n".join([*lines[:at], tag, *lines[at:]]) + "\n"


def stale_segments(
    directory: Path, *, epoch: str, previous: str | None, current: str
) -> list[Path]:
    """Segments of earlier sessions in neither playlist: they slid out before the
    last publish, so no player that read either one still needs them. (This
    session's own are FFmpeg's to delete: one may be written but not listed yet.)"""
    keep = {uri for text in (previous, current) if text for _, uri, _ in _listed(text)}
    keep |= {m for text in (previous, current) if text for m in re.findall(r'URI="([^"]+)"', text)}
    return [
        f
        for f in directory.iterdir()
        if f.suffix in (".ts", ".m4s", ".mp4")
        and not f.name.startswith((epoch + "-", "."))
        and f.name not in keep
    ]


# -- media playlists -------------------------------------------------------------------


class HlsWriter:
    """One rendition's playlist and segments, via FFmpeg's hls muxer. One thread owns it.

    ``container`` gets its streams from the encoder (ladder.Encoder/Copier)
    before the first ``write()``. ``write()`` and ``close()`` return what it has
    written so far (``tally.Written``).
    """

    def __init__(
        self,
        *,
        packaging: Packaging,
        name: str,
        epoch: str,
        append: bool,
        session_start: float,
    ) -> None:
        self.tally = Tally(segment_seconds=packaging.segment_seconds, session_start=session_start)
        self.directory = packaging.out_dir / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.playlist = self.directory / PLAYLIST
        self.muxer_playlist = self.directory / MUXER_PLAYLIST
        self.epoch = epoch
        append = append and self.playlist.exists()
        self._published: str | None = None
        if append:
            # NB: from the published playlist, which a crashed run may have left
            # without its muxer's copy; FFmpeg skips the tags it does not know.
            self._published = self.playlist.read_text()
            files.write_atomically(self.muxer_playlist, self._published)
        suffix = SEGMENT_SUFFIX[packaging.segment_type]
        flags = ["temp_file", "independent_segments", "omit_endlist", "program_date_time"]
        if not packaging.event:
            flags.append("delete_segments")
        if append:
            flags.append("append_list")
        options = {
            "hls_time": str(packaging.segment_seconds),
            "hls_list_size": "0" if packaging.event else str(packaging.window_segments),
            "hls_flags": "+".join(flags),
            "hls_segment_type": "fmp4" if packaging.segment_type == "fmp4" else "mpegts",
            "hls_segment_filename": str(self.directory / f"{epoch}-%05d{suffix}"),
            # NB: encoders with B-frames (and AAC priming) start with negative decode
            # times, and the muxer would shift each rendition by its own amount to
            # avoid them: a constant offset keeps every rendition, passthrough
            # included, on exactly the same timestamps.
            "output_ts_offset": str(TIMESTAMP_OFFSET),
        }
        if packaging.segment_type == "ts":
            # AVFormatContext.max_delay, which the hls muxer hands to its mpegts muxer:
            # PCR runs this far ahead of decode times (the ffmpeg CLI's -muxdelay 0.7).
            # PyAV's default, 0, sends each video frame exactly at its DTS and audio
            # after it, and strict players (VLC) then raise their buffering to 1 s.
            options["max_delay"] = str(MUX_DELAY_US)
        if packaging.segment_type == "fmp4":
            options["hls_fmp4_init_filename"] = f"{epoch}-init.mp4"
        if packaging.event:
            options["hls_playlist_type"] = "event"
        self._seen = segment_count(self._published) if self._published else 0
        self._mtime = 0
        self._audio_only: bool | None = None
        self.container: av.container.OutputContainer = av.open(
            str(self.muxer_playlist), mode="w", format="hls", options=options
        )

    def write(self, packets: Iterable[Packet], *, media_time: float | None = None) -> Written:
        tally = self.tally
        if self._audio_only is None:  # the streams are all there by the first write
            self._audio_only = all(s.type == "audio" for s in self.container.streams)
        written = 0
        for packet in packets:
            if packet.size == 0:
                continue
            size = packet.size
            video = packet.stream.type == "video"
            # A segment can only have been closed when a keyframe arrived; in an
            # audio-only rendition (DASH layout) at any packet.
            boundary = packet.is_keyframe if video else self._audio_only
            self.container.mux(packet)
            written += size
            tally.frames += video
            if boundary:
                self._check_playlist()
        tally.bytes += written
        if media_time is not None:
            tally.media_time = media_time
        return tally.written()

    def _check_playlist(self) -> None:
        """Publish a new version of the muxer's playlist, and count its segments."""
        try:
            stat = self.muxer_playlist.stat()
        except FileNotFoundError:
            return
        if stat.st_mtime_ns == self._mtime:
            return
        self._mtime = stat.st_mtime_ns
        try:
            text = self.muxer_playlist.read_text()
        except FileNotFoundError:
            return
        self._publish(text)
        count = segment_count(text)
        new = count - self._seen
        if new <= 0:
            return
        self._measure(m3u8.loads(text).segments[-new:])
        self._seen = count

    def _measure(self, segments: Iterable[m3u8.Segment]) -> None:
        """Each new segment's size over its duration: the master's honest BANDWIDTH."""
        for segment in segments:
            try:
                size: int | None = (self.directory / segment.uri).stat().st_size
            except (FileNotFoundError, TypeError):
                size = None  # already slid out and deleted: too late to measure
            self.tally.segment(segment.duration or 0.0, size)

    def _publish(self, text: str) -> None:
        previous, self._published = self._published, published(self._published, text)
        files.write_atomically(self.playlist, self._published)
        for stale in stale_segments(
            self.directory, epoch=self.epoch, previous=previous, current=self._published
        ):
            stale.unlink(missing_ok=True)

    def close(self) -> Written:
        """Flush the last segment and the playlist (without ENDLIST: see the module doc)."""
        try:
            self.container.close()
        finally:
            self._mtime = 0
            self._check_playlist()
        return self.tally.written()


# -- master playlist -------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    uri: str
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    codecs: str
    frame_rate: float | None
    #: GROUP-ID of the EXT-X-MEDIA audio rendition this variant plays with (DASH layout)
    audio_group: str | None = None


@dataclass(frozen=True)
class AudioGroup:
    """An audio-only rendition, offered to the variants as ``EXT-X-MEDIA``."""

    group_id: str
    uri: str
    kbps: int
    channels: int


#: What a rendition without segments has measured
NOTHING_MEASURED = Measured()

#: Segments measured before BANDWIDTH is the measured peak alone: until then it is
#: at least the rate-control limit, since one or two segments say little of a peak.
MEASURED_AFTER = 3


def variant(
    state: RenditionState,
    *,
    segment_type: str,
    audio_kbps: int | None,
    video_codecs: str,
    measured: Measured = NOTHING_MEASURED,
    measured_kbps: int | None = None,
) -> Variant:
    """BANDWIDTH is the peak segment bitrate and AVERAGE-BANDWIDTH the average, as
    measured on the written segments (``measured``, tally.SegmentBitrates) once
    there are some.

    Before then they come from the rate control: the encoder's maxrate (peak) and
    target bitrate, plus audio and the container's overhead. A passthrough rendition
    has no rate control: what its first packets measured (``measured_kbps``).
    """
    overhead = OVERHEAD[segment_type]
    audio = audio_kbps or 0
    if state.passthrough or state.nominal_kbps is None:
        first_kbps = measured_kbps or 0
        peak, average = first_kbps * 1.2, float(first_kbps)
    else:
        peak = ((state.peak_kbps or state.nominal_kbps) + audio) * overhead
        average = (state.nominal_kbps + audio) * overhead
    bandwidth = round(peak * 1000)
    measured_average = measured.average_kbps
    if measured.peak_kbps and measured_average:
        # Rounded up: BANDWIDTH may never be below what a segment measured.
        measured_peak = math.ceil(measured.peak_kbps * 1000)
        if measured.count >= MEASURED_AFTER:
            bandwidth = measured_peak
        else:
            bandwidth = max(bandwidth, measured_peak)
        average = measured_average
    codecs = video_codecs + (f",{AAC_LC}" if audio_kbps else "")
    return Variant(
        uri=f"{state.name}/{PLAYLIST}",
        bandwidth=max(1, bandwidth),
        average_bandwidth=max(1, round(average * 1000)),
        width=state.width or 0,
        height=state.height or 0,
        codecs=codecs,
        frame_rate=state.fps,
    )


def with_audio(video: Variant, audio: Variant, *, group: str) -> Variant:
    """A video-only variant as the master offers it: with its audio group's bitrates
    and codec added, since BANDWIDTH covers every rendition a variant plays."""
    return Variant(
        uri=video.uri,
        bandwidth=video.bandwidth + audio.bandwidth,
        average_bandwidth=video.average_bandwidth + audio.average_bandwidth,
        width=video.width,
        height=video.height,
        codecs=f"{video.codecs},{AAC_LC}",
        frame_rate=video.frame_rate,
        audio_group=group,
    )


def render_master(
    variants: Sequence[Variant],
    *,
    segment_type: str = "ts",
    audio_groups: Sequence[AudioGroup] = (),
) -> str:
    """The multivariant playlist, written with the ``m3u8`` library."""
    master = m3u8.M3U8()
    # fMP4 segments need version 7 (EXT-X-MAP in a media playlist without I-frames only).
    master.version = 7 if segment_type == "fmp4" else 6
    master.is_independent_segments = True
    media: dict[str, m3u8.Media] = {}
    for group in audio_groups:
        media[group.group_id] = m3u8.Media(
            uri=group.uri,
            type="AUDIO",
            group_id=group.group_id,
            name=f"{group.kbps} kbit/s",
            default="YES",
            autoselect="YES",
            channels=str(group.channels),
        )
        master.add_media(media[group.group_id])
    for v in variants:
        info: dict[str, object] = {
            "bandwidth": v.bandwidth,
            "average_bandwidth": v.average_bandwidth,
            "resolution": f"{v.width}x{v.height}",
            "codecs": v.codecs,
        }
        if v.frame_rate:
            info["frame_rate"] = round(v.frame_rate, 3)
        rendition_group: list[m3u8.Media] = []
        if v.audio_group:
            info["audio"] = v.audio_group
            rendition_group = [media[v.audio_group]]
        master.add_playlist(
            m3u8.Playlist(v.uri, stream_info=info, media=rendition_group, base_uri=None)
        )
    return master.dumps()


def write_master(
    out_dir: Path,
    variants: Sequence[Variant],
    *,
    segment_type: str,
    audio_groups: Sequence[AudioGroup] = (),
) -> bool:
    """Write the master playlist; returns whether its text changed."""
    text = render_master(variants, segment_type=segment_type, audio_groups=audio_groups)
    path = out_dir / MASTER
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    files.write_atomically(path, text)
    return True
