"""A call whose socket is lost without ``end`` (ai_serve/ingress_agent.py), with the real agent actor on
the session's local Ray cluster (``serve_app``). Two :class:`AgentRuntime` objects play two ingress
replicas: Serve's proxy may route the edge's ``resume`` to either. The call's actor keeps what it owes
the edge while nobody reads; the resume finds it (by name when another replica started it), gets that
first and goes on; the first replica's grace then ends without touching the call. Without a resume the
call ends when the grace runs out. (tests/e2e/test_attendant_ws.py resumes a live call end to end.)

The calls start as resumes themselves (``resume: true``), so no greeting needs the TTS role."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ai_serve.agents.attendant_config import AttendantConfig
from ai_serve.ingress_agent import AGENT_NAMESPACE, AgentRuntime, AttendantCall, actor_name
from pbx_edge.ai_link.protocol import AgentEvent, StartMessage
from tests.serve_cluster import ServeApp

pytestmark = pytest.mark.timeout(180)

OWED = AgentEvent(name="attendant.summary", data={"reason": "earlier"}).to_json()


class _Socket:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.broken = False

    async def text(self, data: str) -> None:
        if self.broken:
            raise ConnectionResetError("gone")
        self.texts.append(data)

    async def bytes(self, data: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("gone")


def _start(call_id: str) -> StartMessage:
    return StartMessage(
        call_id=call_id, caller="1001", callee="201", language="en", mode="attendant", resume=True
    )


async def _open(runtime: AgentRuntime, call_id: str, socket: _Socket) -> AttendantCall:
    call = await runtime.open(_start(call_id), socket.text, socket.bytes)
    assert call is not None
    return call


async def _until(predicate: Any, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def _alive(call_id: str) -> bool:
    import ray

    try:
        await asyncio.to_thread(ray.get_actor, actor_name(call_id), namespace=AGENT_NAMESPACE)
    except ValueError:
        return False
    return True


async def _gone(call_id: str) -> bool:
    return not await _alive(call_id)


async def test_a_resume_through_another_replica_goes_on_with_the_same_agent(serve_app: ServeApp) -> None:
    first, second = AgentRuntime(AttendantConfig(resume_grace_s=0.5)), AgentRuntime(AttendantConfig())
    lost, new = _Socket(), _Socket()
    call = await _open(first, "resume-1", lost)
    assert await _alive("resume-1")
    lost.broken = True
    await call._deliver("json", OWED)  # taken from the actor as the socket broke: handed back to it
    first.detach(call)
    resumed = await second.resume(_start("resume-1"), new.text, new.bytes)
    assert resumed is not None and resumed is not call and second.active == 1

    async def owed_first() -> bool:
        return OWED in new.texts

    await _until(owed_first)  # what was owed comes first on the new socket
    await asyncio.sleep(1.0)  # the first replica's grace runs out: the call has been taken over
    assert first.detached == {} and first.active == 0 and await _alive("resume-1")
    await resumed.finish("caller_hangup")  # the edge's end, on the new socket: the summary comes there
    summaries = [t for t in new.texts if '"attendant.summary"' in t]
    assert len(summaries) == 2 and '"caller_hangup"' in summaries[-1], new.texts
    assert lost.texts == [] and second.active == 0
    await _until(lambda: _gone("resume-1"))


async def test_a_resume_on_the_same_replica_and_none_at_all(serve_app: ServeApp) -> None:
    runtime = AgentRuntime(AttendantConfig(resume_grace_s=0.3))
    lost, new = _Socket(), _Socket()
    call = await _open(runtime, "resume-2", lost)
    lost.broken = True
    runtime.detach(call)
    resumed = await runtime.resume(_start("resume-2"), new.text, new.bytes)
    assert resumed is not None and runtime.detached == {} and runtime.active == 1
    await asyncio.sleep(0.6)  # past the old socket's grace: nothing ended
    assert await _alive("resume-2")
    # now this socket goes too, and no resume comes: the call ends with the grace
    new.broken = True
    runtime.detach(resumed)

    async def ended() -> bool:
        return runtime.active == 0 and runtime.detached == {}

    await _until(ended)
    await _until(lambda: _gone("resume-2"))
    assert await runtime.resume(_start("resume-2"), _Socket().text, _Socket().bytes) is None


async def test_a_second_start_of_a_live_call_gets_its_own_agent(serve_app: ServeApp) -> None:
    """A start without resume for a call id whose agent lives on (the name is taken): the new call
    gets an agent of its own, unnamed, and ending it leaves the first alone."""
    runtime = AgentRuntime(AttendantConfig())
    one, two = _Socket(), _Socket()
    first = await _open(runtime, "resume-3", one)
    second = await _open(runtime, "resume-3", two)
    assert runtime.active == 2 and second._actor is not first._actor
    await second.finish("caller_hangup")
    assert any('"attendant.summary"' in t for t in two.texts) and one.texts == []
    assert await _alive("resume-3")  # the named one is the first call's
    await first.finish("caller_hangup")
    assert any('"attendant.summary"' in t for t in one.texts) and runtime.active == 0
    await _until(lambda: _gone("resume-3"))


def _die(call: AttendantCall) -> None:
    """The replica holding ``call`` dies: no detach, no grace, its lease stops renewing."""
    call._closed = True
    for task in (call._pump, call._lease):
        assert task is not None
        task.cancel()


async def test_a_call_outlives_a_replica_that_dies_without_a_word(serve_app: ServeApp) -> None:
    """The agent is detached: a resume through another replica goes on with it; without a resume the
    agent sees its lease run out, waits the grace, and ends itself."""
    config = AttendantConfig(resume_grace_s=1.0, lease_s=0.2)
    dead, other = AgentRuntime(config), AgentRuntime(config)
    _die(await _open(dead, "resume-4", _Socket()))
    await asyncio.sleep(0.6)  # past two lease periods
    new = _Socket()
    resumed = await other.resume(_start("resume-4"), new.text, new.bytes)
    assert resumed is not None
    await asyncio.sleep(1.5)  # past the grace: the call is held again, nothing ends
    assert await _alive("resume-4")
    await resumed.finish("caller_hangup")
    assert any('"attendant.summary"' in t and '"caller_hangup"' in t for t in new.texts), new.texts
    await _until(lambda: _gone("resume-4"))

    t0 = asyncio.get_running_loop().time()
    _die(await _open(dead, "resume-5", _Socket()))
    await _until(lambda: _gone("resume-5"))  # lease out (~0.4 s), then the grace (1 s)
    assert asyncio.get_running_loop().time() - t0 > 1.0
