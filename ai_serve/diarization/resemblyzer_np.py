"""Resemblyzer's speaker encoder (GE2E, 256-d) in numpy: no torch, weights from the wheel's ``pretrained.pt``.

Resemblyzer's ``VoiceEncoder`` is a 3-layer LSTM (40 → 256 → 256 → 256) over a 40-band mel power
spectrogram (16 kHz, 25 ms window, 10 ms hop; librosa's ``melspectrogram``: periodic Hann window,
centred frames zero-padded, Slaney mel scale and Slaney area normalisation), followed by a linear
256 → 256 layer, ReLU and L2 normalisation of the last layer's final hidden state. An utterance is cut
into 1.6 s partials (160 frames) every 77 frames (``rate=1.3`` partials per second, ~50 % overlap,
the last one kept when it is at least 75 % covered), each partial is embedded and the mean of the
partial embeddings, L2-normalised, is the utterance's embedding. This module reproduces all of that,
and resemblyzer's ``normalize_volume`` (raise to -30 dBFS, never lower). Its ``trim_long_silences``
(webrtcvad) is left out: our utterances come already cut by the Silero VAD.

The weights are read from the checkpoint without torch by :func:`load_torch_checkpoint`: a restricted
unpickler that knows only ``OrderedDict``, tensor rebuilding and the storage classes (anything else in
the pickle is refused, so a checkpoint cannot run code), then the raw storages that follow the pickle
(torch's legacy format, which ``pretrained.pt`` uses) or sit in the zip archive (the current format).

Checked against resemblyzer 0.1.4 + torch 2.13.0 CPU: see ``tests/ai_serve/test_diarization.py``.
"""

from __future__ import annotations

import collections
import importlib.util
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "EMBEDDING_DIM",
    "SAMPLE_RATE",
    "CheckpointError",
    "VoiceEncoderNp",
    "default_weights_path",
    "load_torch_checkpoint",
    "mel_filterbank",
    "mel_spectrogram",
    "partial_slices",
    "save_weights_npz",
]

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
EMBEDDING_DIM = 256
NUM_LAYERS = 3
NORM_TARGET_DBFS = -30.0

FloatArray = npt.NDArray[np.float32]


class CheckpointError(ValueError):
    """The file is not a checkpoint this loader can read, or lacks a weight the model needs."""


# --------------------------------------------------------------------------- torch checkpoint, no torch

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as the pickle describes it; materialised once the storages are read."""

    key: str
    dtype: np.dtype[Any]
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self, storages: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
        try:
            data = storages[self.key]
        except KeyError:
            raise CheckpointError(f"storage {self.key} is missing from the checkpoint") from None
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if 0 not in self.shape and last >= data.size:
            raise CheckpointError(f"tensor {self.shape} overruns storage {self.key} of {data.size}")
        size = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.shape, strides=tuple(s * size for s in self.stride)
        )
        return np.array(view, copy=True)


def _rebuild_tensor(
    storage: tuple[str, np.dtype[Any]], offset: int, shape: Any, stride: Any, *_: Any
) -> _TensorRef:
    key, dtype = storage
    return _TensorRef(key, dtype, int(offset), tuple(int(n) for n in shape), tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    """Knows tensors, storages and OrderedDict; refuses every other global (no code from the file)."""

    _ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which this loader does not allow"
            ) from None

    def persistent_load(self, pid: Any) -> tuple[str, np.dtype[Any]]:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        storage_type = pid[1]
        if isinstance(storage_type, _StorageType):
            return str(pid[2]), _STORAGE_DTYPES[storage_type.name]
        raise CheckpointError(f"unsupported storage type {storage_type!r}")


def _collect_refs(obj: Any, out: list[_TensorRef]) -> None:
    if isinstance(obj, _TensorRef):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _collect_refs(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _collect_refs(v, out)


def _materialise(obj: Any, storages: Mapping[str, npt.NDArray[Any]]) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialise(storages)
    if isinstance(obj, Mapping):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, storages) for v in obj]
    return obj


def _load_legacy(f: IO[bytes]) -> Any:
    """torch < 1.6 format: magic, protocol, sys info, the object, its storage keys, then raw storages."""
    magic = pickle.load(f)
    if magic != 0x1950A86A20F9469CFC6C:
        raise CheckpointError("not a torch checkpoint (bad magic number)")
    if pickle.load(f) != 1001:
        raise CheckpointError("unsupported legacy torch protocol version")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian checkpoints are not supported")
    obj = _Unpickler(f).load()
    keys = pickle.load(f)
    refs: list[_TensorRef] = []
    _collect_refs(obj, refs)
    dtypes = {r.key: r.dtype for r in refs}
    storages: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = dtypes.get(key, np.dtype("u1"))
        nbytes = numel * dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointError(f"checkpoint truncated in storage {key}")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return _materialise(obj, storages)


def _load_zip(path: Path) -> Any:
    """torch >= 1.6 format: ``<name>/data.pkl`` plus one file per storage in ``<name>/data/``."""
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise CheckpointError(f"{path}: zip without data.pkl, not a torch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        with zf.open(pkl) as f:
            obj = _Unpickler(f).load()
        refs: list[_TensorRef] = []
        _collect_refs(obj, refs)
        storages = {r.key: np.frombuffer(zf.read(f"{prefix}data/{r.key}"), dtype=r.dtype) for r in refs}
    return _materialise(obj, storages)


def load_torch_checkpoint(path: str | Path) -> Any:
    """A ``torch.save`` file (legacy or zip) as nested dicts/lists of numpy arrays, without torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with path.open("rb") as f:
        try:
            return _load_legacy(f)
        except (pickle.UnpicklingError, EOFError, struct.error) as e:
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {e}") from e


def default_weights_path() -> Path:
    """``pretrained.pt`` inside the installed ``resemblyzer`` wheel, found without importing it (torch)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "resemblyzer's pretrained.pt not found: pip install --no-deps resemblyzer==0.1.4 "
            "(only the weights are used; torch is not needed), or set model_path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the resemblyzer package")
    return path


def _load_state(path: Path) -> dict[str, FloatArray]:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    ckpt = load_torch_checkpoint(path)
    state = ckpt.get("model_state", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: no model_state in the checkpoint")
    return {str(k): np.asarray(v, dtype=np.float32) for k, v in state.items() if isinstance(v, np.ndarray)}


def save_weights_npz(target: str | Path, weights_path: str | Path | None = None) -> Path:
    """Write the encoder's weights (5.4 MB of the 17 MB checkpoint) to an ``.npz`` usable as model_path.

    For slim images: ship the ``.npz`` and drop the resemblyzer package (its optimizer state included).
    """
    source = Path(weights_path) if weights_path is not None else default_weights_path()
    state = _load_state(source)
    wanted = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    target = Path(target)
    with target.open("wb") as f:
        np.savez(f, **wanted)  # type: ignore[arg-type]
    return target


# ------------------------------------------------------------------------------------------ features


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, log above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = hz / f_sp
    log = hz >= min_log_hz
    mels[log] = min_log_hz / f_sp + np.log(hz[log] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    hz = mels * f_sp
    log = mels >= min_log_mel
    hz[log] = min_log_hz * np.exp(logstep * (mels[log] - min_log_mel))
    return hz


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> FloatArray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``: Slaney scale and area norm, 0..sr/2."""
    fft_freqs = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    edges = np.array([0.0, sr / 2], dtype=np.float64)
    lo_mel, hi_mel = _hz_to_mel(edges)
    mel_f = _mel_to_hz(np.linspace(float(lo_mel), float(hi_mel), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_MEL_BASIS = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def mel_spectrogram(wav: FloatArray) -> FloatArray:
    """(frames, 40) mel power spectrogram, as resemblyzer's ``wav_to_mel_spectrogram`` (not log)."""
    padded = np.pad(np.asarray(wav, dtype=np.float32), N_FFT // 2)  # center=True, pad_mode="constant"
    n_frames = 1 + (padded.size - N_FFT) // HOP
    if n_frames < 1:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    return np.asarray(power @ _MEL_BASIS.T, dtype=np.float32)


def normalize_volume(wav: FloatArray, target_dbfs: float = NORM_TARGET_DBFS) -> FloatArray:
    """Raise the level to ``target_dbfs`` RMS (never lower it), as resemblyzer's preprocessing does."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    if rms <= 0.0:
        return wav
    change = target_dbfs - 20 * np.log10(rms)
    return wav if change < 0 else (wav * np.float32(10 ** (change / 20))).astype(np.float32)


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[tuple[int, int]]:
    """Mel-frame ranges of the partial utterances (resemblyzer's ``compute_partial_slices``)."""
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    frame_step = round((SAMPLE_RATE / rate) / HOP)
    if not 0 < frame_step <= PARTIAL_FRAMES:
        raise ValueError(f"rate {rate} gives a step of {frame_step} frames, need 1..{PARTIAL_FRAMES}")
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    start, stop = slices[-1][0] * HOP, slices[-1][1] * HOP
    if (n_samples - start) / (stop - start) < min_coverage and len(slices) > 1:
        slices.pop()
    return slices


# ---------------------------------------------------------------------------------------------- model


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float32)  # stable, no overflow warning


class VoiceEncoderNp:
    """The encoder's forward pass in numpy, batched over partials; see the module docstring."""

    def __init__(self, weights_path: str | Path | None = None) -> None:
        self.weights_path = Path(weights_path) if weights_path is not None else default_weights_path()
        state = _load_state(self.weights_path)
        try:
            self._layers = [
                (
                    np.ascontiguousarray(state[f"lstm.weight_ih_l{k}"].T),
                    np.ascontiguousarray(state[f"lstm.weight_hh_l{k}"].T),
                    state[f"lstm.bias_ih_l{k}"] + state[f"lstm.bias_hh_l{k}"],
                )
                for k in range(NUM_LAYERS)
            ]
            self._linear_w = np.ascontiguousarray(state["linear.weight"].T)
            self._linear_b = state["linear.bias"]
        except KeyError as e:
            raise CheckpointError(f"{self.weights_path}: missing weight {e}") from None
        if self._layers[0][0].shape != (N_MELS, 4 * EMBEDDING_DIM) or self._linear_w.shape != (256, 256):
            raise CheckpointError(f"{self.weights_path}: weights have unexpected shapes")

    def forward(self, mels: FloatArray) -> FloatArray:
        """(batch, frames, 40) mel partials → (batch, 256) L2-normalised embeddings."""
        x = np.asarray(mels, dtype=np.float32)
        batch, steps, _ = x.shape
        hidden = EMBEDDING_DIM
        h = np.zeros((batch, hidden), dtype=np.float32)
        for w_ih, w_hh, bias in self._layers:
            gates_x = x @ w_ih + bias  # (batch, steps, 4H): the input part of every step at once
            h = np.zeros((batch, hidden), dtype=np.float32)
            c = np.zeros((batch, hidden), dtype=np.float32)
            outputs = np.empty((batch, steps, hidden), dtype=np.float32)
            for t in range(steps):
                g = gates_x[:, t] + h @ w_hh
                i, f = _sigmoid(g[:, :hidden]), _sigmoid(g[:, hidden : 2 * hidden])
                cell, o = np.tanh(g[:, 2 * hidden : 3 * hidden]), _sigmoid(g[:, 3 * hidden :])
                c = f * c + i * cell
                h = o * np.tanh(c)
                outputs[:, t] = h
            x = outputs
        raw = np.maximum(h @ self._linear_w + self._linear_b, 0.0)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)

    def embed_utterance(self, wav: FloatArray, rate: float = 1.3, min_coverage: float = 0.75) -> FloatArray:
        """resemblyzer's ``embed_utterance`` on an already preprocessed 16 kHz float waveform."""
        slices = partial_slices(wav.size, rate, min_coverage)
        needed = slices[-1][1] * HOP
        if needed >= wav.size:
            wav = np.pad(wav, (0, needed - wav.size))
        mel = mel_spectrogram(wav)
        partials = np.stack([mel[a:b] for a, b in slices])
        raw = self.forward(partials).mean(axis=0)
        return np.asarray(raw / np.linalg.norm(raw), dtype=np.float32)
