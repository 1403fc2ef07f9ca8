"""What a conversation must offer to be hosted live: the inputs and outputs shared by the agents.

:class:`~ai_serve.agents.attendant.Attendant`, :class:`~ai_serve.agents.ivr_session.IvrSession` and
:class:`~ai_serve.agents.multi_agent.MultiAgentSession` have no I/O of their own: they are given the
time and return the :data:`~ai_serve.agents.conversation.Output` items for the edge. The host
(:class:`~ai_serve.agents.attendant_actor.AttendantLoop`) only needs :class:`Session`; a session that
also takes keypad digits is a :class:`KeypadSession` (the IVR and multi-agent sessions; the attendant
has no menu, so a digit is ignored there); the attendant is an :class:`AttendedSession` (the edge's
``callee_available`` goes to it; the others ignore it). Every session hears how a ``transfer`` it
asked for went (:meth:`Session.transferred`, :meth:`Session.transfer_failed`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pbx_edge.ai_link.protocol import StartMessage

from .conversation import Output

__all__ = ["AttendedSession", "KeypadSession", "Session"]


@runtime_checkable
class Session(Protocol):
    """One call's conversation, driven by a host (see the module docstring)."""

    @property
    def start(self) -> StartMessage: ...

    async def greet(self) -> list[Output]: ...

    def greeted(self, text: str, seconds: float, age: float = 0.0) -> None: ...

    def speech_started(self) -> list[Output]: ...

    async def heard(self, text: str, confidence: float | None = None) -> list[Output]: ...

    def gap(self) -> None: ...

    def deadline(self) -> float | None: ...

    async def expire(self) -> list[Output]: ...

    def finish(self, reason: str = "caller_hangup") -> list[Output]: ...

    def transferred(self) -> list[Output]: ...

    async def transfer_failed(self, reason: str) -> list[Output]: ...


@runtime_checkable
class KeypadSession(Session, Protocol):
    """A session that takes the caller's DTMF digits too."""

    async def dtmf(self, digit: str) -> list[Output]: ...


@runtime_checkable
class AttendedSession(Session, Protocol):
    """A session that answered for a callee and may connect the caller once it is available."""

    async def callee_available(self, extension: str, reason: str) -> list[Output]: ...
