"""Every application metric of the live transcription app, in one place.

The metrics are :mod:`ray.serve.metrics` objects: created inside a Serve replica they carry the
``deployment``, ``replica`` and ``application`` tags automatically, and Ray exports them on each
node's metrics port (``ray start --metrics-export-port``; Prometheus names get a ``ray_`` prefix,
e.g. ``ray_smartpbx_stt_decode_seconds_bucket``). The Ray dashboard's *Metrics* tab and the Grafana
dashboards it generates show them next to Serve's own (``ray_serve_*``) metrics.

Created outside Ray (unit tests, the bench's in-process baseline) they record nothing and cost
little, so the code that uses them never checks whether Ray is there. Each role builds its set
once, in its replica's constructor: :class:`SttMetrics` in the STT deployment, :class:`IngressMetrics`
in the WebSocket ingress.

Useful queries (PromQL)::

    histogram_quantile(0.95, sum by (le) (rate(ray_smartpbx_ingress_final_latency_seconds_bucket[1m])))
    sum(rate(ray_smartpbx_stt_decode_seconds_sum[1m])) / sum(rate(ray_smartpbx_stt_audio_seconds[1m]))
    sum(rate(ray_smartpbx_ingress_frames[1m]))          # 20 ms frames received per second
    max by (replica) (ray_smartpbx_stt_queue_depth)     # utterances waiting or decoding
"""

from __future__ import annotations

from typing import Literal

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = [
    "DECODE_BOUNDARIES",
    "LATENCY_BOUNDARIES",
    "IngressMetrics",
    "SttMetrics",
]

DecodeKind = Literal["final", "partial"]
TranscriptKind = Literal["partial", "final", "gap"]

# Seconds. A whisper-base decode is ~0.1 s on a GPU and 0.3-2 s on a busy CPU.
DECODE_BOUNDARIES = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
# End of speech → final sent: the target is p95 < 0.3 s (PRD < 0.5 s).
LATENCY_BOUNDARIES = [0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]


class SttMetrics:
    """The STT deployment's metrics (one set per replica)."""

    def __init__(self) -> None:
        self.decode_seconds = Histogram(
            "smartpbx_stt_decode_seconds",
            description="Wall-clock time of one STT decode in the replica, by kind (final or partial).",
            boundaries=DECODE_BOUNDARIES,
            tag_keys=("kind",),
        )
        self.audio_seconds = Counter(
            "smartpbx_stt_audio_seconds",
            description="Seconds of audio decoded, by kind; decode_seconds_sum / this = real-time factor.",
            tag_keys=("kind",),
        )
        self.decodes = Counter(
            "smartpbx_stt_decodes",
            description="STT decodes, by kind and outcome (ok or error).",
            tag_keys=("kind", "outcome"),  # type: ignore[arg-type]  # ray types tag_keys as tuple[str]
        )
        self.queue_depth = Gauge(
            "smartpbx_stt_queue_depth",
            description="Utterances this replica has accepted and not answered yet (queued + decoding).",
        )

    def decoded(self, kind: DecodeKind, seconds: float, audio_seconds: float, ok: bool) -> None:
        self.decode_seconds.observe(seconds, tags={"kind": kind})
        self.audio_seconds.inc(audio_seconds, tags={"kind": kind})
        self.decodes.inc(1, tags={"kind": kind, "outcome": "ok" if ok else "error"})


class IngressMetrics:
    """The WebSocket ingress's metrics (one set per replica, shared by its calls)."""

    def __init__(self) -> None:
        self.active_calls = Gauge(
            "smartpbx_ingress_active_calls", description="Calls with an open WebSocket on this replica."
        )
        self.frames = Counter(
            "smartpbx_ingress_frames",
            description="20 ms frames received from edges (rate() = frames/s; 50 per leg in real time).",
        )
        self.messages = Counter(
            "smartpbx_ingress_messages", description="Binary WebSocket messages (frame batches) received."
        )
        self.final_latency = Histogram(
            "smartpbx_ingress_final_latency_seconds",
            description="Wall clock from the arrival of an utterance's last voiced frame to its final "
            "transcript sent, by path (speculative: decoded before the VAD confirmed the end).",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("path",),
        )
        self.transcripts = Counter(
            "smartpbx_ingress_transcripts",
            description="Messages sent to edges: partial and final transcripts, transcript gaps.",
            tag_keys=("kind",),
        )
        self.partials_skipped = Counter(
            "smartpbx_ingress_partials_skipped",
            description="Partial decodes not started or not sent, by reason (busy, stale, same_text, error).",
            tag_keys=("reason",),
        )
        self.speculative = Counter(
            "smartpbx_ingress_speculative_finals",
            description="Speculative final decodes, by outcome (used, discarded when speech resumed).",
            tag_keys=("outcome",),
        )
        self.stt_in_flight = Gauge(
            "smartpbx_ingress_stt_in_flight",
            description="STT requests this ingress replica is waiting for, by kind.",
            tag_keys=("kind",),
        )

    def sent(self, kind: TranscriptKind) -> None:
        self.transcripts.inc(1, tags={"kind": kind})
