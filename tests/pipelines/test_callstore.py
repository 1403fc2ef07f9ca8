"""Reading the call store: a date range of day folders, local or through fsspec, each file one call with
its turns in time order across legs; bad lines skipped and counted, unknown schemas refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped,unused-ignore]
import pytest

from pbx_edge.ai_link.protocol import TranscriptEvent, TranscriptGap
from pbx_edge.ai_link.transcripts import TranscriptStore
from pbx_edge.ops.models import Event
from pipelines.callstore import (
    ReadStats,
    UnsupportedSchemaError,
    days_between,
    list_call_files,
    parse_call,
    read_call_file,
    read_calls,
)
from pipelines.sample_data import generate

DAY1, DAY2, DAY3 = date(2025, 11, 24), date(2025, 11, 25), date(2025, 11, 26)
ANSWERED = 1_764_028_800.0 + 3600  # 2025-11-25 01:00 UTC


def _record(leg: str, text: str | int, start: float, end: float, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 2, "call_id": "c1", "a_call_id": "a@x", "b_call_id": "b@y", "node_id": "edge-1",
        "caller": "01012345678", "callee": "1100", "answered_at": ANSWERED, "kind": "segment", "leg": leg,
        "speaker": None, "text": text, "start": start, "end": end, "confidence": 0.9, "language": "en",
        "utterance_id": None, "reason": None, "received_at": ANSWERED + end + 1,
    }  # fmt: skip
    record.update(extra)
    return record


def _lines(*records: dict[str, Any] | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def _write(root: Path, day: date, call_id: str, *records: dict[str, Any] | str) -> Path:
    path = root / day.isoformat() / f"{call_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_lines(*records), encoding="utf-8")
    return path


def test_turns_are_sorted_across_legs_and_gaps_summed(tmp_path: Path) -> None:
    path = _write(
        tmp_path, DAY2, "c1",  # arrival order: the agent's long answer lands after the interruption
        _record("callee", "Hello, Maple Family Clinic.", 0.5, 2.0, utterance_id="u1"),
        _record("caller", "What time do you open?", 2.4, 3.6, utterance_id="u2"),
        _record("caller", "sorry, what?", 4.8, 5.5, utterance_id="u3"),
        _record("callee", "We're open at", 4.0, 5.2, utterance_id="u4"),
        _record("callee", "", 5.0, 6.0, kind="gap", reason="overflow", confidence=None),
        _record("callee", "", 9.0, 11.25, kind="gap", reason="stt_failed", confidence=None),
        _record("callee", "We're open at 8:30.", 6.0, 7.5, utterance_id="u5"),
    )  # fmt: skip
    stats = ReadStats()
    (call,) = read_calls(tmp_path, DAY2, DAY2, stats=stats)
    assert [t.text for t in call.turns] == [
        "Hello, Maple Family Clinic.", "What time do you open?", "We're open at", "sorry, what?",
        "We're open at 8:30.",
    ]  # fmt: skip
    assert [t.leg for t in call.turns] == ["callee", "caller", "callee", "caller", "callee"]
    assert call.gap_seconds == pytest.approx(3.25)
    assert (call.call_id, call.day, call.node_id) == ("c1", "2025-11-25", "edge-1")
    assert call.answered_at == ANSWERED
    assert (call.caller, call.callee, call.business_unit) == ("01012345678", "1100", "maple-clinic")
    assert call.turns[0].language == "en" and call.turns[0].confidence == 0.9
    assert stats == ReadStats(files=1, calls=1, segments=5, gaps=2)
    assert read_call_file(str(path)) == call


def test_only_the_days_of_the_range_are_read(tmp_path: Path) -> None:
    for day in (DAY1, DAY2, DAY3):
        for n in (2, 1):
            _write(tmp_path, day, f"{day:%d}-{n}", _record("caller", f"hi {day}", 0.0, 1.0))
    (tmp_path / DAY2.isoformat() / "notes.txt").write_text("not a call")
    (tmp_path / "gold_facts.jsonl").write_text("{}\n")  # the sample data's gold file is not a call
    files = list_call_files(tmp_path, DAY2, DAY3)
    assert [Path(f).relative_to(tmp_path).as_posix() for f in files] == [
        "2025-11-25/25-1.jsonl", "2025-11-25/25-2.jsonl", "2025-11-26/26-1.jsonl", "2025-11-26/26-2.jsonl",
    ]  # fmt: skip
    calls = list(read_calls(str(tmp_path), DAY2, DAY3))
    assert [c.day for c in calls] == ["2025-11-25", "2025-11-25", "2025-11-26", "2025-11-26"]
    assert [c.turns[0].text for c in calls][::2] == ["hi 2025-11-25", "hi 2025-11-26"]
    assert list(read_calls(tmp_path, date(2025, 12, 1), date(2025, 12, 31))) == []  # no such folders
    assert len(list_call_files(f"file://{tmp_path}", DAY1, DAY3)) == 6
    assert days_between(DAY1, DAY3) == [DAY1, DAY2, DAY3]
    with pytest.raises(ValueError, match="after"):
        list_call_files(tmp_path, DAY3, DAY1)


@pytest.fixture
def memory_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/callstore-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_an_fsspec_url_is_a_root(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    base = memory_root.removeprefix("memory://")
    fs.pipe(f"{base}/2025-11-25/c1.jsonl", _lines(_record("caller", "안녕하세요", 0.0, 1.0)).encode())
    fs.pipe(f"{base}/2025-11-26/c2.jsonl", _lines(_record("callee", "네", 0.0, 1.0, call_id="c2")).encode())
    files = list_call_files(memory_root, DAY2, DAY2)
    assert files == [f"{memory_root}/2025-11-25/c1.jsonl"]
    record = read_call_file(files[0])
    assert record is not None and record.turns[0].text == "안녕하세요"
    calls = list(read_calls(memory_root, DAY1, DAY3))
    assert [(c.call_id, c.day) for c in calls] == [("c1", "2025-11-25"), ("c2", "2025-11-26")]


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    _write(
        tmp_path, DAY2, "c1",
        _record("caller", "first", 0.0, 1.0),
        '{"schema": 2, "kind": "seg',  # cut short by a crash
        "[1, 2]",
        _record("both", "no such leg", 1.0, 2.0),
        _record("caller", 42, 1.0, 2.0),
        _record("caller", "negative", -1.0, 2.0),
        _record("caller", "bad kind", 1.0, 2.0, kind="partial"),
        _record("callee", "", 3.0, 2.0, kind="gap"),  # ends before it starts
        _record("caller", "text", 1.0, 2.0, schema="two"),
        "",
        _record("callee", "second", 2.0, 3.0),
    )  # fmt: skip
    _write(tmp_path, DAY2, "c2", "garbage", '{"schema": 2')
    stats = ReadStats()
    calls = list(read_calls(tmp_path, DAY2, DAY2, stats=stats))
    assert [[t.text for t in c.turns] for c in calls] == [["first", "second"]]
    assert stats == ReadStats(files=2, calls=1, segments=2, gaps=0, malformed=10, empty=1)


def test_schema_1_records_are_segments_and_unknown_schemas_are_refused(tmp_path: Path) -> None:
    old = {"schema": 1, "call_id": "c1", "caller": "1001", "callee": "2002", "answered_at": ANSWERED,
           "leg": "caller", "speaker": None, "text": "hello", "start": 0.0, "end": 0.5}  # fmt: skip
    bare = {"leg": "callee", "text": "hi there", "start": 0.6, "end": 1.0}  # no schema, no metadata
    acme = {"2002": "acme"}
    record = parse_call(_lines(old, bare), path="store/2025-11-25/c1.jsonl", business_by_callee=acme)
    assert record is not None
    assert [(t.leg, t.text) for t in record.turns] == [("caller", "hello"), ("callee", "hi there")]
    assert (record.business_unit, record.answered_at, record.day) == ("acme", ANSWERED, "2025-11-25")
    undated = parse_call(_lines(bare), path="store/2025-11-25/c9.jsonl")
    assert undated is not None and undated.call_id == "c9" and undated.business_unit is None
    assert undated.answered_at == 1_764_028_800.0  # no record says when: the day's start
    assert parse_call(_lines(bare), path="elsewhere/c9.jsonl") is None  # nor the folder
    newer = _record("caller", "new", 1.0, 2.0, schema=3)
    _write(tmp_path, DAY2, "c3", _record("caller", "ok", 0.0, 1.0), newer)
    with pytest.raises(UnsupportedSchemaError, match=r"c3\.jsonl: call store schema 3 is not supported"):
        list(read_calls(tmp_path, DAY2, DAY2))


def test_repeated_finals_are_read_once_and_stats_add_up() -> None:
    text = _lines(
        _record("caller", "hello", 0.0, 1.0, utterance_id="u1"),
        _record("caller", "hello", 0.0, 1.0, utterance_id="u1"),  # resent after a reconnect
        _record("callee", "hello", 0.0, 1.0, utterance_id="u1"),  # the other leg's own u1
    )
    first, second = ReadStats(), ReadStats()
    record = parse_call(text.encode(), path="2025-11-25/c1.jsonl", stats=first)
    assert record is not None and [t.leg for t in record.turns] == ["caller", "callee"]
    parse_call(text, path="2025-11-25/c1.jsonl", stats=second, business_by_callee={})
    first += second
    assert first == ReadStats(files=2, calls=2, segments=4, duplicates=2)
    assert first.to_json()["duplicates"] == 2


def test_what_the_edge_writes_reads_back(tmp_path: Path) -> None:
    call = Event(
        id="e1", name="call.answered", time=ANSWERED, node_id="edge-1", call_id="c42",
        a_call_id="a@x", b_call_id="b@y", caller="1001", callee="1300", data={},
    )  # fmt: skip
    edge = TranscriptStore(tmp_path, wall=lambda: ANSWERED + 30)
    edge.append(call, TranscriptEvent(final=True, leg="callee", text="Rocket Parcel", start=0.2, end=1.0))
    edge.append(call, TranscriptGap(leg="caller", start=0.0, end=1.5, reason="disconnected"))
    edge.append(call, TranscriptEvent(final=True, leg="caller", text="where is it", start=1.6, end=2.0))
    (record,) = read_calls(tmp_path, DAY2, DAY2)
    assert (record.call_id, record.business_unit, record.gap_seconds) == ("c42", "rocket-parcel", 1.5)
    assert [t.text for t in record.turns] == ["Rocket Parcel", "where is it"]


def test_the_sample_store_reads_cleanly(tmp_path: Path) -> None:
    summary = generate(tmp_path, calls=40, days=2, start_day=DAY1)
    stats = ReadStats()
    calls = list(read_calls(tmp_path, DAY1, DAY2, stats=stats))
    assert len(calls) == 40 == stats.calls and stats.malformed == stats.empty == stats.duplicates == 0
    assert stats.segments == summary.segments and stats.gaps == summary.gaps
    assert all(c.business_unit for c in calls) and {c.day for c in calls} == {"2025-11-24", "2025-11-25"}
    for call in calls:
        starts = [t.start for t in call.turns]
        assert starts == sorted(starts)
        assert {t.leg for t in call.turns} == {"caller", "callee"}
