"""The NeMo STT backend: registration, config, clear errors, the decode paths against a fake ``nemo``
package (control flow only: NeMo cannot be installed here), and a GPU test with a real model.

The GPU test runs only where ``nemo`` imports, CUDA is available and ``SMARTPBX_NEMO_MODEL`` names a
local ``.nemo`` file (e.g. a FastConformer/Parakeet English model copied next to the tests); it
transcribes espeak-ng English and checks the word error rate.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import math
import os
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ai_serve.eval.speech import ESPEAK, SAMPLE_RATE, silence, synth, word_errors
from ai_serve.stt import available_backends, create_backend
from ai_serve.stt.backends import SttCapabilities
from ai_serve.stt.nemo_backend import NEUTRAL_CONFIDENCE, NemoBackend

from .speech import figure

NEMO_MODEL_ENV = "SMARTPBX_NEMO_MODEL"
HAVE_NEMO = importlib.util.find_spec("nemo") is not None
INSTALL_HINT = r'pip install "nemo_toolkit\[asr\]"'


@pytest.fixture
def nemo_file(tmp_path: Path) -> Path:
    """A file with the right name; its content is never read unless NeMo is installed (fake or real)."""
    path = tmp_path / "stt_en_fastconformer.nemo"
    path.write_bytes(b"not a real model")
    return path


# ------------------------------------------------------------------------------ registration, config


def test_nemo_backend_is_registered_without_importing_nemo() -> None:
    assert "nemo" in available_backends()
    assert "faster-whisper" in available_backends()
    if not HAVE_NEMO:
        assert "nemo" not in sys.modules


def test_stt_options_choose_the_backend(nemo_file: Path) -> None:
    from ai_serve.deployments.stt import SttOptions

    default = SttOptions()
    assert (default.backend, default.model_path, default.device, default.compute_type) == (
        "faster-whisper",
        None,
        "cpu",
        "int8",
    )
    assert (default.audio_context, default.context_margin_s, default.beam_size) == ("fitted", 3.0, 1)
    nemo = SttOptions(backend="nemo", model_path=str(nemo_file), device="cuda", nemo_streaming=True)
    assert (nemo.backend, nemo.nemo_language, nemo.nemo_chunk_ms, nemo.nemo_batch_size) == (
        "nemo",
        "en",
        None,
        1,
    )
    assert (
        SttOptions.model_validate({"audio_context": "full", "context_margin_s": 1.5}).context_margin_s == 1.5
    )
    with pytest.raises(ValidationError, match="needs model_path"):
        SttOptions(backend="nemo")
    with pytest.raises(ValidationError):
        SttOptions.model_validate({"backend": "wav2vec"})
    with pytest.raises(ValidationError):
        SttOptions(backend="nemo", model_path=str(nemo_file), nemo_chunk_ms=0)


def test_creating_it_without_nemo_names_the_install(nemo_file: Path) -> None:
    if HAVE_NEMO:
        pytest.skip("nemo is installed here")
    with pytest.raises(ImportError, match=INSTALL_HINT):
        create_backend("nemo", model_path=str(nemo_file), device="cpu")


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    from ai_serve.deployments.stt import SttOptions

    missing = tmp_path / "models" / "absent.nemo"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        create_backend("nemo", model_path=str(missing))
    # the deployment's path goes through the same checks
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        SttOptions(backend="nemo", model_path=str(missing)).build_backend()
    with pytest.raises(ValueError, match="needs model_path"):
        NemoBackend(None)
    folder = tmp_path / "extracted"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"must be a \.nemo file"):
        NemoBackend(folder)
    with pytest.raises(ValueError, match="batch_size"):
        NemoBackend(missing, batch_size=0)


# --------------------------------------------------------------------------------- a fake NeMo


@dataclass
class FakeHypothesis:
    text: str
    score: float | None = None
    y_sequence: list[int] = field(default_factory=list)
    timestamp: dict[str, Any] = field(default_factory=dict)
    word_confidence: list[float] | None = None


class FakeEncoder:
    subsampling_factor = 8

    def __init__(self, style: str) -> None:
        self.att_context_style = style
        self.att_context_size = [70, 13]
        self.att_context_size_all = [[70, 13], [70, 6], [70, 1], [70, 0]]
        self.streaming_cfg = types.SimpleNamespace(drop_extra_pre_encoded=2)
        self.setup_calls = 0

    def set_default_att_context_size(self, att_context_size: list[int]) -> None:
        self.att_context_size = att_context_size

    def setup_streaming_params(self) -> None:
        self.setup_calls += 1

    def get_initial_cache_state(self, batch_size: int = 1) -> tuple[str, str, str]:
        assert batch_size == 1
        return ("channel", "time", "len")


class FakeModel:
    def __init__(self, style: str = "chunked_limited", sample_rate: int = 16000) -> None:
        self.cfg = {"sample_rate": sample_rate, "preprocessor": {"window_stride": 0.01, "normalize": "NA"}}
        self.encoder = FakeEncoder(style)
        self.device: Any = None
        self.evaluated = False
        self.result: Any = [FakeHypothesis("hello world", score=-2.0, y_sequence=[5, 6, 7, 8])]
        self.transcribe_calls: list[dict[str, Any]] = []
        self.step_calls: list[dict[str, Any]] = []

    def to(self, device: Any) -> FakeModel:
        self.device = device
        return self

    def eval(self) -> FakeModel:
        self.evaluated = True
        return self

    def transcribe(self, audio: list[Any], **kwargs: Any) -> Any:
        self.transcribe_calls.append({"audio": audio, **kwargs})
        return self.result

    def conformer_stream_step(self, **kwargs: Any) -> tuple[Any, ...]:
        self.step_calls.append(kwargs)
        words = ["good", "morning", "clinic"][: len(self.step_calls)]
        hyps = [FakeHypothesis(" ".join(words), score=-0.3, y_sequence=[1] * len(words))]
        return ("pred", hyps, "channel'", "time'", "len'", hyps)


class FakeStreamingBuffer:
    """NeMo's CacheAwareStreamingAudioBuffer: feature chunks of one appended stream (3 here)."""

    def __init__(self, model: Any, online_normalization: bool = False) -> None:
        self.online_normalization = online_normalization
        self.chunks: list[Any] = []
        self.served = 0

    def append_audio(self, audio: Any, stream_id: int = -1) -> None:
        assert stream_id == -1 and audio.dtype == np.float32
        self.chunks = list(np.array_split(audio, 3))

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for chunk in self.chunks:
            self.served += 1
            yield chunk, len(chunk)

    def is_buffer_empty(self) -> bool:
        return self.served >= len(self.chunks)


class FakeTorch(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = types.SimpleNamespace(is_available=lambda: False, empty_cache=lambda: None)

    @staticmethod
    def device(name: str) -> str:
        return f"device({name})"

    @staticmethod
    def inference_mode() -> Any:
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture
def fake_nemo(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Install a fake ``nemo.collections.asr`` (and torch) in ``sys.modules``; yields the restore log."""
    state: dict[str, Any] = {"restored": [], "model": FakeModel()}

    class FakeASRModel:
        @staticmethod
        def restore_from(restore_path: str, map_location: Any = None) -> FakeModel:
            state["restored"].append((restore_path, map_location))
            model: FakeModel = state["model"]
            return model

        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("from_pretrained must never be called (no hub)")

    names = [
        "nemo",
        "nemo.collections",
        "nemo.collections.asr",
        "nemo.collections.asr.parts",
        "nemo.collections.asr.parts.utils",
        "nemo.collections.asr.parts.utils.streaming_utils",
    ]
    modules = {}
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        modules[name] = module
        monkeypatch.setitem(sys.modules, name, module)
    for parent, child in itertools.pairwise(names):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    modules["nemo.collections.asr"].models = types.SimpleNamespace(ASRModel=FakeASRModel)  # type: ignore[attr-defined]
    modules[names[-1]].CacheAwareStreamingAudioBuffer = FakeStreamingBuffer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", FakeTorch())
    yield state


def test_offline_decode_maps_the_hypothesis(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    backend = create_backend("nemo", model_path=str(nemo_file), device="cuda", language="en", batch_size=2)
    model: FakeModel = fake_nemo["model"]
    assert fake_nemo["restored"] == [(str(nemo_file), "device(cuda)")]
    assert model.device == "device(cuda)" and model.evaluated
    assert backend.capabilities == SttCapabilities("nemo", "cuda", frozenset({"en"}), timestamps=False)
    audio = np.full(SAMPLE_RATE * 2, 0.1, dtype=np.float32)
    [segment] = backend.transcribe((audio * 32767).astype(np.int16))
    assert (segment.text, segment.start, segment.end, segment.language) == ("hello world", 0.0, 2.0, "en")
    assert segment.avg_logprob == pytest.approx(-0.5)
    assert segment.confidence == pytest.approx(math.exp(-0.5))
    [call] = model.transcribe_calls
    assert call["batch_size"] == 2 and call["return_hypotheses"] is True and call["verbose"] is False
    assert isinstance(call["audio"], list) and call["audio"][0].dtype == np.float32
    assert backend.transcribe(np.zeros(0, dtype=np.int16)) == []
    assert backend.stats.calls == 1


def test_offline_results_of_every_shape(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    model: FakeModel = fake_nemo["model"]
    backend = NemoBackend(nemo_file, device="cpu", language="de", timestamps=True)
    audio = np.full(SAMPLE_RATE, 0.1, dtype=np.float32)
    # NeMo < 2.0 RNN-T: (best, all) tuple of lists; a plain string; NeMo's own word confidence
    model.result = ([FakeHypothesis("hallo welt")], [[FakeHypothesis("hallo welt")]])
    [seg] = backend.transcribe(audio, "de")
    assert (seg.text, seg.language, seg.confidence) == ("hallo welt", "de", NEUTRAL_CONFIDENCE)
    model.result = ["guten tag"]
    assert backend.transcribe(audio)[0].text == "guten tag"
    model.result = [FakeHypothesis("ja", score=-1.0, y_sequence=[3], word_confidence=[0.9, 0.7])]
    assert backend.transcribe(audio)[0].confidence == pytest.approx(0.8)
    model.result = [FakeHypothesis("   ")]
    assert backend.transcribe(audio) == []
    stamps = {"segment": [{"segment": "guten tag", "start": 0.1, "end": 0.5}, {"segment": "x", "start": 0.6}]}
    model.result = [FakeHypothesis("guten tag", timestamp=stamps)]
    [seg] = backend.transcribe(audio)
    assert (seg.text, seg.start, seg.end) == ("guten tag", 0.1, 0.5)
    assert model.transcribe_calls[-1]["timestamps"] is True
    assert backend.capabilities.timestamps


def test_streaming_decode_runs_nemos_cache_aware_loop(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    model: FakeModel = fake_nemo["model"]
    backend = NemoBackend(nemo_file, device="cuda", streaming=True, chunk_ms=560)
    assert backend.streaming and model.encoder.att_context_size == [70, 6]  # (6 + 1) x 80 ms
    assert backend.chunk_seconds == pytest.approx(0.56) and model.encoder.setup_calls == 1
    [segment] = backend.transcribe(np.full(SAMPLE_RATE * 3, 0.1, dtype=np.float32), "en")
    assert segment.text == "good morning clinic" and segment.end == 3.0
    assert segment.confidence == pytest.approx(math.exp(-0.1))
    steps = model.step_calls
    assert [s["drop_extra_pre_encoded"] for s in steps] == [0, 2, 2]
    assert [s["keep_all_outputs"] for s in steps] == [False, False, True]
    assert steps[0]["cache_last_channel"] == "channel" and steps[1]["cache_last_channel"] == "channel'"
    assert steps[0]["previous_hypotheses"] is None and steps[1]["previous_hypotheses"] is not None
    assert all(s["return_transcription"] for s in steps) and not model.transcribe_calls
    # each utterance starts from fresh caches
    backend.transcribe(np.full(SAMPLE_RATE, 0.1, dtype=np.float32))
    assert model.step_calls[3]["cache_last_channel"] == "channel"


def test_streaming_falls_back_offline_for_other_models(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    fake_nemo["model"] = FakeModel(style="regular")
    backend = NemoBackend(nemo_file, streaming=True)
    assert not backend.streaming and backend.chunk_seconds is None
    assert backend.transcribe(np.full(SAMPLE_RATE, 0.1, dtype=np.float32))[0].text == "hello world"


def test_a_model_for_another_rate_is_refused(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    fake_nemo["model"] = FakeModel(sample_rate=8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        NemoBackend(nemo_file)


def test_the_deployment_options_reach_the_backend(fake_nemo: dict[str, Any], nemo_file: Path) -> None:
    from ai_serve.deployments.stt import SttOptions

    opts = SttOptions(
        backend="nemo",
        model_path=str(nemo_file),
        device="cuda",
        nemo_language="es",
        nemo_streaming=True,
        nemo_chunk_ms=160,
        nemo_batch_size=4,
    )
    backend = opts.build_backend()
    assert isinstance(backend, NemoBackend)
    assert (backend.device, backend.language, backend.batch_size) == ("cuda", "es", 4)
    assert backend.streaming and fake_nemo["model"].encoder.att_context_size == [70, 1]
    assert backend.capabilities.languages == frozenset({"es"})


# ---------------------------------------------------------------------------------------- GPU


def _nemo_on_gpu_or_skip() -> str:
    pytest.importorskip("nemo.collections.asr", reason="nemo_toolkit[asr] not installed (GPU machines only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = os.environ.get(NEMO_MODEL_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"set {NEMO_MODEL_ENV} to a local English .nemo model (no hub here)")
    if ESPEAK is None:
        pytest.skip("espeak-ng missing (apt-get install espeak-ng)")
    return path


GPU_SENTENCES = [
    "Good morning, thank you for calling the clinic.",
    "I would like to book an appointment for next Monday.",
    "Please call me back at your earliest convenience.",
]


@pytest.mark.gpu
@pytest.mark.parametrize("streaming", [False, True], ids=["offline", "streaming"])
def test_nemo_transcribes_english_on_gpu(streaming: bool) -> None:
    path = _nemo_on_gpu_or_skip()
    backend = create_backend("nemo", model_path=path, device="cuda", language="en", streaming=streaming)
    assert isinstance(backend, NemoBackend)
    if streaming and not backend.streaming:
        pytest.skip(f"{Path(path).name} is not a cache-aware streaming model")
    errors = words = 0
    try:
        for sentence in GPU_SENTENCES:
            audio = np.concatenate([silence(0.3), synth(sentence), silence(0.3)])
            segments = backend.transcribe(audio, "en")
            text = " ".join(s.text for s in segments)
            assert all(
                s.language == "en" and 0.0 <= s.start <= s.end <= audio.size / SAMPLE_RATE for s in segments
            )
            e, n = word_errors(sentence, text)
            errors, words = errors + e, words + n
    finally:
        backend.close()
    wer = errors / words
    mode = "streaming" if streaming else "offline"
    figure(f"NeMo {Path(path).name} {mode} on espeak English: WER {wer:.2%}, RTF {backend.stats.rtf:.3f}")
    assert wer <= 0.25, f"WER {wer:.2%}"
