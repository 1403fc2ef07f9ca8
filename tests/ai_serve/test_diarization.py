"""Speaker diarization: the numpy port of resemblyzer, the checkpoint loader, clustering, online labels,
whole-recording diarization of espeak-ng dialogs, the Serve deployment's methods (without a cluster),
and the pyannote backends (GPU only; skipped without CUDA, pyannote.audio and local weights).

Voices: espeak-ng's ``en-us`` and ``en-us+f3`` are told apart clearly by resemblyzer (cosine 0.54-0.68
between them, 0.74-0.93 within one voice across sentences); ``en-us`` vs ``en-us+m7`` scores 0.75-0.82,
as much as one voice across sentences, and ``en-gb`` is the same speaker as ``en-us`` (0.91): those
pairs are not used to assert separation.

Numeric check of the port: :data:`REFERENCE` is resemblyzer 0.1.4's ``embed_utterance`` (torch 2.13.0
CPU, librosa 0.11.0) of :func:`reference_signal` after its ``normalize_volume(-30, increase_only)``;
the port matches within 2.6e-7 (max abs difference; 5e-7 on espeak speech, mel spectrogram relative
difference 1.2e-7, mel filterbank 1e-9).
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import io
import pickle
import struct
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ai_serve.diarization.clustering import cluster_embeddings, speaker_labels
from ai_serve.diarization.embedders import (
    EmbeddingError,
    ResemblyzerEmbedder,
    available_embedders,
    create_embedder,
    speech_seconds,
)
from ai_serve.diarization.online import OnlineSpeakers
from ai_serve.diarization.recording import DiarizationParams, SpeakerTurn, diarize_audio, speaker_at
from ai_serve.diarization.resemblyzer_np import (
    CheckpointError,
    VoiceEncoderNp,
    load_torch_checkpoint,
    normalize_volume,
    partial_slices,
    save_weights_npz,
)

from .speech import ESPEAK, SAMPLE_RATE, figure, silence, speech_extent, synth, with_noise

HAVE_RESEMBLYZER_WEIGHTS = importlib.util.find_spec("resemblyzer") is not None
NO_WEIGHTS = "resemblyzer weights missing: pip install --no-deps resemblyzer==0.1.4"
needs_weights = pytest.mark.skipif(not HAVE_RESEMBLYZER_WEIGHTS, reason=NO_WEIGHTS)
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng missing (apt-get install espeak-ng)")

A, B = "en-us", "en-us+f3"  # two voices resemblyzer separates (see the module docstring)

REFERENCE = base64.b64decode(
    "AAAAANQStz0AAAAAAAAAAAAAAAAU8Xk8AAAAAAAAAAAAAAAAAAAAADwhiT2iyqw9AAAAAAAAAAD/IMc9NmymPNmKZD2ZsmU9"
    "hfVZPQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAANKoxz30BQU8AAAAAAAAAAAAAAAAAAAAAK9gbT3fNV89AAAAAAAAAAAnt/o8"
    "2r71PUA1ZjwAAAAAcrGAOwAAAAAAAAAASxgWPpMpwj0AAAAAAAAAAAAAAAB2SwQ988EJPYimnTwAAAAARkYVPgAAAAAAAAAA"
    "AAAAABAJWjsAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAD/DYI8n1p+PU6HmjxEIP08AAAAAAAAAAAfzv08AAAAAAAAAACO7CQ+"
    "AAAAAEsAQjwAAAAAAAAAAAAAAAAAigM9tz7pPbtZfz0AAAAAAAAAAKW2lz0AAAAANffxOTZ6XjwAAAAAbEIOPY3wsDsAAAAA"
    "AAAAAEchMT5WRMY6AAAAAAAAAAAAAAAAAtdyPAAAAAAAAAAAAAAAAHYToT4AAAAAAAAAAAAAAAAmeGs86ZmWPSBZ0jqlhM48"
    "AAAAAP0F/zyQ9iA9kxwKPgAAAAAirQI+dlJ9PQAAAAAAAAAAdpmOPAAAAAC+/Kw7SnxWPuoxBj1YWMc9PNEBPrpvEj3Okk09"
    "WPM9PSrtPT2UypI9AAAAAAAAAABZ0188bawdPVOyED0AAAAAAAAAALZJqT0AAAAAAAAAAAAAAAAAAAAARSb+PBafHj4AAAAA"
    "XIwGPQAAAABZgQY+AAAAAAAAAAD7aK09AEmgPXhdBj4AAAAAAAAAAAfuFj0AAAAAAAAAAAAAAAAqsj8+p2+wPQAAAAAAAAAA"
    "4YUzPe909D0uR8w9ZdxmPVOkijySfT88eConPgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAC+OxY8K5JdPecx1D0AAAAA"
    "X1MRPipFNz2MqTQ+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAUiNBPgAAAAAAAAAArwxJOlbuEz4AAAAA6LnePSFNoD0AAAAA"
    "3gfgPajaJD0AAAAAjKpwPfi1hD0AAAAAAAAAAAAAAAAAAAAA0DjUPAAAAABdAxA9AAAAAAAAAACN2Kc92zYaPgAAAAAAAAAA"
    "AAAAANBC7zyqmzw+AAAAAFAkZj3+3Jk7ecRLPAAAAACqEJU9AAAAAAAAAAC1ujU9AAAAAAAAAAAAAAAA64BIPQAAAAAAAAAA"
    "AAAAAB09RT6AYss5ze1MPTippz0NYoA9M96BPW04Tjvdick7JdFYPQAAAAAAAAAAcd9cPgAAAACV8CQ+AAAAANVfOzxUTz08"
    "VsxTPQAAAAAAAAAAswsoOw=="
)


def reference_signal() -> npt.NDArray[np.float32]:
    """2.5 s of a gliding 15-harmonic tone with tremolo and a little noise: deterministic, no espeak."""
    rng = np.random.default_rng(1234)
    t = np.arange(40000) / 16000.0
    phase = 2 * np.pi * np.cumsum(120.0 + 25.0 * np.sin(2 * np.pi * 0.8 * t)) / 16000.0
    wav = sum(np.sin(k * phase) / k for k in range(1, 16)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))
    return np.asarray(0.05 * wav + 0.002 * rng.standard_normal(t.size), dtype=np.float32)


def trimmed(text: str, voice: str, speed: int = 150) -> npt.NDArray[np.float32]:
    audio = synth(text, voice, speed)
    start, end = speech_extent(audio)
    return audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def embedder() -> ResemblyzerEmbedder:
    if not HAVE_RESEMBLYZER_WEIGHTS:
        pytest.skip(NO_WEIGHTS)
    return ResemblyzerEmbedder()


# ------------------------------------------------------------------------------ port and checkpoint


@needs_weights
def test_numpy_port_matches_resemblyzer_with_torch() -> None:
    ref = np.frombuffer(REFERENCE, dtype="<f4")
    got = VoiceEncoderNp().embed_utterance(normalize_volume(reference_signal()))
    assert got.shape == (256,)
    assert float(np.abs(got - ref).max()) < 1e-5
    # and it is not a constant: another signal gives another embedding
    other = VoiceEncoderNp().embed_utterance(normalize_volume(reference_signal()[::-1].copy()))
    assert float(np.abs(other - ref).max()) > 1e-2


@needs_weights
def test_weights_exported_to_npz_give_the_same_embeddings(tmp_path: Path) -> None:
    npz = save_weights_npz(tmp_path / "voice_encoder.npz")
    assert npz.stat().st_size < 6_000_000
    wav = normalize_volume(reference_signal())
    got = VoiceEncoderNp(npz).embed_utterance(wav)
    np.testing.assert_array_equal(got, VoiceEncoderNp().embed_utterance(wav))
    np.savez(tmp_path / "partial.npz", **{"linear.bias": np.zeros(256, np.float32)})
    with pytest.raises(CheckpointError, match="missing weight"):
        VoiceEncoderNp(tmp_path / "partial.npz")


def test_partial_slices_follow_resemblyzer() -> None:
    # 1.3 partials per second: 77-frame step; a partial is kept when >= 75 % covered
    assert partial_slices(16000) == [(0, 160)]
    assert partial_slices(40000) == [(0, 160), (77, 237)]
    assert partial_slices(48000)[-1] == (154, 314)
    with pytest.raises(ValueError):
        partial_slices(16000, rate=0.1)


def _state_pickle(tensors: dict[str, npt.NDArray[np.float32]], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The object pickle of a ``torch.save`` of ``{"model_state": tensors, "step": 7}``, without torch.

    Pickle writes a class by module and name after checking it can import it back, so stand-ins for
    ``torch.FloatStorage`` and ``torch._utils._rebuild_tensor_v2`` are put in ``sys.modules`` meanwhile.
    """
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args: Any) -> None:
        return None

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_torch.FloatStorage = FloatStorage  # type: ignore[attr-defined]
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    class Tensor:
        def __init__(self, key: str, arr: npt.NDArray[np.float32]) -> None:
            self.key, self.arr = key, arr

        def __reduce__(self) -> Any:
            stride = tuple(st // 4 for st in self.arr.strides)
            storage = ("__storage__", self.key, self.arr.size)
            return (
                _rebuild_tensor_v2,
                (storage, 0, self.arr.shape, stride, False, collections.OrderedDict()),
            )

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, tuple) and obj and obj[0] == "__storage__":
                return ("storage", FloatStorage, obj[1], "cpu", obj[2])
            return None

    buf = io.BytesIO()
    state = collections.OrderedDict((k, Tensor(str(i), v)) for i, (k, v) in enumerate(tensors.items()))
    _Pickler(buf, protocol=2).dump({"model_state": state, "step": 7})
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    return buf.getvalue()


def test_checkpoint_loader_reads_legacy_and_zip_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not contiguous: strides must be honoured
    b = np.array([0.5, -1.5], dtype=np.float32)
    body = _state_pickle({"linear.weight": w, "linear.bias": b}, monkeypatch)

    # legacy (torch < 1.6, resemblyzer's pretrained.pt): headers, the pickle, keys, raw storages
    legacy = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, legacy, protocol=2)
    legacy.write(body)
    pickle.dump(["0", "1"], legacy, protocol=2)
    for v in (w, b):
        base = v.T if v.ndim == 2 else v  # the storage holds the original row-major buffer
        legacy.write(struct.pack("<q", v.size) + np.ascontiguousarray(base, dtype="<f4").tobytes())
    path = tmp_path / "legacy.pt"
    path.write_bytes(legacy.getvalue())
    ckpt = load_torch_checkpoint(path)
    assert ckpt["step"] == 7
    np.testing.assert_array_equal(ckpt["model_state"]["linear.weight"], w)
    np.testing.assert_array_equal(ckpt["model_state"]["linear.bias"], b)

    # zip (torch >= 1.6): the same pickle as archive/data.pkl, each storage in archive/data/<key>
    zpath = tmp_path / "new.pt"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/data/0", np.ascontiguousarray(w.T, dtype="<f4").tobytes())
        zf.writestr("archive/data/1", b.astype("<f4").tobytes())
    np.testing.assert_array_equal(load_torch_checkpoint(zpath)["model_state"]["linear.weight"], w)

    # a truncated legacy file is an error, not short weights
    path.write_bytes(legacy.getvalue()[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        load_torch_checkpoint(path)


def test_checkpoint_loader_refuses_code_and_garbage(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    buf.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # os.system('echo pwned')
    evil.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=r"os\.system"):
        load_torch_checkpoint(evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps(42) + b"rest")
    with pytest.raises(CheckpointError):
        load_torch_checkpoint(junk)
    with pytest.raises(CheckpointError):
        VoiceEncoderNp(tmp_path / "junk.pt")


# --------------------------------------------------------------------------------------- clustering


def _unit(v: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _voices(n: int, dim: int = 16, seed: int = 0) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return np.stack([_unit(rng.normal(size=dim)) for _ in range(n)])


def _noisy(
    center: npt.NDArray[np.float64], noise: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    return _unit(center + rng.normal(0, noise, center.size))


def test_clustering_finds_speakers_and_numbers_them_by_appearance() -> None:
    rng = np.random.default_rng(1)
    v = _voices(3)
    order = [1, 1, 0, 2, 0, 1, 2, 0]
    emb = np.stack([_noisy(v[k], 0.08, rng) for k in order])
    labels = cluster_embeddings(emb, threshold=0.7)
    assert labels.tolist() == [0, 0, 1, 2, 1, 0, 2, 1]
    assert speaker_labels(labels)[:4] == ["S1", "S1", "S2", "S3"]
    assert cluster_embeddings(emb, num_speakers=2).max() == 1
    assert cluster_embeddings(emb, threshold=-1.0).tolist() == [0] * len(order)
    assert cluster_embeddings(emb, threshold=1.01).tolist() == list(range(len(order)))
    assert cluster_embeddings(emb[:2], num_speakers=5).tolist() == [0, 1]
    assert cluster_embeddings(np.zeros((0, 16))).size == 0


def test_clustering_average_linkage_does_not_chain() -> None:
    # a chain of points each 0.8 from the next, but the ends far apart: single linkage would merge all
    angles = np.radians([0, 37, 74, 111, 148])
    emb = np.stack([[np.cos(a), np.sin(a)] for a in angles])
    assert cluster_embeddings(emb, threshold=0.75).max() >= 1


def test_clustering_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        cluster_embeddings(np.ones(4))
    with pytest.raises(ValueError):
        cluster_embeddings(np.ones((3, 4)), num_speakers=0)
    with pytest.raises(ValueError):
        cluster_embeddings(np.ones((3, 4)), weights=[1, 0, 1])


# ------------------------------------------------------------------------------------------- online


def test_online_speakers_open_match_cap_and_keep_last_label() -> None:
    rng = np.random.default_rng(2)
    v = _voices(4)
    spk = OnlineSpeakers(threshold=0.7, max_speakers=3)
    assert spk.assign(None) is None
    labels = [spk.assign(_noisy(v[k], 0.08, rng)) for k in (0, 0, 1, 0, 2, 1)]
    assert labels == ["S1", "S1", "S2", "S1", "S3", "S2"]
    assert spk.assign(None) == "S2"
    assert spk.last_similarity is not None and spk.last_similarity > 0.7
    # a fourth voice over the cap goes to the nearest known speaker instead of S4
    assert spk.assign(v[3]) in {"S1", "S2", "S3"}
    assert spk.speakers == ["S1", "S2", "S3"]
    assert sum(spk.counts().values()) == 7
    with pytest.raises(ValueError):
        spk.assign(np.zeros(16))
    with pytest.raises(ValueError):
        spk.assign(np.ones(8))
    spk.reset()
    assert spk.assign(v[2]) == "S1"
    with pytest.raises(ValueError):
        OnlineSpeakers(max_speakers=0)


# -------------------------------------------------------------------------------------- embeddings


def test_registry_knows_both_backends() -> None:
    assert {"pyannote", "resemblyzer"} <= set(available_embedders())
    with pytest.raises(ValueError, match="unknown speaker embedder"):
        create_embedder("nope")
    with pytest.raises(ValueError):
        create_embedder("pyannote")  # needs a local model_path before anything else


@needs_weights
def test_short_or_silent_utterances_give_none(embedder: ResemblyzerEmbedder) -> None:
    assert embedder.embed(silence(2.0)) is None
    assert embedder.embed(with_noise(silence(2.0))) is None
    tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(4800) / SAMPLE_RATE)).astype(np.float32)  # 0.3 s
    assert speech_seconds(tone) == pytest.approx(0.3, abs=0.04)
    assert embedder.embed(tone) is None
    vec = embedder.embed(tone, min_speech_s=0.2)
    assert vec is not None and vec.shape == (256,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert embedder.embed(b"") is None
    with pytest.raises(ValueError):
        embedder.embed(b"\x00")
    assert embedder.stats.too_short >= 4


@needs_weights
@needs_espeak
def test_same_voice_is_closer_than_another_voice(embedder: ResemblyzerEmbedder) -> None:
    s1, s2 = "Good morning, thank you for calling the clinic.", "Sure, we have an opening on Monday morning."
    t0 = time.perf_counter()
    a1 = embedder.embed(synth(s1, A, 150))
    per_utterance = time.perf_counter() - t0
    a2, b1, b2 = (
        embedder.embed(synth(s2, A, 150)),
        embedder.embed(synth(s1, B, 150)),
        embedder.embed(synth(s2, B)),
    )
    assert a1 is not None and a2 is not None and b1 is not None and b2 is not None
    same = [float(a1 @ a2), float(b1 @ b2)]
    different = [float(a1 @ b1), float(a1 @ b2), float(a2 @ b1), float(a2 @ b2)]
    seconds = synth(s1, A, 150).size / SAMPLE_RATE
    figure(
        f"resemblyzer-np: same voice cos {min(same):.3f}-{max(same):.3f}, different "
        f"{min(different):.3f}-{max(different):.3f}, "
        f"{per_utterance * 1000:.0f} ms for a {seconds:.1f} s utterance"
    )
    assert min(same) > max(different) + 0.05
    assert min(same) > 0.7 > max(different)


@needs_weights
@needs_espeak
def test_online_labels_over_a_dialog(embedder: ResemblyzerEmbedder) -> None:
    turns = [
        (A, "Good morning, thank you for calling the clinic."),
        (B, "Hello, I need to change my appointment please."),
        (A, "Sure, we have an opening on Monday morning."),
        (B, "Yes."),
        (B, "That is perfect, thank you very much."),
    ]
    spk = OnlineSpeakers()
    labels = [spk.assign(embedder.embed(synth(text, voice, 150))) for voice, text in turns]
    # "Yes." (B) is too short to embed: it keeps the previous label, A's; the next B turn is S2 again
    assert labels == ["S1", "S2", "S1", "S1", "S2"]


# ------------------------------------------------------------------------------ whole recordings


def dialog(
    turns: list[tuple[str, str]], gap: float = 0.6, speed: int = 150
) -> tuple[npt.NDArray[np.float32], list[float]]:
    """Turns separated by ``gap`` s of silence over a faint noise floor, and each turn's mid time."""
    parts, mids, t = [silence(0.3)], [], 0.3
    for voice, text in turns:
        audio = trimmed(text, voice, speed)
        mids.append(t + audio.size / SAMPLE_RATE / 2)
        parts += [audio, silence(gap)]
        t += audio.size / SAMPLE_RATE + gap
    return with_noise(np.concatenate(parts)), mids


@needs_weights
@needs_espeak
@pytest.mark.parametrize("num_speakers", [None, 2])
def test_diarize_dialog_turn_order(embedder: ResemblyzerEmbedder, num_speakers: int | None) -> None:
    turns = [
        (A, "Good morning, thank you for calling the clinic."),
        (B, "Hello, I need to change my appointment please."),
        (A, "Sure, we have an opening on Monday morning."),
        (B, "Yes."),
        (B, "That is perfect, thank you very much."),
        (A, "You are welcome, see you on Monday."),
    ]
    audio, mids = dialog(turns)
    t0 = time.perf_counter()
    result = diarize_audio(audio, embedder, num_speakers=num_speakers)
    elapsed = time.perf_counter() - t0
    if num_speakers is None:
        figure(f"diarize_audio: {audio.size / SAMPLE_RATE:.1f} s dialog in {elapsed:.2f} s")
    got = [speaker_at(result, m - 0.05, m + 0.05) for m in mids]
    assert got == ["S1", "S2", "S1", "S2", "S2", "S1"]
    assert {t.speaker for t in result} == {"S1", "S2"}
    assert all(t.end > t.start for t in result)


@needs_weights
@needs_espeak
def test_diarize_two_voices_without_a_pause(embedder: ResemblyzerEmbedder) -> None:
    """A conference-style change of speaker inside one VAD region: the sliding windows find it."""
    a = trimmed("Good morning, thank you for calling the clinic, how can I help you today", A)
    b = trimmed("Hello, I need to change my appointment for next Tuesday please", B)
    audio = with_noise(np.concatenate([silence(0.5), a, silence(0.1), b, silence(0.5)]))
    switch = 0.5 + a.size / SAMPLE_RATE + 0.05
    result = diarize_audio(audio, embedder)
    assert [t.speaker for t in result] == ["S1", "S2"]
    assert abs(result[0].end - switch) < 1.0
    # the same voice throughout stays one speaker
    a2 = trimmed("Sure, we have an opening on Monday morning, would that work for you", A)
    same = with_noise(np.concatenate([silence(0.5), a, silence(0.1), a2, silence(0.5)]))
    assert {t.speaker for t in diarize_audio(same, embedder)} == {"S1"}


def test_speaker_at_and_params() -> None:
    turns = [SpeakerTurn(0.0, 2.0, "S1"), SpeakerTurn(2.0, 3.0, "S2"), SpeakerTurn(5.0, 6.0, "S1")]
    assert speaker_at(turns, 1.5, 2.4) == "S1"
    assert speaker_at(turns, 1.9, 3.0) == "S2"
    assert speaker_at(turns, 3.5, 3.6) == "S2"  # no overlap: nearest turn
    assert speaker_at([], 0, 1) is None
    assert turns[0].as_dict() == {"start": 0.0, "end": 2.0, "speaker": "S1"}
    with pytest.raises(ValueError):
        DiarizationParams(window_s=5.0, max_chunk_s=4.0)


# ------------------------------------------------------------------------------------- deployment


@needs_weights
@needs_espeak
async def test_deployment_methods_without_a_cluster() -> None:
    pytest.importorskip("ray.serve")
    from pydantic import ValidationError

    from ai_serve.deployments.diarization import DiarizationDeployment, DiarizationOptions

    with pytest.raises(ValidationError):
        DiarizationOptions.model_validate({"backend": "resemblyzer", "bogus": 1})
    with pytest.raises(ValidationError):
        DiarizationOptions.model_validate({"backend": "speechbrain"})
    cls: Any = DiarizationDeployment.func_or_class  # type: ignore[attr-defined]
    replica = cls({"backend": "resemblyzer"})
    replica.check_health()
    audio, mids = dialog([(A, "Good morning, thank you for calling the clinic."),
                          (B, "Hello, I need to change my appointment please.")])  # fmt: skip
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    turns = await replica.diarize(pcm)
    assert [speaker_at([SpeakerTurn(**t) for t in turns], m, m) for m in mids] == ["S1", "S2"]
    cut = pcm[: 2 * round(mids[0] * 2 * SAMPLE_RATE)]
    vec = await replica.embed(cut)
    assert isinstance(vec, list) and len(vec) == 256 and abs(sum(x * x for x in vec) - 1) < 1e-4
    assert await replica.embed(pcm[: 2 * 4000]) is None  # 0.25 s
    with pytest.raises(ValueError):
        await replica.diarize(pcm, num_speakers=0)
    replica.embedder.close()
    with pytest.raises(RuntimeError):
        replica.check_health()
    with pytest.raises(EmbeddingError):
        replica.embedder.embed(audio)


# ------------------------------------------------------------------------------------ pyannote, GPU

PYANNOTE_EMBEDDING_ENV = "SMARTPBX_PYANNOTE_EMBEDDING"  # local checkpoint, e.g. wespeaker resnet34
PYANNOTE_PIPELINE_ENV = "SMARTPBX_PYANNOTE_PIPELINE"  # local config.yaml of a diarization pipeline


def _gpu_or_skip(env: str) -> str:
    import os

    pytest.importorskip("pyannote.audio", reason="pyannote.audio not installed (GPU machines only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = os.environ.get(env)
    if not path or not Path(path).exists():
        pytest.skip(f"set {env} to local pyannote weights (no hub here)")
    return path


@pytest.mark.gpu
@needs_espeak
def test_pyannote_embedder_separates_voices_on_gpu() -> None:
    path = _gpu_or_skip(PYANNOTE_EMBEDDING_ENV)
    emb = create_embedder("pyannote", model_path=path, device="cuda")
    a1 = emb.embed(synth("Good morning, thank you for calling the clinic.", A))
    a2 = emb.embed(synth("Sure, we have an opening on Monday morning.", A))
    b1 = emb.embed(synth("Hello, I need to change my appointment please.", B))
    assert a1 is not None and a2 is not None and b1 is not None
    assert float(a1 @ a2) > float(a1 @ b1)


@pytest.mark.gpu
@needs_espeak
def test_pyannote_pipeline_diarizes_on_gpu() -> None:
    from ai_serve.diarization.recording import PyannotePipelineDiarizer

    path = _gpu_or_skip(PYANNOTE_PIPELINE_ENV)
    audio, mids = dialog([(A, "Good morning, thank you for calling the clinic."),
                          (B, "Hello, I need to change my appointment please."),
                          (A, "Sure, we have an opening on Monday morning.")])  # fmt: skip
    turns = PyannotePipelineDiarizer(path, device="cuda").diarize(audio, num_speakers=2)
    assert [speaker_at(turns, m, m) for m in mids] == ["S1", "S2", "S1"]


def test_pyannote_backends_name_the_install_when_missing() -> None:
    if importlib.util.find_spec("pyannote") is not None:
        pytest.skip("pyannote is installed here")
    from ai_serve.diarization.recording import PyannotePipelineDiarizer

    with pytest.raises(ImportError, match=r"pip install 'pyannote\.audio"):
        create_embedder("pyannote", model_path="/nonexistent/model.bin")
    with pytest.raises(ImportError, match=r"pip install 'pyannote\.audio"):
        PyannotePipelineDiarizer("/nonexistent/config.yaml")
