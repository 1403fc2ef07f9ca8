"""Live transcription end to end (issue 6): real SIP calls through an edge node, the Serve app
transcribing both legs, transcripts back on the edge's event bus and in its call store.

An edge node runs in this process (so the test sees its event bus) with the relay media engine (the
tap exists) and ``ai.enabled``; its ``ai.url`` is the session's shared Serve app (``serve_app``,
tests/serve_cluster.py). Pairs of Python :class:`~tests.e2e.rtp_peer.Phone` place real SIP calls on
127.0.0.1 and talk: espeak-ng speech (``en-us`` / ``ko`` at 130 wpm) resampled to 8 kHz and sent as
PCMU RTP at 20 ms, one utterance after another with 0.8 s of silence between them, the two parties
taking turns (tests/e2e/speech_phone.py). Calls to ``82…`` are Korean (``ai.languages``), others
English.

- Six concurrent calls, three per language, ten utterances each (30 English and 30 Korean sentences
  from ai_serve/eval/corpus.py): every ``transcript.final`` is on the leg that spoke (its time span
  overlaps speech of that leg), each call gets finals on both legs and no gaps, the finals carry the
  routed language, and the stored transcript (``transcripts_dir`` under tmp_path) holds exactly the
  finals the bus carried. WER (English, Korean) and CER (Korean, spaces removed) are printed in the
  "live transcription figures" section and bounded (see the thresholds below).
- The STT replica is killed during a call, after the first final, while it decodes: the ingress's
  retry goes to the replacement, which is killed too while it decodes the retries. The call's RTP
  keeps flowing both ways, nobody gets a BYE, every later utterance is transcribed, and the lost
  utterances are marked by ``transcript.gap`` events (reason ``stt_failed``) that are also stored as
  ``kind: gap`` records.
- With the AI layer unreachable (``ai.url`` on a closed port) a call is set up at once and carries
  media both ways.

The STT is the bottleneck: on a 2-core box shared with other work the 60 utterances of the first
test take 1-2 minutes to decode (their finals arrive up to ~80 s after the speech); the shared app
lets one STT request wait up to ``STT_TIMEOUT_S`` (tests/serve_cluster.py) so that queueing is not
mistaken for failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import statistics
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_serve.eval.corpus import ENGLISH, KOREAN, VOICES
from pbx_edge.edge import EdgeNode
from pbx_edge.media.codecs import get_codec
from pbx_edge.ops.config import parse_config
from pbx_edge.ops.models import Event
from tests.ai_serve.speech import HANGUL
from tests.e2e.harness import E2E, LOOPBACK
from tests.e2e.rtp_peer import Dialog, Phone, Received, dominant_frequency, tone_rtp
from tests.e2e.speech_phone import (
    Final,
    LegName,
    Score,
    Script,
    Stream,
    build_script,
    chars,
    match,
    overlap,
    pcmu_packets,
    play,
    score,
)
from tests.serve_cluster import ServeApp, figure, free_port

pytestmark = pytest.mark.e2e

SPEED = 130  # espeak-ng words per minute: whisper-base does better at 120-140 than at espeak's 150
GAP = 0.8  # seconds of silence between utterances
QUIET = 30.0  # after the audio: stop waiting once no transcript came for this long (a batch of 4 decodes)
MEDIA_PORTS = {"port_start": 23200, "port_end": 23999}  # apart from the other e2e modules' ranges

# Thresholds, from what this test measured on the shared 2-core CPU box (whisper-base int8, espeak-ng
# speech at 130 wpm through PCMU and the edge's tap, 30 utterances per language), with a margin.
# English: WER 25.1%, 23.6%, 27.6% in three runs (51, 48, 56 of 203 words), every utterance heard;
# the errors are acoustic ("last bill" -> "left wheel"). Korean is poor: espeak-ng's Korean voice is
# itself hard to understand, whisper-base's Korean is weak and works at all only with the language
# forced (MODELS.md). The typical utterance is mostly wrong (median CER per utterance 80-82%), and a
# few decode into repetition loops ("다음, 다음, ..." for hundreds of characters) that the pooled
# figures count as insertions, so those vary a lot between runs: CER 170-252%, WER 328-440%. Korean
# is held to loose pooled bounds, to the median per-utterance CER and to Hangul output (the forced
# language reached the decoder); tighten them once the STT stops looping.
MAX_WER = {"en": 0.35, "ko": 8.0}
MAX_CER = {"ko": 4.0}
MAX_MEDIAN_CER = {"ko": 0.95}
MIN_MEDIAN_HANGUL = 0.9  # median share of Hangul among the letters of a Korean final (measured 1.0)
MIN_HEARD = {"en": 0.95, "ko": 0.90}  # share of utterances with at least one final (measured 1.0)


# ---------------------------------------------------------------------------------------- the edge


@dataclass
class LiveEdge:
    """The in-process edge node, its address and every event its bus published (with loop time)."""

    node: EdgeNode
    addr: tuple[str, int]
    transcripts_dir: Path
    events: list[tuple[float, Event]] = field(default_factory=list)

    def of(self, name: str, dialog: Dialog) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if e.name == name and e.a_call_id == dialog.call_id]

    def finals(self, dialog: Dialog) -> list[Final]:
        return [
            Final(e.data["leg"], e.data["text"], e.data["start"], e.data["end"], t)
            for t, e in self.of("transcript.final", dialog)
        ]

    def gaps(self, dialog: Dialog) -> list[Final]:
        """``transcript.gap`` events as text-less finals (for matching them to lines)."""
        return [
            Final(e.data["leg"], "", e.data["start"], e.data["end"], t)
            for t, e in self.of("transcript.gap", dialog)
        ]

    def stored(self, dialog: Dialog) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.transcripts_dir.glob("*/*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record["a_call_id"] == dialog.call_id:
                    records.append(record)
        return records


@contextlib.asynccontextmanager
async def live_edge(
    e2e: E2E, tmp_path: Path, ai_url: str, routes: Mapping[str, Phone], **ai: Any
) -> AsyncIterator[LiveEdge]:
    """An edge routing each number in ``routes`` to its phone, streaming calls to ``ai_url``."""
    port = e2e.ports.port()
    transcripts_dir = tmp_path / "transcripts"
    config = parse_config(
        {
            "node_id": "edge-live",
            "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": port}]},
            "routing": {
                "static_routes": [
                    {"prefix": number, "target": f"sip:{LOOPBACK}:{phone.sip_port}"}
                    for number, phone in routes.items()
                ]
            },
            "media": {"mode": "relay", **MEDIA_PORTS, "inactivity_timeout": 120.0},
            "rate_limit": {"allow": [LOOPBACK]},
            "admin": {"enabled": False},
            "metrics": {"enabled": False},
            "cdr": {"url": f"sqlite:///{e2e.workdir}/cdr.sqlite3"},
            "webhooks": {"outbox_url": f"sqlite:///{e2e.workdir}/outbox.sqlite3"},
            "ai": {
                "enabled": True,
                "url": ai_url,
                "language": "en",
                "languages": {"82": "ko"},
                "transcripts_dir": str(transcripts_dir),
                **ai,
            },
        },
        environ={},
    )
    node = EdgeNode(config)
    edge = LiveEdge(node, (LOOPBACK, port), transcripts_dir)
    loop = asyncio.get_running_loop()
    node.ops.bus.subscribe(lambda event: edge.events.append((loop.time(), event)))
    await node.start()
    try:
        yield edge
    finally:
        await node.stop()


@dataclass
class TalkingCall:
    """One call of the test: the number dialled, what both parties say, their phones, its dialog."""

    number: str
    script: Script
    caller: Phone
    callee: Phone
    dialog: Dialog | None = None
    streams: list[Stream] = field(default_factory=list)

    @property
    def language(self) -> str:
        return self.script.language

    def stream_of(self, leg: LegName) -> Stream:
        return self.streams[0 if leg == "caller" else 1]


async def new_call(number: str, script: Script, seed: int) -> TalkingCall:
    call = TalkingCall(number, script, await Phone().start(), await Phone().start())
    call.streams = [
        Stream(call.caller, pcmu_packets(script.audio["caller"], seed=2 * seed)),
        Stream(call.callee, pcmu_packets(script.audio["callee"], seed=2 * seed + 1)),
    ]
    return call


async def dial(edge: LiveEdge, calls: Sequence[TalkingCall]) -> None:
    dialogs = await asyncio.gather(*(c.caller.call(edge.addr, user=c.number) for c in calls))
    for call, dialog in zip(calls, dialogs, strict=True):
        assert dialog.final == 200, f"call to {call.number}: {dialog.final}"
        call.dialog = dialog
    await asyncio.gather(*(asyncio.wait_for(c.callee.answered.wait(), 5) for c in calls))


def dialog_of(call: TalkingCall) -> Dialog:
    assert call.dialog is not None
    return call.dialog


async def hang_up(edge: LiveEdge, calls: Sequence[TalkingCall]) -> None:
    statuses = await asyncio.gather(*(dialog_of(c).bye() for c in calls))
    assert statuses == [200] * len(calls)
    for _ in range(50):  # the bus reports call.ended (and the AI streams stop) right after the BYE
        if all(edge.of("call.ended", dialog_of(c)) for c in calls):
            break
        await asyncio.sleep(0.1)


async def wait_for_finals(
    edge: LiveEdge, calls: Sequence[TalkingCall], audio_end: float, limit: float
) -> None:
    """Until every line has a final or a gap, or no transcript came for QUIET s after the audio, or
    ``limit`` (loop time)."""
    loop = asyncio.get_running_loop()
    names = ("transcript.final", "transcript.gap")
    while loop.time() < limit:
        heard = [
            match(c.script.lines, edge.finals(dialog_of(c)) + edge.gaps(dialog_of(c))).by_line for c in calls
        ]
        if all(all(by_line) for by_line in heard):
            return
        last = max([audio_end, *(t for t, e in edge.events if e.name in names)])
        if loop.time() - last > QUIET:
            return
        await asyncio.sleep(0.25)


def turns_of(texts: Sequence[str]) -> list[dict[LegName, str]]:
    """A conversation: the caller says the first line, the callee the next, and so on."""
    return [{("caller" if i % 2 == 0 else "callee"): text} for i, text in enumerate(texts)]


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    size, extra = divmod(len(items), parts)
    out, at = [], 0
    for index in range(parts):
        step = size + (index < extra)
        out.append(list(items[at : at + step]))
        at += step
    return out


def close_phones(calls: Sequence[TalkingCall]) -> None:
    for call in calls:
        call.caller.close()
        call.callee.close()


# ------------------------------------------------------------------------------ transcription quality


@pytest.mark.timeout(300)
async def test_concurrent_calls_in_english_and_korean_are_transcribed_per_leg(
    serve_app: ServeApp, e2e: E2E, tmp_path: Path
) -> None:
    await asyncio.to_thread(serve_app.wait_healthy)
    t_begin = time.perf_counter()
    plans: list[tuple[str, str, list[str]]] = []  # number, language, texts
    for language, prefix, corpus in (("en", "10", ENGLISH), ("ko", "82", KOREAN)):
        for index, texts in enumerate(split(corpus[:30], 3)):
            plans.append((f"{prefix}0{index + 1}", language, texts))
    calls = [
        await new_call(
            number, build_script(turns_of(texts), language, VOICES[language], speed=SPEED, gap=GAP, seed=i), i
        )
        for i, (number, language, texts) in enumerate(plans)
    ]
    loop = asyncio.get_running_loop()
    try:
        async with live_edge(e2e, tmp_path, serve_app.ws_url, {c.number: c.callee for c in calls}) as edge:
            await dial(edge, calls)
            t0 = loop.time() + 0.1
            await play([s for c in calls for s in c.streams], t0)
            audio_end = loop.time()
            await wait_for_finals(edge, calls, audio_end, audio_end + 150)
            drained = loop.time() - audio_end
            await hang_up(edge, calls)
            finals = {c.number: edge.finals(dialog_of(c)) for c in calls}
            gaps = {c.number: edge.gaps(dialog_of(c)) for c in calls}
            stored = {c.number: edge.stored(dialog_of(c)) for c in calls}
            answered = {c.number: edge.of("call.answered", dialog_of(c)) for c in calls}
    finally:
        close_phones(calls)
    wall = time.perf_counter() - t_begin

    dump = [
        {
            "number": c.number,
            "language": c.language,
            "lines": [dataclasses.asdict(line) for line in c.script.lines],
            "finals": [dataclasses.asdict(f) for f in finals[c.number]],
            "gaps": [dataclasses.asdict(g) for g in gaps[c.number]],
        }
        for c in calls
    ]
    (tmp_path / "scored.json").write_text(json.dumps(dump, ensure_ascii=False, indent=1))  # to look into

    # the figures first, so that a failing run prints them too
    scores = {"en": Score(), "ko": Score()}
    latencies: list[float] = []
    for call in calls:
        score(call.script.lines, finals[call.number], into=scores[call.language])
        matched = match(call.script.lines, finals[call.number])
        for line, attributed in zip(call.script.lines, matched.by_line, strict=True):
            if attributed:
                latencies.append(min(f.at for f in attributed) - (t0 + line.end))
    for language, result in scores.items():
        n_calls = sum(c.language == language for c in calls)
        result_line = (
            f"live {language}: {result.utterances} utterances ({n_calls} calls), "
            f"{result.utterances - result.missing} with a final; WER {100 * result.wer:.1f}% "
            f"({result.word_errors}/{result.ref_words} words)"
        )
        if language == "ko":
            result_line += (
                f", CER {100 * result.cer:.1f}% ({result.char_errors}/{result.ref_chars} chars), "
                f"median CER per utterance {100 * result.median_cer:.0f}%"
            )
        figure(result_line)
        for errors, reference, heard in result.worst[:3]:
            figure(f"  worst {language}: {errors} word errors: {reference!r} heard {heard[:80]!r}")
    figure(
        f"live: {len(calls)} concurrent calls, {sum(len(c.script.lines) for c in calls)} utterances, "
        f"{max(c.script.duration for c in calls):.1f} s of audio per call, "
        f"{sum(len(g) for g in gaps.values())} gaps; finals drained {drained:.1f} s after the audio; "
        f"speech end → final median {statistics.median(latencies or [0]):.2f} s, "
        f"max {max(latencies or [0]):.2f} s; test wall {wall:.1f} s"
    )

    for call in calls:
        got = finals[call.number]
        matched = match(call.script.lines, got)
        assert not matched.strays, f"{call.number}: finals on a leg that was silent then: {matched.strays}"
        assert not gaps[call.number], f"{call.number}: transcript gaps {gaps[call.number]}"
        legs = {f.leg for f in got}
        assert legs == {"caller", "callee"}, f"{call.number}: finals only on {legs}"
        # the edge asked for the language its routing table gives the callee number
        ((_, answered_event),) = answered[call.number]
        segments = [r for r in stored[call.number] if r["kind"] == "segment"]
        assert {r["language"] for r in segments} == {call.language}, call.number
        # the call store holds exactly the finals of the bus, as schema-2 segments of this call
        assert sorted((r["leg"], r["text"], r["start"], r["end"]) for r in segments) == sorted(
            (f.leg, f.text, f.start, f.end) for f in got
        )
        for record in segments:
            assert record["schema"] == 2 and record["call_id"] == answered_event.call_id
            assert (
                record["callee"] == answered_event.callee and record["b_call_id"] == answered_event.b_call_id
            )
            assert record["utterance_id"] and record["reason"] is None
    for language, result in scores.items():
        heard_share = 1 - result.missing / result.utterances
        assert heard_share >= MIN_HEARD[language], (language, heard_share, result.worst)
        assert result.wer <= MAX_WER[language], (language, result.wer, result.worst)
        if language in MAX_CER:
            assert result.cer <= MAX_CER[language], (language, result.cer, result.worst)
            assert result.median_cer <= MAX_MEDIAN_CER[language], (language, result.utterance_cers)
    hangul = sorted(
        sum(bool(HANGUL.match(ch)) for ch in chars(f.text)) / max(len(chars(f.text)), 1)
        for c in calls
        if c.language == "ko"
        for f in finals[c.number]
    )
    assert hangul[len(hangul) // 2] >= MIN_MEDIAN_HANGUL, hangul


# ------------------------------------------------------------------------------- STT replica killed

KILL_AFTER_END = 0.8  # after the long turn's speech ends: VAD end (0.4 s) + tail + batching, then decoding
RETRY_KILL_AFTER = 0.3  # after the replacement replica is up: the retried decodes have just been routed to it


def received_after(packets: Sequence[Received], t: float) -> int:
    return sum(1 for r in packets if r.at >= t)


def longest_silence(packets: Sequence[Received], start: float, end: float) -> float:
    times = [r.at for r in packets if start <= r.at <= end]
    if len(times) < 2:
        return end - start
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.timeout(240)
async def test_killing_the_stt_replica_mid_call_keeps_media_and_marks_a_gap(
    serve_app: ServeApp, e2e: E2E, tmp_path: Path
) -> None:
    """The ingress retries a decode once when its replica dies (Serve routes the retry to the
    replacement), so one kill loses nothing (seen: both decodes in flight were retried and
    transcribed). To lose an utterance the replacement is killed too, while it decodes the retries."""
    await asyncio.to_thread(serve_app.wait_healthy)
    en = ENGLISH
    # A long turn in which both parties talk at once: when it has ended, two decodes are in flight.
    long_turn: dict[LegName, str] = {"caller": f"{en[2]} {en[3]}", "callee": f"{en[5]} {en[6]}"}
    later: list[dict[LegName, str]] = [
        {"callee": en[1]}, {"caller": en[16]}, {"callee": en[19]}, {"caller": en[21]}, {"callee": en[26]},
        {"caller": en[27]}, {"callee": en[8]},
    ]  # fmt: skip
    script = build_script([{"caller": en[0]}, long_turn, *later], "en", VOICES["en"], speed=SPEED, gap=GAP)
    call = await new_call("1099", script, 42)
    long_end = max(line.end for line in script.lines if line.text in long_turn.values())
    loop = asyncio.get_running_loop()
    killed: list[str] = []
    t0 = kill_at = second_kill_at = audio_end = first_final_at = replacement_s = 0.0
    healthy_after = -1.0
    try:
        async with live_edge(e2e, tmp_path, serve_app.ws_url, {call.number: call.callee}) as edge:
            await dial(edge, [call])
            dialog = dialog_of(call)
            t0 = loop.time() + 0.1
            talking = asyncio.create_task(play(call.streams, t0))
            while not edge.of("transcript.final", dialog) and loop.time() < t0 + long_end:
                await asyncio.sleep(0.05)
            finals_before = edge.of("transcript.final", dialog)
            assert finals_before, "no final before the long turn ended: the STT is too slow for this test"
            first_final_at = finals_before[0][0] - t0
            await asyncio.sleep(max(0.0, t0 + long_end + KILL_AFTER_END - loop.time()))
            kill_at = loop.time()
            killed = await asyncio.to_thread(serve_app.kill_stt_replicas)
            assert killed, "no STT replica actor found"
            replacement_s = await asyncio.to_thread(serve_app.wait_new_stt_replica, killed, 120)
            await asyncio.sleep(RETRY_KILL_AFTER)
            second_kill_at = loop.time()
            second = await asyncio.to_thread(serve_app.kill_stt_replicas)
            assert second, "no replacement STT replica to kill"
            killed += second
            await talking
            audio_end = loop.time()
            await wait_for_finals(edge, [call], audio_end, audio_end + 120)
            byed_before_hangup = call.caller.byed.is_set() or call.callee.byed.is_set()
            ended_before_hangup = bool(edge.of("call.ended", dialog))
            await hang_up(edge, [call])
            finals = edge.finals(dialog)
            gaps = [e for _, e in edge.of("transcript.gap", dialog)]
            stored = edge.stored(dialog)
    finally:
        close_phones([call])
        with contextlib.suppress(TimeoutError):  # leave the app whole for the next test
            healthy_after = await asyncio.to_thread(serve_app.wait_healthy, 120)
    assert healthy_after >= 0, "the STT deployment did not recover within 120 s"
    kill_media, second_kill_media = kill_at - t0, second_kill_at - t0
    figure(
        f"replica kill: first final at {first_final_at:.1f} s media; long turn ended at {long_end:.1f} s, "
        f"killed at {kill_media:.1f} s; replacement up {replacement_s:.1f} s later, killed at "
        f"{second_kill_media:.1f} s; app healthy {healthy_after:.1f} s after the call"
    )

    # the call carried on: no BYE from the edge, media both ways before and after the kills
    assert not byed_before_hangup and not ended_before_hangup
    for sender, receiver in ((call.caller, call.callee), (call.callee, call.caller)):
        sent = len(call.stream_of("caller" if sender is call.caller else "callee").packets)
        got = len(receiver.rtp)
        sent_after = sent - int((kill_at - t0) / 0.02)
        got_after = received_after(receiver.rtp, kill_at)
        silence = longest_silence(receiver.rtp, t0 + 0.5, audio_end - 0.1)
        figure(f"replica kill: RTP relayed {got}/{sent} ({got_after}/{sent_after} after the first kill), "
               f"longest silence {1000 * silence:.0f} ms")  # fmt: skip
        assert got >= 0.98 * sent and got_after >= 0.97 * sent_after, (got, sent, got_after, sent_after)
        assert silence < 1.0  # a stalled relay stops for good; this box's scheduler alone stalls ~0.3 s

    # transcription went on: every line spoken after the first kill has a final (queued or retried
    # while no replica ran, decoded by a replacement), those after the second kill included
    matched = match(script.lines, finals)
    after = [
        (line, by_line)
        for line, by_line in zip(script.lines, matched.by_line, strict=True)
        if line.start > kill_media
    ]
    after_second = [by_line for line, by_line in after if line.start > second_kill_media]
    figure(
        f"replica kill: {sum(bool(b) for _, b in after)}/{len(after)} utterances after the first kill heard "
        f"({sum(bool(b) for b in after_second)}/{len(after_second)} after the second); "
        f"gaps {[(g.data['leg'], g.data['start'], g.data['end'], g.data['reason']) for g in gaps]}"
    )
    assert after and all(by_line for _, by_line in after), f"not transcribed after the kill: {after}"

    # the lost utterances are marked: gap events on the bus and gap records in the store
    failed = [g for g in gaps if g.data["reason"] == "stt_failed"]
    assert failed, f"no transcript.gap with reason stt_failed; gaps {gaps}, finals {finals}"
    for gap in failed:
        leg, start, end = gap.data["leg"], gap.data["start"], gap.data["end"]
        spoken = [
            line for line in script.lines if line.leg == leg and overlap(line.start, line.end, start, end) > 0
        ]
        assert spoken and all(line.start < kill_media for line in spoken), (gap.data, kill_media)
        transcribed = [f for f in finals if f.leg == leg and overlap(f.start, f.end, start, end) > 0]
        assert not transcribed, f"a gap over audio that was transcribed: {gap.data} {transcribed}"
    gap_records = [r for r in stored if r["kind"] == "gap"]
    assert sorted((r["leg"], r["start"], r["end"], r["reason"]) for r in gap_records) == sorted(
        (g.data["leg"], g.data["start"], g.data["end"], g.data["reason"]) for g in gaps
    )
    assert all(r["text"] == "" and r["schema"] == 2 and r["utterance_id"] is None for r in gap_records)


# ------------------------------------------------------------------------------ AI layer unreachable


@pytest.mark.timeout(60)
async def test_a_call_carries_media_when_the_ai_layer_is_unreachable(e2e: E2E, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    caller, callee = await Phone().start(), await Phone().start()
    tones = [(caller, callee, 440.0), (callee, caller, 660.0)]  # sender, receiver, its tone: no espeak-ng
    streams = [Stream(sender, tone_rtp("PCMU", 0, seconds=3.0, freq=freq)) for sender, _, freq in tones]
    loop = asyncio.get_running_loop()
    try:
        async with live_edge(
            e2e, tmp_path, f"ws://{LOOPBACK}:{closed}", {"1001": callee},
            reconnect_initial=0.2, connect_timeout=1.0,
        ) as edge:  # fmt: skip
            t_invite = loop.time()
            dialog = await caller.call(edge.addr, user="1001")
            setup = loop.time() - t_invite
            assert dialog.final == 200
            t0 = loop.time() + 0.05
            await play(streams, t0)
            await asyncio.sleep(0.2)
            stats = edge.node.ops.ai.link.stats()
            assert await dialog.bye() == 200
            await asyncio.sleep(0.2)
            ended = edge.of("call.ended", dialog)
            transcripts = [e for _, e in edge.events if e.name.startswith("transcript.")]
    finally:
        caller.close()
        callee.close()
    assert setup < 1.0, f"call setup took {setup:.2f} s"
    assert stats.started == 1 and stats.streams.connects == 0 and stats.streams.connect_failures >= 1, stats
    decoder = get_codec("PCMU").new_decoder()
    for _, receiver, freq in tones:
        assert len(receiver.rtp) >= 0.99 * 150, len(receiver.rtp)  # 3 s at 50 packets/s, relayed
        assert longest_silence(receiver.rtp, t0 + 0.5, t0 + 2.9) < 0.5
        pcm = np.concatenate([decoder.decode(r.data[12:]) for r in receiver.rtp])
        assert abs(dominant_frequency(pcm[800:], 8000) - freq) < 2.0  # the other party's tone
    assert not transcripts and ended
