"""Model files for ``ai_serve``: where each role's weights come from (packaged or a local folder)."""

from .whisper_assets import (
    MissingModelPackageError,
    WhisperAssetsError,
    WhisperModelConfig,
    assemble_whisper_base,
)

__all__ = [
    "MissingModelPackageError",
    "WhisperAssetsError",
    "WhisperModelConfig",
    "assemble_whisper_base",
]
