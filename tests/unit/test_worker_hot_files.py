"""The origin's copies in memory of the files viewers all ask for: never stale, bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubecast_worker.hot_files import HotFiles


def replace(path: Path, body: bytes) -> None:
    """As the packager does: write a temporary file, then rename it over the old one."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def test_an_unchanged_file_is_answered_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "index.m3u8"
    path.write_bytes(b"#EXTM3U\n#EXTINF:2.0,\na-00001.ts\n")
    files = HotFiles()
    first = files.get(path)
    assert first is not None and first.body == path.read_bytes()
    assert files.get(path) is first  # no second read
    assert files.held == len(first.body) and len(files) == 1


def test_a_playlist_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "index.m3u8"
    path.write_bytes(b"#EXTM3U\n#EXTINF:2.0,\na-00001.ts\n")
    files = HotFiles()
    assert files.get(path) is not None
    # The same size, at once: the inode and change time still tell the versions apart.
    replace(path, b"#EXTM3U\n#EXTINF:2.0,\na-00002.ts\n")
    hot = files.get(path)
    assert hot is not None and hot.body.endswith(b"a-00002.ts\n")
    assert len(files) == 1


def test_a_deleted_segment_is_not_found_and_its_copy_is_freed(tmp_path: Path) -> None:
    path = tmp_path / "a-00001.ts"
    path.write_bytes(b"\x47" * 188 * 100)
    files = HotFiles()
    assert files.get(path) is not None
    path.unlink()
    with pytest.raises(FileNotFoundError):
        files.get(path)
    assert files.held == 0 and len(files) == 0


def test_the_least_recently_used_go_first_beyond_the_budget(tmp_path: Path) -> None:
    segments = [tmp_path / f"a-{i:05d}.ts" for i in range(5)]
    for segment in segments:
        segment.write_bytes(b"\x47" * 1000)
    files = HotFiles(budget=3000, largest=2000)
    kept = [files.get(segment) for segment in segments[:3]]
    assert files.get(segments[0]) is kept[0]  # used again: now the most recent
    files.get(segments[3])  # over budget: segments[1] goes
    files.get(segments[4])  # and then segments[2]
    assert files.held == 3000 and len(files) == 3
    assert files.get(segments[0]) is kept[0]
    assert files.get(segments[1]) is not kept[1]  # read again


def test_a_file_over_the_size_limit_is_left_to_stream(tmp_path: Path) -> None:
    path = tmp_path / "a-00001.ts"
    path.write_bytes(b"\x47" * 188 * 100)
    files = HotFiles(largest=188 * 99)
    assert files.get(path) is None
    assert files.held == 0


def test_etag_and_last_modified_are_those_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a-00001.ts"
    path.write_bytes(b"\x47" * 188)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    hot = HotFiles().get(path)
    assert hot is not None
    assert hot.headers == {
        "ETag": f'"{1_700_000_000_000_000_000:x}-{188:x}"',
        "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT",
    }
