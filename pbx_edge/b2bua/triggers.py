"""Which events hand a caller to the AI attendant, read from the configuration.

A trigger is ``ai`` for an extension when the extension's ``ai_answer`` says so, else when the node
default (``calls.ai_answer``) does; anything else keeps today's behaviour. ``after_hours`` also
needs a schedule: the extension's ``business_hours``, else the node's; no schedule means always open.
A called number listed in ``routing.ivr_numbers`` is the ``ivr`` trigger: the AI answers it at once,
in IVR mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from pbx_edge.b2bua.business_hours import is_open
from pbx_edge.ops.config import CallsConfig, ExtensionConfig

Trigger = Literal["no_answer", "unregistered", "busy", "away", "after_hours", "ivr"]
# The triggers an extension switches on or off (``ai_answer``); ``ivr`` is a called number's
# (``routing.ivr_numbers``), always answered by the AI when it is available.
TRIGGERS: tuple[Trigger, ...] = ("no_answer", "unregistered", "busy", "away", "after_hours")

ExtensionLookup = Callable[[str], ExtensionConfig | None]


class TriggerPolicy:
    def __init__(
        self, calls: CallsConfig, extension_config: ExtensionLookup, ivr_numbers: Iterable[str] = ()
    ) -> None:
        self.calls = calls
        self.extension_config = extension_config
        self.ivr_numbers = frozenset(ivr_numbers)

    def is_ivr_number(self, callee: str) -> bool:
        """Whether ``callee`` is a called number the AI answers at once in IVR mode."""
        return callee in self.ivr_numbers

    def wants_ai(self, callee: str, trigger: Trigger) -> bool:
        if trigger == "ivr":
            return self.is_ivr_number(callee)
        extension = self.extension_config(callee)
        if extension is not None and extension.ai_answer is not None:
            value = getattr(extension.ai_answer, trigger)
            if value is not None:
                return bool(value == "ai")
        return bool(getattr(self.calls.ai_answer, trigger) == "ai")

    def after_hours(self, callee: str, wall: float) -> bool:
        """Whether ``callee`` is closed at ``wall`` (UNIX seconds)."""
        extension = self.extension_config(callee)
        hours = extension.business_hours if extension is not None else None
        hours = hours or self.calls.business_hours
        return hours is not None and not is_open(hours, wall)
