"""Which events hand a caller to the AI attendant, read from the configuration.

A trigger is ``ai`` for an extension when the extension's ``ai_answer`` says so, else when the node
default (``calls.ai_answer``) does; anything else keeps today's behaviour. ``after_hours`` also needs
a schedule: the extension's ``business_hours``, else the node's; no schedule means always open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pbx_edge.b2bua.business_hours import is_open
from pbx_edge.ops.config import CallsConfig, ExtensionConfig

Trigger = Literal["no_answer", "unregistered", "busy", "away", "after_hours"]
TRIGGERS: tuple[Trigger, ...] = ("no_answer", "unregistered", "busy", "away", "after_hours")

ExtensionLookup = Callable[[str], ExtensionConfig | None]


class TriggerPolicy:
    def __init__(self, calls: CallsConfig, extension_config: ExtensionLookup) -> None:
        self.calls = calls
        self.extension_config = extension_config

    def wants_ai(self, callee: str, trigger: Trigger) -> bool:
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
