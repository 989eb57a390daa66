"""``/metrics``: the worker's ``Status`` in Prometheus form, read at scrape time.

A collector reads the same object ``/status`` shows, so the two never disagree
and the media threads never call into prometheus-client. Every series carries a
``stream`` label; each worker has its own ``CollectorRegistry`` (tests run
several workers in one process).

Per-rendition counters start again with each publish (a counter reset, which
``rate()`` handles); ingest counters live as long as the process.

With ``--whep``, a second collector reads the WHEP hub's counts the same way
(``WhepHub.counts()``): the scrape runs on the event loop, where the hub's viewers
change, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubecast_worker.status import Status

if TYPE_CHECKING:  # NB: aiortc is imported only by a worker that offers WHEP
    from kubecast_worker.whep import WhepHub

STATES = ("idle", "live", "reconnecting")
REFUSALS = {
    "refused_wrong_key": "wrong_key",
    "refused_unknown_app": "unknown_app",
    "refused_busy": "busy",
    "refused_rate_limited": "rate_limited",
}


class StatusCollector(Collector):
    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        stream = self.status.stream
        s = self.status.view()  # one consistent copy for the whole scrape
        state, renditions, input_info = s.state, s.renditions, s.input
        live = state == "live"

        g = GaugeMetricFamily(
            "kubecast_stream_state", "1 for the stream's current state.", labels=["stream", "state"]
        )
        for name in STATES:
            g.add_metric([stream, name], 1.0 if state == name else 0.0)
        yield g
        yield _gauge("kubecast_stream_live", "1 while a publisher is live.", stream, live)
        yield _counter("kubecast_sessions", "Publish sessions started.", stream, s.sessions_total)
        if s.last_live_time is not None:
            yield _gauge(
                "kubecast_last_live_timestamp_seconds",
                "When the stream was last live (Unix time).",
                stream,
                s.last_live_time,
            )

        counters = s.counters()
        yield _counter(
            "kubecast_ingest_accepted",
            "Publishers accepted by the RTMP front.",
            stream,
            counters.get("accepted", 0),
        )
        refused = CounterMetricFamily(
            "kubecast_ingest_refused",
            "Publish attempts refused, by reason (wrong_key, unknown_app, busy; rate_limited:"
            " connections refused at accept after too many wrong keys from their address).",
            labels=["stream", "reason"],
        )
        for field, reason in REFUSALS.items():
            refused.add_metric([stream, reason], counters.get(field, 0))
        yield refused
        yield _counter(
            "kubecast_ingest_protocol_errors",
            "Connections to the ingest port that were not valid RTMP.",
            stream,
            counters.get("protocol_errors", 0),
        )
        yield _counter(
            "kubecast_ingest_received_bytes",
            "Media bytes demuxed from the input.",
            stream,
            s.input_bytes,
        )
        bitrate = s.input_kbps
        if bitrate is not None:
            yield _gauge("kubecast_input_bitrate_kbps", "Input bitrate (kbit/s).", stream, bitrate)
        if live and input_info.width:
            info = GaugeMetricFamily(
                "kubecast_input_info",
                "The input being received (always 1).",
                labels=["stream", "video_codec", "audio_codec", "resolution", "fps"],
            )
            info.add_metric(
                [
                    stream,
                    input_info.video_codec or "",
                    input_info.audio_codec or "",
                    f"{input_info.width}x{input_info.height}",
                    f"{input_info.fps or 0:g}",
                ],
                1.0,
            )
            yield info

        yield _counter("kubecast_frames_decoded", "Video frames decoded.", stream, s.frames_decoded)
        yield _counter(
            "kubecast_frames_dropped",
            "Input video frames that a rendition skipped because it fell behind real time.",
            stream,
            s.frames_dropped,
        )
        yield _counter(
            "kubecast_frames_late",
            "Video frames decoded more than 1 s behind real time.",
            stream,
            s.frames_late,
        )
        yield _counter(
            "kubecast_decode_errors", "Packets the decoder refused.", stream, s.decode_errors
        )
        speed = s.encode_speed
        if speed is not None:
            yield _gauge(
                "kubecast_encode_speed_ratio",
                "Media seconds encoded per wall-clock second (1.0 keeps up with live).",
                stream,
                speed,
            )

        active = GaugeMetricFamily(
            "kubecast_rendition_active",
            "1 for a rendition being produced, 0 for one dropped (it would upscale).",
            labels=["stream", "rendition"],
        )
        rate = GaugeMetricFamily(
            "kubecast_rendition_bitrate_kbps",
            "Measured output bitrate of a rendition (kbit per second of media).",
            labels=["stream", "rendition"],
        )
        out_bytes = CounterMetricFamily(
            "kubecast_rendition_output_bytes",
            "Bytes muxed into a rendition's segments.",
            labels=["stream", "rendition"],
        )
        segments = CounterMetricFamily(
            "kubecast_rendition_segments",
            "Segments completed by a rendition.",
            labels=["stream", "rendition"],
        )
        frames = CounterMetricFamily(
            "kubecast_rendition_frames",
            "Video frames encoded by a rendition.",
            labels=["stream", "rendition"],
        )
        skipped = CounterMetricFamily(
            "kubecast_rendition_frames_dropped",
            "Input video frames a rendition skipped because it fell behind real time.",
            labels=["stream", "rendition"],
        )
        first = GaugeMetricFamily(
            "kubecast_rendition_first_segment_seconds",
            "Seconds from the start of the publish to the rendition's first segment.",
            labels=["stream", "rendition"],
        )
        for r in renditions:
            labels = [stream, r.name]
            active.add_metric(labels, 1.0 if r.state == "Active" else 0.0)
            if r.state != "Active":
                continue
            kbps = r.bitrate_kbps
            if kbps is not None:
                rate.add_metric(labels, kbps)
            out_bytes.add_metric(labels, r.bytes_out)
            segments.add_metric(labels, r.segments)
            frames.add_metric(labels, r.frames_out)
            skipped.add_metric(labels, r.frames_dropped)
            if r.first_segment_seconds is not None:
                first.add_metric(labels, r.first_segment_seconds)
        yield from (active, rate, out_bytes, segments, frames, skipped, first)


class WhepCollector(Collector):
    """WebRTC viewers (WHEP): how many watch each rendition, and how sessions went."""

    def __init__(self, stream: str, hub: WhepHub) -> None:
        self.stream = stream
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        counts = self.hub.counts()
        yield self._family(
            GaugeMetricFamily,
            "kubecast_whep_viewers",
            "WebRTC (WHEP) viewers watching a rendition now.",
            ["rendition"],
            counts.viewers,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_sessions_started",
            "WHEP viewer sessions answered (201), by rendition.",
            ["rendition"],
            counts.started,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_sessions_ended",
            "WHEP viewer sessions ended, by rendition and reason (viewer_left: a DELETE;"
            " connection_failed, connection_closed: ICE or DTLS; send_failed; server_stopping).",
            ["rendition", "reason"],
            counts.ended,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_sessions_refused",
            "WHEP offers refused, by reason (not_playing: 404, no such rendition or not live;"
            " full: 503, the worker's viewer limit; bad_offer: 400/415).",
            ["reason"],
            counts.refused,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_keyframe_skips",
            "Times a viewer fell a queue behind and waited for the next keyframe (a picture"
            " frozen for up to a GOP).",
            ["rendition"],
            counts.keyframe_skips,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_retransmitted_packets",
            "Video RTP packets sent again because a viewer reported them lost (RTCP NACK).",
            ["rendition"],
            counts.retransmits,
        )
        yield self._family(
            CounterMetricFamily,
            "kubecast_whep_audio_packets",
            "Opus packets sent to WHEP listeners, by origin (publisher: a WHIP publisher's"
            " own Opus, passed on; encoded: the decoded audio encoded to Opus once).",
            ["origin"],
            counts.audio_packets,
        )

    def _family(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        doc: str,
        labels: list[str],
        values: Mapping[Any, int],
    ) -> Metric:
        """One family, a sample per key of ``values`` (a label value, or a tuple of them),
        each labelled with the stream too."""
        family = kind(name, doc, labels=["stream", *labels])
        for key, n in sorted(values.items()):
            family.add_metric([self.stream, *(key if isinstance(key, tuple) else (key,))], n)
        return family


def _gauge(name: str, doc: str, stream: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["stream"])
    g.add_metric([stream], float(value))
    return g


def _counter(name: str, doc: str, stream: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["stream"])
    c.add_metric([stream], float(value))
    return c


def registry_for(status: Status, whep: WhepHub | None = None) -> CollectorRegistry:
    """A registry of this worker's metrics (its WHEP viewers' too, if it offers WHEP),
    plus the process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    if whep is not None:
        registry.register(WhepCollector(status.stream, whep))
    ProcessCollector(namespace="kubecast_worker", registry=registry)
    return registry
