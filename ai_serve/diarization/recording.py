"""Diarization of a whole mono recording: VAD regions → speaker embeddings → clustering → turns.

1. :func:`speech_regions` runs the live path's :class:`~ai_serve.stt.vad.StreamingVad` (Silero by
   default) over 20 ms frames: the same utterance boundaries as in a call.
2. Each region becomes one chunk, or, when longer than ``max_chunk_s``, overlapping windows of
   ``window_s`` every ``step_s``: two people can talk without a pause (speakerphone, conference).
3. Chunks with at least ``min_speech_s`` of speech are embedded and clustered
   (:func:`~ai_serve.diarization.clustering.cluster_embeddings`); shorter ones (a "yes") are embedded
   anyway, with a lower bar, and joined to the nearest cluster without being able to open one.
4. Within a region, the speaker changes half-way between two window centres of different clusters;
   adjacent pieces of one speaker are merged into a :class:`SpeakerTurn`.

:class:`PyannotePipelineDiarizer` is the GPU alternative: pyannote's full pipeline from a local config.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stt.backends import SAMPLE_RATE, as_float_pcm
from ..stt.vad import FRAME_SAMPLES, SpeechEnd, SpeechScorer, StreamingVad, VadConfig
from .clustering import DEFAULT_THRESHOLD, cluster_embeddings, cosine_matrix
from .embedders import SpeakerEmbedder, import_pyannote, speech_seconds

__all__ = [
    "DiarizationParams",
    "PyannotePipelineDiarizer",
    "SpeakerTurn",
    "diarize_audio",
    "speaker_at",
    "speech_regions",
]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SpeakerTurn:
    """``speaker`` talks from ``start`` to ``end`` (seconds from the start of the recording)."""

    start: float
    end: float
    speaker: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "speaker": self.speaker}


@dataclass(frozen=True, slots=True)
class DiarizationParams:
    """Knobs of :func:`diarize_audio`; validated on construction."""

    threshold: float = DEFAULT_THRESHOLD
    window_s: float = 2.0  # sliding window inside long regions
    step_s: float = 1.0
    max_chunk_s: float = 4.0  # regions up to this long are embedded whole
    min_speech_s: float = 0.5  # to open or shape a cluster
    min_short_speech_s: float = 0.15  # to be embedded at all and joined to the nearest cluster

    def __post_init__(self) -> None:
        if not 0 < self.step_s <= self.window_s <= self.max_chunk_s:
            raise ValueError("need 0 < step_s <= window_s <= max_chunk_s")
        if not 0 <= self.min_short_speech_s <= self.min_speech_s:
            raise ValueError("need 0 <= min_short_speech_s <= min_speech_s")


def speech_regions(
    audio: npt.NDArray[Any] | bytes, scorer: SpeechScorer | None = None, config: VadConfig | None = None
) -> list[tuple[float, float]]:
    """(start, end) seconds of each utterance the streaming VAD finds in 16 kHz mono audio."""
    samples = as_float_pcm(audio)
    pad = (-samples.size) % FRAME_SAMPLES
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
    vad = StreamingVad(scorer, config)
    regions: list[tuple[float, float]] = []
    step = FRAME_SAMPLES / SAMPLE_RATE
    for k in range(samples.size // FRAME_SAMPLES):
        frame = samples[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
        regions += [(e.start, e.end) for e in vad.feed(frame, k * step) if isinstance(e, SpeechEnd)]
    regions += [(e.start, e.end) for e in vad.flush() if isinstance(e, SpeechEnd)]
    return regions


@dataclass(slots=True)
class _Chunk:
    region: int
    start: float
    end: float
    windowed: bool = False  # one of the sliding windows of a long region
    embedding: FloatArray | None = None
    reliable: bool = False
    cluster: int = -1


def _chunks(regions: Sequence[tuple[float, float]], p: DiarizationParams) -> list[_Chunk]:
    out: list[_Chunk] = []
    for r, (start, end) in enumerate(regions):
        if end - start <= p.max_chunk_s:
            out.append(_Chunk(r, start, end))
            continue
        n = int(np.ceil((end - start - p.window_s) / p.step_s)) + 1
        for k in range(n):
            lo = min(start + k * p.step_s, end - p.window_s)
            out.append(_Chunk(r, lo, lo + p.window_s, windowed=True))
    return out


def diarize_audio(
    audio: npt.NDArray[Any] | bytes,
    embedder: SpeakerEmbedder,
    *,
    num_speakers: int | None = None,
    params: DiarizationParams | None = None,
    regions: Sequence[tuple[float, float]] | None = None,
    scorer: SpeechScorer | None = None,
) -> list[SpeakerTurn]:
    """Speaker turns of a mono 16 kHz recording; ``regions`` skips the VAD when already known."""
    p = params or DiarizationParams()
    samples = as_float_pcm(audio)
    if regions is None:
        regions = speech_regions(samples, scorer)
    chunks = _chunks(regions, p)
    for c in chunks:
        pcm = samples[round(c.start * SAMPLE_RATE) : round(c.end * SAMPLE_RATE)]
        c.embedding = embedder.embed(pcm, min_speech_s=p.min_short_speech_s)
        c.reliable = c.embedding is not None and speech_seconds(as_float_pcm(pcm)) >= p.min_speech_s
    _assign_clusters(chunks, p, num_speakers)
    return _turns(chunks, regions)


def _assign_clusters(chunks: list[_Chunk], p: DiarizationParams, num_speakers: int | None) -> None:
    reliable = [c for c in chunks if c.embedding is not None and c.reliable]
    if not reliable:  # nothing long enough: let the short ones cluster among themselves
        reliable = [c for c in chunks if c.embedding is not None]
    if not reliable:
        return
    emb = np.stack([c.embedding for c in reliable if c.embedding is not None])
    labels = cluster_embeddings(
        emb,
        threshold=p.threshold,
        num_speakers=num_speakers,
        weights=[c.end - c.start for c in reliable],
    )
    if num_speakers is None:
        labels = _absorb_straddling(reliable, emb, labels)
    for c, k in zip(reliable, labels.tolist(), strict=True):
        c.cluster = k
    centroids = np.stack([emb[labels == k].mean(axis=0) for k in range(int(labels.max()) + 1)])
    for c in chunks:
        if c.cluster < 0 and c.embedding is not None:
            sims = cosine_matrix(np.vstack([c.embedding[None, :], centroids]))[0, 1:]
            c.cluster = int(np.argmax(sims))


def _absorb_straddling(
    chunks: list[_Chunk], emb: FloatArray, labels: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """Fold clusters made only of a few sliding windows into the nearest other cluster.

    A window that straddles a change of speaker inside a long region mixes two voices and resembles
    neither enough, so it forms a cluster of its own; at most two windows (``window_s + step_s``)
    cover such a change. The price: someone cutting in for under ~3 s without any pause is missed.
    """
    k_max = int(labels.max()) + 1
    keep = [
        k
        for k in range(k_max)
        if not all(c.windowed for c, lab in zip(chunks, labels, strict=True) if lab == k)
        or int(np.count_nonzero(labels == k)) > 2
    ]
    if not keep or len(keep) == k_max:
        return labels
    centroids = np.stack([emb[labels == k].mean(axis=0) for k in keep])
    out = labels.copy()
    for n in range(labels.size):
        if labels[n] not in keep:
            out[n] = keep[int(np.argmax(cosine_matrix(np.vstack([emb[n][None, :], centroids]))[0, 1:]))]
    return _renumber(out)


def _renumber(labels: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(k), len(order)) for k in labels.tolist()], dtype=np.intp)


def _turns(chunks: list[_Chunk], regions: Sequence[tuple[float, float]]) -> list[SpeakerTurn]:
    turns: list[SpeakerTurn] = []
    last_cluster = -1
    for r, (start, end) in enumerate(regions):
        mine = [c for c in chunks if c.region == r]
        known = [c for c in mine if c.cluster >= 0]
        if not known:  # nothing embeddable: the previous speaker goes on (None if there is none yet)
            if last_cluster >= 0:
                turns.append(SpeakerTurn(start, end, f"S{last_cluster + 1}"))
            continue
        pieces: list[tuple[float, float, int]] = []
        for k, c in enumerate(known):
            lo = start if k == 0 else (known[k - 1].start + known[k - 1].end + c.start + c.end) / 4
            hi = end if k == len(known) - 1 else (c.start + c.end + known[k + 1].start + known[k + 1].end) / 4
            if pieces and pieces[-1][2] == c.cluster:
                pieces[-1] = (pieces[-1][0], hi, c.cluster)
            else:
                pieces.append((lo, hi, c.cluster))
        turns += [SpeakerTurn(lo, hi, f"S{k + 1}") for lo, hi, k in pieces]
        last_cluster = pieces[-1][2]
    return _relabel(turns)


def _relabel(turns: list[SpeakerTurn]) -> list[SpeakerTurn]:
    """S1, S2, ... in order of first appearance in time (cluster order follows the reliable chunks)."""
    names: dict[str, str] = {}
    return [SpeakerTurn(t.start, t.end, names.setdefault(t.speaker, f"S{len(names) + 1}")) for t in turns]


def speaker_at(turns: Sequence[SpeakerTurn], start: float, end: float) -> str | None:
    """The speaker overlapping ``[start, end]`` the most; the nearest turn's when none overlaps."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for t in turns:
        o = min(end, t.end) - max(start, t.start)
        if o > 0:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + o
    if overlap:
        return max(overlap, key=lambda s: overlap[s])
    mid = (start + end) / 2
    return min(turns, key=lambda t: min(abs(mid - t.start), abs(mid - t.end))).speaker


class PyannotePipelineDiarizer:
    """pyannote.audio's full diarization pipeline from a local ``config.yaml`` (GPU in production).

    The config must point at local checkpoints (segmentation and embedding models copied next to it);
    no hub token, no download. Labels are mapped to S1, S2, ... in order of first appearance.
    """

    def __init__(self, config_path: str | Path, device: str = "cuda") -> None:
        torch, Pipeline = import_pyannote("PyannotePipelineDiarizer", "Pipeline")
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"pyannote pipeline config not found at {path}")
        t0 = time.perf_counter()
        pipeline = Pipeline.from_pretrained(str(path))
        if pipeline is None:
            raise RuntimeError(f"pyannote could not build a pipeline from {path}")
        pipeline.to(torch.device(device))
        self._torch: Any = torch
        self._pipeline: Any = pipeline
        self.load_seconds = time.perf_counter() - t0

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def diarize(self, audio: npt.NDArray[Any] | bytes, num_speakers: int | None = None) -> list[SpeakerTurn]:
        samples = as_float_pcm(audio)
        waveform = self._torch.from_numpy(np.ascontiguousarray(samples))[None, :]
        kwargs = {} if num_speakers is None else {"num_speakers": num_speakers}
        result = self._pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, **kwargs)
        annotation = getattr(result, "speaker_diarization", result)  # pyannote 4 wraps the annotation
        turns = [
            SpeakerTurn(float(seg.start), float(seg.end), str(label))
            for seg, _, label in annotation.itertracks(yield_label=True)
        ]
        return _relabel(sorted(turns, key=lambda t: t.start))

    def close(self) -> None:
        self._pipeline = None
