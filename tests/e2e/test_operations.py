"""Operations on a running edge process: admin API and metrics over real HTTP, webhooks to a real
receiver that dies and comes back while the edge restarts, the SIGTERM drain with live SIPp calls,
and the per-source rate limit (127.0.0.2 floods, 127.0.0.3 still gets through)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pbx_edge.ops.webhooks import verify_signature
from tests.e2e.harness import E2E, LOOPBACK, SIPP, EdgeProcess
from tests.e2e.rtp_peer import Phone

pytestmark = pytest.mark.timeout(120)

ADMIN_TOKEN, VIEWER_TOKEN = "admin-" + uuid.uuid4().hex, "viewer-" + uuid.uuid4().hex
TOKENS = [
    {"name": "ops", "role": "admin", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()},
    {"name": "wall", "role": "viewer", "sha256": hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()},
]
SECRET = "whsec-" + uuid.uuid4().hex


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _eventually(check: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_admin_api_metrics_and_cdr_against_a_running_edge(e2e: E2E) -> None:
    callee, caller = await Phone().start(), await Phone().start()
    try:
        settings = e2e.edge_settings(uas_port=callee.sip_port)
        settings.admin_port, settings.metrics_port = e2e.ports.port(), e2e.ports.port()
        settings.admin_tokens = TOKENS
        edge = await asyncio.to_thread(e2e.start_edge, settings)
        api = f"http://{LOOPBACK}:{settings.admin_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{api}/health") as resp:
                assert resp.status == 200
            async with http.get(f"{api}/ready") as resp:
                assert resp.status == 200
            async with http.get(f"{api}/api/calls") as resp:
                assert resp.status == 401 and resp.content_type == "application/problem+json"
            dialog = await caller.call(edge.addr)
            assert dialog.final == 200
            async with http.get(f"{api}/api/calls", headers=_auth(VIEWER_TOKEN)) as resp:
                calls = (await resp.json())["items"]
            assert [(c["state"], c["a_call_id"]) for c in calls] == [("confirmed", dialog.call_id)]
            call_id = calls[0]["call_id"]
            assert calls[0]["codec"] == "PCMU/8000" and len(calls[0]["media_ports"]) == 8
            async with http.get(f"{api}/api/ports", headers=_auth(VIEWER_TOKEN)) as resp:
                assert (await resp.json())["usage"]["allocated_calls"] == 1
            async with http.post(f"{api}/api/calls/{call_id}/hangup", headers=_auth(VIEWER_TOKEN)) as resp:
                assert resp.status == 403
            async with http.post(f"{api}/api/calls/{call_id}/hangup", headers=_auth(ADMIN_TOKEN)) as resp:
                assert resp.status == 202
            await asyncio.wait_for(caller.byed.wait(), 5)
            await asyncio.wait_for(callee.byed.wait(), 5)

            async def cdr_written() -> bool:
                async with http.get(f"{api}/api/cdr", headers=_auth(VIEWER_TOKEN)) as resp:
                    return bool((await resp.json())["total"] == 1)

            await _eventually(cdr_written)
            async with http.get(f"{api}/api/cdr", headers=_auth(VIEWER_TOKEN)) as resp:
                (record,) = (await resp.json())["items"]
            assert (record["disposition"], record["end_reason"], record["hangup_side"]) == (
                "answered",
                "admin",
                "edge",
            )
            assert record["a_call_id"] == dialog.call_id and record["codec"] == "PCMU/8000"
            async with http.get(f"{api}/api/cdr.csv", headers=_auth(VIEWER_TOKEN)) as resp:
                assert resp.content_type == "text/csv" and call_id in await resp.text()
            async with http.get(f"{api}/api/events?call_id={call_id}", headers=_auth(VIEWER_TOKEN)) as resp:
                names = [event["name"] for event in (await resp.json())["items"]]
            assert names == ["call.started", "call.answered", "call.ended"]
            async with http.get(f"http://{LOOPBACK}:{settings.metrics_port}/metrics") as resp:
                metrics = await resp.text()
        assert 'smartpbx_calls_total{disposition="answered"} 1.0' in metrics
        assert "smartpbx_sip_invite_trying_seconds_count 1.0" in metrics
        assert 'smartpbx_sip_requests_received_total{method="INVITE"} 1.0' in metrics
    finally:
        caller.close()
        callee.close()


class Receiver:
    """A webhook receiver: verifies signatures, keeps bodies by delivery id, can go away."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(SECRET, request.headers.get("X-SmartPBX-Signature", ""), body):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.deliveries.append((request.headers["X-SmartPBX-Delivery"], json.loads(body)))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def _calls(caller: Phone, edge: EdgeProcess, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        dialog = await caller.call(edge.addr)
        assert dialog.final == 200
        assert await dialog.bye() == 200
        ids.append(dialog.call_id)
    return ids


async def test_webhooks_survive_a_receiver_outage_and_an_edge_restart(e2e: E2E) -> None:
    receiver = Receiver(e2e.ports.port())
    await receiver.start()
    callee, caller = await Phone().start(), await Phone().start()
    try:
        settings = e2e.edge_settings(uas_port=callee.sip_port)
        settings.webhooks = [
            {"url": f"http://{LOOPBACK}:{receiver.port}/hook", "events": ["call.*"], "secret": SECRET}
        ]
        edge = await asyncio.to_thread(e2e.start_edge, settings)
        sent = await _calls(caller, edge, 2)

        async def delivered(n: int) -> Any:
            async def check() -> bool:
                return len({d for d, _ in receiver.deliveries}) >= n

            return check

        await _eventually(await delivered(6))  # started, answered, ended per call
        await receiver.stop()  # the receiver dies mid-stream...
        sent += await _calls(caller, edge, 2)
        await asyncio.sleep(0.5)  # ...the edge keeps trying, the outbox holds the events
        assert await asyncio.to_thread(edge.stop) == 0  # SIGTERM: clean exit, outbox flushed
        edge = await asyncio.to_thread(e2e.start_edge, settings)  # same data directory
        sent += await _calls(caller, edge, 1)
        await receiver.start()
        await _eventually(await delivered(15), timeout=20)
        ids = [d for d, _ in receiver.deliveries]
        unique = list(dict.fromkeys(ids))  # at-least-once: dedupe on the delivery id
        assert len(unique) == 15 and receiver.bad_signatures == 0
        bodies = {d: b for d, b in receiver.deliveries}
        per_call: dict[str, list[str]] = {}
        for delivery in unique:
            per_call.setdefault(bodies[delivery]["a_call_id"], []).append(bodies[delivery]["name"])
        assert set(per_call) == set(sent)
        assert all(names == ["call.started", "call.answered", "call.ended"] for names in per_call.values())
        assert unique == sorted(unique)  # event ids are time-ordered: per-receiver order kept
    finally:
        await receiver.stop()
        caller.close()
        callee.close()


@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_sigterm_drains_then_ends_live_sipp_calls_and_writes_their_cdrs(e2e: E2E) -> None:
    uas = e2e.start_uas("uas_basic.xml", calls=3, timeout_s=60)
    settings = e2e.edge_settings(uas_port=uas.spec.local_port)
    settings.admin_port = e2e.ports.port()
    settings.drain_timeout = 2.0
    edge = await asyncio.to_thread(e2e.start_edge, settings)
    phones = [await Phone().start() for _ in range(4)]
    try:
        for phone in phones[:3]:
            assert (await phone.call(edge.addr)).final == 200
        os.kill(edge.edge_pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert (await phones[3].call(edge.addr)).final == 503  # draining: no new calls
        ready = f"http://{LOOPBACK}:{settings.admin_port}/ready"
        async with aiohttp.ClientSession() as http, http.get(ready) as resp:
            assert resp.status == 503
        for phone in phones[:3]:  # after the drain timeout the edge hangs up both legs
            await asyncio.wait_for(phone.byed.wait(), 10)
        assert await asyncio.to_thread(edge.stop) == 0
    finally:
        for phone in phones:
            phone.close()
    assert e2e.finish_uas(uas).ok(3)
    with sqlite3.connect(settings.data_dir / "cdr.sqlite3") as db:
        rows = db.execute("SELECT disposition, end_reason FROM cdr ORDER BY start").fetchall()
    assert rows.count(("answered", "shutdown")) == 3
    assert rows.count(("rejected", "draining")) == 1


def _invite(source: tuple[str, int], edge: tuple[str, int], n: int) -> bytes:
    branch, call_id = f"z9hG4bKflood{n}{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    return (
        f"INVITE sip:x@{edge[0]}:{edge[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch={branch}\r\n"
        f"From: <sip:flood@{source[0]}>;tag=f{n}\r\nTo: <sip:x@{edge[0]}>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:flood@{source[0]}:{source[1]}>\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_rate_limit_stops_one_flooding_source_and_not_another(e2e: E2E) -> None:
    callee = await Phone(answer_with=486).start()
    polite = await Phone(host="127.0.0.3").start()
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    flood.settimeout(0.05)
    try:
        settings = e2e.edge_settings(uas_port=callee.sip_port)
        settings.rate_limit = {"invites_per_second": 5, "burst": 5, "drop_above": 20, "allow": []}
        edge = await asyncio.to_thread(e2e.start_edge, settings)
        for n in range(60):  # 60 INVITEs in ~0.3 s from 127.0.0.2
            flood.sendto(_invite(flood.getsockname(), edge.addr, n), edge.addr)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        statuses: list[int] = []
        while True:
            try:
                data = flood.recv(65535)
            except TimeoutError:
                break
            statuses.append(int(data.split(b" ", 2)[1]))
        tried = statuses.count(100)  # admitted: 100 Trying, then the callee's 486
        rejected = statuses.count(503)
        assert 5 <= tried <= 8 and statuses.count(486) >= tried  # burst 5 + refill; 486 is re-sent (no ACK)
        assert rejected >= 10  # up to drop_above per second answered 503 + Retry-After...
        assert tried + rejected < 60  # ...and the rest dropped without an answer
        dialog = await polite.call(edge.addr)  # another source is not affected
        assert dialog.final == 486
    finally:
        flood.close()
        polite.close()
        callee.close()


async def test_memory_watermark_refuses_new_calls_and_fails_readiness(e2e: E2E) -> None:
    callee, caller = await Phone().start(), await Phone().start()
    try:
        settings = e2e.edge_settings(uas_port=callee.sip_port, log_level="INFO")
        settings.admin_port = e2e.ports.port()
        settings.extra = {"resources": {"memory_watermark_mb": 1, "check_interval": 0.1}}
        edge = await asyncio.to_thread(e2e.start_edge, settings)
        await asyncio.sleep(0.5)  # the watcher has sampled RSS (far above 1 MB)
        assert (await caller.call(edge.addr)).final == 503
        ready = f"http://{LOOPBACK}:{settings.admin_port}/ready"
        async with aiohttp.ClientSession() as http, http.get(ready) as resp:
            assert resp.status == 503
        log = edge.log_tail(40)
        assert "memory watermark exceeded" in log
        # Event log lines carry the event name and both legs' Call-IDs (the rejected call has one).
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        ended = [line for line in lines if line.get("event_name") == "call.ended"]
        assert ended and ended[0]["a_call_id"] and ended[0]["reason"] == "memory"
    finally:
        caller.close()
        callee.close()
