from __future__ import annotations

import pytest

from pbx_edge.ops.config import RateLimitConfig
from pbx_edge.ops.ratelimit import InviteRateLimiter, Verdict

A = "192.0.2.10"
B = "198.51.100.7"


def limiter(**overrides: object) -> InviteRateLimiter:
    settings: dict[str, object] = {"invites_per_second": 10, "burst": 20, "drop_above": 100, "retry_after": 5}
    settings.update(overrides)
    return InviteRateLimiter(RateLimitConfig.model_validate(settings))


def run(rl: InviteRateLimiter, source: str, start: float, rate: float, seconds: float) -> list[Verdict]:
    """Send ``rate`` INVITEs per second from ``source`` for ``seconds``, evenly spaced."""
    count = round(rate * seconds)
    return [rl.check(source, start + i / rate) for i in range(count)]


def test_burst_then_steady_rate() -> None:
    rl = limiter()
    verdicts = [rl.check(A, 0.0) for _ in range(25)]
    assert verdicts[:20] == [Verdict.ALLOW] * 20
    assert verdicts[20:] == [Verdict.REJECT] * 5
    # Steady 20/s for 10 s against a 10/s bucket that starts empty: half gets through.
    steady = run(rl, A, 0.05, 20, 10)
    assert abs(steady.count(Verdict.ALLOW) - 100) <= 1
    assert Verdict.DROP not in steady
    assert rl.retry_after == 5


def test_refill() -> None:
    rl = limiter()
    for _ in range(20):
        assert rl.check(A, 0.0) is Verdict.ALLOW
    assert rl.check(A, 0.0) is Verdict.REJECT
    assert rl.check(A, 0.1) is Verdict.ALLOW  # one token back after 1/rate
    assert rl.check(A, 0.1) is Verdict.REJECT
    # A long pause refills to the burst, not beyond.
    assert [rl.check(A, 100.0) for _ in range(21)].count(Verdict.ALLOW) == 20


def test_rate_within_limit_is_always_allowed() -> None:
    rl = limiter()
    assert set(run(rl, A, 0.0, 10, 30)) == {Verdict.ALLOW}


@pytest.mark.parametrize(
    ("allow", "source", "listed"),
    [
        (["203.0.113.0/24"], "203.0.113.77", True),
        (["203.0.113.0/24"], "203.0.114.1", False),
        (["203.0.113.5"], "203.0.113.5", True),
        (["203.0.113.5"], "::ffff:203.0.113.5", True),  # IPv4-mapped IPv6 matches the v4 entry
        (["2001:db8:1::/48"], "2001:db8:1:ffff::9", True),
        (["2001:db8:1::/48"], "2001:db8:2::9", False),
        (["2001:db8::1"], "2001:DB8:0::1", True),
    ],
)
def test_allow_list(allow: list[str], source: str, listed: bool) -> None:
    rl = limiter(allow=allow, burst=1, drop_above=2)
    verdicts = [rl.check(source, 0.0) for _ in range(1000)]
    assert rl.is_allow_listed(source) is listed
    if listed:
        assert set(verdicts) == {Verdict.ALLOW}
        assert len(rl) == 0  # never tracked
        assert rl.stats().allow_listed == 1000
    else:
        assert verdicts[0] is Verdict.ALLOW and Verdict.ALLOW not in verdicts[1:]


def test_drop_above_ceiling_then_recover() -> None:
    rl = limiter()
    flood = run(rl, A, 0.0, 1000, 5)  # 1000/s, ten times drop_above
    assert flood[:20] == [Verdict.ALLOW] * 20
    # Past the first ~100 arrivals the excess is silent; the bucket still lets ~10/s through.
    assert Verdict.DROP not in flood[20:100]
    after_first_second = flood[1000:]
    assert after_first_second.count(Verdict.ALLOW) == pytest.approx(40, abs=2)
    assert after_first_second.count(Verdict.REJECT) == 0
    assert after_first_second.count(Verdict.DROP) == len(after_first_second) - after_first_second.count(
        Verdict.ALLOW
    )
    # The flood stops. Two seconds later the rate estimate is empty: over-limit INVITEs get 503 again,
    # and after the bucket refills the source is allowed its burst.
    assert rl.check(A, 7.0) is Verdict.ALLOW
    assert [rl.check(A, 7.0) for _ in range(40)].count(Verdict.DROP) == 0
    assert rl.check(A, 7.0) is Verdict.REJECT
    assert [rl.check(A, 20.0) for _ in range(20)] == [Verdict.ALLOW] * 20
    stats = rl.stats()
    assert stats.total == 5000 + 1 + 40 + 1 + 20
    assert stats.by_verdict()[Verdict.DROP] == stats.dropped > 4000


def test_drop_threshold_is_the_arrival_rate() -> None:
    rl = limiter(burst=1, invites_per_second=1, drop_above=50)
    below = run(rl, A, 0.0, 45, 3)
    assert Verdict.DROP not in below
    rl2 = limiter(burst=1, invites_per_second=1, drop_above=50)
    above = run(rl2, A, 0.0, 60, 3)
    assert above[-60:].count(Verdict.DROP) >= 55


def test_one_source_flood_does_not_affect_another() -> None:
    rl = limiter()
    for i in range(5000):
        now = i / 1000
        rl.check(A, now)
        if i % 100 == 0:  # B sends 10/s, its allowed rate
            assert rl.check(B, now) is Verdict.ALLOW


def test_ipv6_sources_grouped_by_64() -> None:
    rl = limiter(burst=2)
    assert rl.check("2001:db8:0:1::1", 0.0) is Verdict.ALLOW
    assert rl.check("2001:db8:0:1::2", 0.0) is Verdict.ALLOW
    assert rl.check("2001:db8:0:1:ffff::3", 0.0) is Verdict.REJECT  # same /64: same bucket
    assert rl.check("2001:db8:0:2::1", 0.0) is Verdict.ALLOW
    per_host = InviteRateLimiter(RateLimitConfig(burst=1), ipv6_prefix=128)
    assert per_host.check("2001:db8::1", 0.0) is Verdict.ALLOW
    assert per_host.check("2001:db8::2", 0.0) is Verdict.ALLOW


def test_idle_sources_expire() -> None:
    rl = limiter()  # idle_ttl = max(burst / rate, 2 s) = 2 s
    assert rl.idle_ttl == 2.0
    for i in range(1000):
        rl.check(f"10.0.{i // 256}.{i % 256}", i * 0.001)
    assert len(rl) == 1000
    rl.check(B, 2.5)  # sources last seen at or before 0.5 s are gone
    assert len(rl) == 1000 - 501 + 1
    rl.check(B, 10.0)
    assert len(rl) == 1
    assert rl.stats().expired == 1000 + 1  # B too, idle since 2.5 s


def test_expiry_is_exact() -> None:
    """Forgetting an idle source changes nothing: it was back to a full bucket and no rate."""
    rl = limiter()
    for _ in range(25):
        rl.check(A, 0.0)
    rl.check(B, 2.0)
    assert len(rl) == 1  # A expired at exactly idle_ttl
    assert [rl.check(A, 2.0) for _ in range(21)].count(Verdict.ALLOW) == 20


def test_max_sources_evicts_least_recently_seen() -> None:
    rl = InviteRateLimiter(RateLimitConfig(burst=1, invites_per_second=1), max_sources=100)
    assert rl.check(A, 0.0) is Verdict.ALLOW
    for i in range(500):
        assert rl.check(A, 0.0) is not Verdict.ALLOW  # the flooder stays the most recently seen
        rl.check(f"10.1.{i // 256}.{i % 256}", 0.0)  # a spray of spoofed sources
    assert len(rl) == 100
    assert rl.stats().evicted == 500 + 1 - 100
    assert rl.check(A, 0.0) is not Verdict.ALLOW  # its empty bucket survived the spray


def test_clock_stepping_back_is_harmless() -> None:
    rl = limiter(burst=1)
    assert rl.check(A, 10.0) is Verdict.ALLOW
    assert rl.check(A, 9.0) is Verdict.REJECT
    assert rl.check(A, 10.2) is Verdict.ALLOW


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_sources"):
        InviteRateLimiter(RateLimitConfig(), max_sources=0)
    with pytest.raises(ValueError, match="ipv6_prefix"):
        InviteRateLimiter(RateLimitConfig(), ipv6_prefix=129)
