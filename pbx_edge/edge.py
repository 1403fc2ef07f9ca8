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
from pbx_edge.media.relay import RelayMedia
from pbx_edge.ops.config import EdgeConfig
from pbx_edge.ops.operations import Operations
from pbx_edge.ops.resources import MemoryWatermark
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
        self.ops = Operations(self)
        if config.ai.enabled:
            self.core.attendant = self.ops.ai  # the AI attendant answers calls for the triggers set
        self.started = False
        self._watcher: asyncio.Task[None] | None = None
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
        await self.ops.start()
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
        self._watcher = self._loop.create_task(self._watch_resources())
        self.started = True

    async def _watch_resources(self) -> None:
        """NFR8: over the memory watermark new calls get 503 (and /ready fails); live calls go on."""
        watermark = MemoryWatermark(self.config.resources)
        while True:
            await asyncio.sleep(self.config.resources.check_interval)
            over = watermark.over(self._now())
            if over and self.core.refusing is None:
                log.warning(
                    "memory watermark exceeded (RSS %.0f MB): refusing new calls", watermark.rss_bytes / 2**20
                )
                self.core.refusing = "memory"
            elif not over and self.core.refusing == "memory":
                log.warning("memory back under the watermark: accepting calls")
                self.core.refusing = None

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.gc_policy.stop()
        if self._timer is not None:
            self._timer.cancel()
        await self.tcp.close()
        if self.udp is not None and self.udp.transport is not None:
            self.udp.transport.close()
        if self.media is not None:
            await self.media.stop()
        await self.ops.stop()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def drain(self, timeout: float) -> None:
        """Graceful shutdown (NFR7): refuse new calls (503, not ready), give live calls ``timeout``
        seconds to end by themselves, then end the rest with BYE on both legs (CANCEL before
        answer) and wait, bounded, for those transactions to finish."""
        self.core.refusing = "draining"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.core.calls and loop.time() < deadline:
            await asyncio.sleep(0.05)
        remaining = list(self.core.calls)
        if remaining:
            log.warning("drain timeout: ending %d calls", len(remaining))
        for call_id in remaining:
            self.hangup(call_id, EndReason.SHUTDOWN)
        bound = loop.time() + 64 * self.config.sip.timers.t1 if remaining else loop.time()
        while (self.core.calls or self.core.tx.pending_clients()) and loop.time() < bound:
            await asyncio.sleep(0.05)

    def hangup(self, call_id: str, reason: EndReason) -> bool:
        """End a call from the edge (admin, shutdown)."""
        ended = self.core.hangup(call_id, reason, self._now())
        self._flush()
        return ended

    def transfer(self, call_id: str, target: str) -> bool:
        """Connect a call the AI attendant answered to ``target`` (the AI's transfer action)."""
        started = self.core.transfer(call_id, target, self._now())
        self._flush()
        return started

    # --- core <-> sockets ------------------------------------------------------------------------
    def monotonic(self) -> float:
        """The clock the core runs on (the loop's), for code outside the core."""
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _deliver(self, data: bytes, source: Endpoint) -> None:
        started = time.perf_counter() if data.startswith(b"INVITE ") else 0.0
        try:
            self.core.receive(data, source, self._now())
        except Exception:  # one bad message must never take the node down
            log.exception("error handling message from %s", source)
        self._flush()
        if started:  # the 100 Trying (or the rejection) has just been handed to the socket
            self.ops.metrics.invite_trying.observe(time.perf_counter() - started)

    def _failed(self, dest: Endpoint) -> None:
        self.core.transport_error(dest, self._now())
        self._flush()

    def _media_inactive(self, call_id: str, reason: str) -> bool:
        ended = self.core.hangup(call_id, EndReason.MEDIA_TIMEOUT, self._now(), only_confirmed=True)
        if ended:
            log.info("call %s ended: no media for %s", call_id, reason)
        self._flush()
        return ended

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self._now())
        except Exception:
            log.exception("error handling timers")
        self._flush()

    def _flush(self) -> None:
        sent = self.ops.sip_sent
        for data, dest in self.core.outgoing():
            if data.startswith(b"SIP/2.0 ") and data[8:11].isdigit():
                sent[int(data[8:11])] += 1
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
    log.warning("edge draining (up to %.0f s)", config.shutdown.drain_timeout)
    await node.drain(config.shutdown.drain_timeout)
    log.warning("edge stopping")
    await node.stop()
