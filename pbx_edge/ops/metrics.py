"""Prometheus metrics of one edge node, served on their own port (``GET /metrics``).

Why a collector that reads at scrape time: the node already keeps its counters (transaction stats,
relay and tap counters, the outbox). Mirroring each increment into prometheus_client objects on the
hot path would cost every packet and SIP message; instead :class:`NodeCollector` asks the node for
one :class:`MetricsSnapshot` per scrape (every 15 s or so) and turns it into metric families. The one
exception is the INVITE->100 latency histogram: a distribution cannot be rebuilt from a counter, so
the node observes into :attr:`EdgeMetrics.invite_trying` as each 100 Trying leaves.

The registry is our own, not prometheus_client's global one, so tests and several nodes in one
process never collide, and only what is listed here is exported.

Names follow the Prometheus conventions: ``smartpbx_`` prefix, base units in the name (``_seconds``,
``_bytes``), ``_total`` on counters. Label values come from closed sets (dispositions, SIP methods,
result/action words) so a hostile peer cannot grow the number of series; unknown SIP methods are
counted as ``method="other"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from pbx_edge.ops.models import Disposition, PortUsage

PREFIX = "smartpbx_"
# 0.1 ms .. 100 ms: a 100 Trying is sent from the event loop as the INVITE is parsed; more than a few
# milliseconds means the loop is overloaded, and 100 ms is where T1-driven retransmissions loom.
INVITE_TRYING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
SIP_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH"}
    | {"INFO", "REFER", "MESSAGE", "UPDATE"}
)
DISPOSITIONS: tuple[str, ...] = get_args(Disposition)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The node's counters at one instant. Every ``*_total``-style field is cumulative since start-up
    and must never decrease (Prometheus treats a decrease as a restart); gauges may go either way.
    Fields default to zero so a node can fill in what it has.
    """

    active_calls: int = 0
    calls_by_disposition: Mapping[str, int] = field(default_factory=dict)  # ended calls, per Disposition
    sip_requests_received: Mapping[str, int] = field(default_factory=dict)  # per method
    sip_responses_sent: Mapping[int, int] = field(default_factory=dict)  # per status code
    transaction_retransmissions: int = 0
    transaction_timeouts: int = 0
    port_usage: PortUsage | None = None  # None when media is pass-through
    relay_packets: int = 0
    relay_bytes: int = 0
    relay_dropped_packets: int = 0
    tap_dropped_frames: int = 0  # frames a slow tap subscriber lost
    webhook_delivered: int = 0  # delivery attempts that got a 2xx
    webhook_failed: int = 0  # delivery attempts that did not (each retry counts)
    webhook_outbox_depth: int = 0  # deliveries waiting in the outbox
    rate_limited_rejected: int = 0  # requests answered with 503 + Retry-After
    rate_limited_dropped: int = 0  # requests dropped silently (flood)
    ai_streams_active: int = 0  # calls streamed to the AI layer now
    ai_streams_started: int = 0
    ai_streams_shed: int = 0  # answered calls not streamed: ai.max_streams reached
    ai_frames_sent: int = 0  # 20 ms audio frames sent to the AI layer
    ai_frames_dropped: Mapping[str, int] = field(default_factory=dict)  # by cause: disconnected, queue
    ai_reconnects: int = 0
    ai_connect_failures: int = 0
    ai_transcripts: Mapping[str, int] = field(default_factory=dict)  # received, by kind: final, partial, gap


class MetricsSource(Protocol):
    """What the node implements for the metrics; called once per scrape, on the event loop."""

    def metrics_snapshot(self) -> MetricsSnapshot: ...


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _labelled(family: CounterMetricFamily, values: Mapping[str, int]) -> CounterMetricFamily:
    for label, value in values.items():
        family.add_metric([label], value)
    return family


class NodeCollector:
    """Turns one :class:`MetricsSnapshot` per scrape into metric families."""

    def __init__(self, source: MetricsSource | None = None) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        # The same families with zero values: lets the registry check names without a node.
        return list(self._families(MetricsSnapshot(port_usage=PortUsage(**dict.fromkeys(_POOL, 0)))))

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return []
        return list(self._families(self.source.metrics_snapshot()))

    def _families(self, s: MetricsSnapshot) -> Iterator[Metric]:
        yield _gauge("calls_active", "Calls in progress (ringing or answered)", s.active_calls)
        calls = dict.fromkeys(DISPOSITIONS, 0)
        for name, count in s.calls_by_disposition.items():
            calls[name] = calls.get(name, 0) + count
        yield _labelled(
            CounterMetricFamily(PREFIX + "calls", "Calls ended, by disposition", labels=["disposition"]),
            calls,
        )
        methods: dict[str, int] = {}
        for method, count in s.sip_requests_received.items():
            key = method if method in SIP_METHODS else "other"
            methods[key] = methods.get(key, 0) + count
        yield _labelled(
            CounterMetricFamily(
                PREFIX + "sip_requests_received", "SIP requests received, by method", labels=["method"]
            ),
            methods,
        )
        yield _labelled(
            CounterMetricFamily(
                PREFIX + "sip_responses_sent", "SIP responses sent, by status code", labels=["code"]
            ),
            {str(code): count for code, count in sorted(s.sip_responses_sent.items())},
        )
        yield _counter(
            "sip_transaction_retransmissions",
            "SIP messages retransmitted by transactions (timers A/E/G)",
            s.transaction_retransmissions,
        )
        yield _counter(
            "sip_transaction_timeouts",
            "SIP transactions that timed out (timers B/F/H)",
            s.transaction_timeouts,
        )
        if s.port_usage is not None:
            for name, doc, value in _pool_metrics(s.port_usage):
                yield _gauge(name, doc, value)
        yield _counter("media_relay_packets", "RTP/RTCP packets forwarded by the relay", s.relay_packets)
        yield _counter("media_relay_bytes", "RTP/RTCP payload bytes forwarded by the relay", s.relay_bytes)
        yield _counter(
            "media_relay_dropped_packets",
            "Packets the relay dropped (unknown source, errors)",
            s.relay_dropped_packets,
        )
        yield _counter(
            "media_tap_dropped_frames",
            "Audio frames dropped because a tap subscriber fell behind",
            s.tap_dropped_frames,
        )
        yield _labelled(
            CounterMetricFamily(
                PREFIX + "webhook_delivery_attempts",
                "Webhook delivery attempts, by result",
                labels=["result"],
            ),
            {"delivered": s.webhook_delivered, "failed": s.webhook_failed},
        )
        yield _gauge(
            "webhook_outbox_depth", "Webhook deliveries waiting in the outbox", s.webhook_outbox_depth
        )
        yield _labelled(
            CounterMetricFamily(
                PREFIX + "rate_limited_requests",
                "Requests refused by the INVITE rate limiter, by action",
                labels=["action"],
            ),
            {"rejected": s.rate_limited_rejected, "dropped": s.rate_limited_dropped},
        )
        yield from _ai_metrics(s)


def _ai_metrics(s: MetricsSnapshot) -> Iterator[Metric]:
    """The edge's side of the AI link (the Serve side exports its own through Ray)."""
    yield _gauge("ai_streams_active", "Calls streamed to the AI layer now", s.ai_streams_active)
    yield _counter("ai_streams_started", "Calls whose audio streaming to the AI layer started",
                   s.ai_streams_started)  # fmt: skip
    yield _counter(
        "ai_streams_shed", "Answered calls not streamed: ai.max_streams reached", s.ai_streams_shed
    )
    yield _counter("ai_frames_sent", "20 ms audio frames sent to the AI layer", s.ai_frames_sent)
    yield _labelled(
        CounterMetricFamily(
            PREFIX + "ai_frames_dropped", "Audio frames not sent to the AI layer, by cause", labels=["cause"]
        ),
        {"disconnected": 0, "queue": 0, **s.ai_frames_dropped},
    )
    yield _counter("ai_reconnects", "AI stream reconnections after a lost socket", s.ai_reconnects)
    yield _counter("ai_connect_failures", "Failed AI stream connection attempts", s.ai_connect_failures)
    yield _labelled(
        CounterMetricFamily(
            PREFIX + "ai_transcripts", "Transcript messages received, by kind", labels=["kind"]
        ),
        {"final": 0, "partial": 0, "gap": 0, **s.ai_transcripts},
    )


_POOL = ("allocated_calls", "total_calls", "allocated_ports", "total_ports", "unusable_blocks")


def _pool_metrics(usage: PortUsage) -> list[tuple[str, str, int]]:
    return [
        ("media_pool_calls_allocated", "Calls holding a media port block", usage.allocated_calls),
        ("media_pool_calls_capacity", "Calls the media port range can hold", usage.total_calls),
        ("media_pool_ports_allocated", "UDP ports allocated to calls", usage.allocated_ports),
        ("media_pool_ports_capacity", "UDP ports in the media range", usage.total_ports),
        (
            "media_pool_unusable_blocks",
            "Port blocks that failed to bind, cooling down",
            usage.unusable_blocks,
        ),
    ]


class EdgeMetrics:
    """The node's registry: the scrape-time collector plus the histogram the node observes into.

    ``source`` may be given later (``metrics.collector.source = node``) when the node itself needs
    :attr:`invite_trying` at construction.
    """

    def __init__(self, source: MetricsSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = NodeCollector(source)
        self.registry.register(self.collector)
        self.invite_trying = Histogram(
            PREFIX + "sip_invite_trying_seconds",
            "Time from receiving an INVITE to sending its 100 Trying",
            buckets=INVITE_TRYING_BUCKETS,
            registry=self.registry,
        )


async def start_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` (Prometheus text or OpenMetrics, by ``Accept``) from ``registry``.

    The caller owns the runner (``await runner.cleanup()``); with ``port=0`` the bound port is
    ``runner.addresses[0][1]``.
    """

    async def scrape(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(",".join(request.headers.getall("Accept", [])))
        response = web.Response(body=encode(registry), headers={"Content-Type": content_type})
        response.enable_compression()  # gzip when the scraper accepts it (Prometheus does)
        return response

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)  # a scrape every few seconds would flood the log
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
