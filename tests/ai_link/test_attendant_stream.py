"""The AI link's side of the attendant: the start message names the mode and the trigger, agent
events reach the action callback as AgentEvent (the bridge publishes them), and the link tells the
B2BUA whether it has room without counting a shed call. Against the real fake-AI WebSocket server
of tests/ai_link/test_client.py."""

from __future__ import annotations

import json
from dataclasses import replace

from pbx_edge.ai_link.link import AiLink
from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, StartMessage
from pbx_edge.media.tap import TapQueue

from .test_client import META, Connection, FakeAi, ai, make_config, start, until

__all__ = ["ai"]  # the fixture, imported for use here


async def test_attendant_start_message_carries_mode_and_trigger(ai: FakeAi) -> None:
    link = AiLink(make_config(ai, modes={}))
    try:
        meta = replace(META, mode="attendant", trigger="busy")
        stream, _ = start(link, TapQueue(10), meta)
        await until(lambda: stream.connected, what="connection")
        first = ai.connections[0].log[0]
        assert isinstance(first, StartMessage)
        assert (first.mode, first.trigger) == ("attendant", "busy")
        plain, _ = start(link, TapQueue(10), replace(META, call_id="call-2"))
        await until(lambda: plain.connected and len(ai.connections) == 2, what="second connection")
        second = ai.connections[1].log[0]
        assert isinstance(second, StartMessage)
        assert (second.mode, second.trigger) == ("transcribe", None)
    finally:
        await link.close()


async def test_agent_events_reach_the_action_callback(ai: FakeAi) -> None:
    async def speak(conn: Connection) -> None:
        event = {"type": "agent_event", "name": "attendant.summary", "data": {"callback": "+1555"}}
        await conn.ws.send_str(json.dumps(event))
        await conn.ws.send_str(json.dumps({"type": "agent_event", "name": "NoDots", "data": {}}))  # refused
        await conn.ws.send_str(json.dumps({"type": "hangup"}))

    ai.script = speak
    link = AiLink(make_config(ai))
    try:
        stream, got = start(link, TapQueue(10))
        await until(lambda: len(got.actions) == 2, what="two messages")
        assert got.actions == [
            AgentEvent(name="attendant.summary", data={"callback": "+1555"}),
            HangupAction(),
        ]
        assert stream.stats.bad_messages == 1
    finally:
        await link.close()


async def test_has_room_counts_nothing(ai: FakeAi) -> None:
    link = AiLink(make_config(ai, max_streams=1))
    try:
        assert link.has_room()
        assert link.admit("call-1")
        assert not link.has_room()
        assert link.stats().shed == 0
        assert not link.admit("call-2")
        assert link.stats().shed == 1
        link.stop_call("call-1")
        assert link.has_room()
    finally:
        await link.close()
    assert not AiLink(make_config(ai, enabled=False)).has_room()
