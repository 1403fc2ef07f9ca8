"""WebSocket ingress throughput: how many edge messages per second get through Ray Serve's HTTP proxy.

``--calls`` (100) concurrent calls, one WebSocket each, both legs, with the edge's framing: binary
batches of ``batch_frames`` 20 ms records (656 bytes each), one leg per message, for each framing of
``--framings`` (1, 5, 10, 25). Two modes per framing, ``--seconds`` each:

- ``fast``: every call sends as fast as its socket takes it (the most the path sustains);
- ``paced``: real time, 50 frames/s per leg (100 calls x 2 legs = 10,000 frames/s offered).

Targets (all on 127.0.0.1, the client is this process):

- ``direct``: an aiohttp WebSocket server in a child process that counts records (the baseline: no
  proxy hop, no Ray);
- ``serve``: a small counting deployment behind Serve's HTTP proxy (the proxy is what is measured);
- ``ingress``: the real ``SttIngress`` (energy VAD on every frame, ``decode_batch``) behind the proxy,
  bound to a stub STT deployment that is never called (the audio is a -70 dBFS noise floor).

Reports messages/s, frames/s and MB/s delivered (counted by the server), the CPU of the proxy, the
replica (or the direct server) and the client, in % of one core. The proxy is the bottleneck when
``serve`` delivers clearly less than ``direct`` while the proxy's CPU is near a full core.

Usage::

    python bench/ingress_rate.py
    python bench/ingress_rate.py --calls 100 --framings 1,5,10,25 --seconds 4 --targets direct,serve,ingress
"""

# No ``from __future__ import annotations``: Serve pickles the deployments below by value and FastAPI
# must resolve the WebSocket annotation in the replica (see ai_serve/ingress.py).

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._machine import print_machine
from pbx_edge.ai_link.protocol import (
    FRAME_SAMPLES,
    RECORD_SIZE,
    AudioFrame,
    EndMessage,
    Leg,
    StartMessage,
    encode_batch,
)

REAL_TIME_FPS_PER_LEG = 50
RING = 64  # distinct messages per leg and framing (increasing seq/media time), reused in a ring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------- the servers


def _direct_server(port: int) -> None:
    """Child process: an aiohttp WebSocket server that counts records and answers ``end``."""
    from aiohttp import WSMsgType, web

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        frames = messages = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                frames += len(msg.data) // RECORD_SIZE
                messages += 1
            elif msg.type == WSMsgType.TEXT and '"end"' in msg.data:
                await ws.send_str(json.dumps({"frames": frames, "messages": messages}))
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/calls/{call_id}/stream", stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False)


def build_counting_app() -> Any:
    """A Serve app whose one replica counts records per WebSocket (what the proxy forwards)."""
    from fastapi import FastAPI, WebSocket
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Counter", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Counter:
        @api.websocket("/v1/calls/{call_id}/stream")
        async def stream(self, ws: WebSocket, call_id: str) -> None:
            await ws.accept()
            frames = messages = 0
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is not None:
                    frames += len(data) // RECORD_SIZE
                    messages += 1
                elif '"end"' in (message.get("text") or ""):
                    await ws.send_text(json.dumps({"frames": frames, "messages": messages}))
                    await ws.close(1000)
                    return

    return Counter.bind()  # type: ignore[attr-defined]


def build_ingress_app() -> Any:
    """The real ingress (energy VAD) bound to an STT stub that fails loudly if it is ever called."""
    from typing import cast

    from ray import serve
    from ray.serve.deployment import Deployment

    from ai_serve.ingress import SttIngress

    @serve.deployment(name="SttStub", ray_actor_options={"num_cpus": 0})
    class SttStub:
        def __init__(self) -> None:
            self.calls = 0

        async def transcribe(self, pcm: bytes, language: Any, kind: str = "final") -> list[dict[str, Any]]:
            self.calls += 1
            raise RuntimeError("the ingress benchmark streams silence: STT must not be called")

    ingress = cast(Deployment, SttIngress).options(ray_actor_options={"num_cpus": 0})
    return ingress.bind(SttStub.bind(), {"scorer": "energy"})  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- the client


def messages_for(batch: int) -> dict[Leg, list[bytes]]:
    rng = np.random.default_rng(batch)
    out: dict[Leg, list[bytes]] = {}
    for leg in (Leg.CALLER, Leg.CALLEE):
        ring = []
        for k in range(RING):
            frames = []
            for j in range(batch):
                seq = k * batch + j
                pcm = (rng.normal(0, 10, FRAME_SAMPLES)).astype("<i2").tobytes()  # about -70 dBFS
                frames.append(AudioFrame(leg, seq, seq * FRAME_SAMPLES, pcm))
            ring.append(encode_batch(frames))
        out[leg] = ring
    return out


async def run_load(url: str, calls: int, batch: int, seconds: float, paced: bool) -> dict[str, float]:
    import aiohttp

    ring = messages_for(batch)
    sent_frames = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = await asyncio.gather(
            *(session.ws_connect(f"{url}/v1/calls/rate-{i}/stream", max_msg_size=0) for i in range(calls))
        )
        for i, ws in enumerate(sockets):
            await ws.send_str(StartMessage(call_id=f"rate-{i}", language="en").to_json())
        t0 = time.perf_counter()
        stop = t0 + seconds

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
            nonlocal sent_frames
            k = 0
            interval = batch / REAL_TIME_FPS_PER_LEG
            phase = (i / calls) * interval  # calls do not tick together
            while (now := time.perf_counter()) < stop:
                if paced:
                    due = t0 + phase + k * interval
                    if due > now:
                        await asyncio.sleep(due - now)
                        if due >= stop:
                            break
                for leg in (Leg.CALLER, Leg.CALLEE):
                    await ws.send_bytes(ring[leg][k % RING])
                    sent_frames += batch
                k += 1
                if not paced and k % 8 == 0:
                    await asyncio.sleep(0)  # let the other calls send too
            await ws.send_str(EndMessage().to_json())
            reply: dict[str, Any] = {}
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    with_count = json.loads(msg.data)
                    if "frames" in with_count:
                        reply = with_count
            return reply

        replies = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)))
        done = time.perf_counter()
    frames = sum(r.get("frames", 0) for r in replies)
    messages = sum(r.get("messages", 0) for r in replies)
    # Paced: the rate over the sending window (what was offered, if it kept up) and how long the
    # server took after it to answer every ``end`` (drain: near 0 when it kept up). Fast: the rate
    # over the whole time until every frame was counted.
    elapsed = seconds if paced else done - t0
    return {
        "elapsed": elapsed,
        "drain": done - stop,
        "frames": frames,
        "messages": messages,
        "sent_frames": sent_frames,
    }


# ------------------------------------------------------------------------------------------- CPU


def ray_pids(app_name: str) -> dict[str, list[int]]:
    """The proxy and the replicas of *this* Ray cluster (other sessions may run Serve on the machine)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]
    import ray

    candidates: list[Any] = []
    try:  # the processes under our raylet; private API, hence the fallback to every process
        node: Any = ray._private.worker._global_node
        raylet = node.all_processes["raylet"][0].process.pid
        candidates = psutil.Process(raylet).children(recursive=True)
    except Exception:
        candidates = list(psutil.process_iter())
    found: dict[str, list[int]] = {"proxy": [], "replica": []}
    for proc in candidates:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ProxyActor" in cmd:
            found["proxy"].append(proc.pid)
        elif f"ServeReplica:{app_name}:" in cmd:
            found["replica"].append(proc.pid)
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            seconds[pid] = t.user + t.system
        except psutil.Error:
            pass
    return seconds


def cpu_percent(before: dict[int, float], after: dict[int, float], elapsed: float) -> float:
    """% of one core used by the processes alive at both readings."""
    if not before:
        return float("nan")
    return 100 * sum(max(0.0, after[p] - before[p]) for p in before if p in after) / elapsed


def measure(
    url: str, args: argparse.Namespace, batch: int, paced: bool, pids: dict[str, list[int]]
) -> dict[str, float]:
    groups = {**pids, "client": [os.getpid()]}
    before = {k: cpu_seconds(v) for k, v in groups.items()}
    t0 = time.perf_counter()
    result = asyncio.run(run_load(url, args.calls, batch, args.seconds, paced))
    wall = time.perf_counter() - t0
    for key, value in groups.items():
        result[f"cpu_{key}"] = cpu_percent(before[key], cpu_seconds(value), wall)
    return result


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--framings", default="1,5,10,25", help="frames per message, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="sending time per measurement")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--targets", default="direct,serve,ingress")
    parser.add_argument("--modes", default="fast,paced")
    args = parser.parse_args()
    framings = [int(f) for f in args.framings.split(",")]
    targets = args.targets.split(",")
    modes = args.modes.split(",")

    import ray

    print_machine()
    print(f"  ray    : {ray.__version__}")
    print(
        f"{args.calls} calls x 2 legs, framings {framings} frames per message, {args.seconds:.0f} s per "
        f"measurement, {args.reps} rep(s); paced = {args.calls * 2 * REAL_TIME_FPS_PER_LEG} frames/s offered"
    )
    rows: list[tuple[str, str, int, dict[str, float]]] = []

    def run_target(target: str, url: str, pids: dict[str, list[int]]) -> None:
        for batch in framings:
            for mode in modes:
                runs = [measure(url, args, batch, mode == "paced", pids) for _ in range(args.reps)]
                figure = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((target, mode, batch, figure))
                print(f"  {target:<8} {mode:<6} {batch:>3} frames/msg: " + describe(figure), flush=True)

    if "direct" in targets:
        port = free_port()
        proc = multiprocessing.get_context("spawn").Process(target=_direct_server, args=(port,), daemon=True)
        proc.start()
        try:
            wait_port(port)
            run_target("direct", f"ws://127.0.0.1:{port}", {"proxy": [], "replica": [proc.pid or 0]})
        finally:
            proc.terminate()
            proc.join(5)
    serve_targets = [t for t in targets if t in ("serve", "ingress")]
    if serve_targets:
        from ray import serve

        port = free_port()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for target in serve_targets:
                app = build_counting_app() if target == "serve" else build_ingress_app()
                serve.run(app, name=f"rate-{target}", route_prefix="/")
                if target == "ingress":
                    patch_ingress_counts(port)
                run_target(target, f"ws://127.0.0.1:{port}", ray_pids(f"rate-{target}"))
                serve.delete(f"rate-{target}")
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]  # ray ships no annotation here
            ray.shutdown()
    print(
        "\nmedians (delivered = counted by the server; fast: rates until all was counted; paced: rates over"
        " the sending window,\ndrain = time after it until every call's end was answered; CPU: % of one core)"
    )
    print(f"{'target':<8} {'mode':<6} {'f/msg':>5} {'msg/s':>9} {'frames/s':>9} {'MB/s':>7} {'of sent':>7} "
          f"{'drain s':>7} {'proxy%':>7} {'replica%':>8} {'client%':>7}")  # fmt: skip
    for target, mode, batch, f in rows:
        rate, fps = f["messages"] / f["elapsed"], f["frames"] / f["elapsed"]
        mbps, share = fps * RECORD_SIZE / 1e6, f["frames"] / max(f["sent_frames"], 1)
        print(
            f"{target:<8} {mode:<6} {batch:>5} {rate:>9.0f} {fps:>9.0f} {mbps:>7.2f} {share:>7.0%} "
            f"{f['drain']:>7.2f} {f['cpu_proxy']:>7.0f} {f['cpu_replica']:>8.0f} {f['cpu_client']:>7.0f}"
        )


def describe(f: dict[str, float]) -> str:
    return (
        f"{f['messages'] / f['elapsed']:.0f} msg/s, {f['frames'] / f['elapsed']:.0f} frames/s, "
        f"{f['frames'] * RECORD_SIZE / f['elapsed'] / 1e6:.2f} MB/s delivered "
        f"({f['frames'] / max(f['sent_frames'], 1):.0%} of sent, drain {f['drain']:.2f} s); "
        f"CPU proxy {f['cpu_proxy']:.0f}% "
        f"replica {f['cpu_replica']:.0f}% client {f['cpu_client']:.0f}%"
    )


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def patch_ingress_counts(port: int) -> None:
    """The real ingress answers ``end`` with a close, not a count: take the counts from /healthz."""
    global run_load
    plain = run_load

    async def counted(url: str, calls: int, batch: int, seconds: float, paced: bool) -> dict[str, float]:
        import aiohttp

        async def totals() -> dict[str, int]:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
                body: dict[str, Any] = await r.json()
                return {k: int(v) for k, v in body["totals"].items()}

        before = await totals()
        result = await plain(url, calls, batch, seconds, paced)
        after = await totals()
        result["frames"] = after.get("frames", 0) - before.get("frames", 0)
        result["messages"] = after.get("messages", 0) - before.get("messages", 0)
        return result

    run_load = counted


if __name__ == "__main__":
    main()
