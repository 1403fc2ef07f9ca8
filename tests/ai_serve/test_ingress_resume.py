"""A call whose socket is lost without ``end`` (ai_serve/ingress_agent.py): its attendant is kept for a
resume; what it says meanwhile is kept (speech dropped), delivered on the new socket, or logged when
no resume comes within the grace. The actor here is a stand-in recording its calls: the ingress side
is what is under test (tests/e2e/test_attendant_ws.py resumes a live call)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ai_serve.agents.attendant_config import AttendantConfig
from ai_serve.ingress_agent import AgentRuntime, AttendantCall
from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, PlayAction, StartMessage


class _Method:
    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.name, self.calls = name, calls

    def remote(self, *args: Any) -> Any:
        self.calls.append((self.name, args))

        async def done() -> None:
            return None

        return done()


class _Actor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> _Method:
        return _Method(name, self.calls)


class _Socket:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.binary = 0
        self.broken = False

    async def text(self, data: str) -> None:
        if self.broken:
            raise ConnectionResetError("gone")
        self.texts.append(data)

    async def bytes(self, data: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("gone")
        self.binary += 1


START = StartMessage(call_id="c-1", caller="1001", callee="201", language="en", mode="attendant")
SUMMARY = AgentEvent(name="attendant.summary", data={"reason": "x"}).to_json()
HANGUP = HangupAction(reason="attendant_completed").to_json()
PLAY = PlayAction(leg="caller", text="Hello").to_json()


def _call(grace: float) -> tuple[AgentRuntime, AttendantCall, _Socket, _Actor]:
    runtime = AgentRuntime(AttendantConfig(resume_grace_s=grace))
    socket, actor = _Socket(), _Actor()
    call = AttendantCall(runtime, START, socket.text, socket.bytes)
    call._actor = actor
    return runtime, call, socket, actor


async def test_a_resumed_call_gets_what_was_kept_on_the_new_socket() -> None:
    runtime, call, first, actor = _call(grace=30.0)
    await call._deliver("json", PLAY)
    first.broken = True
    await call._deliver("json", SUMMARY)  # the socket failed under it: kept
    runtime.detach(call)
    for kind, payload in (("json", PLAY), ("audio", b"\0" * 640), ("json", HANGUP)):
        await call._deliver(kind, payload)  # speech dropped, the rest kept
    assert call.undelivered == [SUMMARY, HANGUP] and runtime.detached == {"c-1": call}
    second = _Socket()
    resumed = await runtime.resume(START.model_copy(update={"resume": True}), second.text, second.bytes)
    assert resumed is call and runtime.detached == {} and call.start.resume
    assert second.texts == [SUMMARY, HANGUP] and call.undelivered == []
    await call._deliver("json", PLAY)
    assert second.texts[-1] == PLAY and first.texts == [PLAY]
    await asyncio.sleep(0)
    assert ("finish", ("connection_lost",)) not in actor.calls  # the grace was called off


async def test_without_a_resume_the_call_ends_and_what_was_kept_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime, call, _, actor = _call(grace=0.05)
    runtime.detach(call)
    await call._deliver("json", SUMMARY)
    with caplog.at_level(logging.WARNING, logger="ai_serve.ingress_agent"):
        for _ in range(100):
            if call._closed:
                break
            await asyncio.sleep(0.02)
    assert call._closed and runtime.detached == {}
    assert ("finish", ("connection_lost",)) in actor.calls
    assert any(
        "not delivered" in r.getMessage() and "attendant.summary" in r.getMessage() for r in caplog.records
    )
    assert (
        await runtime.resume(START.model_copy(update={"resume": True}), _Socket().text, _Socket().bytes)
        is None
    )
