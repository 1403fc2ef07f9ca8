"""Shared pieces of the SIP transaction layer: settings, states, timer names, events and the core.

:mod:`pbx_edge.sip.transaction` holds the theory of operation and the public
:class:`~pbx_edge.sip.transaction.TransactionLayer`; this module holds what both state machines
(:mod:`~pbx_edge.sip.transaction_client` and :mod:`~pbx_edge.sip.transaction_server`) need without
importing that module: the value types, and :class:`_Core`, the bookkeeping half of the layer
(tables, the one timer heap, the outgoing queue, the event queue and the counters).

Timers are keys in one :class:`~pbx_edge.sip.timers.TimerHeap`. A key is an ``int``:
``serial << 4 | timer``, where ``serial`` numbers the transaction and ``timer`` is a :class:`Timer`
value. Integer keys hash fast, and a cancelled entry left lazily in the heap holds no reference to
a (possibly large) terminated transaction.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.timers import TimerHeap

if TYPE_CHECKING:
    from pbx_edge.sip.transaction_client import ClientTransaction
    from pbx_edge.sip.transaction_server import ServerTransaction

BRANCH_COOKIE = "z9hG4bK"
# RFC 3261 Table 4: Timer D is "> 32 s for UDP". The layer uses max(32 s, 64*T1): the same with the
# default T1, and still long enough to answer every final the server re-sends until its Timer H if
# T1 was raised.
TIMER_D_UNRELIABLE = 32.0

ClientKey = tuple[str, str]  # (branch, CSeq method)
# RFC 3261 key: (branch, sent-by host, sent-by port, method); RFC 2543 key: a longer tuple.
ServerKey = tuple[str | int | None, ...]
DialogKey = tuple[str, int, str | None, str | None]  # (Call-ID, CSeq number, From tag, To tag)


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 Table 4 base values, in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum duration a message remains in the network

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0):
            raise ValueError(f"invalid timer settings {self!r}: need t1 > 0, t2 >= t1, t4 >= 0")


class TxState(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Timer(IntEnum):
    """RFC 3261 §17 timers, plus RFC 6026's L and M. Values are the low 4 bits of a heap key."""

    A = 1  # client INVITE: request retransmit (UDP), T1 doubling
    B = 2  # client INVITE: transaction timeout, 64*T1
    D = 3  # client INVITE: wait for response retransmits in Completed, max(32 s, 64*T1) UDP / 0 reliable
    E = 4  # client non-INVITE: request retransmit (UDP), T1 doubling capped at T2
    F = 5  # client non-INVITE: transaction timeout, 64*T1
    G = 6  # server INVITE: response retransmit (UDP), T1 doubling capped at T2 (also the 2xx)
    H = 7  # server INVITE: wait for ACK to a non-2xx final, 64*T1
    I = 8  # server INVITE: absorb ACK retransmits in Confirmed, T4 UDP / 0 reliable  # noqa: E741
    J = 9  # server non-INVITE: absorb request retransmits in Completed, 64*T1 UDP / 0 reliable
    K = 10  # client non-INVITE: absorb response retransmits in Completed, T4 UDP / 0 reliable
    L = 11  # server INVITE (RFC 6026): Accepted lifetime, 64*T1; no ACK by then is a timeout
    M = 12  # client INVITE (RFC 6026): Accepted lifetime (absorbs 2xx forks/retransmits), 64*T1


TIMER_BY_CODE: tuple[Timer | None, ...] = (None, *sorted(Timer))
CLIENT_TIMERS = (Timer.A, Timer.B, Timer.D, Timer.E, Timer.F, Timer.K, Timer.M)
SERVER_TIMERS = (Timer.G, Timer.H, Timer.I, Timer.J, Timer.L)


# --- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU. ``tx`` is None only for ACK (ACK never creates a transaction)."""

    request: Request
    source: Endpoint
    tx: ServerTransaction | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU. ``tx`` None: it matched no transaction (e.g. a 2xx after Timer M)."""

    response: Response
    source: Endpoint
    tx: ClientTransaction | None


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B/F (client, no final response), H (server, non-2xx never ACKed) or L (2xx never ACKed)."""

    tx: ClientTransaction | ServerTransaction


@dataclass(frozen=True, slots=True)
class TransportError:
    """A send to the transaction's peer failed; the transaction is terminated."""

    tx: ClientTransaction | ServerTransaction


TransactionEvent = RequestReceived | ResponseReceived | TransactionTimeout | TransportError


class Transaction:
    """What client and server transactions share. The TU reads these; only the layer writes them."""

    __slots__ = (
        "_core",
        "_interval",
        "_peer",
        "cseq_seq",
        "is_invite",
        "key",
        "last_response",
        "owner",
        "reliable",
        "request",
        "serial",
        "state",
    )

    def __init__(
        self, core: _Core, key: ClientKey | ServerKey, request: Request, peer: Endpoint, cseq_seq: int
    ) -> None:
        self._core = core
        self.serial = next(core._serials)
        self.key = key
        self.request = request
        self._peer = peer
        self.reliable = peer.reliable
        self.cseq_seq = cseq_seq
        self.is_invite = request.method == "INVITE"
        self.state = TxState.TERMINATED  # set by the subclass's start
        self.last_response: Response | None = None
        self.owner: object | None = None  # free slot for the TU
        self._interval = 0.0  # current retransmit interval (A, E or G)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.key!r} {self.state.value}>"

    def _schedule(self, timer: Timer, deadline: float) -> None:
        self._core._timers.schedule(self.serial << 4 | timer, deadline)

    def _cancel(self, timer: Timer) -> None:
        self._core._timers.cancel(self.serial << 4 | timer)

    def _send(self, data: bytes) -> None:
        self._core._out.append((data, self._peer))

    def _retransmit(self, data: bytes) -> None:
        self._core._out.append((data, self._peer))
        self._core.stats["retransmissions"] += 1

    def _absorb(self) -> None:
        self._core.stats["absorbed"] += 1

    def _timeout(self) -> None:
        core = self._core
        core.stats["timeouts"] += 1
        core._events.append(TransactionTimeout(self))  # type: ignore[arg-type]
        core._terminate(self)

    def _unregister(self) -> None:
        raise NotImplementedError

    def _timer_codes(self) -> tuple[Timer, ...]:
        raise NotImplementedError

    def _on_timer(self, timer: Timer, now: float) -> None:
        raise NotImplementedError


class _Core:
    """Tables, timers and queues. :class:`TransactionLayer` adds matching and the public API."""

    def __init__(self, settings: TimerSettings) -> None:
        self.settings = settings
        self.stats: dict[str, int] = {
            "retransmissions": 0,  # datagrams the layer re-sent by itself
            "timeouts": 0,  # TransactionTimeout events
            "absorbed": 0,  # received messages consumed without an event
            "transport_errors": 0,  # transactions ended by transport_error()
            "stray_responses": 0,  # responses matching no client transaction (passed up)
            "stray_acks": 0,  # ACKs matching no server transaction (passed up)
            "malformed": 0,  # messages dropped: no usable top Via or CSeq
            "discarded_responses": 0,  # TU responses the transaction's state does not allow
            "client_transactions": 0,  # created
            "server_transactions": 0,  # created
        }
        self._serials = itertools.count(1)
        self._timers: TimerHeap[int] = TimerHeap()
        self._out: list[tuple[bytes, Endpoint]] = []
        self._events: deque[TransactionEvent] = deque()
        self._txs: dict[int, Transaction] = {}
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._accepted: dict[DialogKey, ServerTransaction] = {}
        self._by_peer: dict[Endpoint, dict[int, Transaction]] = {}

    def _register(self, tx: Transaction) -> None:
        serial = tx.serial
        self._txs[serial] = tx
        peers = self._by_peer.get(tx._peer)
        if peers is None:
            self._by_peer[tx._peer] = {serial: tx}
        else:
            peers[serial] = tx

    def _terminate(self, tx: Transaction) -> None:
        if tx.state is TxState.TERMINATED:
            return
        tx.state = TxState.TERMINATED
        serial = tx.serial
        del self._txs[serial]
        peers = self._by_peer.get(tx._peer)
        if peers is not None:
            peers.pop(serial, None)
            if not peers:
                del self._by_peer[tx._peer]
        cancel = self._timers.cancel
        base = serial << 4
        for code in tx._timer_codes():
            cancel(base | code)
        tx._unregister()
