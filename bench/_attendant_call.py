"""One phone call to the AI attendant through a real edge: what ``bench/attendant.py`` and
``tests/e2e/test_attendant_call.py`` share.

- :data:`KNOWLEDGE` / :func:`build_knowledge_base`: the test clinic's answers (extension 201 of
  ``tests.serve_cluster.ATTENDANT_ARGS``) as a Qdrant local-mode knowledge base for the retriever.
- :func:`edge_config`: an edge (run in-process with :class:`pbx_edge.edge.EdgeNode`) whose extension
  201 is answered by the AI on the ``no_answer`` or ``unregistered`` trigger, streaming to the Serve app.
- :class:`SpeakingCaller`: a SIP phone (tests/e2e/rtp_peer.py) that sends PCMU RTP every 20 ms for
  the whole call (a faint noise floor, or espeak-ng speech queued with :meth:`SpeakingCaller.say`) and
  tells loud received packets (the AI speaking) from the rest.
- :func:`converse`: greeting, the Saturday question, its answer, "no, that's all" and the BYE, with
  the times a latency figure needs (:class:`CallTimes`).

All times are the event loop's clock (``loop.time()``, monotonic) in this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ai_serve.eval.speech import silence, speech_extent, synth, with_noise
from pbx_edge.media.codecs import get_codec
from pbx_edge.media.pcap import rtp_header
from pbx_edge.ops.models import Event
from tests.e2e.clinic import CLOSING, KNOWLEDGE, QUESTION, SATURDAY, build_knowledge_base
from tests.e2e.rtp_peer import LOOPBACK, Dialog, Phone

__all__ = [
    "CLOSING",
    "EXTENSION",
    "KNOWLEDGE",
    "QUESTION",
    "SATURDAY",
    "CallTimes",
    "EventLog",
    "SpeakingCaller",
    "build_knowledge_base",
    "converse",
    "edge_config",
    "percentile",
    "talk_ends",
    "until",
]

EXTENSION = "201"  # the clinic in tests.serve_cluster.ATTENDANT_ARGS
SPEED = 130  # espeak-ng words per minute
RATE = 8000  # PCMU
FRAME = RATE // 50
LOUD_RMS = 300.0  # decoded PCMU above this is someone speaking; the caller's noise floor is ~10
QUIET_S = 1.2  # no loud packet for this long: the AI stopped talking
Trigger = Literal["no_answer", "unregistered"]
Int16 = npt.NDArray[np.int16]


def edge_config(
    workdir: Path,
    sip_port: int,
    ai_url: str,
    trigger: Trigger,
    media_ports: tuple[int, int],
    callee_port: int | None = None,
) -> dict[str, Any]:
    """The edge's settings: extension 201 answered by the AI on ``trigger``. ``no_answer`` needs
    ``callee_port`` (a phone that rings and never answers); ``unregistered`` has no route at all."""
    routes = [] if callee_port is None else [{"prefix": "", "target": f"sip:{LOOPBACK}:{callee_port}"}]
    extension: dict[str, Any] = {"ai_answer": {trigger: "ai"}}
    if trigger == "no_answer":
        extension["no_answer_timeout"] = 0.5
    return {
        "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": sip_port}]},
        "routing": {"static_routes": routes, "extensions": {EXTENSION: extension}},
        "media": {"port_start": media_ports[0], "port_end": media_ports[1]},
        "admin": {"enabled": False},
        "metrics": {"enabled": False},
        "cdr": {"url": f"sqlite:///{workdir}/cdr.sqlite3"},
        "webhooks": {"outbox_url": f"sqlite:///{workdir}/outbox.sqlite3"},
        "ai": {"enabled": True, "url": ai_url, "language": "en", "transcripts_dir": None,
               "connect_timeout": 30.0},
    }  # fmt: skip


@dataclass
class EventLog:
    """The edge's bus events with the loop time each was published (subscribe :meth:`append`)."""

    events: list[tuple[float, Event]] = field(default_factory=list)

    def append(self, event: Event) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))

    def of_call(self, a_call_id: str) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if e.a_call_id == a_call_id]

    def first(self, a_call_id: str, name: str) -> tuple[float, Event] | None:
        return next(((t, e) for t, e in self.of_call(a_call_id) if e.name == name), None)


class SpeakingCaller:
    """A PCMU phone that keeps sending RTP in real time and speaks on demand."""

    def __init__(self, seed: int = 0, number: str = "phone") -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy's generators refuse {seed})")
        self.phone = Phone(payload_types={0: "PCMU/8000"}, user=number)
        self.encoder = get_codec("PCMU").new_encoder()
        self.decoder = get_codec("PCMU").new_decoder()
        self.seed = seed
        self.queue: list[Int16] = []
        self.speech_end_frame: int | None = None  # frame index (in the queue) of the last speech sample
        self.sent = 0
        self.speech_ended = asyncio.Event()
        self.speech_ended_at = 0.0
        self.call_id = ""  # the caller leg's SIP Call-ID, once called
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> SpeakingCaller:
        await self.phone.start()
        return self

    async def call(self, edge: tuple[str, int], user: str = EXTENSION) -> Dialog:
        """INVITE ``user`` (extension 201) and, once answered, start sending media."""
        dialog = await self.phone.call(edge, user=user)
        self.call_id = dialog.call_id
        if dialog.final == 200:
            self._sender = asyncio.create_task(self._send())
        return dialog

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        self.phone.close()

    def raise_if_dead(self) -> None:
        """Raise what stopped the media sender, if it stopped."""
        sender = self._sender
        if sender is not None and sender.done() and not sender.cancelled() and sender.exception():
            raise RuntimeError("the caller's RTP sender failed") from sender.exception()

    def say(self, text: str) -> None:
        """Queue ``text`` (espeak-ng, 8 kHz); :attr:`speech_ended` is set when its last speech sample
        has been sent, at :attr:`speech_ended_at`."""
        audio16 = np.concatenate([synth(text, "en-us", SPEED), silence(0.3)])
        _, end = speech_extent(audio16)
        audio = audio16[::2]  # espeak-ng speech has little energy above 4 kHz: plain decimation
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        frames = [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]
        self.speech_ended.clear()
        self.speech_end_frame = len(self.queue) + int(end * RATE) // FRAME
        self.queue.extend(frames)

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        floor = (with_noise(silence(1.0), seed=self.seed)[::2] * 32767).astype(np.int16)
        ssrc = 0x5EED0000 + self.seed
        next_at = loop.time()
        index = 0  # frames taken from the speech queue
        while True:
            if self.queue:
                pcm = self.queue.pop(0)
                index += 1
            else:
                pcm = floor[(self.sent % 50) * FRAME : (self.sent % 50 + 1) * FRAME]
            packet = rtp_header(0, self.sent, self.sent * FRAME, ssrc, marker=self.sent == 0)
            self.phone.send_rtp(packet + self.encoder.encode(pcm))
            self.sent += 1
            if self.speech_end_frame is not None and index > self.speech_end_frame:
                self.speech_end_frame = None
                self.speech_ended_at = loop.time()
                self.speech_ended.set()
            if not self.queue:
                index = 0
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def received(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, Int16]]:
        """Decoded RTP received in [since, until), with arrival times."""
        return [
            (r.at, self.decoder.decode(r.data[12:]))
            for r in self.phone.rtp
            if since <= r.at < until and len(r.data) > 12
        ]

    def first_loud(self, since: float) -> float | None:
        for at, pcm in self.received(since):
            if _rms(pcm) > LOUD_RMS:
                return at
        return None

    def last_loud(self, since: float) -> float | None:
        loud = [at for at, pcm in self.received(since) if _rms(pcm) > LOUD_RMS]
        return loud[-1] if loud else None

    def audio(self, since: float, until: float = float("inf")) -> Int16:
        chunks = [pcm for _, pcm in self.received(since, until)]
        return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def _rms(pcm: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def until(caller: SpeakingCaller, what: Any, timeout: float, label: str) -> Any:
    """Poll ``what()`` every 20 ms until it returns something not None (while the caller sends)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := what()) is None:
        caller.raise_if_dead()
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{label}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)
    return value


async def talk_ends(caller: SpeakingCaller, since: float, timeout: float) -> float:
    """The time of the last loud packet once the AI has been quiet for :data:`QUIET_S`."""
    loop = asyncio.get_running_loop()

    def quiet() -> float | None:
        last = caller.last_loud(since)
        return last if last is not None and loop.time() - last > QUIET_S else None

    value: float = await until(caller, quiet, timeout, "the AI never stopped talking")
    return value


@dataclass
class CallTimes:
    """One conversation's times (loop clock) and what the caller heard."""

    invited: float = 0.0
    a_call_id: str = ""
    triggered: float = 0.0  # the edge published call.ai_answered (the trigger fired)
    greeting: float = 0.0  # first loud packet at the caller
    asked_end: float = 0.0  # last speech sample of the question sent
    answer: float = 0.0  # first loud packet after the question
    answer_end: float = 0.0
    answer_pcm: Int16 = field(default_factory=lambda: np.zeros(0, np.int16))
    byed: float = 0.0

    @property
    def greeting_after_trigger(self) -> float:
        return self.greeting - self.triggered

    @property
    def greeting_after_invite(self) -> float:
        return self.greeting - self.invited

    @property
    def voice_to_voice(self) -> float:
        return self.answer - self.asked_end


async def converse(
    caller: SpeakingCaller, edge: tuple[str, int], log: EventLog, timeout: float = 90.0
) -> CallTimes:
    """Call 201, hear the greeting, ask :data:`QUESTION`, hear the answer, say :data:`CLOSING` and
    wait for the edge's BYE; returns the times. Raises ``TimeoutError``, ``AssertionError`` or
    ``RuntimeError`` (the caller's sender died)."""
    loop = asyncio.get_running_loop()
    out = CallTimes(invited=loop.time())
    dialog = await caller.call(edge)
    assert dialog.final == 200, f"the edge answered the INVITE with {dialog.final}"
    out.a_call_id = dialog.call_id
    ai_answered = await until(
        caller, lambda: log.first(dialog.call_id, "call.ai_answered"), timeout, "call.ai_answered"
    )
    out.triggered = ai_answered[0]
    out.greeting = await until(caller, lambda: caller.first_loud(out.triggered), timeout, "the greeting")
    greeting_end = await talk_ends(caller, out.greeting, timeout)
    caller.say(QUESTION)
    await until(
        caller, lambda: True if caller.speech_ended.is_set() else None, 30, "the question was not sent"
    )
    out.asked_end = caller.speech_ended_at
    after = max(out.asked_end, greeting_end + 0.001)
    out.answer = await until(caller, lambda: caller.first_loud(after), timeout, "the answer")
    out.answer_end = await talk_ends(caller, out.answer, timeout)
    out.answer_pcm = caller.audio(out.answer - 0.1, out.answer_end + 0.1)
    caller.say(CLOSING)
    await until(caller, lambda: True if caller.phone.byed.is_set() else None, timeout, "the BYE")
    out.byed = loop.time()
    return out


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
