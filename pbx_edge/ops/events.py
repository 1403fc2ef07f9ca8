"""The in-process event bus: the node publishes, the admin API, webhooks and metrics subscribe.

``publish`` is synchronous and cheap: it appends to a bounded ring of recent events, bumps a counter
and calls each subscriber in turn. A subscriber that raises is logged and counted and the others
still run: one broken consumer must never disturb a call. Subscribers must be quick and must not
block (the webhook sender only appends to its outbox buffer). Every subscriber sees every event in
publish order, also when a subscriber publishes from inside its callback (such an event is queued
and dispatched after the current one).

Event ids come from :func:`new_event_id`: ULID-like (48-bit millisecond time + 80 random bits, 26
Crockford base32 characters), so sorting ids as strings sorts events by time; within one process
they are strictly increasing even when several are minted in one millisecond or the clock steps
back. The id is also the webhook idempotency key (``X-SmartPBX-Delivery``).

Common fields of every :class:`~pbx_edge.ops.models.Event`: ``id``, ``name``, ``time`` (UNIX
seconds), ``node_id``; call events also fill ``call_id``, ``a_call_id``, ``b_call_id`` (once the
callee leg exists), ``caller`` and ``callee``. The ``data`` fields per event name:

``call.started``
    ``route`` (str): what routing chose: the registered contact or the static route target.
``call.ringing``
    no fields (the callee leg sent 180/183).
``call.answered``
    ``codec`` (str | None): the negotiated codec, e.g. ``"PCMU"``; None when not known.
``call.ended``
    ``reason`` (str): the EndReason value (``caller_bye``, ``callee_bye``, ``no_answer``,
    ``media_timeout``, ``shutdown``, ...); ``hangup_side`` (``"caller"`` | ``"callee"`` |
    ``"edge"``); ``sip_code`` (int | None): final response the caller got; ``duration`` (float
    seconds, end - start); ``billsec`` (float seconds, end - answer, 0 when not answered);
    ``disposition`` (``answered`` | ``no_answer`` | ``busy`` | ``failed`` | ``cancelled`` |
    ``rejected``); ``codec`` (str | None). The same values go into the call's CDR. An INVITE refused
    before a call existed (404, 480, 503) also ends in ``call.ended``, with no ``call_id`` and
    ``disposition`` ``"rejected"``. A call the AI ended with its hangup action has ``reason``
    ``ai_hangup`` and ``hangup_side`` ``"edge"``.
``call.ai_answered``
    the AI answered the caller itself (attendant or IVR, pbx_edge/b2bua/attendant.py), published by
    the AI bridge right after ``call.answered``: ``trigger`` (``no_answer`` | ``unregistered`` |
    ``busy`` | ``away`` | ``after_hours`` | ``ivr``), ``answered_by`` (``"ai"``), ``codec`` (str |
    None, as in ``call.answered``). ``b_call_id`` is None: no callee leg rang or was kept.
``call.transferred``
    the AI's transfer action succeeded: the target answered and now talks to the caller; no fields,
    ``b_call_id`` is the target leg's Call-ID (pbx_edge/b2bua/transfer.py).
``call.transfer_failed``
    the transfer target refused, did not answer in time or gave an unusable answer: ``target``,
    ``reason`` (e.g. ``486 Busy Here``, ``no answer``). The call stays with the AI, which is told.
``call.callee_available``
    the extension the AI attendant answered for can be reached again (``unregistered``: it
    registered, ``away``: it is back, ``busy``: its call through this edge ended; the trigger is in
    the call's ``call.ai_answered``): ``extension``. Once per attended call; the AI is told and
    may offer a transfer (pbx_edge/b2bua/availability.py).
agent events
    any other name (e.g. ``attendant.summary``, ``ivr.intent``): published for a streamed call when
    the AI sends an ``agent_event``; ``data`` is the agent's own object. Names starting with
    ``call.``, ``registration.``, ``transcript.`` or ``dtmf`` are the node's and are refused.
``registration.added`` / ``registration.expired``
    ``aor`` (str), ``contact`` (str), ``source`` (str, ``ip:port`` the REGISTER came from),
    ``expires`` (int seconds granted; 0 on expiry).
``dtmf``
    ``leg`` (``"caller"`` | ``"callee"``), ``digit`` (str, ``0-9*#A-D``), ``method``
    (``"rfc4733"`` | ``"info"``).
``transcript.partial`` / ``transcript.final``
    from the AI layer (only for calls streamed to it): ``final`` (bool), ``leg``, ``speaker``
    (str | None, diarization label within the leg), ``text``, ``start`` / ``end`` (media seconds on
    the leg's clock), ``confidence`` (0..1 | None), ``language``, ``id`` (the utterance: a partial
    and its final share it). Finals are also stored (pbx_edge/ai_link/transcripts.py).
``transcript.gap``
    a span of a leg with no transcript: ``leg``, ``start``, ``end``, ``reason`` (``disconnected`` |
    ``overflow``: the audio never reached the AI layer; ``stt_failed``: the recognizer failed).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from pbx_edge.ops.config import EventsConfig
from pbx_edge.ops.models import Event

log = logging.getLogger("pbx_edge.ops")

Subscriber = Callable[[Event], None]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class EventIdGenerator:
    """Monotonic ULID-like ids; the time comes in as an argument so tests can step it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._millis = -1
        self._random = 0

    def __call__(self, now: float) -> str:
        millis = max(0, round(now * 1000)) & ((1 << 48) - 1)
        if millis != self._millis:  # fresh randomness once per millisecond: urandom costs ~1 µs+
            self._millis = millis
            self._random = int.from_bytes(os.urandom(10), "big") & (_RANDOM_MASK >> 1)
        candidate = (millis << _RANDOM_BITS) | self._random
        with self._lock:
            if candidate <= self._last:
                # Same millisecond (or the clock went back): keep the previous time part and count up.
                candidate = self._last + 1
            self._last = candidate
        return _encode(candidate, 26)


_ids = EventIdGenerator()


def new_event_id() -> str:
    """A unique, time-ordered id (26 characters); see the module docstring."""
    return _ids(time.time())


def name_matches(pattern: str, name: str) -> bool:
    """``*`` matches all, ``call.*`` any name starting with ``call.``, anything else exactly."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


class EventBus:
    """One bus per node; see the module docstring."""

    def __init__(self, config: EventsConfig | None = None) -> None:
        self._recent: deque[Event] = deque(maxlen=(config or EventsConfig()).recent)
        self._subscribers: tuple[Subscriber, ...] = ()
        self._queue: deque[Event] = deque()
        self._dispatching = False
        self.counts: Counter[str] = Counter()  # events published, per name
        self.subscriber_errors = 0

    @property
    def published(self) -> int:
        return sum(self.counts.values())

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` for every event published from now on; returns the unsubscribe."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        self._recent.append(event)
        self.counts[event.name] += 1
        self._queue.append(event)
        if self._dispatching:
            return  # published from inside a subscriber: the outer loop delivers it next
        self._dispatching = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for subscriber in self._subscribers:
                    try:
                        subscriber(current)
                    except Exception:
                        self.subscriber_errors += 1
                        log.exception("event subscriber %r failed on %s", subscriber, current.name)
        finally:
            self._dispatching = False

    def recent(self, limit: int, name: str | None = None, call_id: str | None = None) -> list[Event]:
        """The newest ``limit`` matching events, oldest first.

        ``name`` is a pattern as in :func:`name_matches`; ``call_id`` matches our call id or either
        leg's SIP Call-ID.
        """
        if limit <= 0:
            return []
        found: list[Event] = []
        for event in reversed(self._recent):
            if name is not None and not name_matches(name, event.name):
                continue
            if call_id is not None and call_id not in (event.call_id, event.a_call_id, event.b_call_id):
                continue
            found.append(event)
            if len(found) >= limit:
                break
        found.reverse()
        return found
