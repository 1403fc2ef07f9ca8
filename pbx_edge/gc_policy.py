"""Garbage-collector policy for the edge process: short, predictable pauses instead of long ones.

Why: RFC 3261 keeps every finished transaction alive for up to 64*T1 (32 s) to absorb
retransmissions, so at 500 calls/s the process holds ~700k container objects. CPython's automatic
full (gen 2) collections then scan all of them and stall the event loop for 100-250 ms, long enough
for peers to retransmit (T1 = 500 ms) and the load to snowball. The call and transaction objects are
built without reference cycles (a call drops its transaction links when it ends), so reference
counting frees them. We therefore collect only the young generations on a timer and run a full
collection rarely, to catch what cycles remain (exception tracebacks and the like).
"""

from __future__ import annotations

import asyncio
import gc
import logging

log = logging.getLogger("pbx_edge.gc")


class GcPolicy:
    def __init__(self, young_interval: float, full_interval: float) -> None:
        self.young_interval = young_interval
        self.full_interval = full_interval
        self._handles: list[asyncio.TimerHandle] = []
        self._was_enabled = gc.isenabled()
        self.full_collections = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.collect()
        gc.freeze()  # start-up objects (modules, config) never need scanning again
        gc.disable()
        self._handles = [
            loop.call_later(self.young_interval, self._young, loop),
            loop.call_later(self.full_interval, self._full, loop),
        ]

    def stop(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles = []
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def _young(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.collect(1)
        self._handles[0] = loop.call_later(self.young_interval, self._young, loop)

    def _full(self, loop: asyncio.AbstractEventLoop) -> None:
        found = gc.collect()
        self.full_collections += 1
        if found:
            log.debug("full gc collected %d objects", found)
        self._handles[1] = loop.call_later(self.full_interval, self._full, loop)
