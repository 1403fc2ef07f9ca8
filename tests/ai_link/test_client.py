"""The AI link client against a real aiohttp WebSocket server playing the AI side on loopback."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from pbx_edge.ai_link.client import CallMeta, CallStream, InjectAudio
from pbx_edge.ai_link.config import AiLinkConfig
from pbx_edge.ai_link.link import AiLink, apply_media_action
from pbx_edge.ai_link.protocol import (
    FLAG_GAP,
    ActionMessage,
    AgentEvent,
    AudioFrame,
    BridgeAction,
    DtmfMessage,
    EndMessage,
    GapMessage,
    HangupAction,
    HoldMessage,
    Leg,
    PlayAction,
    StartMessage,
    StopPlaybackAction,
    TranscriptEvent,
    TranscriptGap,
    decode_batch,
    encode_frame,
    parse_edge_message,
)
from pbx_edge.media.interface import Side
from pbx_edge.media.tap import FRAME_BYTES, TapFrame, TapQueue
from pbx_edge.ops.models import Event

pytestmark = pytest.mark.timeout(15)

Script = Callable[["Connection"], Awaitable[None]]


@dataclass
class Connection:
    """One WebSocket the fake AI side accepted, and everything that came over it, in order."""

    call_id: str
    ws: web.WebSocketResponse
    log: list[object] = field(default_factory=list)  # edge messages and AudioFrame, in arrival order
    batches: list[int] = field(default_factory=list)  # records per binary message
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frames(self) -> list[AudioFrame]:
        return [m for m in self.log if isinstance(m, AudioFrame)]

    @property
    def messages(self) -> list[object]:
        return [m for m in self.log if not isinstance(m, AudioFrame)]

    def leg_frames(self, leg: Leg) -> list[AudioFrame]:
        return [f for f in self.frames if f.leg is leg]


class FakeAi:
    """The AI side: a WebSocket server on 127.0.0.1 recording each connection; ``script`` runs
    once a connection's start message is in; on ``end`` it runs ``on_end`` (the ingress flushing
    its last transcripts) and closes with 1000 unless ``close_on_end`` is off."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.script: Script | None = None
        self.on_end: Script | None = None
        self.close_on_end = True
        self.close_with: int | None = None  # close each connection with this code after the start
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/calls/{call_id}/stream", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        """Stop listening and drop every connection without a close frame."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(request.match_info["call_id"], ws)
        self.connections.append(conn)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    message = parse_edge_message(msg.data)
                    conn.log.append(message)
                    if isinstance(message, StartMessage):
                        if self.close_with is not None:
                            await ws.close(code=self.close_with)
                        elif self.script is not None:
                            await self.script(conn)
                    elif isinstance(message, EndMessage):
                        if self.on_end is not None:
                            await self.on_end(conn)
                        if self.close_on_end:
                            await ws.close(code=1000)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    frames = decode_batch(msg.data)
                    conn.batches.append(len(frames))
                    conn.log.extend(frames)
        finally:
            conn.closed.set()
        return ws


async def until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def tap_frame(leg: Side, seq: int) -> TapFrame:
    """A frame whose PCM says which leg and sequence number it is."""
    pcm = struct.pack("<hh", 1 if leg is Side.CALLER else 2, seq) * (FRAME_BYTES // 4)
    return TapFrame(leg, seq, seq * 0.02, 0.0, pcm)


def feed(queue: TapQueue, seqs: range, legs: tuple[Side, ...] = (Side.CALLER, Side.CALLEE)) -> None:
    for seq in seqs:
        for leg in legs:
            queue.put_nowait(tap_frame(leg, seq))


@pytest.fixture
async def ai() -> AsyncIterator[FakeAi]:
    server = FakeAi()
    await server.start()
    yield server
    await server.kill()


def make_config(ai: FakeAi, **overrides: object) -> AiLinkConfig:
    settings: dict[str, object] = {
        "enabled": True,
        "url": ai.url,
        "reconnect_initial": 0.02,
        "reconnect_max": 0.1,
        "connect_timeout": 1.0,
        "close_timeout": 1.0,
        "languages": {"82": "ko"},
        "modes": {"8": "attendant"},
    }
    settings.update(overrides)
    return AiLinkConfig.model_validate(settings)


META = CallMeta("call-1", a_call_id="a@x", b_call_id="b@y", caller="1001", callee="8210", codec="PCMU")


@dataclass
class Received:
    transcripts: list[TranscriptEvent | TranscriptGap] = field(default_factory=list)
    actions: list[ActionMessage | AgentEvent | InjectAudio] = field(default_factory=list)


@pytest.fixture
async def link(ai: FakeAi) -> AsyncIterator[AiLink]:
    ai_link = AiLink(make_config(ai))
    yield ai_link
    await ai_link.close()


def start(link: AiLink, queue: TapQueue, meta: CallMeta = META) -> tuple[CallStream, Received]:
    got = Received()
    stream = link.start_call(meta, queue, got.transcripts.append, got.actions.append)
    assert stream is not None
    return stream, got


# -- streaming ------------------------------------------------------------------------------------


async def test_start_message_then_batched_frames_in_order(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(250)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected, what="connection")
    feed(queue, range(10))  # 20 frames, both legs interleaved
    await until(lambda: len(ai.connections[0].frames) == 20, what="20 frames")

    conn = ai.connections[0]
    assert conn.call_id == "call-1"
    first = conn.log[0]
    assert isinstance(first, StartMessage)
    assert (first.call_id, first.a_call_id, first.b_call_id) == ("call-1", "a@x", "b@y")
    assert (first.caller, first.callee, first.codec) == ("1001", "8210", "PCMU")
    assert (first.language, first.mode, first.resume, first.last_seq) == ("ko", "attendant", False, {})
    assert conn.batches == [5, 5, 5, 5]
    for leg, side in ((Leg.CALLER, Side.CALLER), (Leg.CALLEE, Side.CALLEE)):
        frames = conn.leg_frames(leg)
        assert [f.seq for f in frames] == list(range(10))
        assert [f.media_samples for f in frames] == [320 * s for s in range(10)]
        assert all(f.flags == 0 for f in frames)
        assert [f.pcm for f in frames] == [tap_frame(side, s).pcm for s in range(10)]
    assert [f.leg for f in conn.frames[:4]] == [Leg.CALLER, Leg.CALLEE, Leg.CALLER, Leg.CALLEE]
    stats = stream.stats
    assert stats.frames_sent == 20 and stats.frames_dropped == 0 and stats.connects == 1
    assert stats.bytes_sent > 20 * 656


async def test_partial_batch_goes_out_after_the_batch_time(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(250)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected)
    sent = time.monotonic()
    feed(queue, range(2), legs=(Side.CALLER,))
    await until(lambda: len(ai.connections[0].frames) == 2, what="a partial batch")
    assert ai.connections[0].batches == [2]
    assert time.monotonic() - sent < 0.5  # 5 frames x 20 ms at most, plus scheduling


async def test_transcripts_actions_and_audio_reach_the_callbacks(ai: FakeAi, link: AiLink) -> None:
    inject = encode_frame(Leg.CALLER, 3, 4800, b"\x01\x00" * 800)

    async def script(conn: Connection) -> None:
        await conn.ws.send_str(
            TranscriptEvent(
                final=True, leg="caller", speaker="spk0", text="hello", start=0.1, end=0.6, confidence=0.9
            ).to_json()
        )
        await conn.ws.send_str('{"type": "dance"}')  # ignored and counted
        await conn.ws.send_bytes(b"\x00" * 5)  # ignored and counted
        await conn.ws.send_str(PlayAction(leg="caller", text="One moment").to_json())
        await conn.ws.send_bytes(inject)
        await conn.ws.send_str(StopPlaybackAction(leg="caller").to_json())
        await conn.ws.send_str(HangupAction(reason="done").to_json())

    ai.script = script
    stream, got = start(link, TapQueue(250))
    await until(lambda: len(got.actions) == 4, what="4 actions")
    assert got.transcripts == [
        TranscriptEvent(
            final=True, leg="caller", speaker="spk0", text="hello", start=0.1, end=0.6, confidence=0.9
        )
    ]
    assert got.actions[0] == PlayAction(leg="caller", text="One moment")
    assert got.actions[1] == InjectAudio(Side.CALLER, b"\x01\x00" * 800, 3, 4800)
    assert got.actions[2] == StopPlaybackAction(leg="caller")
    assert got.actions[3] == HangupAction(reason="done")
    stats = stream.stats
    assert (stats.transcripts, stats.actions, stats.inject_frames, stats.bad_messages) == (1, 3, 1, 2)


async def test_a_failing_callback_does_not_end_the_stream(ai: FakeAi, link: AiLink) -> None:
    async def script(conn: Connection) -> None:
        for text in ("a", "b"):
            await conn.ws.send_str(
                TranscriptEvent(final=False, leg="callee", text=text, start=0, end=0).to_json()
            )

    ai.script = script
    seen: list[str] = []

    def on_transcript(event: TranscriptEvent | TranscriptGap) -> None:
        assert isinstance(event, TranscriptEvent)
        seen.append(event.text)
        raise RuntimeError("handler bug")

    stream = link.start_call(META, TapQueue(10), on_transcript, lambda action: None)
    assert stream is not None
    await until(lambda: seen == ["a", "b"])
    assert stream.stats.callback_errors == 2 and stream.connected


# -- losing the AI side -----------------------------------------------------------------------------


async def test_reconnects_after_the_server_dies_and_reports_the_gap(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(250)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected)
    feed(queue, range(5))
    await until(lambda: len(ai.connections[0].frames) == 10, what="frames before the cut")

    await ai.kill()
    await until(lambda: not stream.connected, what="the client to notice")
    feed(queue, range(5, 15))  # 20 frames while down: dropped at once, not buffered
    stream.send_control(DtmfMessage(leg="caller", digit="5", media_time=0.2))  # waits for the socket
    await until(lambda: stream.stats.frames_dropped_disconnected == 20, what="drops while down")
    assert len(queue) == 0

    await ai.start()  # same port
    await until(lambda: len(ai.connections) == 2 and stream.connected, what="reconnection")
    feed(queue, range(15, 20))
    conn = ai.connections[1]
    await until(lambda: len(conn.frames) == 10, what="frames after the reconnection")

    start_msg = conn.log[0]
    assert isinstance(start_msg, StartMessage)
    assert start_msg.call_id == "call-1" and conn.call_id == "call-1"
    assert start_msg.resume is True and start_msg.last_seq == {"caller": 4, "callee": 4}
    gaps = [m for m in conn.messages if isinstance(m, GapMessage)]
    assert sorted(gaps, key=lambda g: g.leg) == [
        GapMessage(leg=leg, start=0.1, end=0.3, frames=10, first_seq=5, last_seq=14, reason="disconnected")
        for leg in ("callee", "caller")
    ]
    assert conn.log.index(gaps[0]) < 3 and conn.log.index(gaps[1]) < 3  # right after the start
    assert DtmfMessage(leg="caller", digit="5", media_time=0.2) in conn.messages
    for leg in (Leg.CALLER, Leg.CALLEE):
        frames = conn.leg_frames(leg)
        assert [f.seq for f in frames] == list(range(15, 20))
        assert [f.flags for f in frames] == [FLAG_GAP, 0, 0, 0, 0]
    stats = stream.stats
    assert stats.reconnects == 1 and stats.connects == 2 and stats.disconnects == 1
    assert stats.gaps == 2 and stats.frames_dropped == 20 and stats.frames_sent == 20
    assert stats.controls_sent == 1


async def test_a_queue_overflow_is_reported_as_a_gap(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(4)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected)
    feed(queue, range(1), legs=(Side.CALLER,))
    await until(lambda: len(ai.connections[0].frames) == 1)
    feed(queue, range(1, 11), legs=(Side.CALLER,))  # the queue keeps 7..10, drops 1..6
    await until(lambda: len(ai.connections[0].frames) == 5, what="frames after the overflow")

    conn = ai.connections[0]
    assert [f.seq for f in conn.frames] == [0, 7, 8, 9, 10]
    assert [f.flags for f in conn.frames] == [0, FLAG_GAP, 0, 0, 0]
    gap = GapMessage(leg="caller", start=0.02, end=0.14, frames=6, first_seq=1, last_seq=6, reason="overflow")
    assert conn.log.index(gap) == conn.log.index(conn.frames[1]) - 1
    assert stream.stats.frames_dropped_queue == 6 and stream.stats.frames_dropped == 6


async def test_connects_late_when_the_ai_side_is_not_up_yet() -> None:
    ai = FakeAi()
    await ai.start()
    await ai.kill()  # a free port nobody listens on
    link = AiLink(make_config(ai))
    try:
        queue = TapQueue(250)
        stream, _ = start(link, queue)
        await until(lambda: stream.stats.connect_failures >= 2, what="failed attempts")
        feed(queue, range(3), legs=(Side.CALLEE,))
        await until(lambda: stream.stats.frames_dropped_disconnected == 3)
        await ai.start()
        await until(lambda: len(ai.connections) == 1 and len(ai.connections[0].log) == 2, what="start + gap")
        conn = ai.connections[0]
        start_msg = conn.log[0]
        assert isinstance(start_msg, StartMessage) and start_msg.resume is False
        assert conn.log[1] == GapMessage(leg="callee", start=0, end=0.06, frames=3, first_seq=0, last_seq=2)
    finally:
        await link.close()
        await ai.kill()


async def test_the_ai_side_ending_the_stream_is_final(ai: FakeAi) -> None:
    ai.close_with = 1000
    link = AiLink(make_config(ai))
    finished: list[CallStream] = []
    stream = link.start_call(META, TapQueue(10), lambda t: None, lambda a: None, on_finished=finished.append)
    assert stream is not None
    await until(lambda: stream.finished, what="the stream to end")
    await asyncio.sleep(0.15)  # longer than the reconnection backoff
    assert len(ai.connections) == 1 and finished == [stream]
    assert link.stream("call-1") is None and link.stats().admitted == 0
    await link.close()


# -- stopping ---------------------------------------------------------------------------------------


async def test_stop_flushes_sends_end_and_closes(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(250)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected)
    stream.send_control(HoldMessage(leg="callee"))
    feed(queue, range(3))
    await link.stop_call("call-1", "caller_bye")

    conn = ai.connections[0]
    await asyncio.wait_for(conn.closed.wait(), 2)
    assert conn.ws.close_code == 1000
    assert len(conn.frames) == 6  # what the queue held was sent first
    assert HoldMessage(leg="callee") in conn.messages
    assert conn.log[-1] == EndMessage(reason="caller_bye")
    assert stream.finished and not stream.connected
    assert link.stream("call-1") is None
    assert link.stats().streams.frames_sent == 6
    stream.send_control(HoldMessage(leg="caller"))  # after the end: dropped, counted
    assert stream.stats.controls_dropped == 1


async def test_transcripts_sent_after_end_arrive_before_the_close(ai: FakeAi, link: AiLink) -> None:
    async def flush_last_utterance(conn: Connection) -> None:
        await asyncio.sleep(0.2)  # the last decode
        last = TranscriptEvent(final=True, leg="callee", text="goodbye", start=4.0, end=4.6, id="u9")
        await conn.ws.send_str(last.to_json())

    ai.on_end = flush_last_utterance
    stream, received = start(link, TapQueue(10))
    await until(lambda: stream.connected)
    await link.stop_call("call-1", "caller_bye")
    assert [t.text for t in received.transcripts if isinstance(t, TranscriptEvent)] == ["goodbye"]
    assert stream.finished and ai.connections[0].ws.close_code == 1000


async def test_an_ai_side_that_never_closes_is_waited_for_drain_timeout(ai: FakeAi) -> None:
    ai.close_on_end = False
    link = AiLink(make_config(ai, drain_timeout=0.3))
    try:
        stream, _ = start(link, TapQueue(10))
        await until(lambda: stream.connected)
        began = time.monotonic()
        await link.stop_call("call-1")
        assert 0.25 < time.monotonic() - began < 2.0 and stream.finished
        await asyncio.wait_for(ai.connections[0].closed.wait(), 2)  # then the edge closed it
    finally:
        await link.close()


async def test_the_tap_closing_ends_the_stream(ai: FakeAi, link: AiLink) -> None:
    queue = TapQueue(250)
    stream, _ = start(link, queue)
    await until(lambda: stream.connected)
    feed(queue, range(2))
    queue.close()  # the relay ended the call
    await until(lambda: stream.finished, what="the stream to end")
    conn = ai.connections[0]
    await asyncio.wait_for(conn.closed.wait(), 2)
    assert len(conn.frames) == 4 and conn.log[-1] == EndMessage(reason="tap_closed")


async def test_end_through_send_control_stops_and_gaps_are_refused(ai: FakeAi, link: AiLink) -> None:
    stream, _ = start(link, TapQueue(10))
    await until(lambda: stream.connected)
    with pytest.raises(ValueError, match="gap controls are the stream's own"):
        stream.send_control(GapMessage(leg="caller", start=0, end=1, frames=1, first_seq=0, last_seq=0))
    stream.send_control(EndMessage(reason="transferred"))
    await stream.stop()
    assert ai.connections[0].log[-1] == EndMessage(reason="transferred")


async def test_stop_while_the_ai_side_is_down_does_not_wait(ai: FakeAi, link: AiLink) -> None:
    stream, _ = start(link, TapQueue(10))
    await until(lambda: stream.connected)
    await ai.kill()
    await until(lambda: not stream.connected)
    began = time.monotonic()
    await stream.stop()
    assert time.monotonic() - began < 0.5 and stream.finished


async def test_closing_the_link_ends_every_stream(ai: FakeAi) -> None:
    link = AiLink(make_config(ai))
    streams = [start(link, TapQueue(10), CallMeta(f"c{n}"))[0] for n in range(3)]
    await until(lambda: all(s.connected for s in streams) and len(ai.connections) == 3)
    await link.close()
    assert all(s.finished for s in streams)
    for conn in ai.connections:
        await asyncio.wait_for(conn.closed.wait(), 2)
        assert conn.log[-1] == EndMessage(reason="shutdown")
    assert link.stats().active == 0


# -- admission --------------------------------------------------------------------------------------


async def test_max_streams_sheds_ai_work_not_calls(ai: FakeAi) -> None:
    link = AiLink(make_config(ai, max_streams=2))
    try:
        assert link.admit("a") and link.admit("b")
        assert link.admit("a")  # already admitted: same slot
        assert not link.admit("c")
        assert link.start_call(CallMeta("d"), TapQueue(10), lambda t: None, lambda a: None) is None
        assert link.stats().shed == 2
        stream, _ = start(link, TapQueue(10), CallMeta("a"))
        await until(lambda: stream.connected)
        await link.stop_call("b")  # admitted, never started: frees its slot
        assert link.admit("c")
        await link.stop_call("a")
        assert link.admit("d")
        stats = link.stats()
        assert (stats.admitted, stats.active, stats.started, stats.shed) == (2, 0, 1, 2)
    finally:
        await link.close()


async def test_a_disabled_link_streams_nothing(ai: FakeAi) -> None:
    link = AiLink(make_config(ai, enabled=False))
    assert not link.admit("a")
    assert link.start_call(CallMeta("a"), TapQueue(10), lambda t: None, lambda a: None) is None
    assert link.stats().shed == 0
    await link.close()


# -- helpers for the wiring -------------------------------------------------------------------------


def test_call_meta_from_a_call_answered_event() -> None:
    event = Event(
        id="1",
        name="call.answered",
        time=0.0,
        node_id="edge-1",
        call_id="c9",
        a_call_id="a",
        b_call_id="b",
        caller="1001",
        callee="2002",
        data={"codec": "opus"},
    )
    assert CallMeta.from_event(event) == CallMeta("c9", "a", "b", "1001", "2002", "opus")
    with pytest.raises(ValueError, match="no call_id"):
        CallMeta.from_event(event.model_copy(update={"call_id": None}))


class FakeMedia:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def play(self, leg: Side, pcm: bytes, sample_rate: int = 16000) -> float:
        self.calls.append(("play", leg, len(pcm), sample_rate))
        return 0.0

    def stop_playback(self, leg: Side) -> int:
        self.calls.append(("stop", leg))
        return 0

    def bridge_to_injector(self, leg: Side, bridged: bool = True) -> None:
        self.calls.append(("bridge", leg, bridged))


def test_apply_media_action_maps_actions_to_the_relay() -> None:
    media = FakeMedia()
    assert apply_media_action(media, InjectAudio(Side.CALLEE, b"\x00" * 640, 0, 0))
    assert apply_media_action(media, StopPlaybackAction(leg="caller"))
    assert apply_media_action(media, BridgeAction(leg="caller", bridged=False))
    assert apply_media_action(media, PlayAction(leg="caller", text="hi"))  # audio follows
    assert not apply_media_action(media, PlayAction(leg="caller", prompt="welcome"))
    assert not apply_media_action(media, HangupAction())
    assert media.calls == [
        ("play", Side.CALLEE, 640, 16000),
        ("stop", Side.CALLER),
        ("bridge", Side.CALLER, False),
    ]


async def test_backoff_grows_to_the_cap_with_jitter(ai: FakeAi) -> None:
    config = make_config(ai, reconnect_initial=0.5, reconnect_max=4.0)
    async with aiohttp.ClientSession() as session:
        low = CallStream(config, session, rng=lambda: 0.0)
        high = CallStream(config, session, rng=lambda: 0.999999)
        assert [low._backoff(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
        assert high._backoff(0) == pytest.approx(0.5) and high._backoff(10) == pytest.approx(4.0)
