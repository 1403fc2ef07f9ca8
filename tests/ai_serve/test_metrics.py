"""The application metrics (ai_serve/metrics.py): definitions, and that the ingress's call logic and
the STT replica's decode loop record what they should. No Ray cluster: outside a replica the metrics
record nothing, so each test swaps in a recorder that keeps what it was given."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="ray[serve] not installed (pip install -e '.[ai]')")

from ai_serve.ingress_call import CallStream, IngressOptions
from ai_serve.metrics import IngressMetrics, SttMetrics
from ai_serve.stt.backends import BaseSttBackend, Segment, SttCapabilities
from ai_serve.stt.vad import EnergyScorer
from pbx_edge.ai_link.protocol import AudioFrame, Leg, StartMessage

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """Stands in for a ray.serve.metrics object: keeps (method, value, tags)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, dict(tags or {})))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("observe", value, dict(tags or {})))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("set", value, dict(tags or {})))

    def total(self, **tags: str) -> float:
        return sum(v for m, v, t in self.calls if m == "inc" and all(t.get(k) == x for k, x in tags.items()))


def _record_all(metrics: Any) -> dict[str, Recorder]:
    recorders = {}
    for name, value in vars(metrics).items():
        if hasattr(value, "info"):  # a ray metric
            recorders[name] = Recorder()
            setattr(metrics, name, recorders[name])
    return recorders


def test_metric_names_and_tags() -> None:
    stt, ingress = SttMetrics(), IngressMetrics()
    assert stt.decode_seconds.info["name"] == "smartpbx_stt_decode_seconds"
    assert stt.decode_seconds.info["tag_keys"] == ("kind",)
    assert stt.queue_depth.info["name"] == "smartpbx_stt_queue_depth"
    assert ingress.final_latency.info["tag_keys"] == ("path",)
    names = [m.info["name"] for m in (*vars(stt).values(), *vars(ingress).values())]
    assert len(names) == len(set(names)) and all(n.startswith("smartpbx_") for n in names)
    # Outside a replica recording is a no-op, never an error.
    stt.decoded("final", 0.2, 1.0, ok=True)
    ingress.sent("gap")


async def test_a_call_records_frames_transcripts_and_latency() -> None:
    metrics = IngressMetrics()
    rec = _record_all(metrics)
    sent: list[dict[str, Any]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    async def transcribe(pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        await asyncio.sleep(0.01)
        return [{"text": f"n{len(pcm)}", "start": 0, "end": 1, "confidence": 0.9}]

    options = IngressOptions(
        scorer="energy", min_speech_ms=60, end_silence_ms=300, early_silence_ms=100, partial_interval_s=0.3
    )
    stream = CallStream(StartMessage(call_id="m"), options, transcribe, send, EnergyScorer, metrics=metrics)
    t = np.arange(16000) / 16000
    audio = np.concatenate([0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(8000)])
    pcm = (audio * 32767).astype("<i2").tobytes()
    records = [
        AudioFrame(Leg.CALLER, i, i * 320, pcm[i * 640 : (i + 1) * 640]) for i in range(len(pcm) // 640)
    ]
    for i in range(0, len(records), 5):
        stream.feed_frames(records[i : i + 5])
        await asyncio.sleep(0.005)
    await stream.finish()

    assert rec["frames"].total() == len(records) and rec["messages"].total() == len(records) // 5
    assert rec["transcripts"].total(kind="final") == 1 == stream.sent
    assert rec["transcripts"].total(kind="partial") == stream.partials_sent >= 1
    assert rec["speculative"].total(outcome="used") == 1
    latencies = [(v, t) for m, v, t in rec["final_latency"].calls if m == "observe"]
    assert len(latencies) == 1 and latencies[0][1] == {"path": "speculative"} and 0 <= latencies[0][0] < 5
    in_flight = [v for m, v, t in rec["stt_in_flight"].calls if t == {"kind": "final"}]
    assert max(in_flight) == 1 and in_flight[-1] == 0


class _Backend(BaseSttBackend):
    """A real backend class whose "model" names the audio's length (and fails on 3 samples)."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[int] = []

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(name="counting", device="cpu")

    def _transcribe_impl(self, audio: np.ndarray, language: str | None) -> list[Segment]:
        self.order.append(audio.size)
        if audio.size == 3:
            raise RuntimeError("bad audio")
        return [Segment(f"{audio.size} samples", 0.0, 1.0, 0.0, 0.9, language)]


def test_stt_replica_decodes_finals_first_and_counts() -> None:
    from ai_serve.deployments.stt import SttDeployment

    cls: Any = SttDeployment.func_or_class  # type: ignore[attr-defined]
    replica = cls.__new__(cls)  # no model: only the decode loop and its figures are under test
    replica.backend = _Backend()
    replica.metrics = SttMetrics()
    rec = _record_all(replica.metrics)
    replica._stats = {k: {"decodes": 0, "errors": 0, "decode_seconds": 0.0, "audio_seconds": 0.0}
                      for k in ("final", "partial")}  # fmt: skip
    replica.queue_depth = replica.max_queue_depth = 0
    pcms = [b"\0\0" * 16000, b"\0\0" * 8000, b"\0\0" * 3, b"\0\0" * 32000]
    out = replica._decode_batch(pcms, ["en"] * 4, ["partial", "final", "final", "partial"])
    assert replica.backend.order == [8000, 3, 16000, 32000]  # finals, then partials, each in order
    assert [o[0]["text"] if o else None for o in out] == [
        "16000 samples",
        "8000 samples",
        None,
        "32000 samples",
    ]
    stats = replica.stats()
    assert stats["final"]["decodes"] == 2 and stats["final"]["errors"] == 1
    assert replica.backend.stats.errors == 1 and replica.backend.stats.calls == 4
    assert stats["partial"]["audio_seconds"] == pytest.approx(3.0)
    assert rec["decodes"].total(kind="final", outcome="error") == 1
    assert rec["audio_seconds"].total(kind="partial") == pytest.approx(3.0)
    assert len([c for c in rec["decode_seconds"].calls if c[2] == {"kind": "partial"}]) == 2
