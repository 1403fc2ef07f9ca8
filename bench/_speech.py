"""Benchmark speech: espeak-ng synthesis at 16 kHz, 20 ms frames, word error counting.

A copy of the helpers of ``tests/ai_serve/speech.py`` that the benchmarks need, so ``bench/`` does not
import the test package. Needs the ``espeak-ng`` binary and ``soxr`` (the ai extra).
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import wave

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE

ESPEAK = shutil.which("espeak-ng")

FloatAudio = npt.NDArray[np.float32]


@functools.lru_cache(maxsize=64)
def _synth_cached(text: str, voice: str, speed: int) -> bytes:
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

    return np.asarray(soxr.resample(pcm, rate, SAMPLE_RATE), dtype=np.float32).tobytes()


def synth(text: str, voice: str = "en-us", speed: int = 150) -> FloatAudio:
    """``espeak-ng -v VOICE -s SPEED --stdout TEXT`` (22.05 kHz) resampled to 16 kHz float32."""
    return np.frombuffer(_synth_cached(text, voice, speed), dtype=np.float32).copy()


def silence(seconds: float) -> FloatAudio:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def with_noise(audio: FloatAudio, level: float = 3e-4, seed: int = 0) -> FloatAudio:
    """Add a faint noise floor (about -70 dBFS): a phone line is never digital silence."""
    rng = np.random.default_rng(seed)
    return (audio + rng.normal(0.0, level, audio.size)).astype(np.float32)


def to_pcm16(audio: FloatAudio) -> bytes:
    """s16le bytes, padded with zeros to whole 20 ms frames."""
    pad = (-audio.size) % FRAME_SAMPLES
    pcm = (np.clip(np.concatenate([audio, np.zeros(pad, np.float32)]), -1, 1) * 32767).astype("<i2")
    return bytes(pcm.tobytes())


def speech_extent(audio: FloatAudio, threshold: float = 0.01) -> tuple[float, float]:
    """First and last time the signal exceeds ``threshold``: espeak pads its output with silence."""
    idx = np.flatnonzero(np.abs(audio) > threshold)
    return idx[0] / SAMPLE_RATE, (idx[-1] + 1) / SAMPLE_RATE


def normalize(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after :func:`normalize`."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)
