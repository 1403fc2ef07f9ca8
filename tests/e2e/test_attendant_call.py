"""The AI attendant end to end (issue 8), nothing fake: a phone calls extension 201 (the test clinic)
through a real edge (in this process, to see its event bus); the callee rings and never answers, so
after the no-answer timer the edge answers and streams the call to the session's live Serve app
(``serve_app`` + the ``smartpbx-roles`` app with a knowledge base of the clinic's answers).

The caller sends PCMU RTP in real time: a noise floor, then espeak-ng asking "What time do you open on
Saturday?" once the greeting has played. What it receives is decoded, and whisper-base (as
ai_serve/eval does) must hear the knowledge base's Saturday hours in the answer; then the caller says
"No, that's all, thank you.", the attendant says goodbye and hangs up: the edge sends the caller a BYE,
and its events show ``call.ai_answered``, the ``attendant.summary`` and ``call.ended``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from ai_serve.eval.speech import normalize
from bench._attendant_call import EventLog, SpeakingCaller, converse, edge_config
from pbx_edge.edge import EdgeNode
from pbx_edge.ops.config import parse_config
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.test_ai_answer import RingingPhone
from tests.serve_cluster import ServeApp, figure

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


async def test_a_caller_hears_the_knowledge_base_answer_through_the_edge(
    e2e: E2E, clinic_roles: ServeApp, whisper: Any
) -> None:
    soxr = pytest.importorskip("soxr")
    clinic = clinic_roles

    callee = await RingingPhone().start()
    caller = await SpeakingCaller().start()
    port = e2e.ports.port()
    settings = edge_config(e2e.workdir, port, clinic.ws_url, "no_answer", (24800, 25400), callee.sip_port)
    node = EdgeNode(parse_config(settings, environ={}))
    log = EventLog()
    node.ops.bus.subscribe(log.append)
    await node.start()
    try:
        times = await converse(caller, (LOOPBACK, port), log, timeout=120.0)
        await asyncio.sleep(0.5)
        assert node.core.calls == {}
    finally:
        await caller.close()
        await node.stop()
        callee.close()

    figure(
        f"attendant call: greeting {times.greeting_after_trigger:.2f} s after the no-answer trigger, "
        f"answer {times.voice_to_voice:.2f} s after the caller stopped speaking (voice to voice)"
    )
    # the callee rang and was cancelled when the attendant answered
    assert [r.method for r in callee.requests] == ["INVITE", "CANCEL", "ACK"]
    # what the caller heard after its question: whisper hears the Saturday hours
    assert len(times.answer_pcm) > 8000  # more than a second
    pcm16 = np.asarray(soxr.resample(times.answer_pcm.astype(np.float32) / 32768, 8000, 16000), np.float32)
    pcm = (np.clip(pcm16, -1, 1) * 32767).astype("<i2")
    segments = await asyncio.to_thread(whisper.transcribe, pcm, "en")
    text = " ".join(s.text for s in segments)
    figure(f"attendant call: whisper heard the answer at the caller as {text!r}")
    words = set(normalize(text))
    assert "saturday" in words and words & {"nine", "9", "9am"}, text
    # the edge's events: answered by the AI on no_answer, the attendant's summary, ended by its hangup
    mine = [e for _, e in log.of_call(times.a_call_id)]
    names = [e.name for e in mine]
    assert names.index("call.ai_answered") < names.index("attendant.summary") < names.index("call.ended")
    (ai_answered,) = [e for e in mine if e.name == "call.ai_answered"]
    assert ai_answered.data["trigger"] == "no_answer" and ai_answered.data["codec"] == "PCMU/8000"
    (summary,) = [e for e in mine if e.name == "attendant.summary"]
    assert summary.data["answer_given"] is True
    # "completed" when the caller's goodbye was understood; on a loaded machine its final can come
    # too late or misheard, and the attendant ends politely after its re-prompts ("no_response")
    assert summary.data["reason"] in ("completed", "no_response"), summary.data
    assert summary.data["answers"][0]["matched"] == "What are your opening hours on Saturday?"
    (ended,) = [e for e in mine if e.name == "call.ended"]
    assert ended.data["disposition"] == "answered" and ended.data["hangup_side"] == "edge"
