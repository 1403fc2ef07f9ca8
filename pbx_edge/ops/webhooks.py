"""Signed webhook delivery from the event bus, through the durable :class:`~pbx_edge.ops.outbox.Outbox`.

The sender subscribes to the bus; each event that a target's filter accepts (exact names, prefixes
such as ``call.*``, or ``*``) becomes an outbox row for that target. One task per target POSTs that
target's rows strictly in id order, one request in flight, so a failing head blocks only its own
target.

The request: ``POST`` the Event JSON (``Content-Type: application/json``) with headers

* the configured signature header (default ``X-SmartPBX-Signature``):
  ``t=<unix seconds>,v1=<hex HMAC-SHA256(key, f"{t}.{body}")>``, Stripe-style, so receivers can
  reject replays older than a tolerance (see :func:`verify_signature`). The key is the value of the
  environment variable named by ``secret_env`` when set, else ``secret``; no header without a key.
* ``X-SmartPBX-Event``: the event name; ``X-SmartPBX-Delivery``: the event id, the idempotency key.
  Delivery is at least once (a crash between a 2xx and its commit re-sends); dedupe on this id.

Retry policy (nothing is ever given up silently; the outbox keeps the row until it lands):

* 2xx: delivered.
* timeouts, connection errors, 408, 429 and 5xx: exponential backoff with full jitter, a random
  delay in ``[0, min(backoff_max, backoff_initial * 2**(attempts-1))]``; a ``Retry-After`` in
  seconds raises the delay to at least that, still capped at ``backoff_max``.
* any other status (3xx, which is not followed, and 4xx): the receiver refuses what we send, which
  usually needs an operator (wrong URL, wrong key). Dropping would lose events, so the delivery is
  retried every ``backoff_max`` seconds and each refusal is logged as a warning with the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from pbx_edge.ops.config import WebhooksConfig, WebhookTarget
from pbx_edge.ops.events import EventBus, name_matches
from pbx_edge.ops.models import Event
from pbx_edge.ops.outbox import Delivery, Outbox

log = logging.getLogger("pbx_edge.ops.webhooks")

EVENT_HEADER = "X-SmartPBX-Event"
DELIVERY_HEADER = "X-SmartPBX-Delivery"
USER_AGENT = "SmartPBX-Webhooks/0.1"
RETRYABLE_STATUSES = frozenset({408, 429})
_MAX_RESPONSE_READ = 64 * 1024

SessionFactory = Callable[[], aiohttp.ClientSession]


def sign(key: str | bytes, timestamp: int, body: str | bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(key, timestamp, body)}"


def verify_signature(
    secret: str | bytes,
    header_value: str | None,
    body: str | bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """For receivers: True if ``header_value`` signs ``body`` with ``secret`` within the tolerance.

    Several ``v1=`` entries are accepted (any may match), as when a sender rotates keys.
    """
    if not header_value:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header_value.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def _mac(key: str | bytes, timestamp: int, body: str | bytes) -> str:
    key_bytes = key.encode() if isinstance(key, str) else key
    body_bytes = body.encode() if isinstance(body, str) else body
    return hmac.new(key_bytes, f"{timestamp}.".encode() + body_bytes, hashlib.sha256).hexdigest()


def backoff_delay(attempts: int, initial: float, maximum: float, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**(attempts-1))]."""
    cap = min(maximum, initial * 2.0 ** min(max(attempts - 1, 0), 64))
    return rng() * cap


@dataclass(slots=True)
class TargetStats:
    """Counters for one target (exported as metrics)."""

    url: str
    delivered: int = 0
    failed_attempts: int = 0
    depth: int = 0
    last_status: int | None = None
    last_error: str | None = None


@dataclass(slots=True, frozen=True)
class _Outcome:
    delivered: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


class _Target:
    def __init__(self, config: WebhookTarget, environ: Mapping[str, str]) -> None:
        self.config = config
        self.url = config.url
        self.patterns = tuple(config.events)
        self.key: str | None = config.secret
        if config.secret_env:
            from_env = environ.get(config.secret_env)
            if from_env:
                self.key = from_env
            elif self.key is None:
                log.error(
                    "webhook %s: environment variable %s is not set; requests go unsigned",
                    self.url,
                    config.secret_env,
                )
        self.stats = TargetStats(config.url)

    def wants(self, name: str) -> bool:
        return any(name_matches(pattern, name) for pattern in self.patterns)


class WebhookSender:
    """Delivers bus events to the configured targets; see the module docstring."""

    def __init__(
        self,
        config: WebhooksConfig,
        outbox: Outbox,
        session_factory: SessionFactory | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        page_size: int = 100,
    ) -> None:
        self.config = config
        self._outbox = outbox
        self._session_factory = session_factory or _default_session
        env = os.environ if environ is None else environ
        self._targets = [_Target(target, env) for target in config.targets]
        urls = [t.url for t in self._targets]
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise ValueError(f"webhook target URLs must be unique (the URL is the outbox key): {duplicates}")
        self._clock = clock
        self._rng = rng
        self._page_size = page_size
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, bus: EventBus | None = None) -> None:
        """Open the outbox, resume what it holds and, given a bus, subscribe to it."""
        if self._started:
            return
        await self._outbox.start()
        self._started = True
        configured = {t.url for t in self._targets}
        for url, count in self._outbox.pending_targets().items():
            if url not in configured:
                log.warning("outbox holds %d undelivered events for %s, no longer configured", count, url)
        self._session = self._session_factory()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._deliver_loop(target), name=f"webhook {target.url}")
            for target in self._targets
        ]
        if bus is not None:
            self._unsubscribe = bus.subscribe(self.submit)

    async def stop(self) -> None:
        """Unsubscribe, stop sending and commit the outbox writes (its owner closes it).

        A request in flight is abandoned; its row stays undelivered and is sent again later.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._started = False
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._outbox.flush()

    # --- the bus side ----------------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Queue ``event`` for every target whose filter accepts it (the bus subscriber)."""
        targets = [t.url for t in self._targets if t.wants(event.name)]
        if targets:
            self._outbox.enqueue(targets, event)

    # --- figures ---------------------------------------------------------------------------------

    def depth(self) -> int:
        """Undelivered events over the configured targets."""
        return sum(self._outbox.depth(t.url) for t in self._targets)

    def stats(self) -> dict[str, TargetStats]:
        for target in self._targets:
            target.stats.depth = self._outbox.depth(target.url)
        return {t.url: t.stats for t in self._targets}

    # --- delivery --------------------------------------------------------------------------------

    async def _deliver_loop(self, target: _Target) -> None:
        after_id = 0
        page: list[Delivery] = []
        failures = 0
        while True:
            try:
                if not page:
                    changed = self._outbox.changed(target.url)
                    changed.clear()  # before the read: a commit during it sets it again
                    page = await self._outbox.fetch(target.url, after_id, self._page_size)
                    if not page:
                        await changed.wait()
                        continue
                    page.reverse()  # pop() from the end = the lowest id
                    after_id = page[0].id
                head = page[-1]
                # Capped: a schedule from an older config, or a wall clock that stepped back, must
                # not park a target for longer than the configured maximum interval.
                wait = min(head.next_attempt_at - self._clock(), self.config.backoff_max)
                if wait > 0:
                    await asyncio.sleep(wait)
                outcome = await self._post(target, head)
                self._record(target, head, outcome)
                if outcome.delivered:
                    page.pop()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database refused a read, or a bug: keep the target alive, retry in a while.
                failures += 1
                log.exception("webhook %s: delivery loop error", target.url)
                await asyncio.sleep(min(self.config.backoff_max, 2.0**failures))

    async def _post(self, target: _Target, delivery: Delivery) -> _Outcome:
        assert self._session is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: delivery.event_name,
            DELIVERY_HEADER: delivery.event_id,
        }
        if target.key is not None:
            headers[self.config.signature_header] = sign(target.key, int(self._clock()), body)
        try:
            async with self._session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.config.timeout),
                allow_redirects=False,
            ) as response:
                await response.content.read(_MAX_RESPONSE_READ)
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return _Outcome(False, error=f"timeout after {target.config.timeout}s")
        except (aiohttp.ClientError, OSError) as exc:
            return _Outcome(False, error=f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return _Outcome(True, status=status)
        return _Outcome(False, status=status, error=f"HTTP {status}", retry_after=retry_after)

    def _record(self, target: _Target, delivery: Delivery, outcome: _Outcome) -> None:
        stats = target.stats
        stats.last_status = outcome.status
        if outcome.delivered:
            stats.delivered += 1
            stats.last_error = None
            self._outbox.mark_delivered(delivery, self._clock())
            return
        stats.failed_attempts += 1
        stats.last_error = outcome.error
        delay = self._retry_delay(delivery.attempts + 1, outcome)
        self._outbox.mark_failed(delivery, outcome.error or "failed", self._clock() + delay)
        if outcome.status is not None and _refused(outcome.status):
            log.warning(
                "webhook %s refused %s (%s, attempt %d); retrying in %.0fs",
                target.url,
                delivery.event_id,
                outcome.error,
                delivery.attempts,
                delay,
            )
        else:
            log.info(
                "webhook %s: %s for %s (attempt %d); retrying in %.2fs",
                target.url,
                outcome.error,
                delivery.event_id,
                delivery.attempts,
                delay,
            )

    def _retry_delay(self, attempts: int, outcome: _Outcome) -> float:
        cfg = self.config
        if outcome.status is not None and _refused(outcome.status):
            return cfg.backoff_max
        delay = backoff_delay(attempts, cfg.backoff_initial, cfg.backoff_max, self._rng)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, cfg.backoff_max))
        return delay


def _refused(status: int) -> bool:
    """A status that retrying soon will not change (see the module docstring)."""
    return status < 500 and status not in RETRYABLE_STATUSES


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form is rare for webhooks; the backoff applies
    return seconds if seconds >= 0 else None


def _default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()
