"""``smartpbx watch`` against a real admin API serving a real event bus."""

from __future__ import annotations

import asyncio
import io
from collections import deque
from pathlib import Path

import pytest

from pbx_edge.cli import main
from pbx_edge.ops.admin_api import make_admin_app, start_admin
from pbx_edge.ops.events import EventBus, new_event_id
from pbx_edge.ops.models import Event
from pbx_edge.watch import format_event, new_events, watch
from tests.ops.test_admin_api import TOKENS, VIEWER, FakeCdr, FakeNode


def _event(name: str, **data: object) -> Event:
    return Event(id=new_event_id(), name=name, time=1.0, node_id="n", call_id="c0ffee42aa", caller="100",
                 callee="200", data=data)  # fmt: skip


def test_lines_for_finals_partials_and_gaps() -> None:
    final = _event("transcript.final", leg="caller", text="hello", start=61.25, end=62.0, language="en")
    line = format_event(final.model_dump())
    assert line == "c0ffee42 01:01.2-01:02.0 caller(100) [en]: hello"
    gap = format_event(
        _event("transcript.gap", leg="callee", start=1, end=3, reason="stt_failed").model_dump()
    )
    assert gap == "c0ffee42 00:01.0-00:03.0 callee(200) -- no transcript (stt_failed) --"
    partial = _event("transcript.partial", leg="callee", text="yes", start=0, end=1, speaker="S2")
    assert format_event(partial.model_dump()) == "c0ffee42 00:00.0-00:01.0 callee(200) S2 ... yes"
    assert format_event(_event("call.answered").model_dump()) is None


def test_seen_ids_are_skipped_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pbx_edge.watch.SEEN_KEPT", 3)
    seen: set[str] = set()
    order: deque[str] = deque()
    events = [{"id": str(n)} for n in range(5)]
    assert len(new_events(events, seen, order)) == 5
    assert new_events(events[-2:], seen, order) == []
    assert len(seen) == 3 and new_events([{"id": "0"}], seen, order) == [{"id": "0"}]


async def test_watch_prints_new_transcripts_as_they_are_published() -> None:
    bus = EventBus()
    bus.publish(_event("call.answered"))
    bus.publish(_event("transcript.final", leg="caller", text="first", start=0, end=1))
    runner = await start_admin(make_admin_app(FakeNode(), bus, FakeCdr([]), TOKENS), "127.0.0.1", 0)
    api = f"http://127.0.0.1:{runner.addresses[0][1]}"
    out = io.StringIO()

    def done() -> bool:
        return out.getvalue().count("\n") >= 3

    async def later() -> None:
        await asyncio.sleep(0.2)
        bus.publish(_event("transcript.partial", leg="callee", text="not shown", start=1, end=2))
        bus.publish(_event("transcript.final", leg="callee", text="second", start=1, end=2))
        bus.publish(_event("transcript.gap", leg="caller", start=2, end=4, reason="disconnected"))

    try:
        publisher = asyncio.create_task(later())
        code = await asyncio.wait_for(watch(api, VIEWER, out=out, interval=0.05, until=done), 10)
        await publisher
        assert code == 0
        lines = out.getvalue().splitlines()
        assert [line.split(": ")[-1] for line in lines[:2]] == ["first", "second"]
        assert "no transcript (disconnected)" in lines[2] and "not shown" not in out.getvalue()
        assert await watch(api, "wrong-token", out=out) == 1
    finally:
        await runner.cleanup()


def test_cli_without_a_token_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--token-file", str(tmp_path / "none")]) == 2
    assert "smartpbx token" in capsys.readouterr().err
