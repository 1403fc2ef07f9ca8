"""Final transcripts in the call store, for the knowledge pipelines (DESIGN.md: files by date).

Layout: ``<root>/<YYYY-MM-DD>/<call_id>.jsonl``, the date being the UTC day the call was answered;
one JSON object per final segment or gap, appended as it arrives. Schema (version 2; version 1 had
no ``kind``/``reason`` and no gap records):

=================  =============================================================================
field              meaning
=================  =============================================================================
``schema``         2
``kind``           ``segment`` (a final transcript) or ``gap`` (a span with no transcript)
``call_id``        the edge's call id; ``a_call_id`` / ``b_call_id`` the legs' SIP Call-IDs
``node_id``        the edge that carried the call
``caller``         caller user part; ``callee`` likewise
``answered_at``    UNIX time the call was answered
``leg``            ``caller`` or ``callee`` (each leg is its own channel)
``speaker``        diarization label within the leg, or null
``text``           the final transcript of the segment
``start``, ``end`` media seconds on the leg's clock (from the leg's first audio)
``confidence``     0..1 or null; ``language`` the detected or forced language
``utterance_id``   the AI side's id of the utterance (a partial and its final share it)
``reason``         gaps only: ``disconnected`` / ``overflow`` (media never reached the AI layer) or
                   ``stt_failed`` (it did, the recognizer failed, e.g. its replica died); null else
``received_at``    UNIX time the edge received the final
=================  =============================================================================
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pbx_edge.ai_link.protocol import TranscriptEvent, TranscriptGap
from pbx_edge.ops.models import Event

SCHEMA_VERSION = 2
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,255}")


class TranscriptStore:
    def __init__(self, root: Path, wall: Callable[[], float] = time.time) -> None:
        self.root = root
        self.wall = wall

    def path_for(self, call_id: str, answered_at: float) -> Path:
        day = datetime.fromtimestamp(answered_at, UTC).strftime("%Y-%m-%d")
        return self.root / day / f"{call_id}.jsonl"

    def append(self, call: Event, transcript: TranscriptEvent | TranscriptGap) -> Path:
        """Append one final segment or gap of the call that ``call`` (its ``call.answered`` event)
        describes."""
        call_id = call.call_id or "unknown"
        path = self.path_for(call_id, call.time)
        record: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "call_id": call_id,
            "a_call_id": call.a_call_id,
            "b_call_id": call.b_call_id,
            "node_id": call.node_id,
            "caller": call.caller,
            "callee": call.callee,
            "answered_at": call.time,
            "kind": "segment",
            "leg": transcript.leg,
            "speaker": None,
            "text": "",
            "start": transcript.start,
            "end": transcript.end,
            "confidence": None,
            "language": None,
            "utterance_id": None,
            "reason": None,
            "received_at": self.wall(),
        }
        if isinstance(transcript, TranscriptGap):
            record.update(kind="gap", reason=transcript.reason)
        else:
            record.update(
                speaker=transcript.speaker,
                text=transcript.text,
                confidence=transcript.confidence,
                language=transcript.language,
                utterance_id=transcript.id,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:  # one short line per utterance: cheap enough
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    def read(self, call_id: str, answered_at: float) -> list[dict[str, Any]]:
        return _read_lines(self.path_for(call_id, answered_at))

    def find(self, call_id: str) -> list[dict[str, Any]] | None:
        """The stored records of ``call_id`` whatever its day (newest day first); None if none."""
        if not _SAFE_ID.fullmatch(call_id):
            return None  # never a path: the id comes from a URL
        for path in sorted(self.root.glob(f"*/{call_id}.jsonl"), reverse=True):
            return _read_lines(path)
        return None


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash mid-write: skip it, keep the rest
            continue
    return records
