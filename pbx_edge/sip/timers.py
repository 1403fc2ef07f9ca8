"""A heap of deadlines keyed by owner, for sans-I/O cores that are given time instead of reading it.

Cores call :meth:`TimerHeap.schedule` and :meth:`cancel`; the asyncio adapter asks :meth:`next_deadline`
and, when the loop wakes, drains :meth:`pop_due`. Cancelled or rescheduled entries are invalidated
lazily (a generation counter per key), so both operations are O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerHeap(Generic[K]):
    __slots__ = ("_counter", "_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def schedule(self, key: K, deadline: float) -> None:
        """Set (or move) the one deadline of ``key``."""
        token = next(self._counter)
        self._live[key] = token
        heapq.heappush(self._heap, (deadline, token, key))

    def cancel(self, key: K) -> None:
        self._live.pop(key, None)

    def deadline_of(self, key: K) -> float | None:
        token = self._live.get(key)
        if token is None:
            return None
        for deadline, tok, k in self._heap:
            if tok == token and k == key:
                return deadline
        return None

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, token, key = heap[0]
            if self._live.get(key) == token:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is <= now, earliest first."""
        due: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, key = heapq.heappop(heap)
            if self._live.get(key) == token:
                del self._live[key]
                due.append(key)
        return due
