"""The error every model backend raises for a failed request (each role subclasses it)."""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(RuntimeError):
    """A backend failed on one request; ``retryable`` says whether the same input may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
