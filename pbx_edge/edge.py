"""The edge node process: binds the configured sockets and drives the sans-I/O core with the event loop.

Only this module and :mod:`pbx_edge.transport` touch asyncio. The core is given the loop's monotonic
time on every input; its earliest deadline is kept as one ``loop.call_at`` handle.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time

from pbx_edge.b2bua.call import EndReason
from pbx_edge.b2bua.core import EdgeCore, LocalAddress
from pbx_edge.gc_policy import GcPolicy
from pbx_edge.media.engines import make_engine
from pbx_edge.media.interface import Side
from pbx_edge.media.relay import RelayMedia
from pbx_edge.ops.config import EdgeConfig
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.transport.tcp import TcpManager
from pbx_edge.transport.udp import UdpProtocol, open_udp

log = logging.getLogger("pbx_edge")


class EdgeNode:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        local: dict[str, LocalAddress] = {}
        for listen in config.sip.listen:
            transport = listen.transport.upper()
            local.setdefault(transport, LocalAddress(config.sip.advertised_host or listen.host, listen.port))
        self.media: RelayMedia | None = None
        if config.media.mode == "relay":
            engine = make_engine(config.media)
            self.media = RelayMedia(config.media, engine, time.monotonic, self._media_inactive)
        self.core = EdgeCore(config, local, media=self.media)
        self.core.dtmf_listeners.append(self._on_dtmf)
        if self.media is not None:
            self.media.dtmf_listeners.append(self._on_dtmf)
        self.udp: UdpProtocol | None = None
        self.tcp = TcpManager(self._deliver, self._failed, config.sip.max_message_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = asyncio.Event()
        runtime = config.runtime
        self.gc_policy = GcPolicy(runtime.gc_young_interval, runtime.gc_full_interval)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        raise_open_files_limit()
        if self.media is not None:
            await self.media.start()
        for listen in self.config.sip.listen:
            if listen.transport == "udp":
                protocol = await open_udp(listen.host, listen.port, self._deliver)
                self.udp = self.udp or protocol
            else:
                await self.tcp.listen(listen.host, listen.port)
        self._reschedule()
        self.gc_policy.start(self._loop)

    async def stop(self) -> None:
        self.gc_policy.stop()
        if self._timer is not None:
            self._timer.cancel()
        await self.tcp.close()
        if self.udp is not None and self.udp.transport is not None:
            self.udp.transport.close()
        if self.media is not None:
            await self.media.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # --- core <-> sockets ------------------------------------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _deliver(self, data: bytes, source: Endpoint) -> None:
        try:
            self.core.receive(data, source, self._now())
        except Exception:  # one bad message must never take the node down
            log.exception("error handling message from %s", source)
        self._flush()

    def _failed(self, dest: Endpoint) -> None:
        self.core.transport_error(dest, self._now())
        self._flush()

    def _media_inactive(self, call_id: str, reason: str) -> bool:
        ended = self.core.hangup(call_id, EndReason.MEDIA_TIMEOUT, self._now(), only_confirmed=True)
        if ended:
            log.info("call %s ended: no media for %s", call_id, reason)
        self._flush()
        return ended

    def _on_dtmf(self, call_id: str, leg: Side, digit: str) -> None:
        """RFC 4733 events (from the media tap) and SIP INFO digits (from the core) alike; the
        operations issue publishes them on the event bus as ``dtmf``."""
        log.info("dtmf call=%s leg=%s digit=%s", call_id, leg.value, digit)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self._now())
        except Exception:
            log.exception("error handling timers")
        self._flush()

    def _flush(self) -> None:
        for data, dest in self.core.outgoing():
            if dest.transport == "UDP":
                if self.udp is not None:
                    self.udp.send(data, dest)
            else:
                self.tcp.send(data, dest)
        self._reschedule()

    def _reschedule(self) -> None:
        deadline = self.core.get_timer()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)


def raise_open_files_limit() -> None:
    """Each relayed call holds 4 sockets (8 with video): lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: EdgeConfig) -> None:
    node = EdgeNode(config)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addresses = ", ".join(f"{x.transport}:{x.host}:{x.port}" for x in config.sip.listen)
    log.warning("edge ready node=%s listening on %s", config.node_id, addresses)
    await stop.wait()
    log.warning("edge stopping")
    await node.stop()
