"""The edge ↔ AI wire contract: binary frames and batches, JSON messages, clear errors."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_edge.ai_link.protocol import (
    FLAG_GAP,
    FRAME_BYTES,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    RECORD_SIZE,
    AudioFrame,
    BridgeAction,
    CalleeAvailableMessage,
    DtmfMessage,
    EndMessage,
    GapMessage,
    HangupAction,
    HoldMessage,
    Leg,
    PlayAction,
    ProtocolError,
    StartMessage,
    StopPlaybackAction,
    TranscriptEvent,
    TransferAction,
    TransferFailedMessage,
    TransferMessage,
    UnholdMessage,
    decode_batch,
    decode_frame,
    encode_batch,
    encode_frame,
    parse_ai_message,
    parse_edge_message,
)

legs = st.sampled_from([Leg.CALLER, Leg.CALLEE])
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
flags = st.sampled_from([0, FLAG_GAP])
frame_pcm = st.binary(min_size=FRAME_BYTES, max_size=FRAME_BYTES)
any_pcm = st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2])
frames_20ms = st.builds(AudioFrame, legs, u32, u64, frame_pcm, flags)


def _header(magic: int = 0xA0 | PROTOCOL_VERSION, leg: int = 0, fl: int = 0, reserved: int = 0) -> bytes:
    return struct.pack(">BBBBIQ", magic, leg, fl, reserved, 7, 320 * 7)


# -- binary frames ----------------------------------------------------------------------------------


def test_header_layout_is_16_bytes_big_endian() -> None:
    data = encode_frame(Leg.CALLEE, 0x01020304, 0x05060708090A0B0C, b"\x01\x00", FLAG_GAP)
    assert HEADER_SIZE == 16
    assert data[:16] == bytes.fromhex("a1 01 01 00 01020304 05060708090a0b0c")
    assert data[16:] == b"\x01\x00"
    frame = decode_frame(data)
    assert frame.leg is Leg.CALLEE and frame.after_gap
    assert frame.seq == 0x01020304 and frame.media_samples == 0x05060708090A0B0C


def test_leg_accepts_json_spelling() -> None:
    assert decode_frame(encode_frame("callee", 1, 2, b"")).leg is Leg.CALLEE
    assert Leg.CALLER.label == "caller" and Leg.from_label("callee") is Leg.CALLEE


@given(legs, u32, u64, any_pcm, flags)
def test_frame_round_trip(leg: Leg, seq: int, media: int, pcm: bytes, fl: int) -> None:
    frame = decode_frame(encode_frame(leg, seq, media, pcm, fl))
    assert frame == AudioFrame(leg, seq, media, pcm, fl)
    assert frame.duration == len(pcm) / 32000
    assert frame.media_time == media / 16000


@given(st.lists(frames_20ms, min_size=1, max_size=12))
def test_batch_round_trip(frames: list[AudioFrame]) -> None:
    data = encode_batch(frames)
    assert len(data) == RECORD_SIZE * len(frames)
    assert decode_batch(data) == frames


def test_batch_of_five_is_100_ms_of_one_leg() -> None:
    frames = [AudioFrame(Leg.CALLER, seq, seq * 320, bytes([seq]) * FRAME_BYTES) for seq in range(5)]
    data = encode_batch(frames)
    assert len(data) == 5 * 656
    decoded = decode_batch(data)
    assert [f.seq for f in decoded] == [0, 1, 2, 3, 4]
    assert sum(f.duration for f in decoded) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "frame too short: 0 bytes"),
        (_header()[:15], "frame too short: 15 bytes"),
        (_header(magic=0x11), "bad magic byte 0x11"),
        (_header(magic=0xA2), "unsupported frame version 2"),
        (_header(reserved=1), "reserved header byte must be 0"),
        (_header(leg=2), "leg must be 0 (caller) or 1 (callee), got 2"),
        (_header(fl=0x80), "unknown flags 0x80"),
        (_header() + b"\x00", "PCM must be whole s16le samples, got 1 bytes"),
    ],
)
def test_bad_frames_are_rejected_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_frame(data)


def test_bad_batches_are_rejected_with_the_reason() -> None:
    good = encode_batch([AudioFrame(Leg.CALLER, 1, 320, bytes(FRAME_BYTES))])
    with pytest.raises(ProtocolError, match="batch length 0 is not a positive multiple of 656"):
        decode_batch(b"")
    with pytest.raises(ProtocolError, match="batch length 657"):
        decode_batch(good + b"\x00")
    second = bytearray(good * 2)
    second[RECORD_SIZE] = 0x00  # bad magic in the second record
    with pytest.raises(
        ProtocolError, match="bad magic byte 0x00: not an audio frame \\(record at byte 656\\)"
    ):
        decode_batch(bytes(second))
    with pytest.raises(ProtocolError, match="batch record 1: payload must be 640 bytes"):
        encode_batch([AudioFrame(Leg.CALLER, 0, 0, bytes(FRAME_BYTES)), AudioFrame(Leg.CALLER, 1, 0, b"")])
    with pytest.raises(ProtocolError, match="at least one frame"):
        encode_batch([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq": -1}, "seq must be in 0..2\\*\\*32-1"),
        ({"seq": 2**32}, "seq must be in"),
        ({"media_samples": -5}, "media time must be in"),
        ({"leg": 3}, "leg must be 0"),
        ({"leg": "agent"}, "leg must be 'caller' or 'callee'"),
        ({"flags": 0x02}, "unknown flags 0x02"),
        ({"pcm": b"\x00"}, "PCM must be whole"),
    ],
)
def test_encode_validates(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"leg": Leg.CALLER, "seq": 0, "media_samples": 0, "pcm": b"", "flags": 0}
    args.update(kwargs)
    with pytest.raises(ProtocolError, match=message):
        encode_frame(**args)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=2 * RECORD_SIZE + 3))
def test_fuzz_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decode in (decode_frame, decode_batch):
        with contextlib.suppress(ProtocolError):
            decode(data)


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_fuzz_headers(header: bytes) -> None:
    try:
        frame = decode_frame(header)
    except ProtocolError:
        return
    assert bytes(frame) == header  # anything accepted re-encodes to the same bytes


# -- JSON messages ----------------------------------------------------------------------------------

EDGE_MESSAGES = [
    StartMessage(
        call_id="c1",
        a_call_id="a@x",
        b_call_id="b@y",
        caller="1001",
        callee="2002",
        codec="PCMU",
        language="ko",
        mode="attendant",
        resume=True,
        last_seq={"caller": 41, "callee": 40},
    ),
    HoldMessage(leg="caller"),
    UnholdMessage(leg="caller"),
    TransferMessage(target="sip:3003@pbx.local"),
    TransferFailedMessage(target="3003", reason="486 Busy Here"),
    CalleeAvailableMessage(extension="201", reason="registered"),
    DtmfMessage(leg="callee", digit="#", media_time=1.5),
    EndMessage(reason="caller_bye"),
    GapMessage(leg="caller", start=1.0, end=2.5, frames=75, first_seq=50, last_seq=124),
]
AI_MESSAGES = [
    TranscriptEvent(
        final=True,
        leg="caller",
        speaker="spk0",
        text="hello",
        start=0.5,
        end=1.25,
        confidence=0.93,
        language="en",
        id="u1",
    ),
    TranscriptEvent(final=False, leg="callee", text="안녕", start=0, end=0),
    PlayAction(leg="caller", text="One moment please"),
    PlayAction(leg="callee", prompt="hold_music"),
    StopPlaybackAction(leg="caller"),
    TransferAction(target="2002"),
    HangupAction(),
    BridgeAction(leg="caller", bridged=False),
]


@pytest.mark.parametrize("message", EDGE_MESSAGES, ids=lambda m: m.type)
def test_edge_messages_round_trip(message: object) -> None:
    text = message.to_json()  # type: ignore[attr-defined]
    assert parse_edge_message(text) == message
    assert parse_edge_message(text.encode()) == message


@pytest.mark.parametrize("message", AI_MESSAGES, ids=lambda m: m.type)
def test_ai_messages_round_trip(message: object) -> None:
    text = message.to_json()  # type: ignore[attr-defined]
    assert parse_ai_message(text) == message


def test_start_defaults_carry_the_version() -> None:
    start = json.loads(StartMessage(call_id="c").to_json())
    assert start["version"] == PROTOCOL_VERSION
    assert start["resume"] is False and start["last_seq"] == {} and start["sample_rate"] == 16000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "AI message is not JSON"),
        (b"\xff\xfe", "AI message is not JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"text": "hi"}', "no string 'type' field"),
        ('{"type": "dance"}', "unknown AI message type 'dance'; expected one of: agent_event, bridge"),
        ('{"type": "start", "call_id": "c"}', "unknown AI message type 'start'"),
        ('{"type": "play"}', "bad 'play' message: leg: Field required"),
        ('{"type": "play", "leg": "agent"}', "leg: Input should be 'caller' or 'callee' \\(got 'agent'\\)"),
        ('{"type": "hangup", "why": 1}', "why: Extra inputs are not permitted"),
        (
            '{"type": "transcript", "final": true, "leg": "caller", "text": "x", "start": 1, "end": 2,'
            ' "confidence": 1.5}',
            "confidence: Input should be less than or equal to 1 \\(got 1.5\\)",
        ),
        (
            '{"type": "transcript", "final": true, "leg": "caller", "text": "x", "start": 2, "end": 1}',
            "end \\(1.0\\) must be >= start \\(2.0\\)",
        ),
    ],
)
def test_bad_ai_messages_are_rejected_with_the_reason(text: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_ai_message(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "transcript"}', "unknown edge message type 'transcript'"),
        ('{"type": "start"}', "call_id: Field required"),
        ('{"type": "start", "call_id": "c", "mode": "karaoke"}', "mode: Input should be"),
        ('{"type": "start", "call_id": "c", "last_seq": {"agent": 1}}', "last_seq.agent"),
        ('{"type": "dtmf", "leg": "caller", "digit": "x"}', "digit: String should match pattern"),
        (
            '{"type": "gap", "leg": "caller", "start": 3, "end": 1, "frames": 1, "first_seq": 0, '
            '"last_seq": 0}',
            "end \\(1.0\\) must be >= start",
        ),
    ],
)
def test_bad_edge_messages_are_rejected_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_edge_message(text)


_TYPES = ["start", "hold", "unhold", "transfer", "dtmf", "end", "gap", "transcript", "play"]
_TYPES += ["stop_playback", "hangup", "bridge", "other"]
_VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_FIELDS = st.sampled_from(["leg", "call_id", "text", "start", "end", "final", "target", "digit", "frames"])


@settings(max_examples=300)
@given(
    st.text(max_size=200)
    | st.builds(
        lambda kind, extra: json.dumps({"type": kind, **extra}),
        st.sampled_from(_TYPES),
        st.dictionaries(_FIELDS, _VALUES, max_size=6),
    )
)
def test_fuzz_parsers_raise_only_protocol_error(text: str) -> None:
    for parse in (parse_ai_message, parse_edge_message):
        with contextlib.suppress(ProtocolError):
            parse(text)
