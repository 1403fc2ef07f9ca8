"""A registry of model backends by name, one per role, so that config picks the backend.

Each role module (STT, TTS, LLM, text and speaker embeddings) keeps one :class:`BackendRegistry` of
its base class and exposes it as its own ``register_*`` / ``available_*`` / ``create_*`` functions;
``kind`` names the role in the errors ("unknown STT backend 'x'; known: faster-whisper, nemo").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["BackendRegistry"]

B = TypeVar("B")
_F = TypeVar("_F", bound=Callable[..., Any])


class BackendRegistry(Generic[B]):
    """Factories of ``B`` by name; ``lazy_modules`` maps a name to the module that registers it.

    A lazy module is imported the first time its name is created, so that naming one backend does
    not import the others' libraries.
    """

    def __init__(self, kind: str, *, lazy_modules: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., B]] = {}
        self._lazy = dict(lazy_modules or {})

    def register(self, name: str) -> Callable[[_F], _F]:
        """Class decorator: make a backend creatable by ``name`` from config."""

        def deco(factory: _F) -> _F:
            known = self._factories.get(name)
            if known is not None and known is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {known!r}")
            self._factories[name] = factory
            return factory

        return deco

    def available(self) -> list[str]:
        """The names that :meth:`create` knows, registered or lazy."""
        return sorted(set(self._factories) | set(self._lazy))

    def create(self, name: str, **options: Any) -> B:
        """Instantiate the backend registered as ``name`` with its keyword options."""
        if name not in self._factories and name in self._lazy:
            importlib.import_module(self._lazy[name])
        try:
            factory = self._factories[name]
        except KeyError:
            known = ", ".join(self.available())
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None
        return factory(**options)
