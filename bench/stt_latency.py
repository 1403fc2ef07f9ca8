"""Live transcription latency: end of speech → final transcript, word → first partial, at N calls.

Starts a local Ray cluster with the app (``ai_serve.app.build_app``) on 127.0.0.1, or uses a running
one (``--url ws://127.0.0.1:8000``). Each of N concurrent calls plays the edge over the real WebSocket
contract (aiohttp + :mod:`pbx_edge.ai_link.protocol`): a ``start``, then both legs in real time as
20 ms frames, ``--batch-frames`` (5) per message per leg; the caller leg speaks ``--utterances``
espeak-ng English sentences with ``--pause`` seconds of silence between them, the callee leg sends a
noise floor. Calls start ``--stagger`` seconds apart so their utterances do not end together.

Per utterance:

- **final latency**: wall clock from the end of speech (the last sample above -40 dBFS of the
  synthesized sentence, converted to wall time through the real-time pacing: it was captured at
  ``t0 + media time``) to the last final transcript that overlaps the sentence. It includes the edge's
  batching (up to ``batch_frames`` x 20 ms), the VAD's end silence and the decode.
- **word latency**: for each word, from its end to the first transcript (partial or final) of the
  utterance that contains it. Word end times are *approximated* by the word's proportional position
  (by characters) within the sentence's speech span; espeak-ng does not report word timings.
- **WER** of the finals against the sentences; the STT replicas' **real-time factor** (decode seconds /
  audio seconds, from ``SttDeployment.stats``; local cluster only) and their largest queue.

A run *keeps up* when every sentence got a final, the final p95 is under ``--bound`` seconds and the
last sentences of the calls are not later than the first ones by more than 0.5 s (no growing
backlog). Each N runs ``--reps`` times; figures are medians over the repetitions.
``--config`` picks the ingress settings to compare (``baseline``: end silence 400 ms, no speculation,
no partials; ``tuned``: see :data:`CONFIGS`; or a JSON object of ``IngressOptions`` fields).

Usage::

    python bench/stt_latency.py                              # N = 1,2,5,10, shipped, 2 reps
    python bench/stt_latency.py --calls 1,2 --config baseline,tuned --reps 3
    python bench/stt_latency.py --url ws://127.0.0.1:8000 --calls 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_serve.eval.speech import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    normalize,
    silence,
    speech_extent,
    synth,
    to_pcm16,
    with_noise,
    word_errors,
)
from bench._machine import print_machine
from pbx_edge.ai_link.protocol import AudioFrame, EndMessage, Leg, StartMessage, encode_batch

APP_NAME = "smartpbx-ai"
SENTENCES = (
    "please transfer me to the billing department",
    "my account number is four five six seven",
    "i would like to cancel my order today",
    "can you tell me when the store opens",
    "the internet connection keeps dropping every evening",
    "i need to speak with a manager right now",
    "thank you very much for your help",
    "what is the balance on my credit card",
)
SPEED = 150  # words per minute
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"end_silence_ms": 400, "early_silence_ms": None, "partial_interval_s": None},
    "spec": {"end_silence_ms": 250, "early_silence_ms": 140, "partial_interval_s": None, "tail": 0.12},
    "tuned": {"end_silence_ms": 250, "early_silence_ms": 140, "partial_interval_s": 0.8, "tail": 0.12},
    # what ray_config.yaml ships (speculative finals, no partials on CPU, speaker labels)
    "shipped": {"end_silence_ms": 300, "early_silence_ms": 150, "partial_interval_s": None, "tail": 0.12},
}


# ---------------------------------------------------------------------------------------------- calls


@dataclass
class Sentence:
    text: str
    start: float  # media seconds of the speech on the caller leg
    end: float
    words: list[tuple[str, float]]  # (normalized word, approximate end time)


@dataclass
class CallPlan:
    caller: bytes  # s16le, whole frames
    sentences: list[Sentence]
    duration: float


@dataclass
class CallResult:
    plan: CallPlan
    t0: float  # wall clock of media time 0
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


def plan_call(index: int, utterances: int, pause: float, lead: float) -> CallPlan:
    parts = [silence(lead)]
    sentences: list[Sentence] = []
    at = lead
    for k in range(utterances):
        text = SENTENCES[(index * utterances + k) % len(SENTENCES)]
        audio = synth(text, speed=SPEED)
        first, last = speech_extent(audio)
        words = normalize(text)
        chars = np.cumsum([len(w) + 1 for w in words]) / sum(len(w) + 1 for w in words)
        span = last - first
        sentences.append(
            Sentence(
                text,
                at + first,
                at + last,
                [(w, at + first + c * span) for w, c in zip(words, chars, strict=True)],
            )
        )
        parts += [audio, silence(pause)]
        at += audio.size / SAMPLE_RATE + pause
    audio = with_noise(np.concatenate(parts), seed=index)
    return CallPlan(to_pcm16(audio), sentences, audio.size / SAMPLE_RATE)


async def run_call(url: str, call_id: str, plan: CallPlan, batch: int, delay: float) -> CallResult:
    import aiohttp

    await asyncio.sleep(delay)
    n_frames = len(plan.caller) // (2 * FRAME_SAMPLES)
    noise = to_pcm16(with_noise(silence(plan.duration + 0.1), seed=hash(call_id) & 0xFFFF))
    result = CallResult(plan, 0.0)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/v1/calls/{call_id}/stream") as ws,
    ):

        async def reader() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    result.received.append((time.perf_counter(), json.loads(msg.data)))

        reading = asyncio.create_task(reader())
        await ws.send_str(
            StartMessage(call_id=call_id, language="en", caller="1001", callee="2001").to_json()
        )
        result.t0 = t0 = time.perf_counter()
        for first in range(0, n_frames, batch):
            idx = range(first, min(first + batch, n_frames))
            media_end = (idx[-1] + 1) * FRAME_SAMPLES / SAMPLE_RATE
            await asyncio.sleep(max(0.0, t0 + media_end - time.perf_counter()))  # captured in real time
            for leg, pcm in ((Leg.CALLER, plan.caller), (Leg.CALLEE, noise)):
                frames = [
                    AudioFrame(
                        leg, i, i * FRAME_SAMPLES, pcm[i * 2 * FRAME_SAMPLES : (i + 1) * 2 * FRAME_SAMPLES]
                    )
                    for i in idx
                ]
                await ws.send_bytes(encode_batch(frames))
        await ws.send_str(EndMessage().to_json())
        try:
            await asyncio.wait_for(reading, 60)
        except TimeoutError:
            result.error = "no close within 60 s after end"
            reading.cancel()
    return result


# ------------------------------------------------------------------------------------------- figures


@dataclass
class RunFigures:
    final: list[float]
    word: list[float]
    word_from_partial: float  # share of words first seen in a partial
    errors: int
    words: int
    missing: int
    partials: int
    first_vs_last: float  # median latency of each call's last sentence minus its first
    gaps: int


def analyse(results: list[CallResult]) -> RunFigures:
    finals: list[float] = []
    word_lat: list[float] = []
    from_partial = seen = errors = words = missing = partials = gaps = 0
    firsts: list[float] = []
    lasts: list[float] = []
    for res in results:
        events = [(t, m) for t, m in res.received if m.get("leg") == "caller"]
        gaps += sum(1 for _, m in events if m["type"] == "transcript_gap")
        transcripts = [(t, m) for t, m in events if m["type"] == "transcript"]
        partials += sum(1 for _, m in transcripts if not m["final"])
        per_call: list[float] = []
        for s in res.plan.sentences:
            ours = [(t, m) for t, m in transcripts if m["start"] < s.end + 0.3 and m["end"] > s.start - 0.3]
            fin = [(t, m) for t, m in ours if m["final"]]
            hyp = " ".join(m["text"] for _, m in fin)
            e, n = word_errors(s.text, hyp)
            errors, words = errors + e, words + n
            if not fin:
                missing += 1
                continue
            latency = fin[-1][0] - (res.t0 + s.end)
            finals.append(latency)
            per_call.append(latency)
            ids = {m["id"] for _, m in fin}
            for word, end in s.words:
                for t, m in ours:  # in arrival order
                    if m["id"] in ids and word in normalize(m["text"]):
                        word_lat.append(t - (res.t0 + end))
                        seen += 1
                        from_partial += 0 if m["final"] else 1
                        break
        if len(per_call) >= 2:
            firsts.append(per_call[0])
            lasts.append(per_call[-1])
    drift = statistics.median(lasts) - statistics.median(firsts) if firsts else 0.0
    return RunFigures(
        finals, word_lat, from_partial / seen if seen else 0.0, errors, words, missing, partials, drift, gaps
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def med(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


# ---------------------------------------------------------------------------------------------- Ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalApp:
    """A local Ray cluster with the app; redeployed per ingress config."""

    def __init__(self, stt_cpus: float, num_cpus: int | None, stt_context: str = "fitted") -> None:
        import ray
        from ray import serve

        self.port = free_port()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.stt_cpus = stt_cpus
        self.stt_context = stt_context

    def deploy(self, ingress: dict[str, Any]) -> float:
        from ray import serve

        from ai_serve.app import build_app

        t0 = time.perf_counter()
        args = {
            "stt_num_cpus": self.stt_cpus,
            "stt_replicas": 1,
            "ingress": ingress,
            "stt": {"audio_context": self.stt_context},
        }
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        return time.perf_counter() - t0

    def stt_stats(self) -> dict[str, Any]:
        from ray import serve

        handle = serve.get_deployment_handle("SttDeployment", app_name=APP_NAME)
        stats: dict[str, Any] = handle.stats.remote().result(timeout_s=30)
        return stats

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]  # ray ships no annotation here
        ray.shutdown()


async def healthz(url: str) -> dict[str, Any]:
    import aiohttp

    http = url.replace("ws://", "http://").replace("wss://", "https://")
    async with aiohttp.ClientSession() as session, session.get(f"{http}/healthz") as r:
        body: dict[str, Any] = await r.json()
        return body


async def one_run(url: str, n: int, args: argparse.Namespace, tag: str) -> list[CallResult]:
    plans = [plan_call(i, args.utterances, args.pause, 0.5) for i in range(n)]
    return await asyncio.gather(
        *(
            run_call(url, f"bench-{tag}-{i}", plan, args.batch_frames, i * args.stagger)
            for i, plan in enumerate(plans)
        )
    )


def rtf_of(before: dict[str, Any] | None, after: dict[str, Any] | None, kind: str) -> tuple[float, int]:
    if before is None or after is None:
        return float("nan"), 0
    decode = after[kind]["decode_seconds"] - before[kind]["decode_seconds"]
    audio = after[kind]["audio_seconds"] - before[kind]["audio_seconds"]
    return (decode / audio if audio else float("nan")), int(after[kind]["decodes"] - before[kind]["decodes"])


def describe(fig: RunFigures, rtf_final: float, rtf_partial: float, spec: int) -> str:
    return (
        f"final p50 {pct(fig.final, 50):.3f} p95 {pct(fig.final, 95):.3f} s, "
        f"word→first p50 {pct(fig.word, 50):.3f} p95 {pct(fig.word, 95):.3f} s "
        f"({fig.word_from_partial:.0%} from partials), WER {fig.errors / max(fig.words, 1):.1%}, "
        f"missing {fig.missing}, gaps {fig.gaps}, partials {fig.partials}, "
        f"RTF final {rtf_final:.2f} partial {rtf_partial:.2f}, speculative used {spec}, "
        f"last-first {fig.first_vs_last:+.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="1,2,5,10", help="comma-separated concurrent call counts")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=3, help="sentences per call")
    parser.add_argument("--pause", type=float, default=1.2, help="silence between sentences (s)")
    parser.add_argument("--stagger", type=float, default=0.37, help="start offset between calls (s)")
    parser.add_argument("--batch-frames", type=int, default=5)
    parser.add_argument(
        "--bound", type=float, default=2.0, help="final p95 (s) above which N does not keep up"
    )
    parser.add_argument("--stt-context", choices=("fitted", "full"), default="fitted",
                        help="Whisper audio context of the local STT (short_context.py)")  # fmt: skip
    parser.add_argument("--config", default="shipped", help=f"comma-separated: {', '.join(CONFIGS)} or JSON")
    parser.add_argument("--url", help="ws://host:port of a running app (else a local cluster is started)")
    parser.add_argument("--stt-cpus", type=float, default=1.0)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    args = parser.parse_args()
    calls = [int(c) for c in args.calls.split(",")]
    configs: list[tuple[str, dict[str, Any]]] = []
    for name in args.config.split(",") if not args.config.startswith("{") else [args.config]:
        configs.append((name, CONFIGS[name]) if name in CONFIGS else ("custom", json.loads(name)))

    import ray

    print_machine()
    print(f"  ray     : {ray.__version__}")
    print(
        f"calls {calls}, {args.reps} reps, {args.utterances} sentences per call at {SPEED} wpm, "
        f"{args.pause} s pauses, {args.batch_frames} frames per message, both legs in real time"
    )
    app = None if args.url else LocalApp(args.stt_cpus, args.num_cpus, args.stt_context)
    url = args.url or f"ws://127.0.0.1:{app.port if app else 0}"
    rows: list[str] = []
    try:
        for name, ingress in configs:
            if app is not None:
                took = app.deploy(ingress)
                print(f"\nconfig {name}: {json.dumps(ingress)} (deployed in {took:.1f} s)")
            else:
                print(f"\nconfig {name}: whatever the running app has ({args.url})")
            asyncio.run(one_run(url, 1, argparse.Namespace(**{**vars(args), "utterances": 1}), "warm"))
            keeps_up = 0
            for n in calls:
                reps: list[tuple[RunFigures, float, int, float, int, int]] = []
                for rep in range(args.reps):
                    before = app.stt_stats() if app else None
                    health0 = asyncio.run(healthz(url))
                    results = asyncio.run(one_run(url, n, args, f"{name}-{n}-{rep}"))
                    after = app.stt_stats() if app else None
                    health1 = asyncio.run(healthz(url))
                    fig = analyse(results)
                    rtf_final, n_final = rtf_of(before, after, "final")
                    rtf_partial, n_partial = rtf_of(before, after, "partial")
                    spec = health1["totals"].get("speculative_used", 0) - health0["totals"].get(
                        "speculative_used", 0
                    )
                    reps.append(
                        (
                            fig,
                            rtf_final,
                            n_final + n_partial,
                            rtf_partial,
                            spec,
                            (after or {}).get("max_queue_depth", -1),
                        )
                    )
                    errors = [r.error for r in results if r.error]
                    print(
                        f"  N={n:<3} rep {rep + 1}: " + describe(fig, rtf_final, rtf_partial, spec),
                        flush=True,
                    )
                    if errors:
                        print(f"    errors: {errors}")
                figs = [r[0] for r in reps]
                p50 = med([pct(f.final, 50) for f in figs])
                p95 = med([pct(f.final, 95) for f in figs])
                w50 = med([pct(f.word, 50) for f in figs])
                w95 = med([pct(f.word, 95) for f in figs])
                wer = med([f.errors / max(f.words, 1) for f in figs])
                rtf = med([r[1] for r in reps])
                drift = med([f.first_vs_last for f in figs])
                missing = sum(f.missing for f in figs)
                ok = missing == 0 and p95 < args.bound and drift < 0.5
                keeps_up = n if ok and n > keeps_up else keeps_up
                maxq = max(r[5] for r in reps)
                rows.append(
                    f"{name:<9} {n:>3} {p50:>8.3f} {p95:>8.3f} {w50:>8.3f} {w95:>8.3f} {wer:>6.1%} "
                    f"{rtf:>6.2f} {maxq:>6} {drift:>+7.2f} {missing:>4} {'yes' if ok else 'NO':>5}"
                )
            print(f"  largest N that keeps up ({name}): {keeps_up or 'none'}")
    finally:
        if app is not None:
            app.close()
    print(
        "\nmedians over reps (seconds; final = end of speech → final received, word = word end → first\n"
        "transcript containing it; RTF = STT decode s / audio s of finals; maxq = STT replica largest queue)"
    )
    print(f"{'config':<9} {'N':>3} {'fin p50':>8} {'fin p95':>8} {'word p50':>8} {'word p95':>8} {'WER':>6} "
          f"{'RTF':>6} {'maxq':>6} {'drift':>7} {'miss':>4} {'ok':>5}")  # fmt: skip
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
