"""The edge's client of the AI layer: one WebSocket per streamed call (the wire is in protocol.py).

Theory of operation
-------------------
:class:`AiLink` is the node-wide owner. It admits calls up to ``max_streams`` (calls beyond that are
connected as usual but not streamed, and counted as shed), shares one aiohttp session, and owns
every :class:`CallStream` and the tasks that stop them.

A :class:`CallStream` runs three tasks for the life of its call:

- the *connection* task connects (bounded by ``connect_timeout``), sends the start message
  (``resume`` true after the first connection, with the last sequence number sent per leg) and the
  gap controls owed, publishes the socket to the other tasks, then reads AI messages and hands them
  to the callbacks until the socket closes. Unless the stream is stopping or the server closed with
  ``CLOSE_DONE``/``CLOSE_REJECTED``, it waits out a backoff with jitter and starts over.
- the *pump* is the only reader of the tap queue. It takes up to ``batch_frames`` frames (waiting at
  most ``batch_frames`` x 20 ms after the first) and sends them as one binary message while the
  socket is up. While it is down, frames are dropped at once (never buffered) and counted, and the
  span lost is recorded per leg; so are sequence jumps, the frames the tap queue dropped because we
  fell behind. A recorded span goes out as a ``gap`` control before the leg's next frame, and that
  frame carries ``FLAG_GAP``.
- the *control* task sends what :meth:`CallStream.send_control` queued (dtmf, hold...); while the
  socket is down controls wait in a bounded queue (oldest dropped first).

The relay never waits on any of this: it only calls ``TapQueue.put_nowait``, which drops the oldest
frame when we are slow. Callbacks run on the event loop and must not block.

Stopping (:meth:`CallStream.stop`, or by itself when the tap queue closes or the server says it is
done): the pump stops, what the queue still holds is sent, then queued controls, then ``end``, all
within ``close_timeout``; then the receive loop keeps handing on transcripts (the AI side flushes the
call's last utterances) until the AI side closes with 1000, for at most ``drain_timeout``.

Frames written just before a connection broke may be lost without a gap control (the socket
accepted them); the ``last_seq`` of the resuming start message lets the ingress see that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import aiohttp

from pbx_edge.media.interface import Side
from pbx_edge.media.tap import FRAME_SECONDS, TapFrame, TapQueue, TapQueueClosed

from .config import AiLinkConfig
from .protocol import (
    CLOSE_DONE,
    CLOSE_REJECTED,
    FLAG_GAP,
    MAX_MESSAGE_BYTES,
    SAMPLE_RATE,
    ActionMessage,
    AgentEvent,
    AudioFrame,
    ControlMessage,
    EndMessage,
    GapMessage,
    Language,
    Leg,
    LegName,
    Mode,
    ProtocolError,
    StartMessage,
    TranscriptEvent,
    TranscriptGap,
    decode_frame,
    parse_ai_message,
)

if TYPE_CHECKING:
    from pbx_edge.ops.models import Event

__all__ = [
    "CallMeta",
    "CallStream",
    "InjectAudio",
    "StreamStats",
]

log = logging.getLogger("pbx_edge.ai_link")

SessionFactory = Callable[[], aiohttp.ClientSession]
TranscriptCallback = Callable[[TranscriptEvent | TranscriptGap], object]
ActionCallback = Callable[["ActionMessage | AgentEvent | InjectAudio"], object]
FinishedCallback = Callable[["CallStream"], object]
WebSocket = aiohttp.ClientWebSocketResponse

_U32 = 0xFFFFFFFF
_SEND_ERRORS = (ConnectionError, aiohttp.ClientError)
_LEG_OF_SIDE = {Side.CALLER: Leg.CALLER, Side.CALLEE: Leg.CALLEE}


@dataclass(frozen=True, slots=True)
class CallMeta:
    """What the start message says about a call; ``language``/``mode`` None: from the config."""

    call_id: str
    a_call_id: str | None = None
    b_call_id: str | None = None
    caller: str = ""
    callee: str = ""
    codec: str | None = None
    language: Language | None = None
    mode: Mode | None = None
    trigger: str | None = None  # attendant mode: why the AI answers (no_answer, busy, ...)

    @classmethod
    def from_event(cls, event: Event) -> CallMeta:
        """From a ``call.answered`` event (its ``data`` carries the codec)."""
        if event.call_id is None:
            raise ValueError(f"event {event.name} has no call_id")
        codec = event.data.get("codec")
        return cls(
            call_id=event.call_id,
            a_call_id=event.a_call_id,
            b_call_id=event.b_call_id,
            caller=event.caller or "",
            callee=event.callee or "",
            codec=codec if isinstance(codec, str) else None,
        )


@dataclass(frozen=True, slots=True)
class InjectAudio:
    """Binary audio from the AI side: 16 kHz mono s16le PCM for ``leg`` to hear."""

    leg: Side
    pcm: bytes = field(repr=False)
    seq: int
    media_samples: int
    sample_rate: int = SAMPLE_RATE


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream; :class:`AiLink` sums them over its streams."""

    frames_sent: int = 0
    frames_dropped_disconnected: int = 0  # taken from the tap queue while the socket was down
    frames_dropped_queue: int = 0  # dropped by the tap queue itself: we were too slow
    messages_sent: int = 0  # WebSocket messages, binary and JSON
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0  # successful connections, the first included
    reconnects: int = 0  # successful connections after the first
    connect_failures: int = 0
    disconnects: int = 0  # connections that ended without a stop
    gaps: int = 0  # gap controls sent
    controls_sent: int = 0
    controls_dropped: int = 0
    transcripts: int = 0
    actions: int = 0
    inject_frames: int = 0
    bad_messages: int = 0  # AI messages that broke the contract (ignored)
    callback_errors: int = 0

    @property
    def frames_dropped(self) -> int:
        return self.frames_dropped_disconnected + self.frames_dropped_queue

    def add(self, other: StreamStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class _Span:
    """Media of one leg the AI side has not got and has not been told about yet."""

    start: float
    end: float
    first_seq: int
    last_seq: int
    frames: int
    reason: str

    def extend(self, other: _Span) -> None:
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.first_seq = min(self.first_seq, other.first_seq)
        self.last_seq = max(self.last_seq, other.last_seq)
        self.frames += other.frames
        if other.reason == "disconnected":
            self.reason = "disconnected"

    def message(self, leg: LegName) -> GapMessage:
        return GapMessage(
            leg=leg,
            start=round(self.start, 6),
            end=round(self.end, 6),
            frames=self.frames,
            first_seq=self.first_seq & _U32,
            last_seq=self.last_seq & _U32,
            reason="disconnected" if self.reason == "disconnected" else "overflow",
        )


@dataclass(slots=True)
class _Cursor:
    """Where one leg's stream stands: the next frame expected and what is owed to the AI side."""

    next_seq: int
    next_time: float
    last_sent: int | None = None  # seq of the last frame the socket took (for resume)
    owed: _Span | None = None  # lost span not yet reported
    flag_next: bool = False  # the next frame sent carries FLAG_GAP

    def owe(self, span: _Span) -> None:
        if self.owed is None:
            self.owed = span
        else:
            self.owed.extend(span)
        self.flag_next = True


@dataclass(slots=True)
class _Part:
    """One WebSocket message of a batch being sent, with what it carries (to undo on failure)."""

    payload: str | bytes
    frames: list[TapFrame] = field(default_factory=list)
    gap: tuple[Side, _Span] | None = None


def _gap_part(side: Side, span: _Span) -> _Part:
    return _Part(span.message(_LEG_OF_SIDE[side].label).to_json(), gap=(side, span))


class CallStream:
    """One call's stream to the AI layer; see the module docstring. Start with :meth:`start`."""

    def __init__(
        self,
        config: AiLinkConfig,
        session: aiohttp.ClientSession,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._session = session
        self._rng = rng
        self.meta: CallMeta | None = None
        self._queue: TapQueue | None = None
        self._on_transcript: TranscriptCallback | None = None
        self._on_action: ActionCallback | None = None
        self._on_finished: list[FinishedCallback] = []
        self._ws: WebSocket | None = None  # published once the start message is out
        self._cursors: dict[Side, _Cursor] = {}
        self._batch: list[TapFrame] = []  # frames the pump took and has not sent yet
        self._controls: deque[ControlMessage] = deque()
        self._control_wake = asyncio.Event()
        self._stats = StreamStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._finished = False
        self._warned_connect = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(
        self,
        meta: CallMeta,
        tap_queue: TapQueue,
        on_transcript: TranscriptCallback,
        on_action: ActionCallback,
    ) -> None:
        """Start streaming in the background; returns at once (the relay's caller never waits)."""
        if self._tasks:
            raise RuntimeError(f"stream for call {meta.call_id} already started")
        if not meta.call_id:
            raise ValueError("call_id must not be empty")
        self.meta = meta
        self._queue = tap_queue
        self._on_transcript = on_transcript
        self._on_action = on_action
        loop = asyncio.get_running_loop()
        name = f"ai_link {meta.call_id}"
        self._tasks = [
            loop.create_task(self._connection_loop(), name=f"{name} connection"),
            loop.create_task(self._pump(), name=f"{name} pump"),
            loop.create_task(self._control_loop(), name=f"{name} controls"),
        ]

    def add_finished_callback(self, callback: FinishedCallback) -> None:
        """Call ``callback(stream)`` once the stream has stopped, for whatever reason."""
        if self._finished:
            callback(self)
        else:
            self._on_finished.append(callback)

    def begin_stop(self, reason: str = "hangup") -> asyncio.Task[None]:
        """Start stopping (idempotent); the task ends when the socket is closed."""
        if self._stop_task is None:
            self._stopping = True
            self._stop_task = asyncio.get_running_loop().create_task(
                self._shutdown(reason), name=f"ai_link {self.call_id} stop"
            )
        return self._stop_task

    async def stop(self, reason: str = "hangup") -> None:
        """Flush, send ``end`` with ``reason`` and close (bounded by ``close_timeout``)."""
        await asyncio.shield(self.begin_stop(reason))

    @property
    def call_id(self) -> str:
        return self.meta.call_id if self.meta is not None else "?"

    @property
    def connected(self) -> bool:
        return self._live_ws() is not None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def stats(self) -> StreamStats:
        snapshot = StreamStats(**{f.name: getattr(self._stats, f.name) for f in fields(self._stats)})
        if self._queue is not None:
            snapshot.frames_dropped_queue = self._queue.dropped
        return snapshot

    def last_seq(self) -> dict[LegName, int]:
        """Sequence number of the last frame sent, per leg (modulo 2**32)."""
        return {
            _LEG_OF_SIDE[side].label: cursor.last_sent & _U32
            for side, cursor in self._cursors.items()
            if cursor.last_sent is not None
        }

    def send_control(self, message: ControlMessage) -> None:
        """Queue a control (dtmf, hold, unhold, transfer); never waits. ``end`` stops the stream."""
        if isinstance(message, EndMessage):
            self.begin_stop(message.reason)
            return
        if isinstance(message, GapMessage):
            raise ValueError("gap controls are the stream's own: it reports what it lost")
        if self._stopping:
            self._stats.controls_dropped += 1
            return
        if len(self._controls) >= self._config.control_queue:
            self._controls.popleft()
            self._stats.controls_dropped += 1
        self._controls.append(message)
        self._control_wake.set()

    # -- connection -----------------------------------------------------------------------------

    def _live_ws(self) -> WebSocket | None:
        ws = self._ws
        if ws is not None and ws.closed:
            self._ws = None
            return None
        return ws

    async def _connection_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            ws = await self._connect()
            if ws is None:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            try:
                code = await self._receive(ws)
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("ai_link %s: receive failed: %r", self.call_id, exc)
                code = None
            finally:
                if self._ws is ws:
                    self._ws = None
            if self._stopping:
                return
            self._stats.disconnects += 1
            if code in (CLOSE_DONE, CLOSE_REJECTED):
                log.info("ai_link %s: the AI side closed the stream (code %s)", self.call_id, code)
                self.begin_stop("ai_closed")
                return
            log.warning("ai_link %s: stream lost (close code %s), reconnecting", self.call_id, ws.close_code)
            await asyncio.sleep(self._backoff(0))

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter in [0.5, 1) so calls cut off together do not return
        together."""
        config = self._config
        base = min(config.reconnect_max, config.reconnect_initial * 2.0 ** min(attempt, 30))
        return base * (0.5 + 0.5 * self._rng())

    async def _connect(self) -> WebSocket | None:
        """Connect and say hello (start + gaps owed); None when that failed."""
        assert self.meta is not None
        config = self._config
        url = config.stream_url(self.meta.call_id)
        try:
            async with asyncio.timeout(config.connect_timeout):
                ws = await self._session.ws_connect(
                    url,
                    heartbeat=config.heartbeat,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=config.close_timeout),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._stats.connect_failures += 1
            level = logging.DEBUG if self._warned_connect else logging.WARNING
            self._warned_connect = True
            log.log(level, "ai_link %s: cannot connect to %s: %r", self.call_id, url, exc)
            return None
        self._warned_connect = False
        resume = self._stats.connects > 0
        start = StartMessage(
            call_id=self.meta.call_id,
            a_call_id=self.meta.a_call_id,
            b_call_id=self.meta.b_call_id,
            caller=self.meta.caller,
            callee=self.meta.callee,
            codec=self.meta.codec,
            language=self.meta.language or config.language_for(self.meta.callee),
            mode=self.meta.mode or config.mode_for(self.meta.callee),
            resume=resume,
            last_seq=self.last_seq() if resume else {},
            trigger=self.meta.trigger,
        )
        if not await self._send_parts(ws, [_Part(start.to_json())]):
            await _close_quietly(ws)
            return None
        while parts := self._owed_gaps():  # more may be owed while we await
            if not await self._send_parts(ws, parts):
                await _close_quietly(ws)
                return None
        self._stats.connects += 1
        if resume:
            self._stats.reconnects += 1
        self._ws = ws
        self._control_wake.set()
        return ws

    async def _receive(self, ws: WebSocket) -> int | None:
        """Hand AI messages to the callbacks until the socket closes; the server's close code,
        None when it did not send one (the connection just broke)."""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._stats.bytes_received += len(msg.data)
                self._on_text(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self._stats.bytes_received += len(msg.data)
                self._on_binary(msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return None

    def _on_text(self, text: str) -> None:
        try:
            message = parse_ai_message(text)
        except ProtocolError as exc:
            self._stats.bad_messages += 1
            log.warning("ai_link %s: ignored a bad message: %s", self.call_id, exc)
            return
        if isinstance(message, TranscriptEvent | TranscriptGap):
            self._stats.transcripts += 1
            assert self._on_transcript is not None
            self._call(self._on_transcript, message)
        else:  # actions, and agent events (the bridge publishes those as call events)
            self._stats.actions += 1
            assert self._on_action is not None
            self._call(self._on_action, message)

    def _on_binary(self, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except ProtocolError as exc:
            self._stats.bad_messages += 1
            log.warning("ai_link %s: ignored a bad audio frame: %s", self.call_id, exc)
            return
        self._stats.inject_frames += 1
        side = Side.CALLER if frame.leg is Leg.CALLER else Side.CALLEE
        assert self._on_action is not None
        self._call(self._on_action, InjectAudio(side, frame.pcm, frame.seq, frame.media_samples))

    def _call(self, callback: Callable[[Any], object], message: object) -> None:
        try:
            callback(message)
        except Exception:
            self._stats.callback_errors += 1
            log.exception("ai_link %s: callback failed on a %s", self.call_id, type(message).__name__)

    # -- sending --------------------------------------------------------------------------------

    async def _send_parts(self, ws: WebSocket, parts: list[_Part]) -> bool:
        """Send in order; on a broken socket, put back what was not sent (as drops and gaps owed)
        and return False."""
        for index, part in enumerate(parts):
            try:
                if isinstance(part.payload, str):
                    await ws.send_str(part.payload)
                else:
                    await ws.send_bytes(part.payload)
            except _SEND_ERRORS as exc:
                log.debug("ai_link %s: send failed: %r", self.call_id, exc)
                if self._ws is ws:
                    self._ws = None
                for lost in parts[index:]:
                    self._undo(lost)
                return False
            self._stats.messages_sent += 1
            payload = part.payload
            self._stats.bytes_sent += len(payload.encode() if isinstance(payload, str) else payload)
            if part.gap is not None:
                self._stats.gaps += 1
            self._stats.frames_sent += len(part.frames)
            for frame in part.frames:
                self._cursors[frame.leg].last_sent = frame.seq
        return True

    def _undo(self, part: _Part) -> None:
        if part.gap is not None:
            side, span = part.gap
            self._cursors[side].owe(span)
        for frame in part.frames:
            self._drop(frame)

    def _owed_gaps(self) -> list[_Part]:
        parts = []
        for side, cursor in self._cursors.items():
            if cursor.owed is not None:
                span, cursor.owed = cursor.owed, None
                parts.append(_gap_part(side, span))
        return parts

    def _advance(self, frame: TapFrame) -> _Cursor:
        """Move the leg's cursor past ``frame``; a sequence jump is owed as an overflow gap."""
        cursor = self._cursors.get(frame.leg)
        if cursor is None:
            cursor = self._cursors[frame.leg] = _Cursor(frame.seq, frame.media_time)
        elif frame.seq > cursor.next_seq:
            missing = frame.seq - cursor.next_seq
            start = min(cursor.next_time, frame.media_time)
            cursor.owe(_Span(start, frame.media_time, cursor.next_seq, frame.seq - 1, missing, "overflow"))
        cursor.next_seq = frame.seq + 1
        cursor.next_time = frame.media_time + FRAME_SECONDS
        return cursor

    def _drop(self, frame: TapFrame) -> None:
        self._stats.frames_dropped_disconnected += 1
        end = frame.media_time + FRAME_SECONDS
        self._cursors[frame.leg].owe(_Span(frame.media_time, end, frame.seq, frame.seq, 1, "disconnected"))

    async def _send_frames(self, batch: list[TapFrame]) -> None:
        ws = self._live_ws()
        parts: list[_Part] = []
        records: list[bytes] = []
        chunk: list[TapFrame] = []
        for frame in batch:
            cursor = self._advance(frame)
            if ws is None:
                self._drop(frame)
                continue
            if cursor.owed is not None:
                if chunk:
                    parts.append(_Part(b"".join(records), chunk))
                    records, chunk = [], []
                span, cursor.owed = cursor.owed, None
                parts.append(_gap_part(frame.leg, span))
            flags = FLAG_GAP if cursor.flag_next else 0
            cursor.flag_next = False
            header = AudioFrame(
                _LEG_OF_SIDE[frame.leg], frame.seq & _U32, round(frame.media_time * SAMPLE_RATE), b"", flags
            ).header()
            records.append(header)
            records.append(frame.pcm)
            chunk.append(frame)
        if chunk:
            parts.append(_Part(b"".join(records), chunk))
        if parts and ws is not None:
            await self._send_parts(ws, parts)

    async def _pump(self) -> None:
        queue = self._queue
        assert queue is not None
        size = self._config.batch_frames
        max_wait = size * FRAME_SECONDS
        closed = False
        while not closed:
            try:
                first = await queue.get()
            except TapQueueClosed:
                break
            batch = self._batch = [first]  # visible to _shutdown if we are cancelled while collecting
            while len(batch) < size and (frame := queue.get_nowait()) is not None:
                batch.append(frame)
            if len(batch) < size and self._live_ws() is not None:  # only worth waiting when sending
                try:
                    async with asyncio.timeout(max_wait):
                        while len(batch) < size:
                            batch.append(await queue.get())
                except TimeoutError:
                    pass
                except TapQueueClosed:
                    closed = True
            self._batch = []
            await self._send_frames(batch)
        self.begin_stop("tap_closed")

    async def _control_loop(self) -> None:
        while True:
            await self._control_wake.wait()
            self._control_wake.clear()
            await self._flush_controls()

    async def _flush_controls(self) -> None:
        while self._controls and (ws := self._live_ws()) is not None:
            message = self._controls[0]
            if not await self._send_parts(ws, [_Part(message.to_json())]):
                return
            if self._controls and self._controls[0] is message:
                self._controls.popleft()
            self._stats.controls_sent += 1

    # -- stopping -------------------------------------------------------------------------------

    async def _shutdown(self, reason: str) -> None:
        connection, pump, controls = self._tasks or (None, None, None)
        ended = False
        try:
            async with asyncio.timeout(self._config.close_timeout):
                for task in (pump, controls):
                    await _cancel(task)
                queue = self._queue
                if queue is not None:
                    leftovers, self._batch = self._batch, []
                    while (frame := queue.get_nowait()) is not None:
                        leftovers.append(frame)
                    size = self._config.batch_frames
                    for index in range(0, len(leftovers), size):
                        await self._send_frames(leftovers[index : index + size])
                await self._flush_controls()
                ws = self._live_ws()
                ended = ws is not None and await self._send_parts(
                    ws, [_Part(EndMessage(reason=reason).to_json())]
                )
        except TimeoutError:
            ended = False
            log.warning("ai_link %s: no clean close within %.1f s", self.call_id, self._config.close_timeout)
        try:
            if ended and connection is not None and not connection.done():
                # The AI side flushes the call's last utterances after ``end``, then closes with 1000:
                # the receive loop hands those transcripts on until then (closing now would lose them).
                async with asyncio.timeout(self._config.drain_timeout):
                    await asyncio.shield(connection)
        except TimeoutError:
            log.info("ai_link %s: the AI side did not close within %.1f s of 'end'", self.call_id,
                     self._config.drain_timeout)  # fmt: skip
        finally:
            ws = self._ws  # before the cancellations: the connection task clears it as it ends
            for task in (connection, pump, controls):
                await _cancel(task)
            self._ws = None
            if ws is not None and not ws.closed:
                await _close_quietly(ws)
            self._stats.controls_dropped += len(self._controls)
            self._controls.clear()
            self._finished = True
            for callback in self._on_finished:
                try:
                    callback(self)
                except Exception:
                    log.exception("ai_link %s: finished callback failed", self.call_id)
            self._on_finished.clear()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("ai_link: task %s had failed", task.get_name())


async def _close_quietly(ws: WebSocket) -> None:
    with contextlib.suppress(*_SEND_ERRORS, TimeoutError):
        async with asyncio.timeout(0.5):
            await ws.close(code=CLOSE_DONE)
