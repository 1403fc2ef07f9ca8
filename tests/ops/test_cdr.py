from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from pbx_edge.ops.cdr import FIELDS, CdrStore, records_from_csv
from pbx_edge.ops.db import BatchWriter, LazyEngine
from pbx_edge.ops.models import CdrRecord

pytestmark = pytest.mark.timeout(30)

DISPOSITIONS = ("answered", "no_answer", "busy", "failed", "cancelled", "rejected")
T0 = 1_700_000_000.0


def make_record(i: int, **overrides: Any) -> CdrRecord:
    disposition = DISPOSITIONS[i % len(DISPOSITIONS)]
    answered = disposition == "answered"
    start = T0 + i
    end = start + 30.5
    fields: dict[str, Any] = {
        "call_id": f"call-{i}",
        "node_id": "edge-1",
        "a_call_id": f"a{i}@10.0.0.1",
        "b_call_id": f"b{i}@10.0.0.2" if i % 4 else None,
        "caller": f"10{i % 5}",
        "callee": f"20{i % 7}",
        "start": start,
        "answer": start + 2.25 if answered else None,
        "end": end,
        "duration": end - start,
        "billsec": end - (start + 2.25) if answered else 0.0,
        "disposition": disposition,
        "end_reason": "caller_bye" if answered else "no_answer",
        "hangup_side": "caller" if answered else "edge",
        "sip_code": 200 if answered else 486,
        "codec": "PCMU" if answered else None,
    }
    fields.update(overrides)
    return CdrRecord.model_validate(fields)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CdrStore]:
    cdr = CdrStore(f"sqlite:///{tmp_path}/nested/dir/cdr.sqlite3", flush_interval=0.02)
    await cdr.start()
    yield cdr
    await cdr.close()


async def test_n_in_n_out(store: CdrStore) -> None:
    records = [make_record(i) for i in range(250)]
    for record in records:
        store.add(record)
    got, total = await store.query(limit=1000)
    assert total == 250
    assert await store.count() == 250
    assert sorted(got, key=lambda r: r.start) == records  # every field round-trips
    assert [r.start for r in got] == sorted((r.start for r in records), reverse=True)  # newest first


async def test_background_writer_commits_without_an_explicit_flush(store: CdrStore) -> None:
    store.add(make_record(1))
    assert store.pending == 1
    for _ in range(100):
        if store.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert store.pending == 0


async def test_query_sees_records_still_buffered(store: CdrStore) -> None:
    store.add(make_record(1))
    store.add(make_record(2))
    got, total = await store.query()  # no flush in between
    assert total == 2
    assert {r.call_id for r in got} == {"call-1", "call-2"}


async def test_filters(store: CdrStore) -> None:
    records = [make_record(i) for i in range(60)]
    for record in records:
        store.add(record)

    async def ids(**filters: Any) -> set[str]:
        got, total = await store.query(limit=1000, **filters)
        assert total == len(got)
        return {r.call_id for r in got}

    def expect(predicate: Any) -> set[str]:
        return {r.call_id for r in records if predicate(r)}

    assert await ids(since=T0 + 10, until=T0 + 20) == expect(lambda r: T0 + 10 <= r.start < T0 + 20)
    assert await ids(caller="102") == expect(lambda r: r.caller == "102")
    assert await ids(callee="203") == expect(lambda r: r.callee == "203")
    assert await ids(disposition="busy") == expect(lambda r: r.disposition == "busy")
    assert await ids(caller="101", disposition="answered", since=T0 + 5) == expect(
        lambda r: r.caller == "101" and r.disposition == "answered" and r.start >= T0 + 5
    )
    assert await ids(caller="nobody") == set()
    assert await store.count(disposition="answered") == len(expect(lambda r: r.disposition == "answered"))


async def test_pagination(store: CdrStore) -> None:
    for i in range(95):
        store.add(make_record(i))
    pages = []
    for offset in range(0, 100, 20):
        page, total = await store.query(limit=20, offset=offset)
        assert total == 95
        pages.append(page)
    assert [len(p) for p in pages] == [20, 20, 20, 20, 15]
    starts = [r.start for page in pages for r in page]
    assert starts == sorted(starts, reverse=True)
    assert len(set(starts)) == 95
    empty, total = await store.query(limit=20, offset=200)
    assert empty == [] and total == 95


async def test_csv_round_trip(store: CdrStore) -> None:
    records = [make_record(i) for i in range(30)]
    for record in records:
        store.add(record)
    text = await store.export_csv()
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == FIELDS
    assert len(rows) == 31
    assert records_from_csv(text) == records  # oldest first, every field

    busy = await store.export_csv(disposition="busy")
    assert records_from_csv(busy) == [r for r in records if r.disposition == "busy"]
    assert records_from_csv(await store.export_csv(caller="nobody")) == []


async def test_close_then_reopen_keeps_records(tmp_path: Path) -> None:
    path = tmp_path / "cdr.sqlite3"
    first = CdrStore(f"sqlite:///{path}", flush_interval=10.0)  # only close() will write
    await first.start()
    records = [make_record(i) for i in range(40)]
    for record in records:
        first.add(record)
    await first.close()
    with pytest.raises(RuntimeError):
        first.add(make_record(99))  # refused, not silently lost

    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"

    second = CdrStore(f"sqlite:///{path}")
    await second.start()
    try:
        got, total = await second.query(limit=100)
        assert total == 40
        assert sorted(got, key=lambda r: r.start) == records
    finally:
        await second.close()


async def test_a_misspelled_filter_is_refused(store: CdrStore) -> None:
    typo: dict[str, Any] = {"disposal": "busy"}
    for read in (store.query, store.export_csv, store.count):
        with pytest.raises(TypeError, match="disposal"):
            await read(**typo)


async def test_reads_after_close_reopen_the_database(tmp_path: Path) -> None:
    cdr = CdrStore(f"sqlite:///{tmp_path}/cdr.sqlite3")
    cdr.add(make_record(1))
    await cdr.close()  # never started: close() opens the database to write what was accepted
    assert await cdr.count() == 1
    await cdr.close()


async def test_lazy_engine_opens_once_until_disposed(tmp_path: Path) -> None:
    opened: list[Engine] = []
    database = LazyEngine(f"sqlite:///{tmp_path}/x.sqlite3", opened.append, owner="Thing")
    with pytest.raises(RuntimeError, match="Thing is not started"):
        _ = database.engine
    first, second = await asyncio.gather(database.open(), database.open())
    assert first is second is database.engine and opened == [first]
    database.dispose()
    with pytest.raises(RuntimeError, match="not started"):
        _ = database.engine
    assert await database.open() is not first and len(opened) == 2
    database.dispose()


async def test_add_before_start_is_kept(tmp_path: Path) -> None:
    cdr = CdrStore(f"sqlite:///{tmp_path}/cdr.sqlite3")
    cdr.add(make_record(1))
    await cdr.start()
    try:
        assert await cdr.count() == 1
    finally:
        await cdr.close()


async def test_batch_writer_keeps_a_failed_batch_and_retries_it() -> None:
    written: list[int] = []
    failures = [2]

    def write(batch: list[int]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("disk full")
        written.extend(batch)

    writer: BatchWriter[int] = BatchWriter("test", write, interval=0.01, max_batch=7)
    for i in range(10):
        writer.put(i)
    with pytest.raises(OSError):
        await writer.flush()  # an explicit flush reports the failure...
    assert writer.pending == 10  # ...and keeps every item
    writer.start()  # the background loop retries with backoff
    for i in range(10, 25):
        writer.put(i)
    for _ in range(300):
        if writer.pending == 0:
            break
        await asyncio.sleep(0.01)
    writer.put(25)
    await writer.close()
    assert written == list(range(26))  # once each, in order
    assert writer.write_errors == 2
    with pytest.raises(RuntimeError):
        writer.put(26)
