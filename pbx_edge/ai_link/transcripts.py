"""Final transcripts in the call store, for the knowledge pipelines (DESIGN.md: files by date).

Layout: ``<root>/<YYYY-MM-DD>/<call_id>.jsonl``, the date being the UTC day the call was answered;
one JSON object per final segment, appended as it arrives. Schema (version 1):

=================  =============================================================================
field              meaning
=================  =============================================================================
``schema``         1
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
``received_at``    UNIX time the edge received the final
=================  =============================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pbx_edge.ai_link.protocol import TranscriptEvent
from pbx_edge.ops.models import Event

SCHEMA_VERSION = 1


class TranscriptStore:
    def __init__(self, root: Path, wall: Callable[[], float] = time.time) -> None:
        self.root = root
        self.wall = wall

    def path_for(self, call_id: str, answered_at: float) -> Path:
        day = datetime.fromtimestamp(answered_at, UTC).strftime("%Y-%m-%d")
        return self.root / day / f"{call_id}.jsonl"

    def append(self, call: Event, transcript: TranscriptEvent) -> Path:
        """Append one final segment of the call that ``call`` (its ``call.answered`` event) describes."""
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
            "leg": transcript.leg,
            "speaker": transcript.speaker,
            "text": transcript.text,
            "start": transcript.start,
            "end": transcript.end,
            "confidence": transcript.confidence,
            "language": transcript.language,
            "utterance_id": transcript.id,
            "received_at": self.wall(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:  # one short line per utterance: cheap enough
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    def read(self, call_id: str, answered_at: float) -> list[dict[str, Any]]:
        path = self.path_for(call_id, answered_at)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
