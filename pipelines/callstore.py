"""Reading calls from the call store (pbx_edge/ai_link/transcripts.py) for the knowledge pipeline.

The store is ``<root>/<YYYY-MM-DD>/<call_id>.jsonl`` (the UTC day the call was answered), one JSON
record per final segment or gap. ``root`` is a local folder or any fsspec URL (``file://``,
``memory://``, ``s3://`` with s3fs installed; ``storage_options`` go to the filesystem).

Each file becomes one :class:`~pipelines.models.CallRecord`: its segments as turns sorted by start time
across both legs, its gaps summed into ``gap_seconds``. Schema 1 records (no ``kind``, no gaps) read as
segments; lines that are not a valid record (a line cut short by a crash, a wrong type) are skipped and
counted in :class:`ReadStats`; a schema version this reader does not know raises
:class:`UnsupportedSchemaError` rather than guessing. ``business_unit`` comes from the callee number
(:data:`pipelines.sample_data.BUSINESS_BY_CALLEE` unless a mapping is given).

For Ray Data: :func:`list_call_files` gives the files of a date range and :func:`read_call_file` (or
:func:`parse_call` on bytes already read) turns one into a record.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped,unused-ignore]  # no py.typed in the wheel
from fsspec.core import url_to_fs  # type: ignore[import-untyped,unused-ignore]
from pydantic import ValidationError

from pipelines.models import CallRecord, Turn
from pipelines.sample_data import BUSINESS_BY_CALLEE

__all__ = [
    "SUPPORTED_SCHEMAS",
    "ReadStats",
    "UnsupportedSchemaError",
    "days_between",
    "list_call_files",
    "parse_call",
    "read_call_file",
    "read_calls",
]

SUPPORTED_SCHEMAS = (1, 2)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_LEGS = ("caller", "callee")


class UnsupportedSchemaError(ValueError):
    """A record of a call store schema version this reader does not know."""


@dataclass
class ReadStats:
    """What a read saw (add them up across files or workers with ``+=``)."""

    files: int = 0
    calls: int = 0  # records yielded
    segments: int = 0  # turns kept
    gaps: int = 0
    malformed: int = 0  # lines skipped: not JSON, not an object, or a field of the wrong type
    duplicates: int = 0  # segments whose (leg, utterance_id) was already seen in the file
    empty: int = 0  # files with no usable record

    def __iadd__(self, other: ReadStats) -> ReadStats:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def days_between(since: date, until: date) -> list[date]:
    """The days from ``since`` to ``until``, both included."""
    if since > until:
        raise ValueError(f"since ({since}) is after until ({until})")
    return [since + timedelta(days=n) for n in range((until - since).days + 1)]


def _fs(root: str | Path, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, base = url_to_fs(str(root), **dict(storage_options or {}))
    return fs, str(base).rstrip("/") or "/"


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _day_files(fs: Any, base: str, since: date, until: date) -> list[str]:
    paths: list[str] = []
    for day in days_between(since, until):
        try:
            entries = fs.ls(posixpath.join(base, day.isoformat()), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        names = [
            str(e["name"]) for e in entries if e.get("type") == "file" and str(e["name"]).endswith(".jsonl")
        ]
        paths.extend(sorted(names))
    return paths


def list_call_files(
    root: str | Path, since: date, until: date, *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The call files of the days ``since``..``until`` (both included), sorted, as paths for a local
    root and as full URLs (``memory://...``, ``s3://...``) otherwise: :func:`read_call_file` opens them."""
    fs, base = _fs(root, storage_options)
    paths = _day_files(fs, base, since, until)
    return paths if _is_local(fs) else [str(fs.unstrip_protocol(p)) for p in paths]


def read_call_file(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    business_by_callee: Mapping[str, str] | None = None,
    stats: ReadStats | None = None,
) -> CallRecord | None:
    """One call file (a path or URL from :func:`list_call_files`) as a record; None if nothing in it
    was usable."""
    with fsspec.open(url, "rb", **dict(storage_options or {})) as handle:
        data: bytes = handle.read()
    return parse_call(data, path=url, business_by_callee=business_by_callee, stats=stats)


def read_calls(
    root: str | Path,
    since: date,
    until: date,
    *,
    storage_options: Mapping[str, Any] | None = None,
    business_by_callee: Mapping[str, str] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[CallRecord]:
    """The calls answered on the UTC days ``since``..``until`` (both included), file by file in day and
    call id order. Pass ``stats`` to get the counts."""
    fs, base = _fs(root, storage_options)
    for path in _day_files(fs, base, since, until):
        record = parse_call(fs.cat_file(path), path=path, business_by_callee=business_by_callee, stats=stats)
        if record is not None:
            yield record


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("not a string")


def parse_call(
    data: bytes | str,
    *,
    path: str,
    business_by_callee: Mapping[str, str] | None = None,
    stats: ReadStats | None = None,
) -> CallRecord | None:
    """The content of one call file as a record (``path`` names the day folder and the call id)."""
    stats = stats if stats is not None else ReadStats()
    stats.files += 1
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    mapping = BUSINESS_BY_CALLEE if business_by_callee is None else business_by_callee
    meta: dict[str, Any] | None = None
    turns: list[Turn] = []
    seen: set[tuple[str, str]] = set()
    gap_seconds = 0.0
    gaps = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short mid-write
            stats.malformed += 1
            continue
        if not isinstance(record, dict):
            stats.malformed += 1
            continue
        schema = record.get("schema", 1)
        if isinstance(schema, bool) or not isinstance(schema, int):
            stats.malformed += 1
            continue
        if schema not in SUPPORTED_SCHEMAS:
            raise UnsupportedSchemaError(
                f"{path}: call store schema {schema} is not supported (this reader knows {SUPPORTED_SCHEMAS})"
            )
        kind = record.get("kind", "segment")  # schema 1 had segments only (the edge's reader agrees)
        leg, start, end = record.get("leg"), _number(record.get("start")), _number(record.get("end"))
        if kind not in ("segment", "gap") or leg not in _LEGS or start is None or end is None:
            stats.malformed += 1
            continue
        try:
            record_meta = {
                "call_id": _optional_str(record.get("call_id")),
                "node_id": _optional_str(record.get("node_id")),
                "caller": _optional_str(record.get("caller")),
                "callee": _optional_str(record.get("callee")),
                "answered_at": _number(record.get("answered_at")),
            }
            if kind == "gap":
                if end < start or start < 0:
                    raise ValueError("a gap that ends before it starts")
                gap_seconds += end - start
                gaps += 1
            else:
                raw = record.get("text")
                if not isinstance(raw, str):
                    raise TypeError("text is not a string")
                utterance_id = _optional_str(record.get("utterance_id"))
                if utterance_id is not None and (leg, utterance_id) in seen:
                    stats.duplicates += 1
                elif raw.strip():
                    turn = Turn(
                        leg=leg,
                        text=raw.strip(),
                        start=start,
                        end=end,
                        speaker=_optional_str(record.get("speaker")),
                        language=_optional_str(record.get("language")),
                        confidence=_number(record.get("confidence")),
                    )
                    turns.append(turn)
                    if utterance_id is not None:
                        seen.add((leg, utterance_id))
        except (TypeError, ValueError, ValidationError):  # ValidationError is a ValueError too
            stats.malformed += 1
            continue
        if meta is None:
            meta = record_meta
        elif meta["answered_at"] is None:
            meta["answered_at"] = record_meta["answered_at"]
    name = posixpath.basename(path.replace("\\", "/"))
    folder = posixpath.basename(posixpath.dirname(path.replace("\\", "/")))
    folder_day = folder if _DAY.fullmatch(folder) else None
    if meta is not None and meta["answered_at"] is None and folder_day is not None:
        midnight = datetime.strptime(folder_day, "%Y-%m-%d").replace(tzinfo=UTC)
        meta["answered_at"] = midnight.timestamp()  # no record says: the start of the store's day
    if meta is None or meta["answered_at"] is None:
        stats.empty += 1
        return None
    turns.sort(key=lambda t: (t.start, t.end))  # stable: arrival order breaks ties
    day = folder_day or datetime.fromtimestamp(meta["answered_at"], UTC).strftime("%Y-%m-%d")
    callee = meta["callee"]
    call = CallRecord(
        call_id=meta["call_id"] or name.removesuffix(".jsonl"),
        day=day,
        answered_at=meta["answered_at"],
        node_id=meta["node_id"],
        caller=meta["caller"],
        callee=callee,
        business_unit=mapping.get(callee) if callee is not None else None,
        turns=tuple(turns),
        gap_seconds=round(gap_seconds, 6),
    )
    stats.calls += 1
    stats.segments += len(turns)
    stats.gaps += gaps
    return call
