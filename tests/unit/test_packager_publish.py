"""Publishing the muxer's playlist: the discontinuity sequence FFmpeg leaves out, and
the segments of earlier sessions that its ``append_list`` forgets to delete."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import m3u8

from kubecast_worker import packager


def muxer_playlist(first: int, segments: list[str], breaks: Collection[str] = ()) -> str:
    """What FFmpeg's hls muxer writes: a window from media sequence ``first``, with an
    ``#EXT-X-DISCONTINUITY`` before each segment in ``breaks``."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        "#EXT-X-TARGETDURATION:1",
        f"#EXT-X-MEDIA-SEQUENCE:{first}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    for name in segments:
        if name in breaks:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += ["#EXTINF:1.000000,", name]
    return "\n".join(lines) + "\n"


def window(names: list[str], first: int, size: int, breaks: set[str]) -> str:
    return muxer_playlist(first, names[first : first + size], breaks)


# Three sessions: a-0..a-2, then b-3..b-5, then c-6..c-9, each return after a discontinuity.
NAMES = [f"{epoch}-{n:05d}.ts" for epoch, n in zip("aaabbbcccc", range(10), strict=True)]
BREAKS = {"b-00003.ts", "c-00006.ts"}


def test_discontinuity_sequence_counts_each_discontinuity_as_it_slides_out() -> None:
    published: str | None = None
    seen = []
    for first in range(0, 8):
        published = packager.published(published, window(NAMES, first, 3, BREAKS))
        parsed = m3u8.loads(published)
        seen.append((parsed.media_sequence, parsed.discontinuity_sequence or 0))
    # b-00003 (a discontinuity) is first listed at 1 and gone at 4; c-00006 gone at 7.
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 2)]


def test_the_tag_sits_before_the_first_segment_and_only_once_it_counts() -> None:
    first = packager.published(None, window(NAMES, 2, 3, BREAKS))
    assert "DISCONTINUITY-SEQUENCE" not in first  # nothing slid out: as FFmpeg wrote it
    later = packager.published(first, window(NAMES, 4, 3, BREAKS))
    lines = later.splitlines()
    assert lines[3:5] == ["#EXT-X-MEDIA-SEQUENCE:4", "#EXT-X-DISCONTINUITY-SEQUENCE:1"]
    assert lines.index("#EXT-X-DISCONTINUITY-SEQUENCE:1") < lines.index("#EXTINF:1.000000,")


def test_a_published_playlist_read_back_continues_the_count() -> None:
    """A return (or a restarted worker) seeds the muxer from the published playlist,
    which already carries the tag: the muxer's next version must not lose it."""
    before = packager.published(None, window(NAMES, 3, 3, BREAKS))
    before = packager.published(before, window(NAMES, 4, 3, BREAKS))  # b-00003 gone: 1
    # FFmpeg read that file back (the tag is not one it knows) and wrote its own again.
    again = packager.published(before, window(NAMES, 4, 3, BREAKS))
    assert packager.discontinuity_sequence(again) == 1
    after = packager.published(again, window(NAMES, 7, 3, BREAKS))  # c-00006 gone: 2
    assert packager.discontinuity_sequence(after) == 2
    assert after.count("DISCONTINUITY-SEQUENCE") == 1


def test_old_sessions_segments_go_once_out_of_both_playlists(tmp_path: Path) -> None:
    for name in [*NAMES, "c-init.mp4", "a-init.mp4", "notes.txt", "c-00010.ts.tmp"]:
        (tmp_path / name).write_bytes(b"x")
    previous = window(NAMES, 5, 3, BREAKS)  # b-00005, c-00006, c-00007
    current = window(NAMES, 6, 3, BREAKS)  # c-00006 .. c-00008
    stale = packager.stale_segments(tmp_path, epoch="c", previous=previous, current=current)
    # a-00000..a-00002, b-00003, b-00004 and a-init.mp4 slid out: gone. b-00005 is
    # still in the previous playlist (a player may be reading it). The session's own
    # files, the muxer's .tmp and whatever is not media are left alone.
    assert sorted(p.name for p in stale) == sorted(
        ["a-00000.ts", "a-00001.ts", "a-00002.ts", "b-00003.ts", "b-00004.ts", "a-init.mp4"]
    )


def test_an_init_section_of_an_old_session_stays_while_a_playlist_maps_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-init.mp4").write_bytes(b"x")
    (tmp_path / "a-00001.m4s").write_bytes(b"x")
    text = (
        '#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-MAP:URI="a-init.mp4"\n#EXTINF:1.0,\na-00001.m4s\n'
    )
    assert packager.stale_segments(tmp_path, epoch="b", previous=None, current=text) == []
