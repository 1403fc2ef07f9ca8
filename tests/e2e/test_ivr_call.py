"""The natural-language IVR end to end (issue 8), nothing fake but the billing system: a phone whose
number is ``CALLER`` calls 1200 (an IVR number of the edge) through a real edge in this process; the
edge answers at once and streams the call in mode ``ivr`` to the session's live Serve app, which runs
the shipped flow (config/ivr/example.yaml) and tools (config/tools.yaml, billing on a test server).

The caller sends PCMU RTP in real time: after the flow's greeting, espeak-ng says "I want to check my
bill"; what it hears next is decoded and whisper-base must hear the balance the billing server gave
for the caller's number. Then the caller presses 1 (a SIP INFO, as many desk phones send DTMF): the
flow looks the bill up again. The caller hangs up; the edge's events show ``call.ai_answered``
(trigger ``ivr``), the two ``ivr.intent`` events (speech, then keypad) and the ``ivr.summary``, and the
tool audit log has both calls with the caller's number masked.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest

from ai_serve.agents.audit import AuditLog
from ai_serve.eval.speech import normalize
from bench._attendant_call import SpeakingCaller, talk_ends, until
from tests.e2e.edge_node import edge_config, running_edge
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.test_ivr_ws import ASK, CALLER, Billing, ivr_roles
from tests.serve_cluster import ServeApp, figure

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
__all__ = ["ivr_roles"]  # the fixture, shared with the WebSocket-level test

IVR_NUMBER = "1200"
DTMF_RELAY = b"Signal=1\r\nDuration=160\r\n"


async def test_an_ivr_call_through_the_edge_reads_the_bill_by_speech_and_keypad(
    e2e: E2E, ivr_roles: ServeApp, whisper: Any
) -> None:
    soxr = pytest.importorskip("soxr")
    app = ivr_roles
    port = e2e.ports.port()
    settings = edge_config(
        e2e, port, routing={"ivr_numbers": [IVR_NUMBER]}, media=(25500, 26100), ai_port=app.port
    )
    settings["ai"].update(language="en", connect_timeout=30.0)
    caller = SpeakingCaller(number=CALLER)
    async with Billing(app.billing_port) as billing, running_edge(settings) as (node, events):
        await caller.start()
        try:
            loop = asyncio.get_running_loop()
            invited = loop.time()
            dialog = await caller.call((LOOPBACK, port), user=IVR_NUMBER)
            assert dialog.final == 200
            greeting = await until(caller, lambda: caller.first_loud(invited), 120, "the greeting")
            greeting_end = await talk_ends(caller, greeting, 120)
            caller.say(ASK)
            await until(caller, lambda: True if caller.speech_ended.is_set() else None, 30, "the question")
            asked_end = caller.speech_ended_at
            await until(caller, lambda: True if billing.phones else None, 120, f"the lookup {_story(events)}")
            assert billing.phones == [CALLER]
            looked_up = loop.time()  # the answer is said after the lookup
            answer = await until(
                caller, lambda: caller.first_loud(max(looked_up, greeting_end)), 60, "the answer"
            )
            answer_end = await talk_ends(caller, answer, 120)
            answer_pcm = caller.audio(answer - 0.1, answer_end + 0.1)
            info = dialog.request("INFO", 2, DTMF_RELAY, content_type="application/dtmf-relay")
            caller.phone._send(info, (LOOPBACK, port))
            await until(caller, lambda: True if len(billing.phones) == 2 else None, 60, "the keypad's lookup")
            await asyncio.sleep(0.5)
            caller.phone._send(dialog.request("BYE", 3), (LOOPBACK, port))
            await until(caller, lambda: _summary(events), 60, "the ivr.summary")
        finally:
            await caller.close()
        assert node.core.calls == {}

    figure(f"ivr call: greeting {greeting - invited:.2f} s after the INVITE, answer "
           f"{answer - asked_end:.2f} s after the caller stopped speaking")  # fmt: skip
    # what the caller heard: whisper hears the balance
    pcm16 = np.asarray(soxr.resample(answer_pcm.astype(np.float32) / 32768, 8000, 16000), np.float32)
    segments = await asyncio.to_thread(
        whisper.transcribe, (np.clip(pcm16, -1, 1) * 32767).astype("<i2"), "en"
    )
    text = " ".join(s.text for s in segments)
    figure(f"ivr call: whisper heard the answer at the caller as {text!r}")
    assert "balance" in normalize(text) and re.search(r"\b42\b|forty[- ]two", text.lower()), text
    # the edge's events for the call
    mine = [e for e in events if e.a_call_id == dialog.call_id]
    (answered,) = [e for e in mine if e.name == "call.ai_answered"]
    assert answered.data["trigger"] == "ivr"
    intents = [(e.data["intent"], e.data["source"]) for e in mine if e.name == "ivr.intent"]
    assert intents == [("check_bill", "speech"), ("check_bill", "dtmf")], _story(events)
    summary = _summary(events)
    assert summary is not None and [c["ok"] for c in summary.data["tool_calls"]] == [True, True]
    # the audit log: both lookups, for this call, the number masked
    log = AuditLog(app.audit_url)
    try:
        rows = (await log.query(call_id=answered.call_id)).items
    finally:
        await log.close()
    assert [(r.tool, r.status) for r in rows] == [("billing.lookup", "ok")] * 2
    assert all(CALLER not in str(r.arguments) for r in rows)


def _story(events: list[Any]) -> str:
    """What the edge saw of the AI side, for a failure's message."""
    names = ("ivr.", "transcript", "dtmf", "call.")
    told = [(e.name, e.data.get("text") or e.data.get("intent") or e.data.get("digit"), e.data.get("source"))
            for e in events if e.name.startswith(names)]  # fmt: skip
    return repr(told)


def _summary(events: list[Any]) -> Any:
    return next((e for e in events if e.name == "ivr.summary"), None)
