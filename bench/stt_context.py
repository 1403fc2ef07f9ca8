#!/usr/bin/env python3
"""Whisper's audio context on CPU: the standard 30 s window against a fitted one, same utterances.

For each corpus sentence (espeak-ng, English and Korean), transcribe the utterance as the ingress
cuts it (0.2 s before, 0.15 s after) with ``FasterWhisperBackend(audio_context="full")`` and
``audio_context="fitted"``; print per language the median decode time, WER (CER for Korean), and
how often the fitted decode fell back to the full one. One CTranslate2 thread per decode, like one
STT replica on one core.

    .venv/bin/python bench/stt_context.py [--repeats 3] [--limit 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ai_serve.eval.corpus import ENGLISH, KOREAN  # noqa: E402
from ai_serve.eval.speech import char_errors, silence, synth, word_errors  # noqa: E402
from ai_serve.models import assemble_whisper_base  # noqa: E402
from ai_serve.stt.backends import FasterWhisperBackend  # noqa: E402
from bench._machine import print_machine  # noqa: E402

VOICES = {"en": ("en-us", ENGLISH), "ko": ("ko", KOREAN)}


def run(limit: int, repeats: int, margin: float) -> None:
    model_dir = assemble_whisper_base()
    backends = {
        mode: FasterWhisperBackend(model_dir, cpu_threads=1, audio_context=mode, context_margin_s=margin)
        for mode in ("full", "fitted")
    }
    print(f"{'lang':4} {'context':7} {'utts':>4} {'decode p50 ms':>13} {'p95 ms':>7} {'errors':>9} "
          f"{'rate':>6} {'fallbacks':>9}")  # fmt: skip
    for lang, (voice, sentences) in VOICES.items():
        clips = [
            (text, np.concatenate([silence(0.2), synth(text, voice, 130), silence(0.15)]))
            for text in sentences[:limit]
        ]
        for mode, backend in backends.items():
            times: list[float] = []
            errors = total = 0
            before = backend.fitted_fallbacks
            for text, audio in clips:
                for rep in range(repeats):
                    t0 = time.perf_counter()
                    segments = backend.transcribe(audio, lang)
                    times.append(time.perf_counter() - t0)
                    if rep == 0:
                        hypothesis = " ".join(s.text for s in segments)
                        e, n = (
                            char_errors(text, hypothesis) if lang == "ko" else word_errors(text, hypothesis)
                        )
                        errors, total = errors + e, total + n
            times.sort()
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            metric = "CER" if lang == "ko" else "WER"
            p50 = statistics.median(times)
            print(f"{lang:4} {mode:7} {len(clips):4d} {1000 * p50:13.0f} {1000 * p95:7.0f} "
                  f"{errors:4d}/{total:<4d} {metric} {errors / max(total, 1):5.1%} "
                  f"{backend.fitted_fallbacks - before:9d}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=30, help="sentences per language")
    parser.add_argument("--repeats", type=int, default=3, help="decodes per sentence (timing)")
    parser.add_argument("--margin", type=float, default=1.0, help="fitted context margin, seconds")
    args = parser.parse_args()
    print_machine("stt_context")
    run(args.limit, args.repeats, args.margin)


if __name__ == "__main__":
    main()
