"""AI attendant latency through the real edge: trigger → greeting, end of the caller's question → answer.

Starts a local Ray cluster on 127.0.0.1 with the live-transcription app (``ai_serve.app.build_app``,
attendant extension 201 as in tests/serve_cluster.py) and the roles app (``smartpbx-roles``: TTS and the
retriever over a temporary knowledge base of the clinic's answers), then an edge in this process
(:class:`pbx_edge.edge.EdgeNode`) whose extension 201 is answered by the AI. Each of ``--calls`` calls
is a SIP phone on loopback sending PCMU RTP in real time (bench/_attendant_call.py): it hears the
greeting, asks "What time do you open on Saturday?" (espeak-ng), hears the answer, says "No, that's all,
thank you." and waits for the edge's BYE. ``--concurrency`` calls run at once (default 1: sequential).

Figures, p50/p95 over the calls (one warm-up call first, not counted):

- **greeting after trigger**: from the edge publishing ``call.ai_answered`` (the moment its trigger
  fired and it answered the caller; seen on its event bus, same clock) to the first loud RTP packet at
  the caller. With ``--trigger unregistered`` (default) the trigger fires on the INVITE itself, so
  **greeting after INVITE** (from sending the INVITE) is printed too; with ``no_answer`` that one
  includes the 0.5 s no-answer timer.
- **voice to voice**: from the caller's last speech sample leaving its socket to the first loud RTP
  packet it receives after that: the edge's batching, VAD end silence, STT, retrieval, TTS and the
  edge's playout, as a caller hears it.

Usage::

    python bench/attendant.py --calls 5
    python bench/attendant.py --calls 20 --concurrency 2 --trigger no_answer
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._attendant_call import (
    CallTimes,
    EventLog,
    SpeakingCaller,
    build_knowledge_base,
    converse,
    edge_config,
    percentile,
)
from bench._machine import print_machine

APP_NAME = "smartpbx-ai"
ROLES_NAME = "smartpbx-roles"
HOST = "127.0.0.1"
MEDIA_PORTS = (26000, 26998)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class LocalApps:
    """A local Ray cluster with the app and the roles app over a knowledge base in ``kb_dir``."""

    def __init__(self, num_cpus: int | None, kb_dir: Path, tts_cache_mb: float = 0.0) -> None:
        import ray
        from ray import serve

        from ai_serve.app import build_app
        from ai_serve.deployments.tts import TtsBatchConfig
        from ai_serve.roles_app import build_roles_app
        from tests.serve_cluster import ATTENDANT_ARGS

        self.port = free_port()
        t0 = time.perf_counter()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        serve.start(http_options={"host": HOST, "port": self.port})
        serve.run(
            build_app({"stt_num_cpus": 1, "attendant": ATTENDANT_ARGS}), name=APP_NAME, route_prefix="/"
        )
        build_knowledge_base(kb_dir / "qdrant")
        roles = {
            "num_cpus": 0.05,
            "retriever": {"knowledge_base": {"path": str(kb_dir / "qdrant")}},
            # every call asks the same question: a cached answer would not measure its synthesis
            "user_configs": {"TtsDeployment": {**TtsBatchConfig().model_dump(), "cache_mb": tts_cache_mb}},
        }
        serve.run(build_roles_app(roles), name=ROLES_NAME, route_prefix="/roles")
        self.ready_s = time.perf_counter() - t0

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    async def greetings_cached(self, timeout: float = 180.0) -> float:
        """Poll the ingress's /healthz (which starts the greeting warm-up) until one is cached."""
        import aiohttp

        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"http://{HOST}:{self.port}/healthz") as resp:
                    info: dict[str, Any] = (await resp.json())["attendants"]
                if info["greetings_cached"] >= 1:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"greeting not cached after {timeout:.0f} s: {info}")
                await asyncio.sleep(0.5)

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]  # ray ships no annotation here
        ray.shutdown()


async def run_calls(url: str, args: argparse.Namespace, workdir: Path) -> tuple[list[CallTimes], list[str]]:
    """The warm-up call, then ``args.calls`` calls, ``args.concurrency`` at a time, through one edge."""
    from pbx_edge.edge import EdgeNode
    from pbx_edge.ops.config import parse_config
    from tests.e2e.test_ai_answer import RingingPhone

    callee = await RingingPhone().start() if args.trigger == "no_answer" else None
    sip_port = free_port(socket.SOCK_DGRAM)
    settings = edge_config(
        workdir, sip_port, url, args.trigger, MEDIA_PORTS, callee.sip_port if callee else None
    )
    node = EdgeNode(parse_config(settings, environ={}))
    log = EventLog()
    node.ops.bus.subscribe(log.append)
    await node.start()
    gate = asyncio.Semaphore(args.concurrency)
    results: list[CallTimes] = []
    errors: list[str] = []

    async def one(index: int) -> None:
        async with gate:
            caller = await SpeakingCaller(seed=index + 1).start()
            try:
                times = await converse(caller, (HOST, sip_port), log, timeout=args.timeout)
            except (TimeoutError, AssertionError, RuntimeError) as exc:
                name = f"call {index + 1}" if index >= 0 else "warm-up call"
                seen = [e.name for _, e in log.of_call(caller.call_id)]
                errors.append(f"{name}: {exc} (edge events: {seen})")
                return
            finally:
                await caller.close()
            if index >= 0:
                results.append(times)
                print(f"  call {index + 1:>3}: greeting {times.greeting_after_trigger:6.3f} s after trigger, "
                      f"{times.greeting_after_invite:6.3f} s after INVITE; voice to voice "
                      f"{times.voice_to_voice:6.3f} s", flush=True)  # fmt: skip

    try:
        await one(-1)  # warm-up: first use of each replica's models
        await asyncio.gather(*(one(i) for i in range(args.calls)))
        await asyncio.sleep(0.5)
    finally:
        await node.stop()
        if callee is not None:
            callee.close()
    return results, errors


def row(name: str, values: list[float]) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return f"  {name:<26} p50 {p50:7.3f} s   p95 {p95:7.3f} s   (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1, choices=range(1, 5), help="calls at once")
    parser.add_argument("--trigger", choices=("unregistered", "no_answer"), default="unregistered")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="longest wait for each step of a call (s)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    parser.add_argument(
        "--tts-cache-mb", type=float, default=0.0,
        help="the TTS role's speech cache (default 0: off, since every call asks the same question)",
    )  # fmt: skip
    args = parser.parse_args()

    import ray

    print_machine()
    print(f"  ray     : {ray.__version__}")
    print(f"{args.calls} calls, {args.concurrency} at a time, trigger {args.trigger}, PCMU, loopback; "
          f"edge in this process, Serve apps on a local Ray cluster; TTS cache {args.tts_cache_mb:g} MB"
          )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-attendant-") as tmp:
        apps = LocalApps(args.num_cpus, Path(tmp), args.tts_cache_mb)
        try:
            warm = asyncio.run(apps.greetings_cached())
            print(f"apps ready in {apps.ready_s:.1f} s, greeting cached {warm:.1f} s later")
            results, errors = asyncio.run(run_calls(apps.ws_url, args, Path(tmp)))
        finally:
            apps.close()
    print("\nresults (loop clock of this process; loud = decoded PCMU RMS above 300)")
    print(row("greeting after trigger", [r.greeting_after_trigger for r in results]))
    if args.trigger == "unregistered":
        print(row("greeting after INVITE", [r.greeting_after_invite for r in results]))
    print(row("voice to voice", [r.voice_to_voice for r in results]))
    print(f"  failed calls: {len(errors)}")
    for error in errors:
        print(f"    {error}")


if __name__ == "__main__":
    main()
