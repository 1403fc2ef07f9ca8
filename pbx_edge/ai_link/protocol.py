"""The edge ↔ AI wire contract: one WebSocket per call, JSON messages plus binary audio frames.

This module is shared by the edge (:mod:`pbx_edge.ai_link.client`) and the Serve ingress, so it
imports nothing but pydantic and the standard library.

Conversation
------------
The edge opens ``/v1/calls/{call_id}/stream`` and sends, in order:

1. a JSON :class:`StartMessage` (``resume`` is true, with the last sequence number sent per leg,
   when this is a reconnection for the same call);
2. JSON :class:`GapMessage` controls for media lost since the previous connection, if any;
3. binary audio batches (see below), interleaved with JSON controls (hold, unhold, transfer,
   transfer_failed, callee_available, dtmf, gap) as they happen;
4. a JSON :class:`EndMessage`, then a close with code 1000.

The AI side sends JSON :class:`TranscriptEvent` and :class:`TranscriptGap` messages, action
messages (play, stop_playback, transfer, hangup, bridge) and binary frames of PCM to inject
into a leg, at any time after the start. Closing with :data:`CLOSE_DONE` or
:data:`CLOSE_REJECTED` tells the edge not to reconnect; any other close (or a lost socket)
makes it reconnect with the same call id.

Binary audio frames
-------------------
Every frame is a 16-byte header followed by PCM, mono s16le at 16 kHz. The header, big-endian::

    offset size field
    0      1    magic (high nibble 0xA) | version (low nibble, 1)
    1      1    leg: 0 caller, 1 callee
    2      1    flags: bit 0 = first frame after a gap (frames before it were lost); others 0
    3      1    reserved, 0
    4      4    seq: per-leg frame counter, +1 per 20 ms frame, modulo 2**32
    8      8    media time of the first sample, in samples at 16 kHz since the leg's start

Edge → AI: one WebSocket message is a *batch* of one or more records, each a header plus exactly
:data:`FRAME_BYTES` (640 bytes, 20 ms). The record size is fixed (656 bytes), so the count is
``len(message) // 656`` and no count field is needed; records of both legs are interleaved in the
order the edge took them from its tap. The batch size is the sender's choice (the edge's
``batch_frames``, 5 = 100 ms of one leg by default).

AI → edge: one WebSocket message is one header (``leg`` = the leg that hears it, ``seq`` and media
time counted by the AI for its own output, ``flags`` 0) plus PCM of any even length, which the edge
queues after what it is already playing to that leg. Split long audio into messages of at most
:data:`MAX_MESSAGE_BYTES` (a few seconds each keeps barge-in responsive).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CLOSE_DONE",
    "CLOSE_REJECTED",
    "FLAG_GAP",
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "HEADER_SIZE",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RECORD_SIZE",
    "SAMPLE_RATE",
    "ActionMessage",
    "AgentEvent",
    "AiMessage",
    "AudioFrame",
    "BridgeAction",
    "CalleeAvailableMessage",
    "ControlMessage",
    "DtmfMessage",
    "EdgeMessage",
    "EndMessage",
    "GapMessage",
    "HangupAction",
    "HoldMessage",
    "Language",
    "Leg",
    "LegName",
    "Mode",
    "PlayAction",
    "ProtocolError",
    "StartMessage",
    "StopPlaybackAction",
    "TranscriptEvent",
    "TranscriptGap",
    "TransferAction",
    "TransferFailedMessage",
    "TransferMessage",
    "UnholdMessage",
    "decode_batch",
    "decode_frame",
    "encode_batch",
    "encode_frame",
    "parse_ai_message",
    "parse_edge_message",
]

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAME_BYTES = 2 * FRAME_SAMPLES

_MAGIC = 0xA0
_HEADER = struct.Struct(">BBBBIQ")
HEADER_SIZE = _HEADER.size  # 16
RECORD_SIZE = HEADER_SIZE + FRAME_BYTES  # one 20 ms record of an edge → AI batch
FLAG_GAP = 0x01
_KNOWN_FLAGS = FLAG_GAP
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # either side may refuse a larger WebSocket message (~2 min of PCM)
CLOSE_DONE = 1000  # normal close: the stream is over, do not reconnect
CLOSE_REJECTED = 4400  # the ingress refuses this stream (bad start, unsupported version): do not reconnect

LegName = Literal["caller", "callee"]
Language = Literal["en", "ko", "auto"]
Mode = Literal["transcribe", "attendant", "ivr", "shadow"]


class ProtocolError(ValueError):
    """A frame or message that breaks the contract; the message says what and where."""


# ---------------------------------------------------------------------------------------------
# binary frames
# ---------------------------------------------------------------------------------------------


class Leg(IntEnum):
    """The leg byte of a frame header; :attr:`label` gives the JSON spelling."""

    CALLER = 0
    CALLEE = 1

    @property
    def label(self) -> LegName:
        return "caller" if self is Leg.CALLER else "callee"

    @classmethod
    def from_label(cls, label: str) -> Leg:
        if label == "caller":
            return cls.CALLER
        if label == "callee":
            return cls.CALLEE
        raise ProtocolError(f"leg must be 'caller' or 'callee', got {label!r}")


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One header plus its PCM; validated on construction, ``bytes(frame)`` is its wire form."""

    leg: Leg
    seq: int
    media_samples: int  # media time of the first sample, in samples at 16 kHz
    pcm: bytes
    flags: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.leg, Leg):
            object.__setattr__(self, "leg", _as_leg(self.leg))
        if not 0 <= self.seq <= _U32:
            raise ProtocolError(f"seq must be in 0..2**32-1, got {self.seq}")
        if not 0 <= self.media_samples <= _U64:
            raise ProtocolError(f"media time must be in 0..2**64-1 samples, got {self.media_samples}")
        if not 0 <= self.flags <= 0xFF or self.flags & ~_KNOWN_FLAGS:
            raise ProtocolError(f"unknown flags 0x{self.flags:02x} (known: 0x{_KNOWN_FLAGS:02x})")
        if len(self.pcm) % 2:
            raise ProtocolError(f"PCM must be whole s16le samples, got {len(self.pcm)} bytes")

    @property
    def media_time(self) -> float:
        """Media time of the first sample in seconds."""
        return self.media_samples / SAMPLE_RATE

    @property
    def duration(self) -> float:
        """Seconds of audio in the payload."""
        return len(self.pcm) / (2 * SAMPLE_RATE)

    @property
    def after_gap(self) -> bool:
        return bool(self.flags & FLAG_GAP)

    def header(self) -> bytes:
        return _HEADER.pack(_MAGIC | PROTOCOL_VERSION, self.leg, self.flags, 0, self.seq, self.media_samples)

    def __bytes__(self) -> bytes:
        return self.header() + self.pcm

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> AudioFrame:
        """One header plus a payload of any even length (the AI → edge form)."""
        return _parse_record(memoryview(data), 0, len(data))


def _as_leg(value: object) -> Leg:
    if isinstance(value, Leg):
        return value
    if isinstance(value, int) and value in (0, 1):
        return Leg(value)
    if isinstance(value, str):
        return Leg.from_label(value)
    raise ProtocolError(f"leg must be 0 (caller) or 1 (callee), got {value!r}")


def _parse_record(view: memoryview, start: int, end: int) -> AudioFrame:
    where = f" (record at byte {start})" if start else ""
    if end - start < HEADER_SIZE:
        raise ProtocolError(f"frame too short: {end - start} bytes, the header alone is {HEADER_SIZE}{where}")
    magic, leg, flags, reserved, seq, media = _HEADER.unpack_from(view, start)
    if magic & 0xF0 != _MAGIC:
        raise ProtocolError(f"bad magic byte 0x{magic:02x}: not an audio frame{where}")
    if magic & 0x0F != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported frame version {magic & 0x0F} (this side speaks {PROTOCOL_VERSION}){where}"
        )
    if reserved:
        raise ProtocolError(f"reserved header byte must be 0, got 0x{reserved:02x}{where}")
    if leg > 1:
        raise ProtocolError(f"leg must be 0 (caller) or 1 (callee), got {leg}{where}")
    try:
        return AudioFrame(Leg(leg), seq, media, bytes(view[start + HEADER_SIZE : end]), flags)
    except ProtocolError as exc:
        raise ProtocolError(f"{exc}{where}") from None


def encode_frame(leg: Leg | int | LegName, seq: int, media_samples: int, pcm: bytes, flags: int = 0) -> bytes:
    """The wire form of one frame (header + PCM of any even length)."""
    return bytes(AudioFrame(_as_leg(leg), seq, media_samples, pcm, flags))


def decode_frame(data: bytes | bytearray | memoryview) -> AudioFrame:
    """Parse one header + PCM (the AI → edge form); raises :class:`ProtocolError`."""
    return AudioFrame.parse(data)


def encode_batch(frames: Iterable[AudioFrame]) -> bytes:
    """Concatenate 20 ms records into one edge → AI message; every payload must be FRAME_BYTES."""
    parts: list[bytes] = []
    for index, frame in enumerate(frames):
        if len(frame.pcm) != FRAME_BYTES:
            raise ProtocolError(
                f"batch record {index}: payload must be {FRAME_BYTES} bytes (20 ms), got {len(frame.pcm)}"
            )
        parts.append(frame.header())
        parts.append(frame.pcm)
    if not parts:
        raise ProtocolError("a batch needs at least one frame")
    return b"".join(parts)


def decode_batch(data: bytes | bytearray | memoryview) -> list[AudioFrame]:
    """Parse an edge → AI message of ``len(data) // RECORD_SIZE`` records."""
    size = len(data)
    if size == 0 or size % RECORD_SIZE:
        raise ProtocolError(
            f"batch length {size} is not a positive multiple of {RECORD_SIZE} "
            f"({HEADER_SIZE}-byte header + {FRAME_BYTES}-byte payload per record)"
        )
    view = memoryview(data)
    return [_parse_record(view, start, start + RECORD_SIZE) for start in range(0, size, RECORD_SIZE)]


# ---------------------------------------------------------------------------------------------
# JSON messages
# ---------------------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        return self.model_dump_json()


class StartMessage(_Message):
    """First message of every connection; ``resume`` marks a reconnection of the same call."""

    type: Literal["start"] = "start"
    version: int = PROTOCOL_VERSION
    call_id: str = Field(min_length=1)
    a_call_id: str | None = None  # the caller leg's SIP Call-ID
    b_call_id: str | None = None  # the callee leg's SIP Call-ID
    caller: str = ""
    callee: str = ""
    codec: str | None = None  # the call's codec on the wire; frames are always 16 kHz PCM
    language: Language = "auto"
    mode: Mode = "transcribe"
    sample_rate: Literal[16000] = 16000
    resume: bool = False
    last_seq: dict[LegName, int] = Field(default_factory=dict)  # last seq sent per leg, on resume
    # Why an AI answers the call: no_answer | unregistered | busy | away | after_hours (attendant), ivr
    trigger: str | None = None


class HoldMessage(_Message):
    type: Literal["hold"] = "hold"
    leg: LegName  # the leg that put the call on hold


class UnholdMessage(_Message):
    type: Literal["unhold"] = "unhold"
    leg: LegName


class TransferMessage(_Message):
    """The call was transferred on the edge (by a person or by an AI ``transfer`` action)."""

    type: Literal["transfer"] = "transfer"
    leg: LegName = "caller"  # the leg that now talks to ``target``
    target: str = Field(min_length=1)


class TransferFailedMessage(_Message):
    """The edge could not connect the caller to the ``target`` of the AI's ``transfer`` action: the
    target refused, did not answer, gave an unusable answer, or has no route. The call stays with the
    AI, which must go on talking to the caller."""

    type: Literal["transfer_failed"] = "transfer_failed"
    target: str = Field(min_length=1)
    reason: str = ""


class CalleeAvailableMessage(_Message):
    """The extension the AI attendant answered for can be reached again: it ``registered``, is
    ``back`` from away, or its call ended (``call_ended``, for a ``busy`` trigger). The AI may offer
    the caller a ``transfer`` to it; sent at most once per call."""

    type: Literal["callee_available"] = "callee_available"
    extension: str = Field(min_length=1)
    reason: Literal["registered", "back", "call_ended"]


class DtmfMessage(_Message):
    type: Literal["dtmf"] = "dtmf"
    leg: LegName
    digit: str = Field(pattern=r"^[0-9*#A-D]$")
    media_time: float | None = Field(None, ge=0)  # seconds on the leg's media clock


class EndMessage(_Message):
    type: Literal["end"] = "end"
    reason: str = "hangup"


class GapMessage(_Message):
    """Media of one leg the AI side never got: ``frames`` 20 ms frames, ``start``..``end``
    (media seconds), sequence numbers ``first_seq``..``last_seq`` (modulo 2**32)."""

    type: Literal["gap"] = "gap"
    leg: LegName
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    frames: int = Field(ge=0)
    first_seq: int = Field(ge=0, le=_U32)
    last_seq: int = Field(ge=0, le=_U32)
    reason: Literal["disconnected", "overflow"] = "disconnected"

    @model_validator(mode="after")
    def _ordered(self) -> GapMessage:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self


class TranscriptEvent(_Message):
    """A partial (``final`` false, replaced by later ones with the same ``id``) or final transcript."""

    type: Literal["transcript"] = "transcript"
    final: bool
    leg: LegName
    speaker: str | None = None  # diarization label when a leg holds several voices
    text: str
    start: float = Field(ge=0)  # media seconds on the leg's clock
    end: float = Field(ge=0)
    confidence: float | None = Field(None, ge=0, le=1)
    language: str | None = None
    id: str | None = None  # utterance id

    @model_validator(mode="after")
    def _ordered(self) -> TranscriptEvent:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self


class TranscriptGap(_Message):
    """A span of ``leg`` that has no transcript and never will: media the AI side never got
    (``disconnected``, ``overflow``: echoed from the edge's gap controls) or audio it got but could
    not transcribe (``stt_failed``: the STT replica died or failed). Stored with the transcript."""

    type: Literal["transcript_gap"] = "transcript_gap"
    leg: LegName
    start: float = Field(ge=0)  # media seconds on the leg's clock
    end: float = Field(ge=0)
    reason: Literal["disconnected", "overflow", "stt_failed"]

    @model_validator(mode="after")
    def _ordered(self) -> TranscriptGap:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self


class AgentEvent(_Message):
    """Something an AI agent wants recorded and published with the call: the edge publishes it as
    the call event ``name`` (so webhooks get it) with ``data`` as its payload. Names are dotted
    lower-case, e.g. ``attendant.summary``, ``ivr.intent``, ``agent.handoff``."""

    type: Literal["agent_event"] = "agent_event"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)


class PlayAction(_Message):
    """Play to ``leg``: the edge's stored ``prompt`` by name, or (no prompt) the binary PCM that
    follows for that leg; ``text`` is what it says, for captions and the transcript."""

    type: Literal["play"] = "play"
    leg: LegName
    prompt: str | None = None
    text: str | None = None
    id: str | None = None


class StopPlaybackAction(_Message):
    """Barge-in: drop what is queued for ``leg``."""

    type: Literal["stop_playback"] = "stop_playback"
    leg: LegName


class TransferAction(_Message):
    type: Literal["transfer"] = "transfer"
    leg: LegName = "caller"  # the leg to connect to ``target``
    target: str = Field(min_length=1)  # extension or SIP URI


class HangupAction(_Message):
    type: Literal["hangup"] = "hangup"
    reason: str = "ai"


class BridgeAction(_Message):
    """``bridged`` true: ``leg`` hears only injected audio (the other party is muted to it)."""

    type: Literal["bridge"] = "bridge"
    leg: LegName
    bridged: bool = True


ControlMessage: TypeAlias = Annotated[
    HoldMessage
    | UnholdMessage
    | TransferMessage
    | TransferFailedMessage
    | CalleeAvailableMessage
    | DtmfMessage
    | EndMessage
    | GapMessage,
    Field(discriminator="type"),
]
ActionMessage: TypeAlias = Annotated[
    PlayAction | StopPlaybackAction | TransferAction | HangupAction | BridgeAction,
    Field(discriminator="type"),
]
EdgeMessage: TypeAlias = StartMessage | ControlMessage
AiMessage: TypeAlias = TranscriptEvent | TranscriptGap | AgentEvent | ActionMessage

_EDGE_TYPES: dict[str, type[_Message]] = {
    m.model_fields["type"].default: m
    for m in (
        StartMessage,
        HoldMessage,
        UnholdMessage,
        TransferMessage,
        TransferFailedMessage,
        CalleeAvailableMessage,
        DtmfMessage,
        EndMessage,
        GapMessage,
    )
}
_AI_TYPES: dict[str, type[_Message]] = {
    m.model_fields["type"].default: m
    for m in (
        TranscriptEvent,
        TranscriptGap,
        AgentEvent,
        PlayAction,
        StopPlaybackAction,
        TransferAction,
        HangupAction,
        BridgeAction,
    )
}


def _parse(text: str | bytes, types: Mapping[str, type[_Message]], direction: str) -> Any:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{direction} message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{direction} message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"{direction} message has no string 'type' field")
    model = types.get(kind)
    if model is None:
        raise ProtocolError(
            f"unknown {direction} message type {kind!r}; expected one of: {', '.join(sorted(types))}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(message)"
            got = f" (got {err['input']!r})" if err["type"] != "missing" and err["loc"] else ""
            problems.append(f"{where}: {err['msg']}{got}")
        raise ProtocolError(f"bad {kind!r} message: " + "; ".join(problems)) from None


def parse_ai_message(text: str | bytes) -> AiMessage:
    """Parse a JSON message from the AI side; raises :class:`ProtocolError` naming the problem."""
    message: AiMessage = _parse(text, _AI_TYPES, "AI")
    return message


def parse_edge_message(text: str | bytes) -> StartMessage | ControlMessage:
    """Parse a JSON message from the edge (the ingress side); raises :class:`ProtocolError`."""
    message: StartMessage | ControlMessage = _parse(text, _EDGE_TYPES, "edge")
    return message
