"""MPEG-TS timing: every access unit reaches the player well before its decode time.

In a transport stream the PCR (Program Clock Reference, in the adaptation field of
the PID the PMT names) tells the receiver what time it is *now*; each PES header's
DTS (or PTS when there is no DTS) says when that access unit must be decoded. The
margin ``DTS - last PCR before the PES`` is how long the unit waits in the decoder
buffer: it must be positive, or the data arrives after it was due. The ffmpeg CLI
muxes with ``-muxdelay 0.7`` (AVFormatContext.max_delay = 0.7 s), giving ≈ 0.7 s;
with max_delay 0 a video frame's DTS equals its PCR and audio lags its PCR, and
strict players (VLC: "ES_OUT_SET_(GROUP_)PCR is called too late") raise their
buffering to a full second or stutter.

Run as a program to print the margins of some segments:
``python tests/e2e/test_worker_ts_timing.py out/*/*.ts``.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKET = 188
CLOCK = 90_000  # PTS/DTS ticks per second; the PCR base counts the same ticks

#: PMT stream_type → kind (H.264, HEVC; AAC ADTS, AAC LATM, MP3, AC-3).
KINDS = {0x1B: "video", 0x24: "video", 0x0F: "audio", 0x11: "audio", 0x03: "audio",
         0x04: "audio", 0x81: "audio"}  # fmt: skip


@dataclass
class Margins:
    """Seconds from the last PCR to each PES's DTS, by kind ("video", "audio")."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, seconds: float) -> None:
        self.by_kind.setdefault(kind, []).append(seconds)

    def summary(self) -> str:
        return ", ".join(
            f"{kind}: n={len(v)} min={min(v):.3f} median={statistics.median(v):.3f}"
            for kind, v in sorted(self.by_kind.items())
        )


def _timestamp(b: bytes) -> int:
    """The 33-bit PTS/DTS in 5 bytes (with marker bits)."""
    return ((b[0] >> 1) & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def pcr_margins(data: bytes, margins: Margins | None = None) -> Margins:
    """Parse one TS segment (each HLS segment starts with PAT and PMT)."""
    margins = margins or Margins()
    pmt_pid: int | None = None
    pcr_pid: int | None = None
    streams: dict[int, str] = {}
    pcr: int | None = None  # in 90 kHz ticks (the base; the 27 MHz extension is ignored)
    assert len(data) % PACKET == 0, "not whole 188-byte packets"
    for at in range(0, len(data), PACKET):
        p = data[at : at + PACKET]
        assert p[0] == 0x47, f"lost sync at byte {at}"
        start = bool(p[1] & 0x40)
        pid = (p[1] & 0x1F) << 8 | p[2]
        control = (p[3] >> 4) & 0x3
        payload = 4
        if control & 0x2:  # adaptation field
            length = p[4]
            if pid == pcr_pid and length and p[5] & 0x10:
                pcr = p[6] << 25 | p[7] << 17 | p[8] << 9 | p[9] << 1 | p[10] >> 7
            payload = 5 + length
        if not control & 0x1 or not start:
            continue
        body = p[payload:]
        if pid == 0:  # PAT: the first program's PMT PID
            section = body[1 + body[0] :]
            pmt_pid = (section[10] & 0x1F) << 8 | section[11]
        elif pid == pmt_pid:
            section = body[1 + body[0] :]
            end = 3 + ((section[1] & 0x0F) << 8 | section[2]) - 4  # without the CRC
            pcr_pid = (section[8] & 0x1F) << 8 | section[9]
            i = 12 + ((section[10] & 0x0F) << 8 | section[11])
            while i < end:
                kind = KINDS.get(section[i], "other")
                streams[(section[i + 1] & 0x1F) << 8 | section[i + 2]] = kind
                i += 5 + ((section[i + 3] & 0x0F) << 8 | section[i + 4])
        elif pid in streams and body[:3] == b"\x00\x00\x01":
            flags = body[7] >> 6  # PTS_DTS_flags: 2 = PTS only, 3 = PTS and DTS
            if not flags & 0x2:
                continue
            dts = _timestamp(body[14:19] if flags == 3 else body[9:14])
            assert pcr is not None, f"PES on PID {pid} before any PCR"
            ticks = (dts - pcr) % (1 << 33)  # 33-bit clocks wrap; signed, near zero
            margins.add(streams[pid], (ticks - (1 << 33) if ticks >= 1 << 32 else ticks) / CLOCK)
    return margins


def segment_margins(directory: Path) -> Margins:
    segments = sorted(directory.glob("*.ts"))
    assert segments, f"no segments in {directory}"
    margins = Margins()
    for segment in segments:
        pcr_margins(segment.read_bytes(), margins)
    return margins


# -- the test -------------------------------------------------------------------------------


if __name__ != "__main__":
    from conftest import make_media, needs_ffmpeg
    from test_worker_transcode import transcode

    pytestmark = [pytest.mark.e2e, needs_ffmpeg, pytest.mark.timeout(180)]

    def test_ts_segments_deliver_every_access_unit_before_its_decode_time(
        tmp_path: Path,
    ) -> None:
        source = make_media(tmp_path / "720p.mp4", seconds=4, size="1280x720")
        out = tmp_path / "out"
        summary = transcode(source, out)
        names = [r["name"] for r in summary["renditions"] if r["state"] == "Active"]
        assert len(names) >= 3, summary
        for name in names:
            margins = segment_margins(out / name)
            video, audio = margins.by_kind["video"], margins.by_kind["audio"]
            assert min(video) >= 0.5, f"{name}: {margins.summary()}"
            assert min(audio) > 0, f"{name}: {margins.summary()}"


if __name__ == "__main__":
    by_dir: dict[Path, Margins] = {}
    for arg in sys.argv[1:]:
        path = Path(arg)
        pcr_margins(path.read_bytes(), by_dir.setdefault(path.parent, Margins()))
    for directory, found in by_dir.items():
        print(f"{directory}: {found.summary()}")
