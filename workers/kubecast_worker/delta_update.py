"""Playlist delta updates for low-latency HLS (RFC 8216bis 4.4.3.8, 4.4.5.2, 6.2.5.1).

A player that already holds a long playlist (an event playlist, a long DVR window)
asks ``index.m3u8?_HLS_skip=YES`` and gets the same playlist with its older
segments replaced by ``#EXT-X-SKIP:SKIPPED-SEGMENTS=<n>``: it keeps those from its
last copy. The packager advertises ``CAN-SKIP-UNTIL`` (six target durations, the
least the RFC allows) only on playlists that can grow past it (llhls.py); the
origin cuts the delta from the whole playlist it serves.

What may be skipped: whole segments whose start is more than ``CAN-SKIP-UNTIL``
seconds before the end of the playlist. The first segment kept gets the
``EXT-X-MAP`` that applies to it when that tag was among the skipped lines, and
the header (with ``EXT-X-MEDIA-SEQUENCE`` and ``EXT-X-DISCONTINUITY-SEQUENCE``)
stays whole, so the delta numbers its segments as the playlist does.
"""

from __future__ import annotations

import re

#: Lines that belong to a media segment (the ones before its URI line).
_SEGMENT_TAGS = (
    "#EXTINF:", "#EXT-X-MAP:", "#EXT-X-DISCONTINUITY", "#EXT-X-PROGRAM-DATE-TIME:",
    "#EXT-X-PART:", "#EXT-X-KEY:", "#EXT-X-GAP", "#EXT-X-BYTERANGE:", "#EXT-X-DATERANGE:",
    "#EXT-X-BITRATE:",
)  # fmt: skip
_SKIP_UNTIL = re.compile(r"CAN-SKIP-UNTIL=([0-9.]+)")
_VERSION = re.compile(r"^#EXT-X-VERSION:\d+$", re.MULTILINE)
#: EXT-X-SKIP needs protocol version 9.
VERSION = 9


def skip_until(text: str) -> float | None:
    """The playlist's CAN-SKIP-UNTIL, None when it offers no delta updates."""
    match = _SKIP_UNTIL.search(text)
    return float(match.group(1)) if match else None


def delta(text: str) -> str:
    """The delta update of ``text`` (the whole playlist as it is served)."""
    until = skip_until(text)
    if until is None:
        return text
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(_SEGMENT_TAGS)), None)
    if start is None:
        return text
    # Each complete segment: (first line, line after its URI, duration, its EXT-X-MAP)
    segments: list[tuple[int, int, float, str | None]] = []
    first, duration, map_line = start, 0.0, None
    for i in range(start, len(lines)):
        line = lines[i]
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line.startswith("#EXT-X-MAP:"):
            map_line = line
        elif line and not line.startswith("#"):
            segments.append((first, i + 1, duration, map_line))
            first, duration, map_line = i + 1, 0.0, None
    total = sum(d for _, _, d, _ in segments)
    skipped, elapsed, current_map = 0, 0.0, None
    for _, _, seconds, segment_map in segments[:-1]:  # never the last complete segment
        if total - elapsed <= until:
            break  # this one starts within CAN-SKIP-UNTIL of the end
        current_map = segment_map or current_map
        elapsed += seconds
        skipped += 1
    if skipped == 0:
        return text
    kept_from = segments[skipped][0]
    kept = lines[kept_from:]
    if current_map and not any(
        line.startswith("#EXT-X-MAP:") for line in lines[kept_from : segments[skipped][1]]
    ):
        kept = [current_map, *kept]
    header = _VERSION.sub(f"#EXT-X-VERSION:{VERSION}", "\n".join(lines[:start])).splitlines()
    return "\n".join([*header, f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}", *kept]) + "\n"
