"""Per-source limits on new INVITEs (sans-I/O: the caller passes ``now``).

Theory of operation
-------------------
Each source gets two small pieces of state:

* a token bucket (``invites_per_second`` refill, ``burst`` capacity). A new INVITE that finds a token
  is :attr:`Verdict.ALLOW`; one that finds the bucket empty is :attr:`Verdict.REJECT`, which the core
  answers with 503 and ``Retry-After: retry_after``;
* an arrival-rate estimate over the last second (a sliding-window counter: this window's count plus
  the previous window's count weighted by how much of it still overlaps the last second). When the
  bucket is empty *and* the source sends more than ``drop_above`` INVITEs per second, the excess is
  :attr:`Verdict.DROP`: no answer at all, so a flood (often from spoofed or scanning sources) cannot
  make us send as many packets as we receive. Dropped INVITEs still count as arrivals, so a flood
  stays silenced for as long as it lasts; about a second after it stops the source is back to
  REJECT, then ALLOW as the bucket refills.

A source within its bucket is always allowed, whatever its arrival rate: the bucket bounds what gets
through, the rate estimate only decides whether the excess gets an answer.

Only *new* INVITEs (no To tag) are meant to be checked; in-dialog requests belong to calls that were
already admitted.

Sources and memory
------------------
A source is the IP address. IPv6 sources are grouped by their ``/64`` (``ipv6_prefix``): one host
usually owns a whole /64 and could otherwise rotate addresses to get fresh buckets. Addresses in
``allow`` (IPs or CIDRs, v4 or v6; IPv4-mapped IPv6 addresses match v4 entries) are never limited and
not tracked.

State is kept in least-recently-seen order. A source idle long enough that its bucket is full again
and its rate window is empty is indistinguishable from a new one, so it is forgotten: every
:meth:`InviteRateLimiter.check` pops such entries from the old end, O(1) amortised. At most
``max_sources`` sources are tracked (100 000 by default, about 20 MB); beyond that the least
recently seen source is forgotten (counted in ``evicted``) and starts again with a full bucket if it
comes back. A source that is actively flooding is always among the most recently seen, so a spray of
spoofed addresses evicts quiet sources, never the flooder's state.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from pbx_edge.ops.config import RateLimitConfig

__all__ = ["DEFAULT_MAX_SOURCES", "InviteRateLimiter", "RateLimitStats", "Verdict"]

DEFAULT_MAX_SOURCES = 100_000
WINDOW = 1.0  # seconds over which the arrival rate is measured for DROP

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_KEY_CACHE = 65536  # memoised source keys; cleared when full (a flood of distinct sources)


class Verdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"  # answer 503 with Retry-After
    DROP = "drop"  # send nothing


@dataclass(frozen=True, slots=True)
class RateLimitStats:
    """Counters since start. ``allowed`` includes ``allow_listed``."""

    allowed: int
    rejected: int
    dropped: int
    allow_listed: int
    evicted: int  # forgotten because ``max_sources`` was reached
    expired: int  # forgotten because idle
    tracked: int  # sources held now

    @property
    def total(self) -> int:
        """INVITEs checked."""
        return self.allowed + self.rejected + self.dropped

    def by_verdict(self) -> dict[Verdict, int]:
        return {Verdict.ALLOW: self.allowed, Verdict.REJECT: self.rejected, Verdict.DROP: self.dropped}


@dataclass(slots=True)
class _Source:
    tokens: float
    last: float  # time of the last arrival (and of the last refill)
    window_start: float
    count: int  # arrivals in [window_start, window_start + WINDOW)
    previous: int  # arrivals in the window before


class InviteRateLimiter:
    """Decides ALLOW / REJECT / DROP for each new INVITE by source IP; see the module docstring."""

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
        ipv6_prefix: int = 64,
    ) -> None:
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources}")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be within 0..128, got {ipv6_prefix}")
        self.config = config
        self.max_sources = max_sources
        self.ipv6_prefix = ipv6_prefix
        self._rate = config.invites_per_second
        self._burst = float(config.burst)
        # Idle this long, a source's bucket is full and its rate window empty: forgetting it is exact.
        self.idle_ttl = max(self._burst / self._rate, 2 * WINDOW)
        self._allow: tuple[_Network, ...] = tuple(ipaddress.ip_network(x, strict=False) for x in config.allow)
        self._keys: dict[str, str | None] = {}  # source -> bucket key (None: allow-listed)
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._allowed = self._rejected = self._dropped = 0
        self._allow_listed = self._evicted = self._expired = 0

    @property
    def retry_after(self) -> int:
        """Seconds for the ``Retry-After`` header of a REJECT."""
        return self.config.retry_after

    def check(self, source_ip: str, now: float) -> Verdict:
        """Count one new INVITE from ``source_ip`` at ``now`` and say what to do with it."""
        self._expire(now)
        key = self._key(source_ip)
        if key is None:
            self._allowed += 1
            self._allow_listed += 1
            return Verdict.ALLOW
        state = self._sources.get(key)
        if state is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
                self._evicted += 1
            state = _Source(tokens=self._burst, last=now, window_start=now, count=0, previous=0)
            self._sources[key] = state
        else:
            self._sources.move_to_end(key)
            elapsed = now - state.last
            if elapsed > 0:  # a clock that steps back refills nothing
                state.tokens = min(self._burst, state.tokens + elapsed * self._rate)
                state.last = now
        arrival_rate = self._arrive(state, now)
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            self._allowed += 1
            return Verdict.ALLOW
        if arrival_rate > self.config.drop_above:
            self._dropped += 1
            return Verdict.DROP
        self._rejected += 1
        return Verdict.REJECT

    def stats(self) -> RateLimitStats:
        return RateLimitStats(
            allowed=self._allowed,
            rejected=self._rejected,
            dropped=self._dropped,
            allow_listed=self._allow_listed,
            evicted=self._evicted,
            expired=self._expired,
            tracked=len(self._sources),
        )

    def __len__(self) -> int:
        """Sources tracked now."""
        return len(self._sources)

    def is_allow_listed(self, source_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return self._listed(address)

    # --- internals -------------------------------------------------------------------------------
    @staticmethod
    def _arrive(state: _Source, now: float) -> float:
        """Record one arrival; return the arrivals over the last second, this one included."""
        since = now - state.window_start
        if since >= WINDOW:
            windows = int(since // WINDOW)
            state.previous = state.count if windows == 1 else 0
            state.count = 0
            state.window_start += windows * WINDOW
            since -= windows * WINDOW
        state.count += 1
        overlap = min(1.0, 1.0 - since / WINDOW)  # of the previous window with the last second
        return state.count + state.previous * overlap

    def _expire(self, now: float) -> None:
        sources = self._sources
        deadline = now - self.idle_ttl
        while sources:
            key, state = next(iter(sources.items()))
            if state.last > deadline:
                return
            del sources[key]
            self._expired += 1

    def _key(self, source_ip: str) -> str | None:
        """The bucket key of a source, or None when it is allow-listed (memoised: trunks and
        dispatchers send every INVITE from the same few addresses)."""
        if not self._allow and ":" not in source_ip:
            return source_ip  # the common case costs no parsing
        if source_ip in self._keys:
            return self._keys[source_ip]
        key = self._parse_key(source_ip)
        if len(self._keys) >= _KEY_CACHE:
            self._keys.clear()
        self._keys[source_ip] = key
        return key

    def _parse_key(self, source_ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return source_ip  # not an IP (a test name, a hostname): limited under its own name
        if self._listed(address):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            if self.ipv6_prefix < 128:
                network = ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False)
                return str(network)
        return str(address)

    def _listed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allow)
