"""The recording on disk: an event playlist that is valid after every write, and resumable."""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from pathlib import Path

import m3u8
import pytest

from kubecast_worker.recorder import journal


def add(j: journal.Journal, data: bytes = b"\x47" * 188, **kwargs: object) -> journal.Segment:
    options: dict[str, object] = {
        "source_uri": "http://o/180p/x-00001.ts",
        "duration": 2.0,
        "discontinuity": False,
        "init": None,
        "init_uri": None,
        "program_date_time": None,
        "target_duration": 2,
    }
    options.update(kwargs)
    return j.add_segment(data, **options)  # type: ignore[arg-type]


def test_each_segment_lands_on_disk_before_the_event_playlist_names_it(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    assert j.open() is False
    first = add(j, program_date_time=datetime(2025, 5, 1, 18, 0, tzinfo=UTC))
    second = add(j, b"\x47" * 376, duration=1.5)

    text = (tmp_path / journal.PLAYLIST).read_text()
    playlist = m3u8.loads(text)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and not playlist.is_endlist
    assert [s.uri for s in playlist.segments] == [first.name, second.name]
    assert [s.duration for s in playlist.segments] == [2.0, 1.5]
    assert playlist.target_duration == 2
    assert "#EXT-X-PROGRAM-DATE-TIME:2025-05-01T18:00:00" in text
    assert (tmp_path / second.name).read_bytes() == b"\x47" * 376
    assert (j.duration, j.bytes, len(j.segments)) == (3.5, 564, 2)
    assert not list(tmp_path.rglob(".*.tmp"))  # temp files were renamed into place

    j.write_playlist(ended=True)
    assert m3u8.loads((tmp_path / journal.PLAYLIST).read_text()).is_endlist


def test_the_first_segment_never_carries_a_discontinuity(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    assert not add(j, discontinuity=True).discontinuity
    assert add(j, discontinuity=True).discontinuity


def test_a_restarted_journal_continues_the_same_playlist(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    add(j)
    add(j)
    j.state.position = {"sequence": 9, "uri": "x-00009.ts"}
    j.state.start_time = "2025-05-01T18:00:00.000Z"
    j.save_state()
    # A segment written but not yet listed when the process died: overwritten later.
    (tmp_path / "segments" / "000002.ts").write_bytes(b"torn")

    again = journal.Journal(tmp_path)
    assert again.open() is True
    assert [s.name for s in again.segments] == [s.name for s in j.segments]
    assert again.state.position == {"sequence": 9, "uri": "x-00009.ts"}
    assert again.state.start_time == "2025-05-01T18:00:00.000Z"
    third = add(again, b"\x47" * 188, discontinuity=True)
    assert third.name == "segments/000002.ts" and third.discontinuity
    assert (tmp_path / third.name).read_bytes() == b"\x47" * 188
    playlist = m3u8.loads((tmp_path / journal.PLAYLIST).read_text())
    assert [s.discontinuity for s in playlist.segments] == [False, False, True]


def test_init_sections_are_stored_once_and_mapped_in_the_playlist(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    init = b"\x00\x00\x00\x18ftypiso6"
    a = add(j, init=init, init_uri="http://o/180p/init-ab.mp4", source_uri="http://o/x.m4s")
    b = add(j, init=init, init_uri="http://o/180p/init-ab.mp4", source_uri="http://o/y.m4s")
    c = add(j, init=init + b"2", init_uri="http://o/180p/init-cd.mp4", discontinuity=True)
    assert a.init == b.init == "segments/init-000.mp4" and a.name.endswith(".m4s")
    assert c.init == "segments/init-001.mp4"
    text = (tmp_path / journal.PLAYLIST).read_text()
    assert text.count("#EXT-X-MAP") == 2 and "#EXT-X-VERSION:6" in text
    resumed = journal.Journal(tmp_path)
    resumed.open()
    assert [s.init for s in resumed.segments] == [a.init, b.init, c.init]


def test_an_unwritable_directory_is_a_storage_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    j = journal.Journal(blocker / "rec")
    with pytest.raises(journal.StorageError) as caught:
        j.open()
    assert str(blocker / "rec") in str(caught.value)
    assert "Not a directory" in str(caught.value)


def test_a_full_disk_message_says_what_where_and_what_to_do(tmp_path: Path) -> None:
    error = OSError(errno.ENOSPC, "No space left on device")
    message = journal.describe_os_error(
        error, doing="write the segment", path=tmp_path / "segments" / "000007.ts"
    )
    assert message.startswith(f"cannot write the segment {tmp_path}/segments/000007.ts")
    assert "No space left on device" in message and "spec.storage.size" in message


def test_a_failed_playlist_write_leaves_the_previous_playlist_and_forgets_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    add(j)
    before = (tmp_path / journal.PLAYLIST).read_text()

    def full(*args: object, **kwargs: object) -> None:
        raise journal.StorageError("cannot write the playlist: No space left on device")

    monkeypatch.setattr(j, "write_playlist", full)
    with pytest.raises(journal.StorageError):
        add(j)
    assert (tmp_path / journal.PLAYLIST).read_text() == before
    assert len(j.segments) == 1 and j.duration == 2.0
