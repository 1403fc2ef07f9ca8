"""A small SIP UAC + UAS over UDP for the relay benchmark: sets up and tears down N calls through the edge.

Not a SIP stack: just enough RFC 3261 for basic calls on loopback, driven from one thread with one
UDP socket per role, many calls in flight at once:

- UAC: INVITE with an SDP offer (PCMU) -> (100/180 ignored) -> 200 with the edge's SDP -> ACK; at the
  end BYE -> 200. INVITE and BYE are retransmitted (timer A/E style, T1 doubling); a 200
  retransmission is ACKed again; a final error is ACKed and the call recorded as failed.
- UAS: answers each INVITE the edge sends with 200 and an SDP answer, retransmits that 200 until the
  ACK arrives, answers BYE (and anything else) with 200.

The edge rewrites SDP in relay mode, so the UAC reads from the 200's SDP where the caller's media
must go, and the UAS reads the same from the INVITE's SDP for the callee. Calls are told apart by
the Request-URI user (``<prefix><index>``), which the edge's catch-all route keeps.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass, field

Addr = tuple[str, int]
T1 = 0.5
COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length"}


# ------------------------------------------------------------------------------------------------ SDP


def build_sdp(address: Addr, session_id: int) -> bytes:
    """An audio offer/answer with PCMU only, 20 ms packets."""
    host, port = address
    return (
        f"v=0\r\no=- {session_id} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


def sdp_audio_address(sdp: bytes | str) -> Addr:
    """(address, port) of the first audio m-line; its own c= wins over the session-level one."""
    text = sdp.decode("utf-8", "replace") if isinstance(sdp, bytes) else sdp
    session_c: str | None = None
    media_c: str | None = None
    port: int | None = None
    in_audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break  # past the first audio stream
            parts = line[2:].split()
            in_audio = parts[0] == "audio"
            if in_audio:
                port = int(parts[1])
        elif line.startswith("c="):
            host = line[2:].split()[2].split("/")[0]
            if port is None and not in_audio:
                session_c = host
            elif in_audio:
                media_c = host
    address = media_c or session_c
    if port is None or address is None:
        raise ValueError(f"no audio stream with an address in SDP: {text[:200]!r}")
    return address, port


# --------------------------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Message:
    """A parsed SIP message: start line, headers (lower-case names, compact forms expanded), body."""

    start: str
    headers: dict[str, list[str]]
    body: bytes

    @property
    def is_response(self) -> bool:
        return self.start.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1])

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def uri(self) -> str:
        return self.start.split(" ", 2)[1]

    def get(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def cseq_method(self) -> str:
        return self.get("cseq").split()[-1] if self.get("cseq") else ""

    @staticmethod
    def parse(data: bytes) -> Message:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            key = COMPACT.get(key, key)
            # Via may carry several comma-separated values; keep them in order
            values = (
                [v.strip() for v in value.split(",")] if key in ("via", "record-route") else [value.strip()]
            )
            headers.setdefault(key, []).extend(values)
        return Message(lines[0], headers, body)


def uri_user(uri: str) -> str:
    """The user part of ``sip:user@host``, '' when there is none."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    return rest.split("@", 1)[0] if "@" in rest else ""


def contact_uri(value: str) -> str:
    """The URI inside a Contact / Record-Route value (``<sip:...>;params`` or a bare URI)."""
    if "<" in value:
        return value[value.index("<") + 1 : value.index(">")]
    return value.split(";", 1)[0].strip()


def _render(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


# ------------------------------------------------------------------------------------------------ calls


@dataclass(slots=True)
class BenchCall:
    """One call through the edge, and what each side learnt from the SDP it got."""

    index: int
    caller_media: Addr  # where the caller's RTP end is bound (offered in the INVITE)
    callee_media: Addr  # where the callee's RTP end is bound (answered in the 200)
    call_id: str = ""
    from_tag: str = ""
    caller_dest: Addr | None = None  # from the 200's SDP: where the caller sends RTP
    callee_dest: Addr | None = None  # from the INVITE the callee got: where the callee sends RTP
    state: str = "new"  # new, inviting, up, failed, ending, ended
    error: str = ""
    to_header: str = ""
    remote_target: str = ""
    route: list[str] = field(default_factory=list)
    invite: bytes = b""
    ack: bytes = b""
    bye: bytes = b""
    sent_at: float = 0.0
    retransmit_at: float = 0.0
    interval: float = T1
    provisional: bool = False


@dataclass(slots=True)
class _UasDialog:
    response: bytes
    source: Addr
    acked: bool = False
    retransmit_at: float = 0.0
    interval: float = T1
    sends: int = 1


class SipBench:
    """The UAC and UAS of the relay benchmark, both on 127.0.0.1, run by :meth:`setup`/:meth:`teardown`."""

    def __init__(self, edge: Addr, domain: str, host: str = "127.0.0.1", user_prefix: str = "relay") -> None:
        self.edge = edge
        self.domain = domain
        self.host = host
        self.prefix = f"{user_prefix}{os.getpid() % 10000}x"
        self.uac = self._socket()
        self.uas = self._socket()
        self.uac_port = self.uac.getsockname()[1]
        self.uas_port = self.uas.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.uac, selectors.EVENT_READ, self._on_uac)
        self._selector.register(self.uas, selectors.EVENT_READ, self._on_uas)
        self._calls: dict[int, BenchCall] = {}
        self._by_call_id: dict[str, BenchCall] = {}
        self._uas_dialogs: dict[str, _UasDialog] = {}
        self._seq = 0

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        self._selector.close()
        self.uac.close()
        self.uas.close()

    def _branch(self) -> str:
        self._seq += 1
        return f"z9hG4bK-{self.prefix}-{self._seq}"

    # -- UAC ------------------------------------------------------------------------------------------
    def _invite(self, call: BenchCall) -> bytes:
        user = f"{self.prefix}{call.index}"
        call.call_id = f"{self.prefix}-{call.index}-{time.monotonic_ns()}@{self.host}"
        call.from_tag = f"a{call.index}"
        sdp = build_sdp(call.caller_media, 1000 + call.index)
        headers = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.uac_port};branch={self._branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:bench@{self.host}>;tag={call.from_tag}"),
            ("To", f"<sip:{user}@{self.domain}>"),
            ("Call-ID", call.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:bench@{self.host}:{self.uac_port}>"),
            ("Content-Type", "application/sdp"),
        ]
        return _render(f"INVITE sip:{user}@{self.edge[0]}:{self.edge[1]} SIP/2.0", headers, sdp)

    def _in_dialog(self, call: BenchCall, method: str, cseq: int, branch: str | None = None) -> bytes:
        headers = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.uac_port};branch={branch or self._branch()};rport"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in call.route),
            ("From", f"<sip:bench@{self.host}>;tag={call.from_tag}"),
            ("To", call.to_header),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        return _render(f"{method} {call.remote_target} SIP/2.0", headers)

    def _on_uac(self, data: bytes, source: Addr, now: float) -> None:
        msg = Message.parse(data)
        if not msg.is_response:
            self._answer_request(self.uac, msg, source)
            return
        call = self._by_call_id.get(msg.get("call-id"))
        if call is None:
            return
        status, method = msg.status, msg.cseq_method
        if method == "INVITE":
            if status < 200:
                call.provisional = True
            elif status < 300:
                if call.state == "inviting":
                    call.to_header = msg.get("to")
                    call.remote_target = (
                        contact_uri(msg.get("contact")) or f"sip:{self.edge[0]}:{self.edge[1]}"
                    )
                    call.route = list(reversed(msg.headers.get("record-route", [])))
                    call.ack = self._in_dialog(call, "ACK", 1)
                    try:
                        call.caller_dest = sdp_audio_address(msg.body)
                        call.state = "up"
                    except ValueError as exc:
                        call.state, call.error = "failed", f"200 OK without usable SDP: {exc}"
                if call.ack:
                    self.uac.sendto(call.ack, self.edge)  # also for a retransmitted 200
            elif call.state == "inviting":
                call.state, call.error = "failed", f"{status} {msg.start.split(' ', 2)[-1]}"
                call.to_header = msg.get("to")
                # the ACK of a non-2xx final response reuses the INVITE's branch (RFC 3261 17.1.1.3)
                via = Message.parse(call.invite).get("via")
                branch = via.split("branch=", 1)[1].split(";", 1)[0]
                call.remote_target = f"sip:{self.prefix}{call.index}@{self.edge[0]}:{self.edge[1]}"
                self.uac.sendto(self._in_dialog(call, "ACK", 1, branch), self.edge)
        elif method == "BYE" and status >= 200 and call.state == "ending":
            call.state = "ended"
            if status >= 300:
                call.error = f"BYE answered {status}"

    # -- UAS ------------------------------------------------------------------------------------------
    def _answer_request(self, sock: socket.socket, msg: Message, source: Addr, body: bytes = b"") -> bytes:
        headers = [("Via", v) for v in msg.headers.get("via", [])]
        to = msg.get("to")
        if ";tag=" not in to:
            to += f";tag=b{abs(hash(msg.get('call-id'))) % 10**8}"
        headers += [("From", msg.get("from")), ("To", to), ("Call-ID", msg.get("call-id"))]
        headers.append(("CSeq", msg.get("cseq")))
        if msg.method == "INVITE":
            headers.append(("Contact", f"<sip:uas@{self.host}:{sock.getsockname()[1]}>"))
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = _render("SIP/2.0 200 OK", headers, body)
        sock.sendto(response, source)
        return response

    def _on_uas(self, data: bytes, source: Addr, now: float) -> None:
        msg = Message.parse(data)
        if msg.is_response:
            return
        call_id = msg.get("call-id")
        method = msg.method
        if method == "INVITE":
            dialog = self._uas_dialogs.get(call_id)
            if dialog is not None:
                self.uas.sendto(dialog.response, dialog.source)  # a retransmitted INVITE
                return
            user = uri_user(msg.uri)
            suffix = user[len(self.prefix) :] if user.startswith(self.prefix) else ""
            call = self._calls.get(int(suffix)) if suffix.isdigit() else None
            if call is None:
                return
            try:
                call.callee_dest = sdp_audio_address(msg.body)
            except ValueError as exc:
                call.error = f"INVITE to the callee without usable SDP: {exc}"
            sdp = build_sdp(call.callee_media, 5000 + call.index)
            response = self._answer_request(self.uas, msg, source, sdp)
            self._uas_dialogs[call_id] = _UasDialog(response, source, retransmit_at=now + T1)
        elif method == "ACK":
            dialog = self._uas_dialogs.get(call_id)
            if dialog is not None:
                dialog.acked = True
        else:
            self._answer_request(self.uas, msg, source)
            if method in ("BYE", "CANCEL"):
                self._uas_dialogs.pop(call_id, None)

    # -- driving --------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        now = time.monotonic()
        for key, _ in self._selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            for _ in range(256):
                try:
                    data, source = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    continue
                key.data(data, source, now)

    def _timers(self, now: float) -> None:
        for dialog in self._uas_dialogs.values():
            if not dialog.acked and dialog.sends < 7 and now >= dialog.retransmit_at:
                self.uas.sendto(dialog.response, dialog.source)
                dialog.sends += 1
                dialog.interval = min(dialog.interval * 2, 4.0)
                dialog.retransmit_at = now + dialog.interval

    def _run(self, calls: list[BenchCall], start: str, busy: str, window: int, timeout: float) -> None:
        """Move each call from ``start`` through ``busy`` to a final state, ``window`` at a time."""
        pending = [c for c in calls if c.state == start]
        pending.reverse()
        in_flight: list[BenchCall] = []
        deadline = time.monotonic() + timeout
        while pending or in_flight:
            now = time.monotonic()
            if now > deadline:
                for call in in_flight + pending:
                    call.state, call.error = "failed", call.error or f"no final response in {timeout:.0f} s"
                break
            while pending and len(in_flight) < window:
                call = pending.pop()
                if busy == "inviting":
                    call.invite = self._invite(call)
                    self._calls[call.index] = call
                    self._by_call_id[call.call_id] = call
                    message = call.invite
                else:
                    call.bye = message = self._in_dialog(call, "BYE", 2)
                call.state, call.sent_at, call.interval = busy, now, T1
                call.retransmit_at = now + T1
                self.uac.sendto(message, self.edge)
                in_flight.append(call)
            for call in in_flight:
                retransmit = call.state == busy and not (busy == "inviting" and call.provisional)
                if retransmit and now >= call.retransmit_at:
                    self.uac.sendto(call.invite if busy == "inviting" else call.bye, self.edge)
                    call.interval = min(call.interval * 2, 4.0)
                    call.retransmit_at = now + call.interval
            self._timers(now)
            self._pump(0.01)
            in_flight = [c for c in in_flight if c.state == busy]

    def settle(self, seconds: float) -> None:
        """Keep answering (ACK retransmissions, late requests) for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._timers(time.monotonic())
            self._pump(min(left, 0.05))

    def setup(self, calls: list[BenchCall], window: int = 200, timeout: float = 30.0) -> list[BenchCall]:
        """INVITE every call; returns those that are up with both media destinations known."""
        self._run(calls, "new", "inviting", window, timeout)
        self.settle(0.2)  # the ACKs reach the UAS
        for call in calls:
            if call.state == "up" and call.callee_dest is None:
                call.state, call.error = "failed", call.error or "the callee never got the INVITE's SDP"
        return [c for c in calls if c.state == "up"]

    def teardown(self, calls: list[BenchCall], window: int = 200, timeout: float = 30.0) -> int:
        """BYE every call that is up; returns how many ended cleanly."""
        self._run(calls, "up", "ending", window, timeout)
        return sum(1 for c in calls if c.state == "ended" and not c.error)
