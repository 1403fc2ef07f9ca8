#!/usr/bin/env python3
"""Whisper's audio context on CPU: the standard 30 s window against a fitted one, same utterances.

For each corpus sentence (espeak-ng, English and Korean), transcribe the utterance as the ingress
cuts it (0.2 s before, 0.15 s after) with ``FasterWhisperBackend(audio_context="full")`` and
``audio_context="fitted"``; print per language the median decode time, WER (CER for Korean), and
how often the fitted decode fell back to the full one. One CTranslate2 thread per decode, like one
STT replica on one core.

    .venv/bin/python bench/stt_context.py [--repeats 3] [--limit 30]

``--batch N``: instead, the fitted decode of the English sentences in groups of N as one STT replica
gets them from a Serve batch: one after another (``transcribe``) against one batched pass
(``transcribe_many``: one encoder pass, one ``generate``); prints the time per group, the
throughput ratio and the WER of both.

    .venv/bin/python bench/stt_context.py --batch 4 [--repeats 5] [--threads 1]
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


def run_batch(limit: int, repeats: int, margin: float, batch: int, threads: int) -> None:
    backend = FasterWhisperBackend(
        assemble_whisper_base(), cpu_threads=threads, audio_context="fitted", context_margin_s=margin
    )
    sentences = ENGLISH[: limit - limit % batch] if limit >= batch else ENGLISH[:batch]
    clips = [np.concatenate([silence(0.2), synth(t, "en-us", 150), silence(0.15)]) for t in sentences]
    groups = [list(range(i, i + batch)) for i in range(0, len(clips), batch)]
    times: dict[str, list[float]] = {"one by one": [], "batched": []}
    errors = {"one by one": 0, "batched": 0}
    words = sum(len(t.split()) for t in sentences)
    for rep in range(repeats):
        for group in groups:
            t0 = time.perf_counter()
            alone = [backend.transcribe(clips[n], "en") for n in group]
            times["one by one"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            together = backend.transcribe_many([clips[n] for n in group], ["en"] * len(group))
            times["batched"].append(time.perf_counter() - t0)
            if rep == 0:
                for n, a, b in zip(group, alone, together, strict=True):
                    errors["one by one"] += word_errors(sentences[n], " ".join(s.text for s in a))[0]
                    hyp = " ".join(s.text for s in b) if isinstance(b, list) else ""
                    errors["batched"] += word_errors(sentences[n], hyp)[0]
    print(f"{len(groups)} groups of {batch} English utterances, {repeats} repeats, {threads} thread(s)")
    for mode, spans in times.items():
        print(f"  {mode:10} group p50 {1000 * statistics.median(spans):6.0f} ms   "
              f"WER {errors[mode]}/{words} {errors[mode] / words:5.1%}")  # fmt: skip
    ratio = statistics.median(times["one by one"]) / statistics.median(times["batched"])
    print(f"  throughput batched / one by one: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=30, help="sentences per language")
    parser.add_argument("--repeats", type=int, default=3, help="decodes per sentence (timing)")
    parser.add_argument("--margin", type=float, default=3.0, help="fitted context margin, s (as shipped)")
    parser.add_argument("--batch", type=int, default=0, help="compare batched decodes of this many")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (--batch)")
    args = parser.parse_args()
    print_machine("stt_context")
    if args.batch > 1:
        run_batch(args.limit, args.repeats, args.margin, args.batch, args.threads)
    else:
        run(args.limit, args.repeats, args.margin)


if __name__ == "__main__":
    main()
