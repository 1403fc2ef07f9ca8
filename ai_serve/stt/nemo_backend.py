"""NVIDIA NeMo ASR backend (FastConformer / Parakeet; CTC, RNN-T, TDT or hybrid) for GPU replicas.

Registered as ``"nemo"``: ``create_backend("nemo", model_path="/models/x.nemo", device="cuda")``.
NeMo is not installed on the CPU machines and cannot be: this module imports without it (and
without torch); :class:`NemoBackend` imports ``nemo.collections.asr`` in its constructor and raises an
``ImportError`` naming ``pip install "nemo_toolkit[asr]"`` when it is missing. Weights come from a local
``.nemo`` file only (``ASRModel.restore_from``); ``from_pretrained`` (the NGC / Hugging Face hub) is
never called.

Two decode paths, both for one utterance of 16 kHz float32 audio:

* offline: ``model.transcribe([audio], batch_size=..., return_hypotheses=True, verbose=False)``. The
  ``audio`` argument takes in-memory numpy arrays since NeMo 2.0 (``TranscriptionMixin.transcribe(audio:
  Union[str, List[str], np.ndarray, DataLoader], ..., timestamps=None)`` in
  ``nemo/collections/asr/parts/mixins/transcription.py``, NeMo 2.x main branch).
* cache-aware streaming (``streaming=True`` and an encoder trained with ``att_context_style:
  chunked_limited``): the loop of NeMo's ``examples/asr/asr_cache_aware_streaming/
  speech_to_text_cache_aware_streaming_infer.py`` (NeMo 2.x): ``encoder.setup_streaming_params()``,
  ``CacheAwareStreamingAudioBuffer.append_audio(audio)``, the caches from
  ``encoder.get_initial_cache_state(batch_size=1)``, then ``model.conformer_stream_step(...)`` per chunk
  with ``cache_last_channel`` / ``cache_last_time`` / ``cache_last_channel_len``,
  ``previous_hypotheses``, ``previous_pred_out``, ``drop_extra_pre_encoded`` (0 on the first chunk,
  ``streaming_cfg.drop_extra_pre_encoded`` after) and ``keep_all_outputs`` on the last chunk. The text
  equals what the model would give when fed live in chunks of ``chunk_ms``, so a partial decoded this
  way is the one a live stream would show. ``chunk_ms`` picks, among the look-aheads the model was
  trained with (``encoder.att_context_size_all``, e.g. ``[[70, 13], [70, 6], [70, 1], [70, 0]]`` for
  the multi-lookahead FastConformer), the one whose chunk is closest; a chunk size the model was not
  trained for would cost accuracy, so no other size is forced.

Segments: one per hypothesis (or one per NeMo segment timestamp when the model gives them), start 0
and end = the audio's duration otherwise. NeMo models are monolingual (``language`` option, reported in
:attr:`SttCapabilities.languages` and on every segment). Confidence: the mean of NeMo's own word/token
confidence when the decoding config computes it (``confidence_cfg.preserve_word_confidence``), else
``exp(score / tokens)`` from the hypothesis score (a sum of log-probabilities: per-token for RNN-T,
over the non-blank frames for CTC, so only a rough figure), else :data:`NEUTRAL_CONFIDENCE`.

Not run on these machines (no GPU, no NeMo): the GPU test ``tests/ai_serve/test_nemo_backend.py``
exercises it when ``SMARTPBX_NEMO_MODEL`` points at a local ``.nemo`` on a CUDA machine.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends import SAMPLE_RATE, BaseSttBackend, FloatPcm, Segment, SttCapabilities, register_backend

__all__ = ["NEMO_HINT", "NEUTRAL_CONFIDENCE", "NemoBackend"]

_LOG = logging.getLogger(__name__)

NEMO_HINT = 'pip install "nemo_toolkit[asr]" (brings torch; use the CUDA build on GPU machines)'
# Confidence reported when the hypothesis carries neither NeMo confidence nor a usable score: the
# middle of [0, 1], so it neither passes nor fails a confidence gate on its own.
NEUTRAL_CONFIDENCE = 0.5


def require_nemo(who: str) -> None:
    """ImportError naming the install when NeMo's ASR collection is absent (before importing torch)."""
    if importlib.util.find_spec("nemo") is None:
        raise ImportError(f"{who} needs NVIDIA NeMo's ASR collection: {NEMO_HINT}")


def _validate_model_path(model_path: str | Path | None) -> Path:
    if model_path is None or str(model_path) == "":
        raise ValueError("the NeMo STT backend needs model_path: a local .nemo file (no model hub here)")
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"NeMo model file not found: {path} (model_path must be a local .nemo file)")
    if not path.is_file() or path.suffix != ".nemo":
        raise ValueError(f"NeMo model_path must be a .nemo file, got {path}")
    return path


def _first(value: Any) -> Any:
    """The best hypothesis of the only utterance, whatever container this NeMo version returns."""
    # RNN-T / hybrid models of NeMo < 2.0 return (best_hypotheses, all_hypotheses).
    if isinstance(value, tuple):
        value = value[0]
    while isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    return value


def _number(value: Any) -> float | None:
    """A float from a Python number or a one-element tensor; None when absent or not finite."""
    if value is None:
        return None
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def _mean_confidence(values: Any) -> float | None:
    if values is None:
        return None
    numbers = [n for n in (_number(v) for v in values) if n is not None]
    return min(1.0, max(0.0, sum(numbers) / len(numbers))) if numbers else None


def hypothesis_confidence(hyp: Any) -> tuple[float, float]:
    """(avg_logprob, confidence) of a NeMo hypothesis; see the module doc for the precedence."""
    for attr in ("word_confidence", "token_confidence"):
        conf = _mean_confidence(getattr(hyp, attr, None))
        if conf is not None:
            return (math.log(conf) if conf > 0 else -math.inf), conf
    score = _number(getattr(hyp, "score", None))
    tokens = getattr(hyp, "y_sequence", None)
    count = len(tokens) if tokens is not None and hasattr(tokens, "__len__") else 0
    if score is not None and count > 0:
        avg = min(0.0, score / count)
        return avg, min(1.0, max(0.0, math.exp(avg)))
    return 0.0, NEUTRAL_CONFIDENCE


def hypothesis_segments(hyp: Any, duration: float, language: str) -> list[Segment]:
    """NeMo hypothesis (or plain string) -> segments; segment timestamps are used when present."""
    if hyp is None:
        return []
    text = (hyp if isinstance(hyp, str) else str(getattr(hyp, "text", "") or "")).strip()
    if not text:
        return []
    avg, conf = (0.0, NEUTRAL_CONFIDENCE) if isinstance(hyp, str) else hypothesis_confidence(hyp)
    stamps = getattr(hyp, "timestamp", None)
    spans = stamps.get("segment") if isinstance(stamps, dict) else None
    out: list[Segment] = []
    for span in spans or []:
        if not isinstance(span, dict):
            continue
        piece = str(span.get("segment", "")).strip()
        start, end = _number(span.get("start")), _number(span.get("end"))
        if not piece or start is None or end is None:
            continue
        start = min(max(0.0, start), duration)
        out.append(Segment(piece, start, min(max(end, start), duration), avg, conf, language))
    return out or [Segment(text, 0.0, duration, avg, conf, language)]


@register_backend("nemo")
class NemoBackend(BaseSttBackend):
    """A NeMo ASR model restored from a local ``.nemo`` file; offline or cache-aware streaming decode."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cuda",
        language: str = "en",
        *,
        streaming: bool = False,
        chunk_ms: float | None = None,
        batch_size: int = 1,
        timestamps: bool = False,
    ) -> None:
        """``streaming``: decode through the cache-aware streaming path when the model supports it
        (otherwise a warning, and the offline path). ``chunk_ms``: wanted streaming chunk (None: the
        model's default look-ahead). ``timestamps``: ask NeMo for segment timestamps (costs a little)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if chunk_ms is not None and chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        if not language:
            raise ValueError("language must name the model's language (ISO 639-1), e.g. 'en'")
        super().__init__()
        path = _validate_model_path(model_path)
        require_nemo("NemoBackend")
        try:
            import nemo.collections.asr as nemo_asr  # type: ignore[import-not-found,unused-ignore]
            import torch  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise ImportError(f"NemoBackend could not import NeMo's ASR collection: {e}; {NEMO_HINT}") from e

        self.model_path = path
        self.device = device
        self.language = language
        self.batch_size = batch_size
        self.timestamps = timestamps
        self._torch: Any = torch
        self._lock = threading.Lock()
        self._warned_languages: set[str] = set()
        t0 = time.perf_counter()
        model: Any = nemo_asr.models.ASRModel.restore_from(
            restore_path=str(path), map_location=torch.device(device)
        )
        rate = _number(_cfg_get(model, "sample_rate") or _cfg_get(model, "preprocessor", "sample_rate"))
        if rate is not None and int(rate) != SAMPLE_RATE:
            raise ValueError(
                f"{path}: the model expects {int(rate)} Hz audio, this backend feeds {SAMPLE_RATE} Hz"
            )
        self._model: Any = model.to(torch.device(device))
        self._model.eval()
        self.streaming = bool(streaming) and self._supports_cache_aware_streaming()
        if streaming and not self.streaming:
            _LOG.warning("%s is not a cache-aware streaming model: decoding offline", path.name)
        self.chunk_seconds: float | None = self._setup_streaming(chunk_ms) if self.streaming else None
        self.load_seconds = time.perf_counter() - t0
        self._caps = SttCapabilities(
            name="nemo",
            device=device,
            languages=frozenset({language}),
            timestamps=timestamps,
        )

    @property
    def capabilities(self) -> SttCapabilities:
        return self._caps

    # ------------------------------------------------------------------------------ streaming set-up

    def _supports_cache_aware_streaming(self) -> bool:
        encoder = getattr(self._model, "encoder", None)
        return (
            hasattr(self._model, "conformer_stream_step")
            and hasattr(encoder, "setup_streaming_params")
            and hasattr(encoder, "get_initial_cache_state")
            and getattr(encoder, "att_context_style", None) == "chunked_limited"
        )

    def _setup_streaming(self, chunk_ms: float | None) -> float | None:
        """Pick the trained look-ahead closest to ``chunk_ms``, set up the encoder; the chunk in seconds."""
        encoder = self._model.encoder
        frame_s = float(_cfg_get(self._model, "preprocessor", "window_stride") or 0.01)
        frame_s *= int(getattr(encoder, "subsampling_factor", 1) or 1)  # one encoder step
        chosen = [int(x) for x in encoder.att_context_size]  # [left, right] in encoder steps
        if chunk_ms is not None and hasattr(encoder, "set_default_att_context_size"):
            trained = getattr(encoder, "att_context_size_all", None) or [chosen]
            chosen = _closest_context([[int(x) for x in ctx] for ctx in trained], frame_s, chunk_ms)
            encoder.set_default_att_context_size(att_context_size=chosen)
        encoder.setup_streaming_params()
        chunk_s = (int(chosen[1]) + 1) * frame_s
        if chunk_ms is not None and abs(chunk_s * 1000 - chunk_ms) > 1:
            _LOG.info("NeMo streaming: %.0f ms asked, %.0f ms used (att_context_size %s)",
                      chunk_ms, chunk_s * 1000, chosen)  # fmt: skip
        return chunk_s

    # ------------------------------------------------------------------------------------- decoding

    def _transcribe_impl(self, audio: FloatPcm, language: str | None) -> list[Segment]:
        if language and language != self.language and language not in self._warned_languages:
            self._warned_languages.add(language)
            _LOG.warning("NeMo model %s is %r only; decoding %r audio with it anyway",
                         self.model_path.name, self.language, language)  # fmt: skip
        duration = audio.size / SAMPLE_RATE
        with self._lock:
            hyp = self._stream(audio) if self.streaming else self._offline(audio)
        return hypothesis_segments(hyp, duration, self.language)

    def _offline(self, audio: FloatPcm) -> Any:
        # NeMo 2.x TranscriptionMixin.transcribe (nemo/collections/asr/parts/mixins/transcription.py):
        # a list of float32 arrays at cfg.sample_rate; return_hypotheses gives Hypothesis objects.
        extra: dict[str, Any] = {"timestamps": True} if self.timestamps else {}
        result = self._model.transcribe(
            [audio], batch_size=self.batch_size, return_hypotheses=True, verbose=False, **extra
        )
        return _first(result)

    def _stream(self, audio: FloatPcm) -> Any:
        # perform_streaming() of NeMo's examples/asr/asr_cache_aware_streaming/
        # speech_to_text_cache_aware_streaming_infer.py (NVIDIA/NeMo main, commit 02df5ed), one stream.
        from nemo.collections.asr.parts.utils.streaming_utils import (  # type: ignore[import-not-found,unused-ignore]
            CacheAwareStreamingAudioBuffer,
        )

        model, torch = self._model, self._torch
        normalize = str(_cfg_get(model, "preprocessor", "normalize") or "NA")
        buffer = CacheAwareStreamingAudioBuffer(
            model=model, online_normalization=normalize in ("per_feature", "all_feature")
        )
        buffer.append_audio(audio, stream_id=-1)
        cache_channel, cache_time, cache_channel_len = model.encoder.get_initial_cache_state(batch_size=1)
        previous_hypotheses: Any = None
        pred_out: Any = None
        texts: Any = None
        with torch.inference_mode():
            for step, (chunk_audio, chunk_lengths) in enumerate(buffer):
                # No caching on the first step, so nothing to drop after the pre-encoder (NeMo's example).
                drop = 0 if step == 0 else model.encoder.streaming_cfg.drop_extra_pre_encoded
                (pred_out, texts, cache_channel, cache_time, cache_channel_len, previous_hypotheses) = (
                    model.conformer_stream_step(
                        processed_signal=chunk_audio,
                        processed_signal_length=chunk_lengths,
                        cache_last_channel=cache_channel,
                        cache_last_time=cache_time,
                        cache_last_channel_len=cache_channel_len,
                        keep_all_outputs=buffer.is_buffer_empty(),
                        previous_hypotheses=previous_hypotheses,
                        previous_pred_out=pred_out,
                        drop_extra_pre_encoded=drop,
                        return_transcription=True,
                    )
                )
        return _first(texts)

    def close(self) -> None:
        self._model = None
        torch = getattr(self, "_torch", None)
        if torch is not None and str(self.device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _closest_context(contexts: Sequence[list[int]], step_s: float, chunk_ms: float) -> list[int]:
    """The ``[left, right]`` context whose chunk (right + 1 encoder steps) is closest to ``chunk_ms``."""
    return min(contexts, key=lambda ctx: abs((ctx[1] + 1) * step_s * 1000 - chunk_ms))


def _cfg_get(model: Any, *keys: str) -> Any:
    """``model.cfg[k1][k2]...`` or None (NeMo configs are OmegaConf DictConfigs)."""
    node: Any = getattr(model, "cfg", None)
    for key in keys:
        if node is None:
            return None
        try:
            node = node.get(key) if hasattr(node, "get") else getattr(node, key, None)
        except Exception:  # a missing key in a struct-mode DictConfig
            return None
    return node
