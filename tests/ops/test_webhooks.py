"""Webhook delivery against real aiohttp receivers on 127.0.0.1, with the outbox in SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pbx_edge.ops.config import WebhooksConfig, WebhookTarget
from pbx_edge.ops.events import EventBus, new_event_id
from pbx_edge.ops.models import Event
from pbx_edge.ops.outbox import Outbox
from pbx_edge.ops.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    WebhookSender,
    backoff_delay,
    sign,
    verify_signature,
)

pytestmark = pytest.mark.timeout(20)

SECRET = "s3cret"
SIG = "X-SmartPBX-Signature"


class Receiver:
    """An aiohttp app that checks signatures and records accepted deliveries per path.

    ``plan[path]`` lists statuses to answer in turn before answering 200; a path in ``hang`` waits
    for that event before answering. Recorded lists survive stop()/start() (the same port).
    """

    def __init__(self, secret: str | None = SECRET) -> None:
        self.secret = secret
        self.port = 0
        self.accepted: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.requests: dict[str, list[float]] = {}
        self.headers: list[dict[str, str]] = []
        self.raw: list[tuple[str, dict[str, str], bytes]] = []
        self.bad_signatures = 0
        self.plan: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hang: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        body = await request.read()
        self.requests.setdefault(path, []).append(time.monotonic())
        self.headers.append(dict(request.headers))
        self.raw.append((path, dict(request.headers), body))
        if path in self.hang:
            await self.hang[path].wait()
        if self.secret is not None and not verify_signature(self.secret, request.headers.get(SIG), body):
            self.bad_signatures += 1
            return web.Response(status=401)
        planned = self.plan.get(path)
        if planned:
            status, headers = planned.pop(0)
            return web.Response(status=status, headers=headers)
        self.accepted.setdefault(path, []).append((request.headers[DELIVERY_HEADER], json.loads(body)))
        return web.Response(status=204)

    def ids(self, path: str = "/hook") -> list[str]:
        return [delivery for delivery, _ in self.accepted.get(path, [])]

    def unique_ids(self, path: str = "/hook") -> list[str]:
        """Accepted ids with redeliveries dropped (dedupe by delivery id), in first-arrival order."""
        return list(dict.fromkeys(self.ids(path)))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    for event in r.hang.values():
        event.set()
    await r.stop()


def make_config(tmp_path: Path, targets: list[WebhookTarget], **overrides: Any) -> WebhooksConfig:
    settings: dict[str, Any] = {
        "targets": targets,
        "outbox_url": f"sqlite:///{tmp_path}/outbox.sqlite3",
        "backoff_initial": 0.02,
        "backoff_max": 0.2,
    }
    settings.update(overrides)
    return WebhooksConfig(**settings)


def target(url: str, events: list[str] | None = None, **kw: Any) -> WebhookTarget:
    return WebhookTarget(url=url, events=events or ["*"], secret=kw.pop("secret", SECRET), **kw)


@contextlib.asynccontextmanager
async def running(config: WebhooksConfig, bus: EventBus) -> AsyncIterator[tuple[WebhookSender, Outbox]]:
    outbox = Outbox(config.outbox_url, flush_interval=0.02)
    sender = WebhookSender(config, outbox)
    await sender.start(bus)
    try:
        yield sender, outbox
    finally:
        await sender.stop()
        await outbox.close()


def publish(bus: EventBus, name: str = "call.started", **data: Any) -> Event:
    event = Event(id=new_event_id(), name=name, time=time.time(), node_id="edge-1", call_id="c1", data=data)
    bus.publish(event)
    return event


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- signatures and backoff ------------------------------------------------------------------------


def test_verify_signature() -> None:
    body = b'{"id":"x"}'
    now = 1_700_000_000
    header = sign(SECRET, now, body)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert verify_signature(SECRET, header, body.decode(), now=now - 299)
    assert not verify_signature(SECRET, header, b'{"id":"y"}', now=now)  # tampered body
    assert not verify_signature("other", header, body, now=now)  # wrong key
    assert not verify_signature(SECRET, header, body, now=now + 301)  # replay too old
    assert not verify_signature(SECRET, header.replace(f"t={now}", f"t={now + 1}"), body, now=now)
    for garbage in (None, "", "v1=abc", f"t={now}", "t=x,v1=00", "nonsense"):
        assert not verify_signature(SECRET, garbage, body, now=now)
    rotated = f"t={now},v1={'0' * 64},v1={header.split('v1=')[1]}"
    assert verify_signature(SECRET, rotated, body, now=now)


def test_backoff_is_exponential_with_full_jitter() -> None:
    assert [backoff_delay(n, 1.0, 10.0, lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(5, 1.0, 10.0, lambda: 0.0) == 0.0
    assert backoff_delay(3, 1.0, 10.0, lambda: 0.5) == 2.0
    assert backoff_delay(10_000, 1.0, 300.0, lambda: 1.0) == 300.0  # no overflow


def test_duplicate_target_urls_are_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, [target("http://127.0.0.1:1/a"), target("http://127.0.0.1:1/a")])
    with pytest.raises(ValueError, match="unique"):
        WebhookSender(config, Outbox(config.outbox_url))


# --- delivery --------------------------------------------------------------------------------------


async def test_signed_delivery_with_headers(tmp_path: Path, receiver: Receiver) -> None:
    bus = EventBus()
    async with running(make_config(tmp_path, [target(receiver.url())]), bus) as (sender, _):
        event = publish(bus, "call.ended", reason="caller_bye", duration=12.5)
        await eventually(lambda: len(receiver.ids()) == 1)
        assert sender.stats()[receiver.url()].delivered == 1
        await eventually(lambda: sender.depth() == 0)
    headers = receiver.headers[0]
    assert headers["Content-Type"] == "application/json"
    assert headers[EVENT_HEADER] == "call.ended"
    assert headers[DELIVERY_HEADER] == event.id
    assert SIG in headers
    assert receiver.bad_signatures == 0
    assert Event.model_validate(receiver.accepted["/hook"][0][1]) == event


async def test_key_from_env_wins_and_no_key_means_no_header(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "from-env")
    receiver.secret = None  # accept everything; the signatures are checked below
    targets = [
        target(receiver.url("/env"), secret="ignored", secret_env="HOOK_KEY"),
        target(receiver.url("/none"), secret=None),
    ]
    bus = EventBus()
    async with running(make_config(tmp_path, targets), bus):
        publish(bus)
        await eventually(lambda: len(receiver.ids("/env")) == 1 and len(receiver.ids("/none")) == 1)
    raw = {path: (headers, body) for path, headers, body in receiver.raw}
    headers, body = raw["/env"]
    assert verify_signature("from-env", headers[SIG], body)
    assert not verify_signature("ignored", headers[SIG], body)
    assert SIG not in raw["/none"][0]


async def test_per_target_filters(tmp_path: Path, receiver: Receiver) -> None:
    targets = [
        target(receiver.url("/calls"), ["call.*"]),
        target(receiver.url("/dtmf"), ["dtmf"]),
        target(receiver.url("/all"), ["*"]),
        target(receiver.url("/regs"), ["registration.added", "call.ended"]),
    ]
    bus = EventBus()
    names = ["call.started", "dtmf", "registration.added", "call.ended", "registration.expired", "dtmf"]
    async with running(make_config(tmp_path, targets), bus) as (sender, _):
        events = [publish(bus, name) for name in names]
        await eventually(lambda: len(receiver.ids("/all")) == len(names))
        await eventually(lambda: sender.depth() == 0)

    def expected(*wanted: str) -> list[str]:
        return [e.id for e in events if e.name in wanted]

    assert receiver.ids("/all") == [e.id for e in events]
    assert receiver.ids("/calls") == expected("call.started", "call.ended")
    assert receiver.ids("/dtmf") == expected("dtmf")
    assert receiver.ids("/regs") == expected("registration.added", "call.ended")


async def test_order_per_target(tmp_path: Path, receiver: Receiver) -> None:
    targets = [target(receiver.url("/a")), target(receiver.url("/b"), ["call.*"])]
    bus = EventBus()
    async with running(make_config(tmp_path, targets), bus):
        events = []
        for i in range(120):
            events.append(publish(bus, "dtmf" if i % 3 == 0 else "call.ringing", n=i))
            if i % 10 == 0:
                await asyncio.sleep(0.005)  # several outbox batches
        await eventually(lambda: len(receiver.ids("/a")) == 120)
        await eventually(lambda: len(receiver.ids("/b")) == 80)
    assert receiver.ids("/a") == [e.id for e in events]
    assert receiver.ids("/b") == [e.id for e in events if e.name == "call.ringing"]


async def test_receiver_killed_mid_stream(tmp_path: Path, receiver: Receiver) -> None:
    bus = EventBus()
    published: list[str] = []

    async def publisher() -> None:
        for i in range(60):
            published.append(publish(bus, "call.ringing", n=i).id)
            await asyncio.sleep(0.005)

    async with running(make_config(tmp_path, [target(receiver.url())]), bus) as (sender, _):
        task = asyncio.create_task(publisher())
        await eventually(lambda: len(receiver.ids()) >= 10)
        await receiver.stop()  # killed while events keep coming
        stats = sender.stats()[receiver.url()]
        await eventually(lambda: stats.failed_attempts >= 2)
        await task
        await asyncio.sleep(0.1)
        assert len(receiver.unique_ids()) < 60
        await receiver.start()  # the same port
        await eventually(lambda: len(receiver.unique_ids()) == 60)
        await eventually(lambda: sender.depth() == 0)
    assert receiver.unique_ids() == published  # none missing, order kept
    assert receiver.bad_signatures == 0


async def test_restart_resumes_from_the_outbox(tmp_path: Path) -> None:
    down = Receiver()
    await down.start()
    await down.stop()  # remember a port, then leave nothing listening on it
    config = make_config(tmp_path, [target(down.url())])

    bus1 = EventBus()
    first: list[str] = []
    async with running(config, bus1) as (sender1, outbox1):
        first = [publish(bus1, "call.started", n=i).id for i in range(15)]
        await eventually(lambda: sender1.stats()[down.url()].failed_attempts >= 1)
        assert outbox1.depth() == 15

    db = sqlite3.connect(f"{tmp_path}/outbox.sqlite3")
    rows = db.execute("SELECT event_id, attempts, last_error FROM webhook_outbox ORDER BY id").fetchall()
    db.close()
    assert [r[0] for r in rows] == first
    assert rows[0][1] >= 1 and rows[0][2]  # the failed attempt was recorded

    bus2 = EventBus()
    async with running(config, bus2) as (sender2, _):
        assert sender2.depth() == 15
        second = [publish(bus2, "call.ended", n=i).id for i in range(5)]
        await down.start()
        try:
            await eventually(lambda: len(down.unique_ids()) == 20)
            await eventually(lambda: sender2.depth() == 0)
        finally:
            await down.stop()
    assert down.ids() == first + second  # every event exactly once, in order

    # and the third process finds nothing left to send
    reopened = Outbox(config.outbox_url)
    await reopened.start()
    assert reopened.depth() == 0
    await reopened.close()


async def test_slow_target_does_not_delay_another(tmp_path: Path, receiver: Receiver) -> None:
    receiver.hang["/slow"] = asyncio.Event()
    targets = [
        target(receiver.url("/slow"), timeout=0.3),
        target(receiver.url("/fast")),
        target(receiver.url("/failing")),
    ]
    receiver.plan["/failing"] = [(500, {})] * 1000
    bus = EventBus()
    async with running(make_config(tmp_path, targets), bus) as (sender, _):
        events = [publish(bus, "dtmf", n=i).id for i in range(30)]
        # /slow hangs until released below, so this bound alone shows /fast does not wait for it.
        await eventually(lambda: receiver.ids("/fast") == events, timeout=2.0)
        assert receiver.ids("/slow") == [] and receiver.ids("/failing") == []
        tried = {headers[DELIVERY_HEADER] for path, headers, _ in receiver.raw if path == "/slow"}
        assert tried == {events[0]}  # the head blocks its own target: nothing behind it was sent
        await eventually(lambda: sender.stats()[receiver.url("/failing")].failed_attempts >= 3)
        assert sender.depth() == 60
        receiver.hang["/slow"].set()
        receiver.plan["/failing"] = []
        await eventually(lambda: receiver.ids("/slow") == events and receiver.ids("/failing") == events)


async def test_4xx_retried_at_max_interval_and_retry_after_honoured(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.plan["/refuses"] = [(400, {})]
    receiver.plan["/busy"] = [(503, {"Retry-After": "0.15"})]
    targets = [target(receiver.url("/refuses")), target(receiver.url("/busy"))]
    bus = EventBus()
    async with running(make_config(tmp_path, targets, backoff_max=0.3), bus) as (sender, _):
        event = publish(bus)
        await eventually(
            lambda: receiver.ids("/refuses") == [event.id] and receiver.ids("/busy") == [event.id]
        )
        stats = sender.stats()
        assert stats[receiver.url("/refuses")].failed_attempts == 1
        assert stats[receiver.url("/refuses")].delivered == 1
    refused = receiver.requests["/refuses"]
    busy = receiver.requests["/busy"]
    assert refused[1] - refused[0] >= 0.28  # backoff_max, not the 0.02 s initial backoff
    assert busy[1] - busy[0] >= 0.13  # Retry-After beats the jittered backoff


async def test_unmatched_events_are_not_stored(tmp_path: Path, receiver: Receiver) -> None:
    bus = EventBus()
    async with running(make_config(tmp_path, [target(receiver.url(), ["dtmf"])]), bus) as (sender, outbox):
        publish(bus, "call.started")
        await outbox.flush()
        assert sender.depth() == 0
        assert outbox.depth() == 0


async def test_outbox_orders_and_persists_outcomes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.sqlite3"
    outbox = Outbox(url, owner="edge-1", flush_interval=5.0)
    await outbox.start()
    events = [Event(id=new_event_id(), name="dtmf", time=float(i), node_id="edge-1") for i in range(5)]
    for event in events:
        outbox.enqueue(["http://x/a", "http://x/b"], event)
    assert outbox.depth() == 10 and outbox.depth("http://x/a") == 5
    assert await outbox.fetch("http://x/a") == []  # not sent before it is committed
    await outbox.flush()
    page = await outbox.fetch("http://x/a", limit=3)
    assert [d.event_id for d in page] == [e.id for e in events[:3]]
    rest = await outbox.fetch("http://x/a", after_id=page[-1].id)
    assert [d.event_id for d in rest] == [e.id for e in events[3:]]
    outbox.mark_delivered(page[0], when=100.0)
    outbox.mark_failed(page[1], "HTTP 500", next_attempt_at=200.0)
    outbox.mark_failed(page[1], "timeout", next_attempt_at=300.0)
    await outbox.close()

    other_owner = Outbox(url, owner="edge-2")
    await other_owner.start()
    assert other_owner.depth() == 0  # rows of another process are not ours to send
    await other_owner.close()

    again = Outbox(url, owner="edge-1")
    await again.start()
    assert again.pending_targets() == {"http://x/a": 4, "http://x/b": 5}
    head = (await again.fetch("http://x/a"))[0]
    assert head.event_id == events[1].id
    assert (head.attempts, head.last_error, head.next_attempt_at) == (2, "timeout", 300.0)
    await again.close()


async def test_pruning_keeps_ids_increasing(tmp_path: Path) -> None:
    now = [0.0]
    url = f"sqlite:///{tmp_path}/o.sqlite3"
    outbox = Outbox(url, flush_interval=5.0, retain_delivered=10.0, prune_every=0.0, clock=lambda: now[0])
    await outbox.start()
    for _ in range(2):
        outbox.enqueue(["http://x/a"], Event(id=new_event_id(), name="dtmf", time=0.0, node_id="n"))
    await outbox.flush()
    delivered = await outbox.fetch("http://x/a")
    for delivery in delivered:
        outbox.mark_delivered(delivery)
    await outbox.flush()
    now[0] = 100.0  # past the retention of both
    outbox.enqueue(["http://x/a"], Event(id=new_event_id(), name="dtmf", time=100.0, node_id="n"))
    await outbox.flush()
    await outbox.close()
    db = sqlite3.connect(f"{tmp_path}/o.sqlite3")
    ids = [row[0] for row in db.execute("SELECT id FROM webhook_outbox")]
    db.close()
    assert ids == [3]  # the delivered rows are gone, and the new id is past every id a sender saw
