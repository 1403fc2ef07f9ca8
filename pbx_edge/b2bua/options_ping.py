"""OPTIONS keep-alive of registered contacts: which to ping when, and when to give one up.

The pinger does not send anything. The core asks :meth:`OptionsPinger.get_timer` when to wake,
calls :meth:`OptionsPinger.due` then, sends an OPTIONS to each returned binding's ``dest``, and
reports the outcome with :meth:`OptionsPinger.on_reply`: ``ok=True`` for any final response (even
404 or 405 proves the contact reachable and the NAT pinhole open), ``ok=False`` when the
transaction timed out or the transport failed. After ``failures_before_dead`` consecutive failures
the binding is removed from the location table, so calls stop ringing a phone that is gone.

Each binding is pinged every ``interval`` seconds, the first time ``interval`` after it was
registered. A REGISTER refresh proves the contact alive as well as a ping does: it clears the
failure count and restarts the interval. The pinger learns about new, refreshed and removed
bindings by re-reading the table whenever :attr:`LocationTable.generation` has moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from pbx_edge.b2bua.location import Binding, LocationTable
from pbx_edge.ops.config import OptionsPingConfig
from pbx_edge.sip.timers import TimerHeap

_Key: TypeAlias = tuple[str, str]  # (aor, contact key)


@dataclass(slots=True)
class _State:
    binding: Binding
    failures: int = 0


class OptionsPinger:
    __slots__ = ("_config", "_generation", "_states", "_table", "_timers")

    def __init__(self, table: LocationTable, config: OptionsPingConfig) -> None:
        self._table = table
        self._config = config
        self._states: dict[_Key, _State] = {}
        self._timers: TimerHeap[_Key] = TimerHeap()
        self._generation = -1

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def failures(self, binding: Binding) -> int:
        """Consecutive failed pings of ``binding`` (0 when unknown)."""
        state = self._states.get((binding.aor, binding.key))
        return state.failures if state is not None and state.binding == binding else 0

    def _sync(self) -> None:
        """Track the table: schedule new bindings, restart refreshed ones, forget removed ones."""
        if self._table.generation == self._generation:
            return
        self._generation = self._table.generation
        seen: set[_Key] = set()
        for binding in self._table:
            key = (binding.aor, binding.key)
            seen.add(key)
            state = self._states.get(key)
            if state is None or state.binding != binding:
                self._states[key] = _State(binding)
                self._timers.schedule(key, binding.registered_at + self._config.interval)
        for key in [k for k in self._states if k not in seen]:
            del self._states[key]
            self._timers.cancel(key)

    def due(self, now: float) -> list[Binding]:
        """The live bindings to ping now; each is scheduled again ``interval`` from now."""
        if not self._config.enabled:
            return []
        self._sync()
        out: list[Binding] = []
        for key in self._timers.pop_due(now):
            binding = self._states[key].binding
            if binding.expires_at <= now:
                continue  # expiry, not the pinger, removes it; no point pinging
            self._timers.schedule(key, now + self._config.interval)
            out.append(binding)
        return out

    def on_reply(self, binding: Binding, ok: bool, now: float) -> bool:
        """Record the outcome of a ping of ``binding``. True when the binding was declared dead
        and removed from the table. Outcomes for a binding that has since been refreshed or
        removed are ignored (the refresh is newer evidence)."""
        self._sync()
        key = (binding.aor, binding.key)
        state = self._states.get(key)
        if state is None or state.binding != binding:
            return False
        if ok:
            state.failures = 0
            return False
        state.failures += 1
        if state.failures < self._config.failures_before_dead:
            return False
        self._table.unbind(binding.aor, str(binding.contact.uri))
        self._sync()
        return True

    def get_timer(self) -> float | None:
        """When :meth:`due` next has work, or None (disabled, or nothing registered)."""
        if not self._config.enabled:
            return None
        self._sync()
        return self._timers.next_deadline()
