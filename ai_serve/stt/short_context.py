"""Whisper on a fitted audio context: encode only the utterance, not 30 s of padding.

faster-whisper always pads the log-mel features to 3000 frames (30 s) before the encoder, so a 2 s
utterance costs as much encoder time as a 30 s one, and the encoder dominates a greedy decode on
CPU. CTranslate2's Whisper encoder accepts shorter inputs (the positional embedding is sliced), so
here the features are padded only to the utterance plus ``margin`` seconds, rounded up to whole
seconds. This is whisper.cpp's ``--audio-ctx`` idea. The model was trained on 30 s windows and
without timestamps it tends not to stop at the end of a short context (it repeats the sentence into
the padding), so the decode runs in timestamp mode and keeps only the segments that start inside
the real audio: text placed in the padding is a hallucination. A result that still looks broken
(a repetition loop, or a very low average log-probability) is decoded again the standard way by
the caller.

Measured on this machine's CPU (``bench/stt_latency.py`` and tests/ai_serve/test_stt.py): see the
figures in docs/design-notes.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FittedDecode",
    "decode_fitted",
    "decode_fitted_batch",
    "fitted_frames",
    "looks_broken",
    "similar_lengths",
    "split_timestamped",
]

FRAMES_PER_SECOND = 100  # Whisper's log-mel hop: 10 ms
MAX_FRAMES = 3000
TOKENS_PER_SECOND = 12  # generous for speech (~3-4 words/s, ~1.3 tokens per word)


@dataclass(frozen=True, slots=True)
class FittedDecode:
    text: str  # the kept segments' text, joined
    segments: tuple[tuple[float, float, str], ...]  # (start, end, text) seconds, inside the audio
    avg_logprob: float
    no_speech_prob: float
    language: str | None
    frames: int  # encoder input frames used


def fitted_frames(content_frames: int, margin_s: float) -> int:
    """Encoder input length for ``content_frames`` of features: content + margin, whole seconds."""
    want = content_frames + round(margin_s * FRAMES_PER_SECOND)
    return min(MAX_FRAMES, math.ceil(want / FRAMES_PER_SECOND) * FRAMES_PER_SECOND)


def split_timestamped(
    tokens: list[int], timestamp_begin: int, decode: Any, audio_seconds: float, precision: float = 0.02
) -> list[tuple[float, float, str]]:
    """Segments ``(start, end, text)`` of a timestamped decode, keeping those that start before
    ``audio_seconds`` (the rest lies in the padding); an unterminated last segment ends at the audio's
    end."""
    segments: list[tuple[float, float, str]] = []
    start: float | None = None
    text_tokens: list[int] = []
    for token in tokens:
        if token < timestamp_begin:
            text_tokens.append(token)
            continue
        stamp = (token - timestamp_begin) * precision
        if start is None:
            start = stamp
            continue
        segments.append((start, stamp, decode(text_tokens).strip()))
        start, text_tokens = None, []
    if text_tokens:
        segments.append((start or 0.0, audio_seconds, decode(text_tokens).strip()))
    return [(a, min(b, audio_seconds), t) for a, b, t in segments if t and a < audio_seconds - 0.05]


def similar_lengths(indices: Sequence[int], sizes: Sequence[int], ratio: float = 1.5) -> list[list[int]]:
    """``indices`` grouped for :func:`decode_fitted_batch`: by length, the longest of a group at most
    ``ratio`` times its shortest (a short utterance in a long one's batch pays that context)."""
    groups: list[list[int]] = []
    for n in sorted(indices, key=lambda i: sizes[i]):
        if groups and sizes[n] <= ratio * max(sizes[groups[-1][0]], 1):
            groups[-1].append(n)
        else:
            groups.append([n])
    return groups


def looks_broken(text: str, avg_logprob: float, min_logprob: float = -1.0) -> bool:
    """Whisper's own fallback tests: gzip compression ratio > 2.4 (repetition) or low log-prob."""
    if not text:
        return False
    data = text.encode()
    ratio = len(data) / len(zlib.compress(data))
    return ratio > 2.4 or avg_logprob < min_logprob


def decode_fitted(
    model: Any, audio: npt.NDArray[np.float32], language: str | None, *, margin_s: float = 1.0,
    beam_size: int = 1, no_repeat_ngram_size: int = 0,
) -> FittedDecode:  # fmt: skip
    """One greedy (or beam) decode of ``audio`` with a fitted audio context.

    ``model`` is a ``faster_whisper.WhisperModel``; its CTranslate2 model, feature extractor and
    tokenizer are used directly. ``language`` None: detected on the same encoder output.
    """
    return decode_fitted_batch(
        model, [audio], [language], margin_s=margin_s, beam_size=beam_size,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )[0]  # fmt: skip


def decode_fitted_batch(
    model: Any, audios: Sequence[npt.NDArray[np.float32]], languages: Sequence[str | None], *,
    margin_s: float = 1.0, beam_size: int = 1, no_repeat_ngram_size: int = 0,
) -> list[FittedDecode]:  # fmt: skip
    """Several utterances in one encoder pass and one ``generate`` (one result per utterance).

    The features are padded to the longest utterance's fitted context, so every utterance gets at
    least ``margin_s`` of padding; text placed past an utterance's own end is dropped as in the
    single decode. Batching is what a GPU needs, and it pays on a CPU too: CTranslate2 decodes the
    batch's sequences together (matrix products instead of one vector per step): 1.5x the
    throughput of one-by-one decodes for groups of four short utterances on this CPU
    (``bench/stt_context.py --batch 4``). Keep the utterances of one batch of similar length
    (:func:`similar_lengths`): the short ones pay the long one's encoder context."""
    from faster_whisper.audio import pad_or_trim  # type: ignore[import-untyped]
    from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]
    from faster_whisper.transcribe import get_suppressed_tokens  # type: ignore[import-untyped]

    if len(audios) != len(languages) or not audios:
        raise ValueError(f"need one language per utterance and at least one: {len(audios)}, {len(languages)}")
    features = [model.feature_extractor(audio) for audio in audios]
    contents = [f.shape[-1] - 1 for f in features]  # the extractor adds one frame for its padding
    frames = max(fitted_frames(content, margin_s) for content in contents)
    encoder_output = model.encode(np.stack([pad_or_trim(f, frames) for f in features]))
    langs: list[str]
    if any(lang is None for lang in languages) and model.model.is_multilingual:
        detected = model.model.detect_language(encoder_output)
        langs = [lang or detected[n][0][0][2:-2] for n, lang in enumerate(languages)]
    else:
        langs = [lang or "en" for lang in languages]
    tokenizers: dict[str, Any] = {}
    for lang in langs:
        if lang not in tokenizers:
            tokenizers[lang] = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=lang
            )
    prompts = [list(tokenizers[lang].sot_sequence) for lang in langs]  # timestamp mode
    seconds = [content / FRAMES_PER_SECOND for content in contents]
    max_length = max(
        len(prompt) + min(440 - len(prompt), 8 + round(TOKENS_PER_SECOND * s * 1.5))  # + timestamps
        for prompt, s in zip(prompts, seconds, strict=True)
    )
    first = tokenizers[langs[0]]
    results = model.model.generate(
        encoder_output,
        prompts,
        beam_size=beam_size,
        no_repeat_ngram_size=no_repeat_ngram_size,
        max_length=max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=list(get_suppressed_tokens(first, (-1,))),  # the same for every language
        max_initial_timestamp_index=50,  # the first segment starts within 1 s, as in faster-whisper
    )
    out: list[FittedDecode] = []
    for result, lang, audio_seconds in zip(results, langs, seconds, strict=True):
        tokenizer = tokenizers[lang]
        tokens = result.sequences_ids[0]
        cum_logprob = result.scores[0] * max(len(tokens), 1)  # scores are length-normalized (penalty 1)
        segments = split_timestamped(tokens, tokenizer.timestamp_begin, tokenizer.decode, audio_seconds)
        out.append(
            FittedDecode(
                text=" ".join(text for _, _, text in segments) if segments else "",
                segments=tuple(segments),
                avg_logprob=cum_logprob / (len(tokens) + 1),
                no_speech_prob=float(result.no_speech_prob),
                language=lang,
                frames=frames,
            )
        )
    return out
