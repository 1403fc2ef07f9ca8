"""Operations benchmark: what the event path costs a call and how fast its stores drain.

On 127.0.0.1, in one process, each figure the median of ``--runs`` runs:

1. ``CdrStore.add`` cost on the event loop (µs per record) and the time until N records are
   committed to SQLite (records/s);
2. webhooks end to end: N events published on the bus -> outbox (SQLite) -> signed POSTs to a real
   aiohttp receiver on loopback, until all are acknowledged (events/s);
3. the admin API: ``GET /api/calls`` and ``GET /api/cdr?limit=100`` latency p50/p99 over HTTP with a
   bearer token, with the N records in the store.

Usage::

    python bench/ops.py                 # N = 5000, 3 runs
    python bench/ops.py --records 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import print_machine

from pbx_edge.ops.admin_api import make_admin_app, start_admin
from pbx_edge.ops.cdr import CdrStore
from pbx_edge.ops.config import AdminConfig, AdminToken, EventsConfig, WebhooksConfig
from pbx_edge.ops.events import EventBus, new_event_id
from pbx_edge.ops.models import CallInfo, CdrRecord, Event, PortUsage, RegistrationInfo
from pbx_edge.ops.outbox import Outbox
from pbx_edge.ops.webhooks import WebhookSender

TOKEN = "bench-token"


def _record(i: int) -> CdrRecord:
    now = time.time()
    return CdrRecord(
        call_id=f"c{i}",
        node_id="bench",
        a_call_id=f"a{i}",
        b_call_id=f"b{i}",
        caller=f"10{i % 100}",
        callee="200",
        start=now - 60,
        answer=now - 55,
        end=now,
        duration=60.0,
        billsec=55.0,
        disposition="answered",
        end_reason="caller_bye",
        hangup_side="caller",
        sip_code=200,
        codec="PCMU/8000",
    )


async def cdr_run(directory: Path, n: int) -> tuple[float, float, CdrStore]:
    store = CdrStore(f"sqlite:///{directory}/cdr.sqlite3")
    await store.start()
    records = [_record(i) for i in range(n)]
    started = time.perf_counter()
    for record in records:
        store.add(record)
    add_s = time.perf_counter() - started
    await store.flush()
    total_s = time.perf_counter() - started
    assert await store.count() == n
    return add_s / n * 1e6, n / total_s, store


async def webhook_run(directory: Path, n: int) -> float:
    got: set[str] = set()
    done = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.add(request.headers["X-SmartPBX-Delivery"])
        if len(got) >= n:
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = WebhooksConfig.model_validate(
        {"targets": [{"url": f"http://127.0.0.1:{port}/hook", "secret": "bench"}], "backoff_initial": 0.05}
    )
    outbox = Outbox(f"sqlite:///{directory}/outbox.sqlite3")
    sender = WebhookSender(config, outbox)
    bus = EventBus(EventsConfig())
    await sender.start(bus)
    started = time.perf_counter()
    for i in range(n):
        bus.publish(
            Event(id=new_event_id(), name="call.ended", time=time.time(), node_id="b", call_id=f"c{i}")
        )
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    await sender.stop()
    await outbox.close()
    await runner.cleanup()
    return n / elapsed


class _Node:
    node_id = "bench"
    ready = True

    def active_calls(self) -> list[CallInfo]:
        now = time.time()
        return [
            CallInfo(call_id=f"c{i}", state="confirmed", a_call_id=f"a{i}", caller="1", callee="2", start=now)
            for i in range(100)
        ]

    def call_info(self, call_id: str) -> CallInfo | None:
        return None

    def hangup(self, call_id: str) -> bool:
        return False

    def port_usage(self) -> PortUsage | None:
        return None

    def registrations(self) -> list[RegistrationInfo]:
        return []


async def api_run(store: CdrStore, requests: int) -> dict[str, tuple[float, float]]:
    token = AdminToken(name="bench", role="viewer", sha256=hashlib.sha256(TOKEN.encode()).hexdigest())
    config = AdminConfig(port=0, tokens=[token])
    app = make_admin_app(_Node(), EventBus(EventsConfig()), store, config)
    runner = await start_admin(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    out: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for path in ("/api/calls", "/api/cdr?limit=100"):
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                async with http.get(base + path) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            out[path] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    await runner.cleanup()
    return out


async def main_async(args: argparse.Namespace) -> None:
    adds, commits, hooks = [], [], []
    api: dict[str, list[tuple[float, float]]] = {}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="smartpbx-bench-ops-") as tmp:
            directory = Path(tmp)
            add_us, per_s, store = await cdr_run(directory, args.records)
            adds.append(add_us)
            commits.append(per_s)
            for path, figures in (await api_run(store, args.requests)).items():
                api.setdefault(path, []).append(figures)
            await store.close()
            hooks.append(await webhook_run(directory, args.events))
        print(f"run {run + 1}: add {add_us:.1f} us, commit {per_s:,.0f}/s, webhooks {hooks[-1]:,.0f}/s")
    print(f"\nmedians over {args.runs} runs")
    print(f"  CDR add on the loop     : {statistics.median(adds):8.1f} us per record")
    commit_rate, hook_rate = statistics.median(commits), statistics.median(hooks)
    print(f"  CDRs committed (SQLite) : {commit_rate:8,.0f} records/s ({args.records} records)")
    print(f"  webhooks end to end     : {hook_rate:8,.0f} events/s ({args.events} events, 1 receiver)")
    for path, figures in api.items():
        p50 = statistics.median(f[0] for f in figures)
        p99 = statistics.median(f[1] for f in figures)
        print(f"  GET {path:<20}: p50 {p50:6.2f} ms, p99 {p99:6.2f} ms ({args.requests} requests)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print("SmartPBX operations benchmark")
    print_machine()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
