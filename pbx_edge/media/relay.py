"""The relaying media manager: port pool + SDP bypass rewrite + a relay engine, behind MediaManager.

For each call the B2BUA opens a :class:`RelaySession`, which reserves a block of 8 ports
(:mod:`pbx_edge.media.ports`). Every SDP body crossing the edge goes through
:meth:`RelaySession.rewrite`: the sender's media address is given to the engine (where to send
media toward that side until latching learns the real one) and the body is rewritten so the other
side sends its media to the edge. Only ``c=``, the ``m=`` ports and ``a=rtcp`` change
(:func:`pbx_edge.media.sdp.rewrite_for_relay`).

Streams: m-line 0 uses the block's first RTP/RTCP pair on each leg (caller_rtp/callee_rtp), m-line
1 (e.g. video) the second (``*_aux``). A stream's sockets are bound when its m-line first appears
with a non-zero port, so an audio-only call holds 4 sockets. More than two active m-lines get 488.

Inactivity: a periodic check ends a call whose media stopped in both directions for
``inactivity_timeout`` seconds (``hold_timeout`` while the last SDP put the call on hold) through
the ``on_inactive`` callback, which the edge turns into a BYE on both legs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from pbx_edge.media.call_audio import ENGINE_SIDE, OTHER, CallAudio, DtmfListener
from pbx_edge.media.engine import Address, RelayEngine, StreamSockets
from pbx_edge.media.injector import PlayableAudio
from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.media.ports import CallPorts, PoolUsage, PortPool, default_probe
from pbx_edge.media.sdp import Direction, MediaSection, SessionDescription, rewrite_for_relay
from pbx_edge.media.tap import TapQueue
from pbx_edge.ops.config import MediaConfig

log = logging.getLogger("pbx_edge.media")

MAX_STREAMS = 2

# Called with (call id, reason); returns True if the call was ended, False if it is not in a state
# where media is expected (still ringing): the session's idle clock is then restarted.
InactiveCallback = Callable[[str, str], bool]


@dataclass(frozen=True, slots=True)
class RemoteMedia:
    """Where one side wants its media, as its SDP says (None: port 0 or the hold address)."""

    rtp: Address | None
    rtcp: Address | None
    hold: bool


def remote_media(sdp: SessionDescription, index: int) -> RemoteMedia:
    section = sdp.media[index]
    conn = sdp.connection_for(index)
    direction = sdp.direction_for(index)
    hold = direction in (Direction.SENDONLY, Direction.INACTIVE) or conn is None or conn.is_unspecified
    if section.port == 0 or conn is None or conn.is_unspecified:
        return RemoteMedia(None, None, hold)
    rtcp_attr = section.rtcp
    rtcp_port = section.port + 1
    rtcp_host = conn.address
    if rtcp_attr is not None:
        rtcp_port = rtcp_attr.port
        if rtcp_attr.address is not None:
            rtcp_host = rtcp_attr.address
    if _has_attribute(section, "rtcp-mux"):
        rtcp_port = section.port
    return RemoteMedia((conn.address, section.port), (rtcp_host, rtcp_port), hold)


def _has_attribute(section: MediaSection, name: str) -> bool:
    return any(line.type == "a" and line.value.split(":", 1)[0] == name for line in section.lines)


class RelaySession:
    """One call's media: its port block, its streams on the engine, and what each side's SDP said."""

    def __init__(self, manager: RelayMedia, call_id: str, ports: CallPorts, now: float) -> None:
        self.manager = manager
        self.call_id = call_id
        self.ports = ports
        self.stream_ids: list[int | None] = [None] * MAX_STREAMS
        self.sdp: dict[Side, SessionDescription] = {}
        self.hold: dict[Side, bool] = {Side.CALLER: False, Side.CALLEE: False}
        self.idle_since = now  # restarted by every SDP exchange
        self.answer_from: Side | None = None  # the side whose SDP was the last answer
        self.closed = False
        recording = manager.config.recording
        self.audio = CallAudio(
            self,
            manager.config.tap_queue_frames,
            on_dtmf=manager.report_dtmf,
            recording_dir=recording.directory if recording.enabled else None,
        )

    # --- MediaSession ----------------------------------------------------------------------------
    def rewrite(self, from_side: Side, kind: SdpKind, sdp: bytes) -> bytes:
        if self.closed:
            raise SdpRejected("media session already closed", 488)
        parsed = SessionDescription.parse(sdp)
        active = [i for i, section in enumerate(parsed.media) if section.port != 0]
        if any(i >= MAX_STREAMS for i in active):
            raise SdpRejected(
                f"{len(active)} active media streams; the relay carries at most {MAX_STREAMS}", 488
            )
        to_side = OTHER[from_side]
        engine = self.manager.engine
        ports: list[int | None] = []
        any_hold = False
        for index, section in enumerate(parsed.media):
            remote = remote_media(parsed, index)
            any_hold = any_hold or remote.hold
            stream_id = self.stream_ids[index] if index < MAX_STREAMS else None
            if section.port == 0:
                if stream_id is not None:
                    engine.set_remote(stream_id, ENGINE_SIDE[from_side], None, None)
                ports.append(None)
                continue
            if stream_id is None:
                stream_id = self._open_stream(index)
            engine.set_remote(stream_id, ENGINE_SIDE[from_side], remote.rtp, remote.rtcp)
            ports.append(self._port(to_side, index))
        self.sdp[from_side] = parsed
        self.hold[from_side] = any_hold
        if kind is SdpKind.ANSWER:
            self.answer_from = from_side
        self.idle_since = self.manager.clock()
        self.audio.apply()
        return bytes(rewrite_for_relay(parsed, self.manager.address, ports))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.audio.close()
        for stream_id in self.stream_ids:
            if stream_id is not None:
                self.manager.forget_stream(stream_id)
        self.stream_ids = [None] * MAX_STREAMS
        self.manager.session_closed(self)

    # --- audio: see pbx_edge/media/call_audio.py ---------------------------------------------------
    def audio_stream_id(self) -> int | None:
        """The engine stream of the first audio m-line, once it has been opened."""
        for index, stream_id in enumerate(self.stream_ids):
            if stream_id is None:
                continue
            for sdp in self.sdp.values():
                if index < len(sdp.media) and sdp.media[index].media == "audio":
                    return stream_id
        return None

    def codec(self) -> str | None:
        """The audio codec the answer chose (its first audio payload type), e.g. ``PCMU/8000``."""
        return self.audio.codec_name()

    def subscribe_tap(self, capacity: int | None = None) -> TapQueue:
        """Decoded 16 kHz frames of both legs, 20 ms each; see :class:`TapQueue`."""
        return self.audio.subscribe(capacity)

    def unsubscribe_tap(self, queue: TapQueue) -> None:
        self.audio.unsubscribe(queue)

    def play(self, leg: Side, pcm: PlayableAudio, sample_rate: int = 16000) -> float:
        return self.audio.play(leg, pcm, sample_rate)

    def stop_playback(self, leg: Side) -> int:
        return self.audio.stop_playback(leg)

    def bridge_to_injector(self, leg: Side, bridged: bool = True) -> None:
        self.audio.bridge_to_injector(leg, bridged)

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def on_hold(self) -> bool:
        return self.hold[Side.CALLER] or self.hold[Side.CALLEE]

    def _port(self, side: Side, index: int) -> int:
        ports = self.ports
        if side is Side.CALLER:
            return ports.caller_rtp if index == 0 else ports.caller_aux_rtp
        return ports.callee_rtp if index == 0 else ports.callee_aux_rtp

    def _open_stream(self, index: int) -> int:
        a_port, b_port = self._port(Side.CALLER, index), self._port(Side.CALLEE, index)
        try:
            sockets = self.manager.bind_pairs(a_port, b_port)
        except OSError as exc:
            raise SdpRejected(f"media ports {a_port}/{b_port} unavailable: {exc.strerror}", 503) from None
        stream_id = self.manager.add_stream(self, sockets)
        self.stream_ids[index] = stream_id
        return stream_id

    def last_activity(self) -> float:
        """The latest of: the last SDP exchange, the last packet from either side on any stream."""
        latest = self.idle_since
        engine = self.manager.engine
        for stream_id in self.stream_ids:
            if stream_id is None:
                continue
            stats = engine.stream_stats(stream_id)
            for side in (stats.a, stats.b):
                if side.last_rx is not None and side.last_rx > latest:
                    latest = side.last_rx
        return latest


class RelayMedia:
    """The MediaManager of a relaying edge; owns the port pool and the engine's streams."""

    def __init__(
        self,
        config: MediaConfig,
        engine: RelayEngine,
        clock: Callable[[], float],
        on_inactive: InactiveCallback | None = None,
        probe: Callable[[int], bool] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.clock = clock
        self.on_inactive = on_inactive
        self.address = config.advertised_address or config.bind_host
        blocks = (config.port_end - config.port_start + 1) // 8
        self.pool = PortPool(
            config.port_start,
            config.port_end,
            max_calls=config.max_calls or blocks,
            probe=probe if probe is not None else default_probe(config.bind_host),
            cooldown=config.port_cooldown,
            clock=clock,
        )
        self.sessions: dict[str, RelaySession] = {}
        self.streams: dict[int, RelaySession] = {}
        self._stream_ids = itertools.count(1)
        self._family = socket.AF_INET6 if ":" in config.bind_host else socket.AF_INET
        self._checker: asyncio.Task[None] | None = None
        self.stats = {
            "sessions_opened": 0,
            "sessions_rejected": 0,
            "inactivity_hangups": 0,
            "tap_drops_ended": 0,
        }
        self.dtmf_listeners: list[DtmfListener] = []
        engine.on_tap = self._on_tap

    # --- MediaManager ----------------------------------------------------------------------------
    def open_session(self, call_id: str) -> RelaySession:
        try:
            ports = self.pool.allocate(call_id)
        except MediaUnavailable:
            self.stats["sessions_rejected"] += 1
            raise
        session = RelaySession(self, call_id, ports, self.clock())
        self.sessions[call_id] = session
        self.stats["sessions_opened"] += 1
        return session

    def usage(self) -> PoolUsage:
        return self.pool.usage()

    # --- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start()
        self._checker = asyncio.create_task(self._check_inactivity_forever())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        for session in list(self.sessions.values()):
            session.close()
        await self.engine.stop()

    # --- used by sessions ------------------------------------------------------------------------
    def bind_pairs(self, a_port: int, b_port: int) -> StreamSockets:
        """Bind the RTP/RTCP pairs at ``a_port`` and ``b_port`` (RTCP = RTP + 1); all or nothing."""
        bound: list[socket.socket] = []
        try:
            for port in (a_port, a_port + 1, b_port, b_port + 1):
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                bound.append(sock)
                sock.setblocking(False)
                sock.bind((self.config.bind_host, port))
        except OSError:
            for sock in bound:
                sock.close()
            raise
        return StreamSockets(*bound)

    def add_stream(self, session: RelaySession, sockets: StreamSockets) -> int:
        stream_id = next(self._stream_ids)
        self.engine.add_stream(stream_id, sockets)
        self.streams[stream_id] = session
        return stream_id

    def forget_stream(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.engine.remove_stream(stream_id)

    def tap_drops(self) -> int:
        """Tap frames dropped for slow subscribers, ended calls included (a counter)."""
        live = sum(session.audio.tap_drops for session in self.sessions.values())
        return self.stats["tap_drops_ended"] + live

    def session_closed(self, session: RelaySession) -> None:
        self.stats["tap_drops_ended"] += session.audio.tap_drops
        if self.sessions.get(session.call_id) is session:
            del self.sessions[session.call_id]
        self.pool.release(session.call_id)

    # --- audio -----------------------------------------------------------------------------------
    def _on_tap(self, stream_id: int, side: int, packet: bytes, arrival: float) -> None:
        session = self.streams.get(stream_id)
        if session is not None and session.audio_stream_id() == stream_id:
            session.audio.on_packet(side, packet, arrival)

    def report_dtmf(self, call_id: str, leg: Side, digit: str) -> None:
        for listener in self.dtmf_listeners:
            listener(call_id, leg, digit)

    # --- inactivity ------------------------------------------------------------------------------
    def check_inactivity(self, now: float) -> list[str]:
        """End the calls whose media has been idle too long; returns their call ids."""
        ended: list[str] = []
        for session in list(self.sessions.values()):
            limit = self.config.hold_timeout if session.on_hold else self.config.inactivity_timeout
            if now - session.last_activity() < limit:
                continue
            if self.on_inactive is not None and self.on_inactive(session.call_id, "media_timeout"):
                ended.append(session.call_id)
                self.stats["inactivity_hangups"] += 1
            else:
                session.idle_since = now
        return ended

    async def _check_inactivity_forever(self) -> None:
        period = max(0.05, min(self.config.inactivity_timeout, self.config.hold_timeout) / 4)
        period = min(period, 5.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.check_inactivity(self.clock())
            except Exception:  # the checker must survive one bad session
                log.exception("media inactivity check failed")
