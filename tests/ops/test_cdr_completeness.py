"""CDR generation 100 % (FR23): every INVITE that reaches the core ends in exactly one record,
whatever ends the call: BYE from either side, CANCEL, busy, no answer, transaction timeout, 503
while refusing, an error in a handler, media timeout, shutdown."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from pbx_edge.ops.call_events import CallEventAdapter
from pbx_edge.ops.models import CdrRecord, Event
from tests.b2bua.harness import Wire, make_core
from tests.b2bua.scenarios import Scenario

CALLS = 2000


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.records: list[CdrRecord] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def add(self, record: CdrRecord) -> None:
        self.records.append(record)


def test_every_call_gets_exactly_one_cdr_whatever_ends_it() -> None:
    core = make_core()
    wire = Wire(core)
    sink = Sink()
    adapter = CallEventAdapter("edge-t", sink, sink, lambda: wire.now, wall=lambda: 1.7e9 + wire.now)
    core.listeners.append(adapter.on_call)
    core.notice_listeners.append(adapter.on_notice)
    scenario = Scenario(core, wire)
    endings: list[Callable[[int], None]] = [
        scenario.caller_bye,
        scenario.callee_bye,
        scenario.cancel,
        scenario.busy,
        scenario.handler_error,
        scenario.media_timeout,
        scenario.unanswered,
        scenario.refused,
        scenario.shutdown,
    ]
    rng = random.Random(23)
    used: Counter[str] = Counter()
    for i in range(CALLS):
        ending = rng.choice(endings)
        used[ending.__name__] += 1
        ending(i)
        if i % 50 == 49:
            wire.advance(40)  # the no-answer timer (10 s) and Timer B/F (32 s) fire
        wire.sent.clear()
    wire.advance(100)
    assert not core.calls
    records = sink.records
    assert len(records) == CALLS
    assert len({r.a_call_id for r in records}) == CALLS
    by_reason = Counter(r.end_reason for r in records)
    assert by_reason["caller_bye"] == used["caller_bye"]
    assert by_reason["callee_bye"] == used["callee_bye"]
    assert by_reason["caller_cancel"] == used["cancel"]
    assert by_reason["media_timeout"] == used["media_timeout"]
    assert by_reason["shutdown"] == used["shutdown"]
    assert by_reason["draining"] == used["refused"]
    assert by_reason["error"] == used["handler_error"]
    assert by_reason["no_answer"] == used["unanswered"]  # no-answer timer (10 s) before Timer B
    dispositions = Counter(r.disposition for r in records)
    assert dispositions["busy"] == used["busy"]
    assert dispositions["cancelled"] == used["cancel"]
    assert dispositions["no_answer"] == used["unanswered"]
    answered = used["caller_bye"] + used["callee_bye"] + used["media_timeout"] + used["shutdown"]
    assert dispositions["answered"] == answered + used["handler_error"]  # the error came after the 200
    for record in records:
        assert record.start <= record.end and record.duration >= record.billsec >= 0
        assert record.sip_code is not None
    ended = [e for e in sink.events if e.name == "call.ended"]
    assert len(ended) == CALLS
