"""The agent's outputs handed from one reader (an ingress socket) to the next (agents/wire_outbox.py)."""

from __future__ import annotations

import asyncio

import pytest

from ai_serve.agents.wire_outbox import WireItem, WireOutbox, is_speech, reader_token
from pbx_edge.ai_link.protocol import AgentEvent, HangupAction, PlayAction, StopPlaybackAction

SUMMARY: WireItem = ("json", AgentEvent(name="attendant.summary", data={"reason": "x"}).to_json())
HANGUP: WireItem = ("json", HangupAction(reason="attendant_completed").to_json())
PLAY: WireItem = ("json", PlayAction(leg="caller", text="Hello").to_json())
STOP: WireItem = ("json", StopPlaybackAction(leg="caller").to_json())
AUDIO: WireItem = ("audio", b"\0" * 640)


async def _take(outbox: WireOutbox, token: str, n: int) -> list[WireItem]:
    got: list[WireItem] = []
    async with asyncio.timeout(2):
        async for item in outbox.read(token):
            got.append(item)
            if len(got) == n:
                break
    return got


def test_speech_is_audio_and_its_controls() -> None:
    assert is_speech(PLAY) and is_speech(STOP) and is_speech(AUDIO)
    assert not is_speech(SUMMARY) and not is_speech(HANGUP)


async def test_one_reader_reads_in_order_until_the_end() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    for item in (PLAY, AUDIO, SUMMARY, None):
        outbox.put(item)
    assert [i async for i in outbox.read("a")] == [PLAY, AUDIO, SUMMARY]
    assert outbox.ended


async def test_a_newer_reader_ends_the_older_without_taking_its_items() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    older = asyncio.create_task(_take(outbox, "a", 5))
    await asyncio.sleep(0)
    outbox.put(SUMMARY)
    await asyncio.sleep(0)
    outbox.open("b", resumed=True)
    outbox.put(HANGUP)
    assert await older == [SUMMARY]  # it ended at the hand-over, HANGUP is b's
    assert await _take(outbox, "b", 1) == [HANGUP]


async def test_paused_items_wait_and_a_resume_gets_what_is_owed_first_without_stale_speech() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    outbox.put(SUMMARY)
    assert await _take(outbox, "a", 1) == [SUMMARY]
    assert outbox.pause("a") and outbox.reader is None
    outbox.give_back(SUMMARY)  # "a" took it but its socket broke under it
    outbox.give_back(AUDIO)  # speech given back is dropped
    for item in (PLAY, AUDIO, HANGUP, STOP):
        outbox.put(item)  # said while nobody listened
    assert outbox.undelivered() == [SUMMARY, HANGUP]
    assert outbox.unclaimed_since("a")
    outbox.open("b", resumed=True)
    assert not outbox.unclaimed_since("a")
    assert await _take(outbox, "b", 2) == [SUMMARY, HANGUP]
    outbox.put(PLAY)  # speech after the resume is live again
    assert await _take(outbox, "b", 1) == [PLAY]


async def test_a_stale_pause_does_not_stop_the_reader_that_took_over() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    outbox.open("b", resumed=True)  # the resume came before "a" noticed its socket was gone
    assert not outbox.pause("a")
    assert outbox.reader == "b" and not outbox.unclaimed_since("a")
    outbox.put(SUMMARY)
    assert await _take(outbox, "b", 1) == [SUMMARY]


async def test_a_pause_that_overtakes_its_stream_start_leaves_the_call_unclaimed() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    assert not outbox.pause("b")  # "b"'s socket went before its stream reached the actor
    outbox.open("b", resumed=True)
    assert outbox.reader is None and outbox.unclaimed_since("b")
    assert [i async for i in outbox.read("a")] == []  # the older reader ended all the same
    outbox.open("c", resumed=True)
    assert outbox.reader == "c"


async def test_a_stream_older_than_the_newest_reads_nothing() -> None:
    outbox = WireOutbox()
    older, newer = reader_token(), reader_token()
    outbox.open(newer, resumed=True)
    outbox.open(older)  # its request overtaken by the newer socket's
    assert outbox.reader == newer and outbox.last_reader == newer
    outbox.put(SUMMARY)
    assert [i async for i in outbox.read(older)] == []
    assert await _take(outbox, newer, 1) == [SUMMARY]


async def test_items_given_back_come_in_the_order_they_were_taken() -> None:
    outbox = WireOutbox()
    outbox.open("a")
    items: list[WireItem] = [
        ("json", AgentEvent(name="ivr.intent", data={"n": n}).to_json()) for n in range(4)
    ]
    for item in items:
        outbox.put(item)
    taken = await _take(outbox, "a", 3)
    outbox.pause("a")
    for item in taken:
        outbox.give_back(item)
    outbox.open("b", resumed=True)
    assert await _take(outbox, "b", 4) == items


def test_get_nowait_without_a_reader() -> None:
    outbox = WireOutbox()
    outbox.put(SUMMARY)
    outbox.give_back(HANGUP)
    assert outbox.get_nowait() == HANGUP and outbox.get_nowait() == SUMMARY
    with pytest.raises(IndexError):
        outbox.get_nowait()
