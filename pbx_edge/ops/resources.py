"""Memory watermark: refuse new calls (503) while the process RSS is above a configured size.

Live calls are never touched: the watermark only gates admission, so a node that is short of memory
sheds new load instead of being killed by the OOM killer with every call on it. Reading RSS is a
system call (``/proc/self/statm`` through psutil), so it is sampled at most every ``check_interval``
seconds and the cached value answers in between; ``now`` is passed in, as everywhere in the core.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil  # type: ignore[import-untyped,unused-ignore]  # no stubs unless types-psutil

from pbx_edge.ops.config import ResourcesConfig

__all__ = ["MIB", "MemoryWatermark", "process_rss"]

MIB = 1024 * 1024  # memory_watermark_mb counts MiB, as RSS is reported by ps/top


def process_rss() -> int:
    """Resident set size of this process in bytes.

    A fresh ``psutil.Process()`` each time (cheap at one call per ``check_interval``): one created at
    import would keep reporting the parent after a fork into one worker per core.
    """
    rss: int = psutil.Process().memory_info().rss
    return rss


class MemoryWatermark:
    """``over(now)`` is True while the sampled RSS exceeds ``memory_watermark_mb``.

    With no watermark configured ``over`` is always False, but :meth:`sample` still reads RSS (for
    the metrics endpoint).
    """

    def __init__(self, config: ResourcesConfig, rss: Callable[[], int] = process_rss) -> None:
        self.config = config
        self._read = rss
        mb = config.memory_watermark_mb
        self.limit_bytes: int | None = None if mb is None else int(mb * MIB)
        self._rss = 0
        self._sampled_at: float | None = None
        self.samples = 0  # RSS reads so far

    @property
    def rss_bytes(self) -> int:
        """RSS at the last sample, in bytes (0 before the first)."""
        return self._rss

    @property
    def sampled_at(self) -> float | None:
        return self._sampled_at

    def sample(self, now: float) -> int:
        """RSS in bytes, read again if the last reading is ``check_interval`` old (or from the future:
        a clock that stepped back must not freeze the value)."""
        last = self._sampled_at
        if last is None or now - last >= self.config.check_interval or now < last:
            self._rss = self._read()
            self._sampled_at = now
            self.samples += 1
        return self._rss

    def over(self, now: float) -> bool:
        """Whether new calls should be refused at ``now``."""
        if self.limit_bytes is None:
            return False
        return self.sample(now) > self.limit_bytes
