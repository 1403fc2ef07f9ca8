"""Text-to-speech: the :class:`TtsBackend` interface, its backends and the per-language router.

The package's public names are those of :mod:`.backends` (its ``__all__``).
"""

from .backends import *  # noqa: F403 - the public names of .backends, listed once in its __all__
from .backends import __all__ as __all__
