"""The ABR ladder: which renditions to make from this input, and making them.

- ``plan()`` decides the ladder for an input (pure; unit-tested): a rendition
  taller than the source is dropped, never upscaled, and the reason is kept for
  ``/status``; likewise no rendition is made faster than the source's frame rate
  (``rung_rate``).
- ``Fanout`` runs in the ingest thread. It gives every encoded rendition its own
  reference to each decoded video frame (FFmpeg's ``split``, which adds
  references to the same read-only buffers rather than copying pixels), so no
  PyAV frame object is ever touched by two threads. Handing the *same* frame
  objects to several encoder threads crashed PyAV 18.1 (SIGSEGV, seen here).
- ``AudioLadder`` runs in the ingest thread too: the audio is converted once and
  encoded to AAC once per distinct bitrate of the ladder; renditions get
  packets, never audio frames.
- ``Encoder`` runs in a rendition's own thread: frame rate (``fps``), scale
  (bicubic, as the ffmpeg CLI's ``scale`` filter) and libx264 with a fixed GOP
  of ``gopSeconds * fps``, no scene-cut keyframes and a forced IDR on every GOP
  boundary of the session timeline, so all renditions have keyframes on the
  same timestamps and players switch cleanly at segment boundaries.
- ``aac_stream`` is a rendition's audio stream, for AudioLadder's packets.
- ``Copier`` is the passthrough rendition: the source packets, remuxed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.container
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.filter import Graph
from av.packet import Packet
from av.video.frame import PictureType, VideoFrame

from kubecast_api.profile import AudioCodec, TranscodeProfileSpec, VideoCodec
from kubecast_worker.status import InputState
from kubecast_worker.thumbnail import Thumbnailer

#: The HLS CODECS (and DASH codecs) of AAC-LC.
AAC_LC = "mp4a.40.2"
#: AAC-LC codes 1024 samples per frame.
AAC_FRAME_SIZE = 1024
#: Audio timestamps that jump further than this from the samples' own count are
#: followed (by filling silence or trimming); smaller jitter is ignored (see AudioLadder).
AUDIO_RESYNC_SECONDS = 0.1
#: How far below a rendition's requested rate an even decimation may land (rung_rate).
EVEN_DECIMATION_SLACK = Fraction(1, 5)
#: Frame rate used when neither the rendition nor the input says one.
FALLBACK_FPS = Fraction(30)


class LadderError(Exception):
    """The profile cannot be applied to this input; the message says what to change."""


@dataclass(frozen=True)
class Rung:
    """One rendition that will be produced."""

    name: str
    passthrough: bool
    width: int
    height: int
    fps: Fraction | None
    video_kbps: int | None
    maxrate_kbps: int | None
    bufsize_kbit: int | None
    audio_kbps: int
    preset: str
    profile: str
    level: str | None
    #: an audio-only rendition (DASH: audio is not muxed with the video)
    audio_only: bool = False


def audio_rungs(plan: Ladder, *, name: Callable[[int], str]) -> list[Rung]:
    """One audio-only rendition per distinct audio bitrate of the ladder, highest first."""
    return [
        Rung(
            name=name(kbps),
            passthrough=False,
            width=0,
            height=0,
            fps=None,
            video_kbps=None,
            maxrate_kbps=kbps,
            bufsize_kbit=None,
            audio_kbps=kbps,
            preset="",
            profile="",
            level=None,
            audio_only=True,
        )
        for kbps in sorted({r.audio_kbps for r in plan.rungs}, reverse=True)
    ]


@dataclass(frozen=True)
class Dropped:
    name: str
    reason: str


@dataclass(frozen=True)
class Ladder:
    rungs: tuple[Rung, ...]
    dropped: tuple[Dropped, ...]
    gop_seconds: int
    segment_seconds: int
    audio_rate: int
    audio_channels: int


def plan(profile: TranscodeProfileSpec, *, source: InputState) -> Ladder:
    """The renditions this input gets. Raises ``LadderError`` when none can be made."""
    if profile.audio.codec != AudioCodec.AAC:
        raise LadderError(
            f"audio codec {profile.audio.codec.value!r} is not supported by this worker yet;"
            " set spec.audio.codec to aac"
        )
    if not source.width or not source.height:
        raise LadderError("the input's video size is unknown")
    source_fps = source.rate or (
        Fraction(source.fps).limit_denominator(1001) if source.fps else None
    )
    rungs: list[Rung] = []
    dropped: list[Dropped] = []
    for i, rendition in enumerate(profile.renditions):
        if rendition.codec != VideoCodec.H264:
            raise LadderError(
                f"spec.renditions[{i}].codec: {rendition.codec.value} is not supported by this"
                " worker yet; use h264"
            )
        if rendition.passthrough:
            rungs.append(
                Rung(
                    name=rendition.name,
                    passthrough=True,
                    width=source.width,
                    height=source.height,
                    fps=source_fps,
                    video_kbps=None,
                    maxrate_kbps=None,
                    bufsize_kbit=None,
                    audio_kbps=rendition.audio_bitrate,
                    preset=rendition.preset.value,
                    profile=rendition.profile.value,
                    level=rendition.level,
                )
            )
            continue
        assert rendition.width and rendition.height and rendition.video_bitrate
        if rendition.height > source.height:
            dropped.append(
                Dropped(
                    name=rendition.name,
                    reason=f"would upscale: the input is {source.width}x{source.height}"
                    f" and {rendition.name} is {rendition.width}x{rendition.height}",
                )
            )
            continue
        maxrate = rendition.maxrate or rendition.video_bitrate
        rungs.append(
            Rung(
                name=rendition.name,
                passthrough=False,
                width=rendition.width,
                height=rendition.height,
                fps=rung_rate(rendition.fps, source=source_fps),
                video_kbps=rendition.video_bitrate,
                maxrate_kbps=maxrate,
                bufsize_kbit=rendition.bufsize or 2 * maxrate,
                audio_kbps=rendition.audio_bitrate,
                preset=rendition.preset.value,
                profile=rendition.profile.value,
                level=rendition.level,
            )
        )
    if not rungs:
        smallest = min(r.height or 0 for r in profile.renditions)
        raise LadderError(
            f"every rendition would upscale the {source.width}x{source.height} input (the"
            f" smallest is {smallest} pixels tall); add a rendition at most {source.height}"
            " pixels tall or a passthrough rendition"
        )
    return Ladder(
        rungs=tuple(rungs),
        dropped=tuple(dropped),
        gop_seconds=profile.gop_seconds,
        segment_seconds=profile.segment_seconds,
        audio_rate=profile.audio.sample_rate,
        audio_channels=profile.audio.channels,
    )


def rung_rate(requested: int | None, *, source: Fraction | None) -> Fraction:
    """The frame rate a rendition is made at: the profile's rate is a ceiling, never a target.

    - a source at or below the requested rate keeps its own rate (a 25 fps source
      gives 25 fps, not 30 made by repeating frames, which judders and costs CPU);
    - a faster source is decimated evenly, every n-th frame, when that lands within
      ``EVEN_DECIMATION_SLACK`` below the requested rate (50 fps gives 25 for 30,
      59.94 gives 29.97);
    - otherwise the requested rate, with frames dropped unevenly (30 fps asked of 24).
    """
    if requested is None:
        return source or FALLBACK_FPS
    ceiling = Fraction(requested)
    if source is None:
        return ceiling
    if source <= ceiling:
        return source
    even = source / math.ceil(source / ceiling)
    return even if even >= ceiling * (1 - EVEN_DECIMATION_SLACK) else ceiling


def gop_frames(rung: Rung, *, gop_seconds: int) -> int:
    assert rung.fps is not None
    return max(1, round(gop_seconds * rung.fps))


def x264_options(
    rung: Rung, *, gop_seconds: int, threads: int = 0, b_frames: bool = True
) -> dict[str, str]:
    """libx264 settings for a fixed, aligned GOP (same as ``ffmpeg -g G -keyint_min G
    -sc_threshold 0 -force_key_frames ...`` on the command line).

    ``b_frames=False``: none, whatever the preset says; WebRTC (WHEP) viewers get the
    packets in decode order and expect no reordering."""
    assert rung.video_kbps and rung.maxrate_kbps and rung.bufsize_kbit
    gop = gop_frames(rung, gop_seconds=gop_seconds)
    options = {
        "preset": rung.preset,
        "profile": rung.profile,
        "b": f"{rung.video_kbps}k",
        "maxrate": f"{rung.maxrate_kbps}k",
        "bufsize": f"{rung.bufsize_kbit}k",
        "g": str(gop),
        "keyint_min": str(gop),
        "sc_threshold": "0",
        # A forced keyframe (see Encoder._keyframe_due) must be an IDR, not an
        # open-GOP I frame, or the segment that starts there is not independent.
        "forced-idr": "1",
        "x264-params": "open-gop=0",
        "threads": str(threads),
    }
    if rung.level:
        options["level"] = rung.level
    if not b_frames:
        options["bf"] = "0"
    return options


def avc1_codec(extradata: bytes | None) -> str | None:
    """``avc1.PPCCLL`` for the HLS CODECS attribute, from an H.264 SPS.

    Accepts Annex B extradata (x264 with global headers) and avcC (FLV/MP4
    input): both carry profile_idc, the constraint flags and level_idc.
    """
    if not extradata:
        return None
    data = bytes(extradata)
    if data[0] == 1 and len(data) >= 4:  # avcC: version 1, then the three bytes
        return f"avc1.{data[1]:02x}{data[2]:02x}{data[3]:02x}"
    i = 0
    while True:
        i = data.find(b"\x00\x00\x01", i)
        if i < 0 or i + 6 > len(data):
            return None
        nal = data[i + 3]
        if nal & 0x1F == 7:  # SPS
            return f"avc1.{data[i + 4]:02x}{data[i + 5]:02x}{data[i + 6]:02x}"
        i += 3


# -- the ingest thread's side -------------------------------------------------------


class Fanout:
    """Give each encoded rendition its own reference to every decoded video frame."""

    def __init__(self, *, outputs: int) -> None:
        self.n = outputs
        self._video: tuple[Graph, Any, list[Any]] | None = None
        self._video_key: tuple[Any, ...] | None = None

    def video(self, frame: VideoFrame) -> list[VideoFrame]:
        if self.n == 1:
            return [frame]  # the decoder made it for us alone: hand it over
        key = (frame.width, frame.height, frame.format.name, frame.time_base)
        if self._video is None or key != self._video_key:
            self._video, self._video_key = self._video_graph(frame), key
        _, source, sinks = self._video
        source.push(frame)
        return [sink.pull() for sink in sinks]

    def _video_graph(self, frame: VideoFrame) -> tuple[Graph, Any, list[Any]]:
        graph = Graph()
        source = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format,
            time_base=frame.time_base or Fraction(1, 1000),
        )
        split = graph.add("split", str(self.n))
        source.link_to(split)
        sinks = []
        for i in range(self.n):
            sink = graph.add("buffersink")
            split.link_to(sink, i, 0)
            sinks.append(sink)
        graph.configure()
        return graph, source, sinks


class AudioLadder:
    """The ladder's audio: converted once, then encoded to AAC once per distinct bitrate.

    The conversion (sample rate, layout, planar float, one continuous timeline)
    cuts AAC-sized frames, and every encoder gets the same ones: an encoder takes
    its own reference of a frame, and they all run here, in the ingest thread
    (AAC costs ~2 % of a core per encoder). The packets of a bitrate go to every
    rendition with that bitrate (pipeline.py), whatever the order of the ladder.
    """

    def __init__(self, *, bitrates: Iterable[int], rate: int, channels: int) -> None:
        self.rate = rate
        self.layout = "stereo" if channels == 2 else "mono"
        self.encoders = {kbps: self._encoder(kbps) for kbps in sorted(set(bitrates), reverse=True)}
        self._graph: tuple[Graph, Any, Any] | None = None
        self._graph_key: tuple[Any, ...] | None = None

    def encode(self, frame: AudioFrame) -> dict[int, list[Packet]]:
        """AAC packets per bitrate (none yet, often: a frame is cut and encoders buffer)."""
        key = (frame.sample_rate, frame.format.name, frame.layout.name, frame.time_base)
        if self._graph is None or key != self._graph_key:
            self._graph, self._graph_key = self._convert_graph(frame), key
        return self._encode(self._convert(frame))

    def finish(self) -> dict[int, list[Packet]]:
        """The last samples, and the packets the encoders still hold."""
        packets = self._encode(self._convert(None) if self._graph is not None else [])
        for kbps, encoder in self.encoders.items():
            if encoder.is_open:
                packets[kbps].extend(encoder.encode(None))
        return packets

    def _encode(self, frames: list[AudioFrame]) -> dict[int, list[Packet]]:
        return {
            kbps: [p for frame in frames for p in encoder.encode(frame)]
            for kbps, encoder in self.encoders.items()
        }

    def _convert(self, frame: AudioFrame | None) -> list[AudioFrame]:
        assert self._graph is not None
        _, source, sink = self._graph
        source.push(frame)
        return _drain(sink)

    def _encoder(self, kbps: int) -> AudioCodecContext:
        ctx = av.CodecContext.create("aac", "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = self.rate
        ctx.layout = self.layout
        ctx.format = "fltp"
        ctx.bit_rate = kbps * 1000
        ctx.time_base = Fraction(1, self.rate)
        return ctx

    def _convert_graph(self, frame: AudioFrame) -> tuple[Graph, Any, Any]:
        graph = Graph()
        source = graph.add(
            "abuffer",
            sample_rate=str(frame.sample_rate),
            sample_fmt=frame.format.name,
            channel_layout=frame.layout.name,
            time_base=str(frame.time_base or Fraction(1, frame.sample_rate)),
        )
        # NB: async=1 puts the samples on one continuous timeline, counted in samples,
        # and only fills or trims where the input's timestamps jump by more than
        # AUDIO_RESYNC_SECONDS. Publishers stamp audio irregularly: GStreamer's
        # avenc_aac + flvmux under CPU load sends frames 21-33 ms apart for 23.2 ms of
        # samples, so frames overlap. Cut into AAC-sized frames as they were, the
        # overlaps gave frames that start before the previous one, and every AAC
        # encoder's packets then went backwards: the hls muxer refused them with
        # EINVAL ("rendition 720p failed: Invalid argument", docs/reliability.md).
        resample = graph.add(
            "aresample",
            f"osr={self.rate}:async=1:min_hard_comp={AUDIO_RESYNC_SECONDS}",
        )
        convert = graph.add(
            "aformat",
            sample_rates=str(self.rate),
            sample_fmts="fltp",
            channel_layouts=self.layout,
        )
        sink = graph.add("abuffersink")
        graph.link_nodes(source, resample, convert, sink)
        graph.configure()
        graph.set_audio_frame_size(AAC_FRAME_SIZE)
        return graph, source, sink


def aac_stream(
    container: av.container.OutputContainer, *, ladder: Ladder, kbps: int
) -> AudioStream:
    """A rendition's AAC stream, for AudioLadder's packets of its bitrate.

    NB: its own encoder is opened when the muxer starts (the muxer takes the
    AudioSpecificConfig from it) but never fed; it has the same settings as
    AudioLadder's, hence the same AudioSpecificConfig.
    """
    stream = container.add_stream("aac", rate=ladder.audio_rate)
    ctx = stream.codec_context
    ctx.layout = "stereo" if ladder.audio_channels == 2 else "mono"
    ctx.format = "fltp"
    ctx.bit_rate = kbps * 1000
    return stream


def _drain(sink: Any) -> list[Any]:
    frames = []
    while True:
        try:
            frames.append(sink.pull())
        except (av.error.BlockingIOError, av.error.EOFError):
            return frames


# -- a rendition thread's side ---------------------------------------------------------


class Encoder:
    """Frame rate, scale and encode one rendition into the streams of ``container``.

    Owned by one thread. ``video()``/``audio()`` return the packets to mux.
    """

    def __init__(
        self,
        *,
        rung: Rung,
        ladder: Ladder,
        container: av.container.OutputContainer,
        x264_threads: int = 0,
        x264_thread_type: str = "frame",
        b_frames: bool = True,
    ) -> None:
        assert rung.fps is not None
        self.rung = rung
        self.gop_seconds = Fraction(ladder.gop_seconds)
        self.time_base = 1 / rung.fps
        self.video_stream = container.add_stream(
            "libx264",
            rate=rung.fps,
            options=x264_options(
                rung, gop_seconds=ladder.gop_seconds, threads=x264_threads, b_frames=b_frames
            ),
        )
        ctx = self.video_stream.codec_context
        # NB: PyAV opens codecs with slice threading, which makes libx264 use sliced
        # threads: every encode call then waits for its whole frame. Frame threads (what
        # the ffmpeg CLI gets) overlap frames and are what keeps both cores busy: with
        # slices, one encoding loop left a quarter of the CPU idle (docs/benchmarks.md).
        ctx.thread_type = x264_thread_type.upper()
        ctx.width, ctx.height, ctx.pix_fmt = rung.width, rung.height, "yuv420p"
        ctx.time_base = self.time_base
        ctx.bit_rate = (rung.video_kbps or 0) * 1000
        self._graph: tuple[Graph, Any, Any] | None = None
        self._graph_key: tuple[Any, ...] | None = None
        self._next_key: Fraction = Fraction(0)
        #: the next output frame's pts (in 1/fps): where a rebuilt fps filter starts
        self._next_pts = 0
        self.codecs: str | None = None
        #: set on the smallest rendition: it offers its scaled frames for the still
        self.thumbnail: Thumbnailer | None = None

    # -- video

    def video(self, frame: VideoFrame) -> list[Packet]:
        key = (frame.width, frame.height, frame.format.name, frame.time_base)
        if self._graph is None or key != self._graph_key:
            # A new input geometry: finish the frames of the old one first.
            packets = self._pull_encode(push=None) if self._graph is not None else []
            self._graph, self._graph_key = self._video_graph(frame), key
            return packets + self._pull_encode(push=frame)
        return self._pull_encode(push=frame)

    def _pull_encode(self, *, push: VideoFrame | None) -> list[Packet]:
        assert self._graph is not None
        _, source, sink = self._graph
        source.push(push)
        packets: list[Packet] = []
        for out in _drain(sink):
            if out.pts is not None:
                self._next_pts = out.pts + 1
            if self.thumbnail is not None:
                self.thumbnail.offer(out)
            out.pict_type = PictureType.I if self._keyframe_due(out) else PictureType.NONE
            packets.extend(self.video_stream.encode(out))
        if self.codecs is None and self.video_stream.codec_context.is_open:
            self.codecs = avc1_codec(self.video_stream.codec_context.extradata)
        return packets

    def _keyframe_due(self, frame: VideoFrame) -> bool:
        """True for the first frame at or after each GOP boundary (0, gop, 2·gop …)."""
        tb = frame.time_base or self.time_base
        at, half = (frame.pts or 0) * tb, tb / 2
        if at < self._next_key - half:
            return False
        self._next_key = (math.floor((at + half) / self.gop_seconds) + 1) * self.gop_seconds
        return True

    def _video_graph(self, frame: VideoFrame) -> tuple[Graph, Any, Any]:
        rung = self.rung
        graph = Graph()
        source = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format,
            time_base=frame.time_base or Fraction(1, 1000),
        )
        # start_time: the session timeline starts at 0 (ingest rebases it), so every
        # rendition's frame n is at n/fps whatever the first input pts. NB: a graph
        # rebuilt for a new input size continues after the last frame of the old one;
        # starting at 0 again sent pts back in time, and the muxer refused them with
        # EINVAL ("rendition 360p failed: Invalid argument", docs/reliability.md).
        assert rung.fps is not None
        start = Fraction(self._next_pts) / rung.fps
        chain = [
            source,
            graph.add("fps", f"fps={rung.fps}:start_time={float(start)!r}"),
            graph.add("scale", f"{rung.width}:{rung.height}:flags=bicubic"),
            graph.add("format", "yuv420p"),
            graph.add("setsar", "1"),
            graph.add("buffersink"),
        ]
        graph.link_nodes(*chain)
        graph.configure()
        return graph, source, chain[-1]

    def flush(self) -> list[Packet]:
        packets: list[Packet] = []
        if self._graph is not None:
            packets.extend(self._pull_encode(push=None))
        packets.extend(self.video_stream.encode(None))
        return packets


class Copier:
    """The passthrough rendition: source packets remuxed unchanged."""

    def __init__(
        self,
        *,
        container: av.container.OutputContainer,
        video: Any,
        audio: Any | None,
    ) -> None:
        self.video_stream = container.add_stream_from_template(video)
        self.audio_stream = container.add_stream_from_template(audio) if audio else None
        self.source_video = video
        self.codecs = avc1_codec(video.codec_context.extradata)

    def copy(self, packet: Packet) -> Packet | None:
        if packet.stream is self.source_video:
            packet.stream = self.video_stream
        elif self.audio_stream is not None:
            packet.stream = self.audio_stream
        else:
            return None
        return packet
