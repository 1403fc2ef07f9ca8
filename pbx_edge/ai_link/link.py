"""The node-wide side of the AI link: admission (``max_streams``), one :class:`CallStream` per
streamed call, totals; and :func:`apply_media_action`, what an AI action means for a call's media.

Split from :mod:`pbx_edge.ai_link.client`, which holds one call's stream.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from pbx_edge.media.interface import Side
from pbx_edge.media.tap import TapQueue

from .client import (
    ActionCallback,
    CallMeta,
    CallStream,
    FinishedCallback,
    InjectAudio,
    SessionFactory,
    StreamStats,
    TranscriptCallback,
)
from .config import AiLinkConfig
from .protocol import ActionMessage, BridgeAction, PlayAction, StopPlaybackAction

__all__ = ["AiLink", "AiLinkStats", "MediaControl", "apply_media_action"]


# ---------------------------------------------------------------------------------------------
# the node-wide owner
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AiLinkStats:
    active: int  # streams running
    admitted: int  # calls holding a slot (running or about to start)
    started: int  # streams started since the node started
    shed: int  # calls not streamed because max_streams was reached
    streams: StreamStats  # summed over every stream, finished ones included


class AiLink:
    """Streams up to ``config.max_streams`` calls to the AI layer.

    Wiring (the edge node): on ``call.answered``, ``if link.admit(call_id)``: subscribe a tap
    queue of ``config.queue_frames`` and ``link.start_call(...)``; on ``call.ended``,
    ``link.stop_call(call_id)``; at shutdown, ``await link.close()``.
    """

    def __init__(
        self,
        config: AiLinkConfig,
        session_factory: SessionFactory | None = None,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._session_factory = session_factory or aiohttp.ClientSession
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._admitted: set[str] = set()
        self._streams: dict[str, CallStream] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._finished_stats = StreamStats()
        self._started = 0
        self._shed = 0

    def has_room(self) -> bool:
        """Whether a new call would be admitted now (enabled, a slot free); counts nothing."""
        return self.config.enabled and len(self._admitted) < self.config.max_streams

    def admit(self, call_id: str) -> bool:
        """Reserve a stream slot for ``call_id``; False (counted as shed) when disabled or full.

        Ask before subscribing to the tap, so a shed call costs no decoding."""
        if call_id in self._admitted:
            return True
        if not self.config.enabled:
            return False
        if len(self._admitted) >= self.config.max_streams:
            self._shed += 1
            return False
        self._admitted.add(call_id)
        return True

    def start_call(
        self,
        meta: CallMeta,
        tap_queue: TapQueue,
        on_transcript: TranscriptCallback,
        on_action: ActionCallback,
        on_finished: FinishedCallback | None = None,
    ) -> CallStream | None:
        """Start streaming a call (admitting it if needed); None when shed or disabled.

        ``on_finished(stream)`` runs once the stream has stopped, e.g. to unsubscribe the tap when
        the AI side ended the stream before the call ended."""
        call_id = meta.call_id
        if call_id in self._streams:
            raise RuntimeError(f"call {call_id} is already streamed")
        if not self.admit(call_id):
            return None
        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        stream = CallStream(self.config, self._session, rng=self._rng)
        stream.start(meta, tap_queue, on_transcript, on_action)
        self._streams[call_id] = stream
        self._started += 1
        stream.add_finished_callback(self._stream_finished)
        if on_finished is not None:
            stream.add_finished_callback(on_finished)
        return stream

    def stop_call(self, call_id: str, reason: str = "hangup") -> asyncio.Future[None]:
        """Stop a call's stream and free its slot at once; the returned task ends when the socket is
        closed (awaiting it is optional: :meth:`close` waits for every stop)."""
        self._admitted.discard(call_id)
        stream = self._streams.pop(call_id, None)
        if stream is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        task = stream.begin_stop(reason)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return task

    def stream(self, call_id: str) -> CallStream | None:
        return self._streams.get(call_id)

    def stats(self) -> AiLinkStats:
        total = StreamStats()
        total.add(self._finished_stats)
        for stream in self._streams.values():
            total.add(stream.stats)
        return AiLinkStats(
            active=len(self._streams),
            admitted=len(self._admitted),
            started=self._started,
            shed=self._shed,
            streams=total,
        )

    async def close(self) -> None:
        """Stop every stream (``end`` reason ``shutdown``) and close the HTTP session."""
        for call_id in list(self._streams):
            self.stop_call(call_id, "shutdown")
        self._admitted.clear()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _stream_finished(self, stream: CallStream) -> None:
        self._finished_stats.add(stream.stats)
        if self._streams.get(stream.call_id) is stream:
            del self._streams[stream.call_id]
            self._admitted.discard(stream.call_id)


# ---------------------------------------------------------------------------------------------
# carrying out actions
# ---------------------------------------------------------------------------------------------


class MediaControl(Protocol):
    """What :func:`apply_media_action` needs of a call's media (a ``RelaySession`` has it)."""

    def play(self, leg: Side, pcm: bytes, sample_rate: int = 16000) -> float: ...

    def stop_playback(self, leg: Side) -> int: ...

    def bridge_to_injector(self, leg: Side, bridged: bool = True) -> None: ...


def apply_media_action(media: MediaControl, action: ActionMessage | InjectAudio) -> bool:
    """Carry out the actions that concern media only; False for those the call layer must carry
    out (transfer, hangup, play of a named prompt)."""
    if isinstance(action, InjectAudio):
        media.play(action.leg, action.pcm, action.sample_rate)
        return True
    if isinstance(action, StopPlaybackAction):
        media.stop_playback(Side(action.leg))
        return True
    if isinstance(action, BridgeAction):
        media.bridge_to_injector(Side(action.leg), action.bridged)
        return True
    if isinstance(action, PlayAction):
        return action.prompt is None  # without a prompt the audio follows as binary frames
    return False
