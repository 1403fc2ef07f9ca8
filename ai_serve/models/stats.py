"""The counters every model backend keeps: calls and errors, updated under a lock from any thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["CallCounters"]


@dataclass(slots=True)
class CallCounters:
    """``calls`` and ``errors`` of one backend instance; each role's subclass adds its own figures.

    A subclass's ``record`` updates its figures inside ``with self._counting(ok):``, which counts the
    call (and the error unless ``ok``) under the lock, so no reader sees half an update.
    """

    calls: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False, kw_only=True)

    @contextmanager
    def _counting(self, ok: bool) -> Iterator[None]:
        with self._lock:
            self.calls += 1
            self.errors += 0 if ok else 1
            yield
