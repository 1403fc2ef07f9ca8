"""Everything an operator runs next to the SIP core: events, CDRs, webhooks, admin API, metrics.

:class:`Operations` is built by the edge node, hooks the adapters onto the core's listeners and
starts and stops the stores and servers in the right order: on stop, the servers go first, then the
webhook sender and the stores are flushed, so every event and CDR accepted before is on disk.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from aiohttp import web

from pbx_edge.ai_link.bridge import AiBridge
from pbx_edge.media.interface import Side
from pbx_edge.ops.admin_api import make_admin_app, start_admin
from pbx_edge.ops.call_events import CallEventAdapter
from pbx_edge.ops.cdr import CdrStore
from pbx_edge.ops.events import EventBus
from pbx_edge.ops.metrics import EdgeMetrics, MetricsSnapshot, start_metrics
from pbx_edge.ops.models import CdrRecord, Event
from pbx_edge.ops.node_view import EdgeNodeView
from pbx_edge.ops.outbox import Outbox
from pbx_edge.ops.tool_audit import ToolAuditReader
from pbx_edge.ops.webhooks import WebhookSender

if TYPE_CHECKING:
    from pbx_edge.edge import EdgeNode

log = logging.getLogger("pbx_edge.ops")


class Operations:
    def __init__(self, node: EdgeNode) -> None:
        config = node.config
        self.node = node
        self.bus = EventBus(config.events)
        self.cdr = CdrStore(config.cdr.url)
        self.outbox = Outbox(config.webhooks.outbox_url, owner=config.node_id)
        self.webhooks = WebhookSender(config.webhooks, self.outbox)
        self.view = EdgeNodeView(node, node.monotonic)
        self.dispositions: Counter[str] = Counter()
        self.adapter = CallEventAdapter(
            config.node_id, self.bus, self, node.monotonic, codec_of=self.view.codec_of
        )
        self.ai = AiBridge(node, self.bus, config.ai, time.time)
        self.metrics = EdgeMetrics(self)
        self.sip_sent: Counter[int] = Counter()  # responses sent, by status code (counted by the node)
        self.tool_audit = ToolAuditReader(config.admin.tool_audit_url)  # opened on the first query
        self.admin_runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.bus.subscribe(self._log_event)
        core = node.core
        core.listeners.append(self.adapter.on_call)
        core.notice_listeners.append(self.adapter.on_notice)
        core.dtmf_listeners.append(lambda call_id, leg, digit: self._dtmf(call_id, leg, digit, "info"))
        if node.media is not None:
            node.media.dtmf_listeners.append(
                lambda call_id, leg, digit: self._dtmf(call_id, leg, digit, "rfc4733")
            )

    @staticmethod
    def _log_event(event: Event) -> None:
        """Every event is also a log line carrying both legs' Call-IDs (FR17)."""
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "%s %s -> %s",
            event.name,
            event.caller or "-",
            event.callee or "-",
            extra={
                "event_name": event.name,
                "call_id": event.call_id,
                "a_call_id": event.a_call_id,
                "b_call_id": event.b_call_id,
                **{k: v for k, v in event.data.items() if isinstance(v, str | int | float) or v is None},
            },
        )

    def _dtmf(self, call_id: str, leg: Side, digit: str, method: str) -> None:
        call = self.node.core.calls.get(call_id)
        if call is not None:
            self.adapter.on_dtmf(call, leg, digit, method)

    def add(self, record: CdrRecord) -> None:
        """The adapter's CDR sink: count the disposition for the metrics, then store."""
        self.dispositions[record.disposition] += 1
        self.cdr.add(record)

    async def start(self) -> None:
        config = self.node.config
        await self.cdr.start()
        await self.webhooks.start(self.bus)
        if config.admin.enabled:
            app = make_admin_app(
                self.view, self.bus, self.cdr, config.admin, self.ai, self.node.core.away, self.tool_audit
            )
            self.admin_runner = await start_admin(app, config.admin.host, config.admin.port)
            log.warning("admin API on http://%s:%d", *_address(self.admin_runner))
        if config.metrics.enabled:
            self.metrics_runner = await start_metrics(
                self.metrics.registry, config.metrics.host, config.metrics.port
            )
            log.warning("metrics on http://%s:%d/metrics", *_address(self.metrics_runner))

    async def stop(self) -> None:
        """Servers first, then flush in dependency order; each step runs even if one failed."""
        steps = [runner.cleanup for runner in (self.admin_runner, self.metrics_runner) if runner is not None]
        steps += [self.ai.close, self.webhooks.stop, self.outbox.close, self.cdr.close, self.tool_audit.close]
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("error stopping %s", getattr(step, "__qualname__", step))

    def metrics_snapshot(self) -> MetricsSnapshot:
        node = self.node
        core = node.core
        tx_stats = core.tx.stats
        hooks = self.webhooks.stats().values()
        limits = core.rate_limiter.stats()
        snapshot = MetricsSnapshot(
            active_calls=len(core.calls),
            calls_by_disposition=dict(self.dispositions),
            sip_requests_received={k: v for k, v in core.sip_received.items() if not k.isdigit()},
            sip_responses_sent=dict(self.sip_sent),
            transaction_retransmissions=tx_stats.get("retransmissions", 0),
            transaction_timeouts=tx_stats.get("timeouts", 0),
            port_usage=self.view.port_usage(),
            webhook_delivered=sum(h.delivered for h in hooks),
            webhook_failed=sum(h.failed_attempts for h in hooks),
            webhook_outbox_depth=self.webhooks.depth(),
            rate_limited_rejected=limits.rejected,
            rate_limited_dropped=limits.dropped,
        )
        link = self.ai.link.stats()
        streams = link.streams
        snapshot = replace(
            snapshot,
            ai_streams_active=link.active,
            ai_streams_started=link.started,
            ai_streams_shed=link.shed,
            ai_frames_sent=streams.frames_sent,
            ai_frames_dropped={
                "disconnected": streams.frames_dropped_disconnected,
                "queue": streams.frames_dropped_queue,
            },
            ai_reconnects=streams.reconnects,
            ai_connect_failures=streams.connect_failures,
            ai_transcripts=dict(self.ai.received),
        )
        if node.media is not None:
            engine = node.media.engine.stats()
            snapshot = replace(
                snapshot,
                relay_packets=engine.packets_relayed,
                relay_bytes=engine.bytes_relayed,
                relay_dropped_packets=engine.packets_dropped,
                tap_dropped_frames=node.media.tap_drops(),
            )
        return snapshot


def _address(runner: web.AppRunner) -> tuple[str, int]:
    host, port = runner.addresses[0][:2]
    return str(host), int(port)
