"""Text embeddings: the :class:`TextEmbedder` interface and its backends (see :mod:`.backends`).

The package's public names are those of :mod:`.backends` (its ``__all__``).
"""

from .backends import *  # noqa: F403 - the public names of .backends, listed once in its __all__
from .backends import __all__ as __all__
