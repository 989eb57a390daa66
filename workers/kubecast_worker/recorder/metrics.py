"""Prometheus metrics of one recorder process (its own registry, ``kubecast_recorder_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STATES = ("waiting", "recording", "finalizing", "interrupted", "completed", "failed")


class Metrics:
    def __init__(self, stream: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"stream": stream}
        self.state = Gauge(
            "kubecast_recorder_state",
            "1 for the recorder's current state, 0 for the others.",
            ["stream", "state"],
            registry=self.registry,
        )
        self._stream = stream
        self.recorded_seconds = Gauge(
            "kubecast_recorder_recorded_seconds",
            "Media recorded so far (sum of segment durations), across restarts.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.recorded_bytes = Gauge(
            "kubecast_recorder_recorded_bytes",
            "Bytes of recorded segments, across restarts.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.segments = Gauge(
            "kubecast_recorder_segments",
            "Segments in the recording's playlist, across restarts.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.segments_fetched = Counter(
            "kubecast_recorder_segments_fetched_total",
            "Segments copied from the origin by this process.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.discontinuities = Counter(
            "kubecast_recorder_discontinuities_total",
            "Discontinuities written to the playlist by this process.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.source_errors = Counter(
            "kubecast_recorder_source_errors_total",
            "Failed reads of the origin (playlist or segment).",
            ["stream", "what"],
            registry=self.registry,
        )
        self.missed_segments = Counter(
            "kubecast_recorder_missed_segments_total",
            "Segments listed by the origin that could not be fetched any more.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.storage_errors = Counter(
            "kubecast_recorder_storage_errors_total",
            "Failed writes to the recording volume.",
            ["stream"],
            registry=self.registry,
        ).labels(**labels)
        self.fetch_seconds = Histogram(
            "kubecast_recorder_segment_fetch_seconds",
            "Time to download one segment from the origin.",
            ["stream"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        ).labels(**labels)
        self.set_state("waiting")

    def set_state(self, current: str) -> None:
        for state in STATES:
            self.state.labels(stream=self._stream, state=state).set(1 if state == current else 0)

    def source_error(self, what: str) -> None:
        self.source_errors.labels(stream=self._stream, what=what).inc()
