"""Speaker diarization: who speaks when, within one leg (live) or in a mono recording (offline).

- :mod:`.embedders`: speaker-embedding backends behind one protocol and a registry (``resemblyzer``
  in numpy on CPU, ``pyannote`` on GPU).
- :mod:`.online`: :class:`OnlineSpeakers`, per-leg labels S1, S2, ... as utterances arrive.
- :mod:`.clustering`: agglomerative clustering of a recording's embeddings.
- :mod:`.recording`: VAD regions → embeddings → clusters → :class:`SpeakerTurn` for a whole recording.
"""

from .clustering import DEFAULT_THRESHOLD, cluster_embeddings, speaker_labels
from .embedders import (
    BaseSpeakerEmbedder,
    EmbeddingError,
    PyannoteEmbedder,
    ResemblyzerEmbedder,
    SpeakerEmbedder,
    available_embedders,
    create_embedder,
    register_embedder,
)
from .online import OnlineSpeakers
from .recording import DiarizationParams, PyannotePipelineDiarizer, SpeakerTurn, diarize_audio, speaker_at

__all__ = [
    "DEFAULT_THRESHOLD",
    "BaseSpeakerEmbedder",
    "DiarizationParams",
    "EmbeddingError",
    "OnlineSpeakers",
    "PyannoteEmbedder",
    "PyannotePipelineDiarizer",
    "ResemblyzerEmbedder",
    "SpeakerEmbedder",
    "SpeakerTurn",
    "available_embedders",
    "cluster_embeddings",
    "create_embedder",
    "diarize_audio",
    "register_embedder",
    "speaker_at",
    "speaker_labels",
]
