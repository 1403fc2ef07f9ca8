"""Speech-to-text backends: one interface, a small CPU backend that runs offline, room for GPU ones.

The layers above (:mod:`ai_serve.stt.stream`, later the Ray Serve deployment) depend only on the
:class:`SttBackend` protocol: ``transcribe(pcm16k, language) -> list[Segment]`` over one utterance of
16 kHz mono audio. Tests of those layers use fakes of it.

Real backends derive from :class:`BaseSttBackend`, whose public :meth:`~BaseSttBackend.transcribe`
is a template method: it normalises the audio (s16le bytes, int16 or float, 1-D), returns at once on
empty input, times the call (the real-time factor is kept in :class:`SttStats`) and turns any library error
into :class:`SttError`; a backend implements only ``_transcribe_impl`` and ``capabilities``.

Backends are chosen by config through a registry: ``create_backend("faster-whisper", model_dir=...)``.
Adding one is a subclass decorated with ``@register_backend("name")`` that imports its library inside
``__init__`` behind an ``ImportError`` with the install hint, loads weights from a local path (no hub
here), and maps the library's output to :class:`Segment`; :mod:`ai_serve.stt.nemo_backend` (NeMo
FastConformer, offline or cache-aware streaming, GPU) is one, written against NeMo 2.x's API but never
run here (no GPU, no NeMo on these machines).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..models.errors import ModelError
from ..models.registry import BackendRegistry
from ..models.stats import CallCounters
from .short_context import FittedDecode, decode_fitted, decode_fitted_batch, looks_broken, similar_lengths

__all__ = [
    "SAMPLE_RATE",
    "BaseSttBackend",
    "FasterWhisperBackend",
    "Segment",
    "SttBackend",
    "SttCapabilities",
    "SttError",
    "SttStats",
    "as_float_pcm",
    "available_backends",
    "create_backend",
    "register_backend",
]

_LOG = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NO_REPEAT_NGRAM = 3  # for the languages decoded with Whisper's filters off (see FasterWhisperBackend)
FITTED_MAX_SECONDS = 25.0  # longer utterances are decoded the standard way (30 s windows)

FloatPcm = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a transcript; times in seconds from the start of the audio that was passed in."""

    text: str
    start: float
    end: float
    avg_logprob: float  # mean token log-probability; 0.0 when the backend has none
    confidence: float  # in [0, 1]; exp(avg_logprob) for Whisper
    language: str | None
    no_speech_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"Segment.confidence must be within [0, 1], got {self.confidence}")
        if self.end < self.start:
            raise ValueError(f"Segment.end {self.end} is before start {self.start}")


@dataclass(frozen=True, slots=True)
class SttCapabilities:
    """What a backend can do, for the layers that pick or configure one."""

    name: str
    device: str
    languages: frozenset[str] | None = None  # None: multilingual with detection
    needs_forced_language: frozenset[str] = frozenset()  # detection is unreliable for these
    timestamps: bool = True


class SttError(ModelError):
    """An STT backend failed on one request (``retryable``: see :class:`ModelError`)."""


@dataclass(slots=True)
class SttStats(CallCounters):
    """Counters of one backend instance; ``rtf`` = compute time / audio time."""

    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    last_compute_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def record(self, audio_seconds: float, compute_seconds: float, ok: bool) -> None:
        with self._counting(ok):
            self.audio_seconds += audio_seconds
            self.compute_seconds += compute_seconds
            self.last_compute_seconds = compute_seconds


@runtime_checkable
class SttBackend(Protocol):
    """Transcribes one utterance of 16 kHz mono audio."""

    def transcribe(self, pcm16k: npt.NDArray[Any], language: str | None) -> list[Segment]: ...


def as_float_pcm(pcm: npt.NDArray[Any] | bytes) -> FloatPcm:
    """16 kHz mono audio as float32 in [-1, 1]: from s16le bytes, int16 or float arrays."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        if len(pcm) % 2:
            raise ValueError(f"s16le audio must have an even number of bytes, got {len(pcm)}")
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError(f"audio must be 1-D mono, got shape {arr.shape}")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise ValueError(f"audio must be int16 or float, got dtype {arr.dtype}")


class BaseSttBackend(ABC):
    """Template for real backends: the public method owns validation, timing and error mapping."""

    def __init__(self) -> None:
        self.stats = SttStats()

    @property
    @abstractmethod
    def capabilities(self) -> SttCapabilities: ...

    def transcribe(self, pcm16k: npt.NDArray[Any], language: str | None = None) -> list[Segment]:
        """Transcribe one utterance; ``language`` (ISO 639-1) forces the language when given."""
        audio = as_float_pcm(pcm16k)
        if audio.size == 0:
            return []
        t0 = time.perf_counter()
        ok = False
        try:
            segments = self._transcribe_impl(audio, language)
            ok = True
        except SttError:
            raise
        except Exception as e:
            raise SttError(f"{self.capabilities.name}: transcription failed: {e}") from e
        finally:
            self.stats.record(audio.size / SAMPLE_RATE, time.perf_counter() - t0, ok)
        return segments

    @abstractmethod
    def _transcribe_impl(self, audio: FloatPcm, language: str | None) -> list[Segment]:
        """Transcribe float32 16 kHz mono audio (non-empty)."""

    def transcribe_many(
        self, pcms: Sequence[npt.NDArray[Any]], languages: Sequence[str | None]
    ) -> list[list[Segment] | SttError]:
        """Several utterances at once: one result per utterance, a failure as its :class:`SttError`
        (one bad utterance never fails the others). Backends that decode a batch in one pass
        override :meth:`_transcribe_many_impl`; the default decodes one after another. The compute
        time of a batch is shared equally among its utterances in :attr:`stats`."""
        if len(pcms) != len(languages):
            raise ValueError(f"need one language per utterance: {len(pcms)} != {len(languages)}")
        audios = [as_float_pcm(pcm) for pcm in pcms]
        out: list[list[Segment] | SttError] = [[] for _ in audios]
        todo = [n for n, audio in enumerate(audios) if audio.size]
        if not todo:
            return out
        t0 = time.perf_counter()
        results = self._transcribe_many_impl([audios[n] for n in todo], [languages[n] for n in todo])
        share = (time.perf_counter() - t0) / len(todo)
        for n, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, SttError):
                result = SttError(f"{self.capabilities.name}: transcription failed: {result}")
            self.stats.record(audios[n].size / SAMPLE_RATE, share, not isinstance(result, SttError))
            out[n] = result
        return out

    def _transcribe_many_impl(
        self, audios: list[FloatPcm], languages: list[str | None]
    ) -> list[list[Segment] | BaseException]:
        """Non-empty utterances, one result (or the exception) each; default: one at a time."""
        return [self._safe(self._transcribe_impl, a, lang) for a, lang in zip(audios, languages, strict=True)]

    @staticmethod
    def _safe(
        decode: Callable[[FloatPcm, str | None], list[Segment]], audio: FloatPcm, language: str | None
    ) -> list[Segment] | BaseException:
        """``decode(audio, language)``, or the exception it raised (one utterance's failure)."""
        try:
            return decode(audio, language)
        except Exception as e:
            return e

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free memory on GC
        """Release the model early (a Serve replica shutting down); optional."""


_REGISTRY = BackendRegistry[BaseSttBackend]("STT backend")
available_backends = _REGISTRY.available
create_backend = _REGISTRY.create
_B = TypeVar("_B", bound=type[BaseSttBackend])


def register_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator: make a backend creatable by ``name`` from config."""
    return _REGISTRY.register(name)


# ------------------------------------------------------------------------------------ faster-whisper


@register_backend("faster-whisper")
class FasterWhisperBackend(BaseSttBackend):
    """Whisper through CTranslate2 (faster-whisper): int8 on CPU here, float16 on a GPU.

    Decoding is set up for short utterances cut by our own VAD: no built-in VAD, no conditioning on
    the previous text (each utterance stands alone, which also stops repetition loops from spreading),
    greedy search by default (``beam_size=1``) with one temperature fallback, so the cost per call
    stays bounded.

    Korean: language detection on telephone/synthetic Korean picks Thai or Japanese, and the
    log-probability / no-speech / compression filters drop most Korean segments as low-confidence.
    So for the languages in ``filters_off_languages`` (default ``{"ko"}``) the caller must force the
    language and the filters are switched off; confidence is still reported for the layers above.
    """

    DEFAULT_FILTERS_OFF = frozenset({"ko"})

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        *,
        num_workers: int = 1,
        device_index: int = 0,
        beam_size: int = 1,
        temperature: Sequence[float] = (0.0, 0.4),
        default_language: str | None = None,
        filters_off_languages: frozenset[str] = DEFAULT_FILTERS_OFF,
        audio_context: str = "full",
        context_margin_s: float = 3.0,
    ) -> None:
        """``cpu_threads=0`` lets CTranslate2 choose; ``num_workers`` > 1 allows parallel calls.

        ``audio_context="fitted"``: utterances up to 25 s go through :mod:`ai_serve.stt.short_context`
        (the encoder sees the utterance + ``context_margin_s``, not 30 s), with the standard decode as
        the fallback when that result looks broken."""
        if audio_context not in ("full", "fitted"):
            raise ValueError(f"audio_context must be 'full' or 'fitted', got {audio_context!r}")
        if context_margin_s < 0:
            raise ValueError(f"context_margin_s must be >= 0, got {context_margin_s}")
        super().__init__()
        try:
            from faster_whisper import WhisperModel  # type: ignore[import-untyped]
        except ImportError as e:
            raise ImportError(
                "FasterWhisperBackend needs faster-whisper: pip install -e '.[ai]' (or faster-whisper)"
            ) from e
        from ..models.whisper_assets import validate_model_dir

        self.model_dir = validate_model_dir(Path(model_dir))
        self.device = device
        self.beam_size = beam_size
        self.temperature = tuple(temperature)
        self.default_language = default_language
        self.filters_off_languages = frozenset(filters_off_languages)
        self.audio_context = audio_context
        self.context_margin_s = context_margin_s
        self.fitted_fallbacks = 0  # fitted decodes that looked broken and were decoded again in full
        t0 = time.perf_counter()
        self._model: Any = WhisperModel(
            str(self.model_dir),
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
        self.load_seconds = time.perf_counter() - t0
        self._caps = SttCapabilities(
            name="faster-whisper",
            device=device,
            needs_forced_language=self.filters_off_languages,
        )

    @property
    def capabilities(self) -> SttCapabilities:
        return self._caps

    def _decode_options(self, language: str | None) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "language": language,
            "beam_size": self.beam_size,
            "temperature": list(self.temperature),
            "condition_on_previous_text": False,
            "vad_filter": False,
            "word_timestamps": False,
        }
        if language in self.filters_off_languages:
            opts.update(log_prob_threshold=None, no_speech_threshold=None, compression_ratio_threshold=None)
            # Without those filters nothing stops a repetition loop ("다음, 다음, ..."), which costs
            # seconds of decoding and hundreds of inserted characters: forbid repeated trigrams.
            opts["no_repeat_ngram_size"] = NO_REPEAT_NGRAM
        return opts

    def _transcribe_impl(self, audio: FloatPcm, language: str | None) -> list[Segment]:
        lang = language or self.default_language
        if self.audio_context == "fitted" and audio.size <= FITTED_MAX_SECONDS * SAMPLE_RATE:
            fitted = self._fitted_segments(
                decode_fitted(
                    self._model, audio, lang, margin_s=self.context_margin_s, beam_size=self.beam_size
                )
            )
            if fitted is not None:
                return fitted
        return self._full(audio, lang)

    def _transcribe_many_impl(
        self, audios: list[FloatPcm], languages: list[str | None]
    ) -> list[list[Segment] | BaseException]:
        """Fitted-context utterances of similar length share one encoder pass and one ``generate``
        (:func:`~ai_serve.stt.short_context.decode_fitted_batch`); the others, a result that looks
        broken, and the utterances of a batch that failed as a whole are decoded alone."""
        out: list[list[Segment] | BaseException | None] = [None] * len(audios)
        langs = [language or self.default_language for language in languages]
        if self.audio_context == "fitted":
            fitting = [n for n, audio in enumerate(audios) if audio.size <= FITTED_MAX_SECONDS * SAMPLE_RATE]
            for group in similar_lengths(fitting, [audio.size for audio in audios]):
                if len(group) < 2:
                    continue
                try:
                    decodes = decode_fitted_batch(
                        self._model, [audios[n] for n in group], [langs[n] for n in group],
                        margin_s=self.context_margin_s, beam_size=self.beam_size,
                    )  # fmt: skip
                except Exception:
                    _LOG.warning("batched decode of %d utterances failed; decoding them alone", len(group))
                    continue
                for n, decode in zip(group, decodes, strict=True):
                    segments = self._fitted_segments(decode)
                    # broken: the standard decode, as for a single utterance
                    out[n] = self._safe(self._full, audios[n], langs[n]) if segments is None else segments
        for n, result in enumerate(out):
            if result is None:
                out[n] = self._safe(self._transcribe_impl, audios[n], langs[n])
        return [result for result in out if result is not None]

    def _full(self, audio: FloatPcm, lang: str | None) -> list[Segment]:
        """faster-whisper's standard decode (30 s windows, temperature fallback, its filters)."""
        segments, info = self._model.transcribe(audio, **self._decode_options(lang))
        out: list[Segment] = []
        for s in segments:  # a generator: decoding happens while iterating
            text = s.text.strip()
            if not text:
                continue
            avg = float(s.avg_logprob)
            out.append(
                Segment(
                    text=text,
                    start=float(s.start),
                    end=max(float(s.end), float(s.start)),
                    avg_logprob=avg,
                    confidence=min(1.0, max(0.0, math.exp(avg))),
                    language=info.language,
                    no_speech_prob=float(s.no_speech_prob),
                )
            )
        return out

    def _fitted_segments(self, d: FittedDecode) -> list[Segment] | None:
        """The segments of a fitted-context decode; None when it looks broken (decode it in full)."""
        filters_off = d.language in self.filters_off_languages
        if looks_broken(d.text, d.avg_logprob, min_logprob=-math.inf if filters_off else -1.0):
            self.fitted_fallbacks += 1
            return None
        if not d.text or (not filters_off and d.no_speech_prob > 0.6 and d.avg_logprob < -1.0):
            return []  # Whisper's no-speech rule
        confidence = min(1.0, max(0.0, math.exp(d.avg_logprob)))
        return [
            Segment(text, start, max(end, start), d.avg_logprob, confidence, d.language, d.no_speech_prob)
            for start, end, text in d.segments
        ]

    def close(self) -> None:
        self._model = None
