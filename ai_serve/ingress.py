"""The Serve ingress: one WebSocket per call from the edge, transcripts back (DESIGN.md, the contract).

Theory of operation
-------------------
``/v1/calls/{call_id}/stream`` takes the edge's conversation (:mod:`pbx_edge.ai_link.protocol`):
a ``start``, then binary batches of 20 ms frames of both legs and JSON controls, then ``end``.
Each connection gets a :class:`~ai_serve.ingress_call.CallStream` (see :mod:`ai_serve.ingress_call`
for the per-leg cutting, partials, speculative finals and gaps), fed by the receive loop here:

- Each leg has an :class:`UtteranceCutter` in the ingress: a :class:`~ai_serve.stt.vad.StreamingVad`
  (Silero through onnxruntime, about 0.1 ms per frame, cheap enough for the receive loop) plus the
  audio of the open utterance. Decodes go to the STT deployment through its ``DeploymentHandle``
  (``await stt.transcribe.remote(pcm, language, kind)``, kind ``final`` or ``partial``), each in its
  own task, so the receive loop never waits for a decode. Per leg, results go out in order: partial
  :class:`~pbx_edge.ai_link.protocol.TranscriptEvent` messages while an utterance is open, then its
  final (same ``id``), or a :class:`~pbx_edge.ai_link.protocol.TranscriptGap` when the STT failed.
- ``gap`` (or a frame flagged as first after a gap): the leg's open utterance is finalized with what
  was heard, its VAD is reset and the gap is echoed as a ``TranscriptGap``. ``end``: both legs are
  flushed, every pending transcript is sent, then the socket is closed with 1000. A second ``start``
  on the same socket (``resume``) is accepted and the stream goes on; a reconnection gets a fresh
  :class:`CallStream`, media times continue.
- A bad first message closes with :data:`~pbx_edge.ai_link.protocol.CLOSE_REJECTED`; a bad message
  later is logged and skipped. A lost socket cancels the call's tasks (the edge reconnects).
- Mode ``attendant`` (an unanswered call handed to the AI): the same transcription, plus the call's
  attendant (:mod:`ai_serve.ingress_agent`): a cached greeting at once, a Ray actor per call fed the
  caller's speech starts and finals, its actions and PCM sent back on the socket, its summary at the end.
  Mode ``ivr``: the same with the callee's IVR flow or multi-agent session in the actor
  (:mod:`ai_serve.agents.ivr_host`); the caller's ``dtmf`` controls go to it too.
- Metrics (:mod:`ai_serve.metrics`): active calls, frames and messages received, transcripts sent,
  end-of-speech → final latency, speculative outcomes, STT requests in flight; ``/healthz`` returns
  the replica's running totals.
"""

# No ``from __future__ import annotations`` here: Serve pickles the ingress class by value, and the
# copy of each route's function keeps only the globals its code uses, so FastAPI could not resolve a
# string annotation such as 'WebSocket' in the replica (the socket would fail validation, close 1008).

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, WebSocket
from ray import serve
from ray.serve.handle import DeploymentHandle

from pbx_edge.ai_link.protocol import (
    CLOSE_DONE,
    CLOSE_REJECTED,
    CalleeAvailableMessage,
    DtmfMessage,
    EndMessage,
    GapMessage,
    ProtocolError,
    StartMessage,
    TransferFailedMessage,
    TransferMessage,
    decode_batch,
    parse_edge_message,
)

from .agents.attendant_config import parse_attendant_config
from .agents.ivr_host import IvrOptions
from .ingress_agent import AgentRuntime, AttendantCall
from .ingress_call import (
    CallStream,
    IngressOptions,
    IngressState,
    Segments,
    Utterance,
    UtteranceCutter,
    segments_to_event,
)
from .metrics import IngressMetrics

__all__ = [
    "CallStream",
    "IngressOptions",
    "SttIngress",
    "Utterance",
    "UtteranceCutter",
    "segments_to_event",
]

_LOG = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- Serve

app = FastAPI(title="SmartPBX AI ingress")


@serve.deployment(name="SttIngress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(app)
class SttIngress:
    """WebSocket ingress of the live transcription app; holds the STT and diarization handles."""

    def __init__(
        self,
        stt: DeploymentHandle[Any],
        options: dict[str, Any] | None = None,
        diarization: DeploymentHandle[Any] | None = None,
        attendant: dict[str, Any] | None = None,
        ivr: dict[str, Any] | None = None,
    ) -> None:
        self.stt = stt
        self.diarization = diarization  # speaker embeddings for labels within a leg (None: no labels)
        self.options = IngressOptions.model_validate(options or {})
        self.options.make_scorer()  # fail at deploy time, not on the first call, if the VAD is missing
        self.active_calls = 0
        self.state = IngressState()  # STT requests in flight (partials wait for finals), totals
        self.metrics = IngressMetrics()
        self.metrics.active_calls.set(0)
        # modes "attendant" and "ivr" (None: no IVR, for an app built before it had the option)
        ivr_options = IvrOptions.model_validate(ivr) if ivr is not None else IvrOptions(enabled=False)
        self.agents = AgentRuntime(parse_attendant_config(attendant), ivr_options)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        self.agents.ensure_warm()
        return {
            "status": "ok",
            "active_calls": self.active_calls,
            "stt_in_flight": {"final": self.state.finals_in_flight, "partial": self.state.partials_in_flight},
            "totals": dict(self.state.totals),
            "attendants": self.agents.info(),
        }

    async def _transcribe(self, pcm: bytes, language: str | None) -> Segments:
        segments: Segments = await self.stt.transcribe.remote(pcm, language, "final")
        return segments

    async def _transcribe_partial(self, pcm: bytes, language: str | None) -> Segments:
        segments: Segments = await self.stt.transcribe.remote(pcm, language, "partial")
        return segments

    async def _embed(self, pcm: bytes) -> list[float] | None:
        assert self.diarization is not None
        embedding: list[float] | None = await self.diarization.embed.remote(pcm)
        return embedding

    @app.websocket("/v1/calls/{call_id}/stream")
    async def stream(self, ws: WebSocket, call_id: str) -> None:
        await ws.accept()
        first = await ws.receive()
        try:
            if first["type"] == "websocket.disconnect":
                return
            start = parse_edge_message(first.get("text") or first.get("bytes") or b"")
            if not isinstance(start, StartMessage):
                raise ProtocolError(f"the first message must be 'start', got {start.type!r}")
            if start.call_id != call_id:
                raise ProtocolError(f"start.call_id {start.call_id!r} does not match the path's {call_id!r}")
        except ProtocolError as exc:
            _LOG.warning("call %s rejected: %s", call_id, exc)
            await ws.close(CLOSE_REJECTED, str(exc)[:120])
            return

        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:
                await ws.send_text(text)

        async def send_bytes(data: bytes) -> None:
            async with lock:
                await ws.send_bytes(data)

        agent: AttendantCall | None = None
        if self.agents.wants(start):
            agent = await self.agents.resume(start, send, send_bytes)
            if agent is None:
                agent = await self.agents.open(start, send, send_bytes)
            start = start if agent is None else agent.start
        call = CallStream(
            start,
            self.options,
            self._transcribe,
            send if agent is None else agent.tap(send),
            transcribe_partial=self._transcribe_partial,
            embed=self._embed if self.diarization is not None else None,
            state=self.state,
            metrics=self.metrics,
        )
        self.active_calls += 1
        self.metrics.active_calls.set(self.active_calls)
        t0 = time.monotonic()
        ended = False
        try:
            ended = await self._receive(ws, call, agent)
            if ended:
                await call.finish()
                if agent is not None:
                    await agent.finish()
                await ws.close(CLOSE_DONE)
        finally:
            self.active_calls -= 1
            self.metrics.active_calls.set(self.active_calls)
            if not ended:
                await call.cancel()
            if agent is not None and not ended:
                self.agents.detach(agent)  # the edge may resume the call
            elif agent is not None:
                await agent.cancel()
            _LOG.info("call %s: %s after %.1f s, %d finals, %d partials, %d gaps", call_id,
                      "ended" if ended else "lost", time.monotonic() - t0, call.sent, call.partials_sent,
                      call.gaps_sent)  # fmt: skip

    @staticmethod
    async def _receive(ws: WebSocket, call: CallStream, agent: AttendantCall | None = None) -> bool:
        """The receive loop; True when the edge sent ``end``, False when the socket went away."""
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return False
            data = message.get("bytes")
            try:
                if data is not None:
                    call.feed_frames(decode_batch(data))
                    if agent is not None:
                        agent.frames_fed(call)
                    continue
                control = parse_edge_message(message.get("text") or "")
            except ProtocolError as exc:
                _LOG.warning("call %s: skipped a bad message: %s", call.start.call_id, exc)
                continue
            if isinstance(control, EndMessage):
                return True
            if isinstance(control, GapMessage):
                call.gap(control)
            elif isinstance(control, DtmfMessage):
                if agent is not None and control.leg == "caller":
                    agent.dtmf(control.digit)
            elif isinstance(control, CalleeAvailableMessage):
                if agent is not None:
                    agent.callee_available(control.extension, control.reason)
            elif isinstance(control, TransferMessage):
                if agent is not None:
                    agent.transfer_result(True)
            elif isinstance(control, TransferFailedMessage):
                if agent is not None:
                    agent.transfer_result(False, control.reason)
            elif isinstance(control, StartMessage):
                _LOG.info(
                    "call %s: start again on the same socket (resume=%s)", control.call_id, control.resume
                )
            # hold/unhold: nothing to do for transcription yet
