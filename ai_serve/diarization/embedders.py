"""Speaker-embedding backends: one utterance of 16 kHz mono audio in, an L2-normalised vector out.

The layers above (:class:`~ai_serve.diarization.online.OnlineSpeakers`, the offline clustering, the
Serve deployment) depend only on the :class:`SpeakerEmbedder` protocol. Real backends derive from
:class:`BaseSpeakerEmbedder`, whose public :meth:`~BaseSpeakerEmbedder.embed` is a template method:
it normalises the audio, returns None when the utterance holds less than ``min_speech_s`` of speech
(an embedding of a "yes" is mostly noise: the caller keeps the previous label instead), times the call,
checks and re-normalises the vector and turns library errors into :class:`EmbeddingError`. A backend
implements ``_embed_impl`` only.

Backends are chosen by config through a registry, as for STT: ``create_embedder("resemblyzer")``.

- ``resemblyzer``: resemblyzer's GE2E encoder ported to numpy (:mod:`.resemblyzer_np`), 256-d, CPU,
  weights from the resemblyzer wheel (``pip install --no-deps resemblyzer``) or a local path; no torch.
- ``pyannote``: a pyannote.audio embedding model (e.g. WeSpeaker ResNet34) from a local checkpoint,
  on a GPU in production; needs ``pyannote.audio`` (and torch), which do not import on the CPU machines.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..models.registry import BackendRegistry
from ..stt.backends import SAMPLE_RATE, as_float_pcm

__all__ = [
    "BaseSpeakerEmbedder",
    "EmbeddingError",
    "EmbeddingStats",
    "PyannoteEmbedder",
    "ResemblyzerEmbedder",
    "SpeakerEmbedder",
    "available_embedders",
    "create_embedder",
    "import_pyannote",
    "register_embedder",
    "require_pyannote",
    "speech_mask",
    "speech_seconds",
]

FloatArray = npt.NDArray[np.float32]

_MASK_WINDOW = 480  # 30 ms at 16 kHz, as resemblyzer's VAD windows
_FLOOR_DBFS = -50.0  # windows quieter than this are never speech
_DYNAMIC_DB = 35.0  # ... nor those this far below the loudest window of the utterance


class EmbeddingError(RuntimeError):
    """A backend failed on one utterance."""


@dataclass(slots=True)
class EmbeddingStats:
    """Counters of one backend instance; ``too_short`` counts utterances answered with None."""

    calls: int = 0
    too_short: int = 0
    errors: int = 0
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def record(self, audio_seconds: float, compute_seconds: float, *, ok: bool, short: bool) -> None:
        with self._lock:
            self.calls += 1
            self.errors += 0 if ok else 1
            self.too_short += 1 if short else 0
            self.audio_seconds += audio_seconds
            self.compute_seconds += compute_seconds


@runtime_checkable
class SpeakerEmbedder(Protocol):
    """Embeds one utterance of 16 kHz mono audio; None when it holds too little speech."""

    @property
    def dim(self) -> int: ...

    def embed(
        self, pcm16k: npt.NDArray[Any] | bytes, min_speech_s: float | None = None
    ) -> FloatArray | None: ...


def _voiced_windows(audio: FloatArray) -> npt.NDArray[np.bool_]:
    n = audio.size // _MASK_WINDOW
    if n == 0:
        return np.zeros(0, dtype=bool)
    windows = audio[: n * _MASK_WINDOW].reshape(n, _MASK_WINDOW).astype(np.float64)
    db = 10 * np.log10(np.mean(windows**2, axis=1) + 1e-12)
    return np.asarray((db >= _FLOOR_DBFS) & (db >= db.max() - _DYNAMIC_DB))


def speech_mask(audio: FloatArray) -> npt.NDArray[np.bool_]:
    """Per-sample speech flags from 30 ms window energies, smoothed and dilated like resemblyzer's VAD.

    A level detector, good enough inside an utterance the Silero VAD already cut: it measures how much
    of it is speech and drops long pauses (> ~200 ms) that would dilute the embedding.
    """
    voiced = _voiced_windows(audio)
    if voiced.size == 0:
        return np.zeros(audio.size, dtype=bool)
    smooth = np.convolve(voiced.astype(np.float64), np.ones(8) / 8, mode="same") >= 0.5
    dilated = np.convolve(smooth.astype(np.float64), np.ones(7), mode="same") > 0
    mask = np.repeat(dilated, _MASK_WINDOW)
    return np.concatenate([mask, np.zeros(audio.size - mask.size, dtype=bool)])


def speech_seconds(audio: FloatArray) -> float:
    """Seconds of voiced 30 ms windows (before smoothing): what ``min_speech_s`` is compared with."""
    return float(_voiced_windows(audio).sum() * _MASK_WINDOW / SAMPLE_RATE)


class BaseSpeakerEmbedder(ABC):
    """Template for real backends: the public method owns validation, the speech check and timing."""

    def __init__(self, *, min_speech_s: float = 0.5) -> None:
        if min_speech_s < 0:
            raise ValueError(f"min_speech_s must be >= 0, got {min_speech_s}")
        self.min_speech_s = min_speech_s
        self.stats = EmbeddingStats()

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def dim(self) -> int: ...

    def embed(self, pcm16k: npt.NDArray[Any] | bytes, min_speech_s: float | None = None) -> FloatArray | None:
        """The utterance's unit-norm embedding, or None below ``min_speech_s`` (default: the instance's)."""
        audio = as_float_pcm(pcm16k)
        need = self.min_speech_s if min_speech_s is None else min_speech_s
        t0 = time.perf_counter()
        if audio.size == 0 or speech_seconds(audio) < max(need, 1e-9):
            self.stats.record(audio.size / SAMPLE_RATE, time.perf_counter() - t0, ok=True, short=True)
            return None
        ok = False
        try:
            vector = np.asarray(self._embed_impl(audio), dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(vector))
            if vector.size != self.dim or not np.isfinite(norm) or norm == 0.0:
                raise EmbeddingError(f"{self.name}: bad embedding (size {vector.size}, norm {norm})")
            ok = True
        except EmbeddingError:
            raise
        except Exception as e:
            raise EmbeddingError(f"{self.name}: embedding failed: {e}") from e
        finally:
            self.stats.record(audio.size / SAMPLE_RATE, time.perf_counter() - t0, ok=ok, short=False)
        return vector / np.float32(norm)

    @property
    def loaded(self) -> bool:
        """False once :meth:`close` released the model (the Serve health check reads it)."""
        return True

    @abstractmethod
    def _embed_impl(self, audio: FloatArray) -> npt.NDArray[Any]:
        """Embed float32 16 kHz mono audio holding enough speech; any norm."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model early (a Serve replica shutting down); optional."""


_REGISTRY = BackendRegistry[BaseSpeakerEmbedder]("speaker embedder")
available_embedders = _REGISTRY.available
create_embedder = _REGISTRY.create
_E = TypeVar("_E", bound=type[BaseSpeakerEmbedder])


def register_embedder(name: str) -> Callable[[_E], _E]:
    """Class decorator: make an embedder creatable by ``name`` from config."""
    return _REGISTRY.register(name)


# --------------------------------------------------------------------------------------- resemblyzer


def _blas_limiter(threads: int | None) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A context-manager factory capping BLAS threads; a no-op without threadpoolctl or with None."""
    if threads is None:
        return contextlib.nullcontext
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=threads, user_api="blas")  # type: ignore[no-any-return,unused-ignore]


@register_embedder("resemblyzer")
class ResemblyzerEmbedder(BaseSpeakerEmbedder):
    """Resemblyzer's encoder in numpy on CPU (see :mod:`.resemblyzer_np`); ~0.08 RTF on this CPU.

    The audio is raised to -30 dBFS and pauses longer than ~200 ms are dropped (resemblyzer's
    preprocessing, with a level detector in place of webrtcvad) before the 1.6 s partials are embedded.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        *,
        min_speech_s: float = 0.5,
        partial_rate: float = 1.3,
        blas_threads: int | None = 1,
    ) -> None:
        """``model_path``: resemblyzer's ``pretrained.pt`` or an ``.npz`` of its state; None: the wheel's.

        ``blas_threads``: BLAS threads during a call (through threadpoolctl when it is installed; None:
        leave them). The matrices are small (256 x 1024): on a busy 2-core machine two BLAS threads made
        one utterance 3-10x slower than one, the mel projection 70x.
        """
        super().__init__(min_speech_s=min_speech_s)
        if device != "cpu":
            raise ValueError(f"the resemblyzer backend runs on numpy (cpu) only, got device={device!r}")
        from .resemblyzer_np import VoiceEncoderNp

        t0 = time.perf_counter()
        self._encoder: VoiceEncoderNp | None = VoiceEncoderNp(model_path)
        self.load_seconds = time.perf_counter() - t0
        self.partial_rate = partial_rate
        self._blas_limit = _blas_limiter(blas_threads)

    @property
    def name(self) -> str:
        return "resemblyzer"

    @property
    def dim(self) -> int:
        from .resemblyzer_np import EMBEDDING_DIM

        return EMBEDDING_DIM

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def _embed_impl(self, audio: FloatArray) -> npt.NDArray[Any]:
        from .resemblyzer_np import normalize_volume

        if self._encoder is None:
            raise EmbeddingError("resemblyzer: model is closed")
        mask = speech_mask(audio)
        trimmed = audio[mask] if mask.any() else audio
        with self._blas_limit():
            return self._encoder.embed_utterance(normalize_volume(trimmed), rate=self.partial_rate)

    def close(self) -> None:
        self._encoder = None


# ------------------------------------------------------------------------------------------ pyannote

PYANNOTE_HINT = "pip install 'pyannote.audio>=3.3' (brings torch and torchaudio)"


def require_pyannote(who: str) -> None:
    """ImportError naming the install when pyannote.audio is absent, before paying for torch's import."""
    if importlib.util.find_spec("pyannote") is None or importlib.util.find_spec("pyannote.audio") is None:
        raise ImportError(f"{who} needs pyannote.audio: {PYANNOTE_HINT}")


def import_pyannote(who: str, *names: str) -> tuple[Any, ...]:
    """``(torch, *names from pyannote.audio)`` for ``who``; ImportError with the install hint if absent."""
    require_pyannote(who)
    try:
        import pyannote.audio  # type: ignore[import-not-found,unused-ignore]
        import torch  # type: ignore[import-not-found,unused-ignore]

        return (torch, *(getattr(pyannote.audio, name) for name in names))
    except (ImportError, AttributeError) as e:  # AttributeError: a pyannote.audio without that name
        raise ImportError(f"{who}: {e}; {PYANNOTE_HINT}") from e


@register_embedder("pyannote")
class PyannoteEmbedder(BaseSpeakerEmbedder):
    """A pyannote.audio embedding model (``Model.from_pretrained`` on a local checkpoint), whole-window.

    For GPUs: ``device="cuda"``. The checkpoint is a local file or folder (``pytorch_model.bin`` of
    e.g. pyannote/wespeaker-voxceleb-resnet34-LM copied next to the deployment); no hub access.
    """

    def __init__(
        self, model_path: str | Path | None = None, device: str = "cuda", *, min_speech_s: float = 0.5
    ) -> None:
        super().__init__(min_speech_s=min_speech_s)
        if model_path is None:
            raise ValueError("the pyannote embedder needs model_path: a local checkpoint (no model hub here)")
        torch, Inference, Model = import_pyannote("the pyannote speaker embedder", "Inference", "Model")
        path = Path(model_path)
        if not path.exists():
            raise FileNotFoundError(f"pyannote embedding model not found at {path}")
        t0 = time.perf_counter()
        model = Model.from_pretrained(str(path))
        if model is None:
            raise EmbeddingError(f"pyannote could not load an embedding model from {path}")
        self._torch: Any = torch
        self._inference: Any = Inference(model, window="whole", device=torch.device(device))
        warm = self._run(np.zeros(SAMPLE_RATE, dtype=np.float32))  # loads kernels, tells the dimension
        self._dim = int(warm.size)
        self.load_seconds = time.perf_counter() - t0
        self.device = device

    @property
    def name(self) -> str:
        return "pyannote"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def loaded(self) -> bool:
        return self._inference is not None

    def _run(self, audio: FloatArray) -> npt.NDArray[Any]:
        waveform = self._torch.from_numpy(np.ascontiguousarray(audio))[None, :]
        out = self._inference({"waveform": waveform, "sample_rate": SAMPLE_RATE})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _embed_impl(self, audio: FloatArray) -> npt.NDArray[Any]:
        if self._inference is None:
            raise EmbeddingError("pyannote: model is closed")
        return self._run(audio)

    def close(self) -> None:
        self._inference = None
