from __future__ import annotations

from pbx_edge.ops.config import ResourcesConfig
from pbx_edge.ops.resources import MIB, MemoryWatermark, process_rss


class FakeRss:
    def __init__(self, value: int) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


def test_over_and_back_under() -> None:
    rss = FakeRss(100 * MIB)
    wm = MemoryWatermark(ResourcesConfig(memory_watermark_mb=200, check_interval=1.0), rss)
    assert wm.limit_bytes == 200 * MIB
    assert wm.over(0.0) is False
    rss.value = 201 * MIB
    assert wm.over(1.0) is True
    assert wm.rss_bytes == 201 * MIB
    rss.value = 200 * MIB  # at the watermark is not over it
    assert wm.over(2.0) is False


def test_sampled_at_most_every_check_interval() -> None:
    rss = FakeRss(300 * MIB)
    wm = MemoryWatermark(ResourcesConfig(memory_watermark_mb=200, check_interval=1.0), rss)
    assert wm.over(10.0) is True
    rss.value = 1
    for i in range(100):
        assert wm.over(10.0 + i * 0.009) is True  # cached: still the old reading
    assert rss.calls == 1
    assert wm.sampled_at == 10.0
    assert wm.over(11.0) is False
    assert rss.calls == 2 and wm.samples == 2


def test_clock_stepping_back_resamples() -> None:
    rss = FakeRss(1)
    wm = MemoryWatermark(ResourcesConfig(memory_watermark_mb=1, check_interval=5.0), rss)
    wm.over(100.0)
    rss.value = 2 * MIB
    assert wm.over(50.0) is True
    assert rss.calls == 2


def test_no_watermark_never_over_but_rss_available() -> None:
    rss = FakeRss(10**12)
    wm = MemoryWatermark(ResourcesConfig(), rss)
    assert wm.limit_bytes is None
    assert wm.over(0.0) is False
    assert rss.calls == 0
    assert wm.sample(0.0) == 10**12 and wm.rss_bytes == 10**12


def test_default_reads_this_process() -> None:
    rss = process_rss()
    assert 1 * MIB < rss < 64 * 1024 * MIB
    wm = MemoryWatermark(ResourcesConfig(memory_watermark_mb=0.001))
    assert wm.over(0.0) is True
    assert wm.rss_bytes > 0
