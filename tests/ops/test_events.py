from __future__ import annotations

import logging
import time

import pytest

from pbx_edge.ops.config import EventsConfig
from pbx_edge.ops.events import EventBus, EventIdGenerator, name_matches, new_event_id
from pbx_edge.ops.models import EVENT_NAMES, Event


def make_event(name: str = "call.started", call_id: str | None = "c1", **data: object) -> Event:
    return Event(id=new_event_id(), name=name, time=time.time(), node_id="edge-1", call_id=call_id, data=data)


def test_subscribers_see_events_in_publish_order() -> None:
    bus = EventBus()
    seen_a: list[str] = []
    seen_b: list[str] = []
    bus.subscribe(lambda e: seen_a.append(e.id))
    bus.subscribe(lambda e: seen_b.append(e.id))
    events = [make_event(name) for name in EVENT_NAMES * 3]
    for event in events:
        bus.publish(event)
    assert seen_a == seen_b == [e.id for e in events]
    assert bus.counts["call.started"] == 3
    assert bus.published == len(events)


def test_unsubscribe_stops_delivery() -> None:
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    bus.publish(make_event())
    unsubscribe()
    unsubscribe()  # idempotent
    bus.publish(make_event())
    assert len(seen) == 1


def test_raising_subscriber_does_not_stop_others(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.name))
    with caplog.at_level(logging.ERROR, logger="pbx_edge.ops"):
        bus.publish(make_event("call.started"))
        bus.publish(make_event("call.ended"))
    assert seen == ["call.started", "call.ended"]
    assert bus.subscriber_errors == 2
    assert "boom" in caplog.text


def test_event_published_from_a_subscriber_keeps_order_for_everyone() -> None:
    bus = EventBus()
    first: list[str] = []
    second: list[str] = []

    def echo(event: Event) -> None:
        first.append(event.name)
        if event.name == "call.started":
            bus.publish(make_event("call.ringing"))

    bus.subscribe(echo)
    bus.subscribe(lambda e: second.append(e.name))
    bus.publish(make_event("call.started"))
    bus.publish(make_event("call.answered"))
    assert first == second == ["call.started", "call.ringing", "call.answered"]


def test_recent_filters_and_bound() -> None:
    bus = EventBus(EventsConfig(recent=5))
    for i in range(8):
        bus.publish(make_event("dtmf" if i % 2 else "call.started", call_id=f"c{i % 3}", n=i))
    recent = bus.recent(100)
    assert [e.data["n"] for e in recent] == [3, 4, 5, 6, 7]  # bounded, oldest first
    assert [e.data["n"] for e in bus.recent(2)] == [6, 7]
    assert [e.data["n"] for e in bus.recent(10, name="dtmf")] == [3, 5, 7]
    assert [e.data["n"] for e in bus.recent(10, name="call.*")] == [4, 6]
    assert [e.data["n"] for e in bus.recent(10, call_id="c1")] == [4, 7]
    assert [e.data["n"] for e in bus.recent(10, name="dtmf", call_id="c1")] == [7]
    assert bus.recent(0) == []
    assert bus.counts["dtmf"] == 4  # counters are not bounded by the ring


def test_recent_matches_either_leg_call_id() -> None:
    bus = EventBus()
    event = make_event(call_id="ours").model_copy(update={"a_call_id": "a@host", "b_call_id": "b@host"})
    bus.publish(event)
    assert bus.recent(5, call_id="a@host") == [event]
    assert bus.recent(5, call_id="b@host") == [event]
    assert bus.recent(5, call_id="other") == []


def test_name_patterns() -> None:
    assert name_matches("*", "dtmf")
    assert name_matches("call.*", "call.ended")
    assert not name_matches("call.*", "registration.added")
    assert name_matches("dtmf", "dtmf")
    assert not name_matches("call", "call.ended")


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_event_ids_stay_monotonic_when_the_clock_steps_back() -> None:
    generate = EventIdGenerator()
    times = [1000.0, 1000.0, 999.0, 1000.0005, 1001.0, 500.0]
    ids = [generate(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert generate(2000.0) > ids[-1]
    # The time part leads: a later millisecond sorts after any id of an earlier one.
    assert EventIdGenerator()(1.001) > EventIdGenerator()(1.000)
