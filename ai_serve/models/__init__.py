"""Model plumbing shared by the ``ai_serve`` roles: where weights come from, and backends by name.

- :mod:`.whisper_assets`: Whisper folders assembled from the packaged weights, or a local folder.
- :mod:`.registry`: :class:`BackendRegistry`, the per-role registry that config picks backends from.
- :mod:`.errors`: :class:`ModelError`, the base of each role's backend error.
- :mod:`.stats`: :class:`CallCounters`, the base of each role's backend counters.
"""

from .errors import ModelError
from .registry import BackendRegistry
from .stats import CallCounters
from .whisper_assets import (
    MissingModelPackageError,
    WhisperAssetsError,
    WhisperModelConfig,
    assemble_whisper_base,
)

__all__ = [
    "BackendRegistry",
    "CallCounters",
    "MissingModelPackageError",
    "ModelError",
    "WhisperAssetsError",
    "WhisperModelConfig",
    "assemble_whisper_base",
]
