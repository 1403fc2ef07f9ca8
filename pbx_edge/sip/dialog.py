"""Dialog state (RFC 3261 §12): identifiers, CSeq spaces, route set and remote target, UAS and UAC.

A dialog builds the in-dialog requests of its side (:meth:`Dialog.new_request`, :meth:`Dialog.ack`)
and checks the CSeq order of requests it receives. It sends nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Headers, Request, Response
from pbx_edge.sip.uri import Address, SipUri


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str  # From (UAC) / To (UAS) header text without tag
    remote_uri: str
    remote_target: str  # remote Contact URI
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    early: bool = True

    @classmethod
    def as_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog a UAS forms from the request that created it (§12.1.1)."""
        contacts = request.contacts
        target = str(contacts[0].uri) if contacts else _addr_uri(request.headers.get("From") or "")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag,
            local_uri=_strip_tag(request.headers.get("To") or ""),
            remote_uri=_strip_tag(request.headers.get("From") or ""),
            remote_target=target,
            route_set=request.headers.get_all("Record-Route"),
            remote_seq=request.cseq.seq,
        )

    @classmethod
    def as_uac(cls, request: Request) -> Dialog:
        """The dialog a UAC is about to form with ``request``; completed by :meth:`update_from_response`."""
        return cls(
            call_id=request.call_id,
            local_tag=request.from_tag or "",
            remote_tag=None,
            local_uri=_strip_tag(request.headers.get("From") or ""),
            remote_uri=_strip_tag(request.headers.get("To") or ""),
            remote_target=request.uri,
            local_seq=request.cseq.seq,
        )

    def update_from_response(self, response: Response) -> None:
        """A UAC learns tag, target and (reversed) route set from a 1xx/2xx (§12.1.2, §13.2.2.4)."""
        if self.remote_tag is None:
            self.remote_tag = response.to_tag
            self.route_set = list(reversed(response.headers.get_all("Record-Route")))
        contacts = response.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)
        if 200 <= response.status < 300:
            self.early = False

    def update_target(self, request: Request) -> None:
        """Target refresh: a re-INVITE or UPDATE may carry a new Contact (§12.2.2)."""
        contacts = request.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)

    def accept_remote_cseq(self, request: Request) -> bool:
        """False when an in-dialog request is out of order (answer 500); ACK/CANCEL reuse the number."""
        seq = request.cseq.seq
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def next_hop(self, default_transport: str) -> Endpoint:
        """Where an in-dialog request goes: the first route (loose routing) or the remote target."""
        target = Address.parse(self.route_set[0]).uri if self.route_set else SipUri.parse(self.remote_target)
        transport = target.params.get("transport")
        proto = transport.upper() if transport else default_transport
        port = target.port or (5061 if target.scheme == "sips" else 5060)
        return Endpoint(proto, target.host, port)

    def new_request(self, method: str, via: str, contact: str | None, max_forwards: int = 70) -> Request:
        """An in-dialog request from our side with the next local CSeq (not for ACK)."""
        self.local_seq += 1
        return self._build(method, self.local_seq, via, contact, max_forwards)

    def ack(self, cseq: int, via: str, contact: str | None = None) -> Request:
        return self._build("ACK", cseq, via, contact, 70)

    def _build(self, method: str, seq: int, via: str, contact: str | None, max_forwards: int) -> Request:
        headers = Headers()
        items = headers._items
        items.append(("Via", via))
        items.append(("Max-Forwards", str(max_forwards)))
        for route in self.route_set:
            items.append(("Route", route))
        items.append(("From", f"{self.local_uri};tag={self.local_tag}"))
        remote_tag = f";tag={self.remote_tag}" if self.remote_tag else ""
        items.append(("To", f"{self.remote_uri}{remote_tag}"))
        items.append(("Call-ID", self.call_id))
        items.append(("CSeq", f"{seq} {method}"))
        if contact is not None:
            items.append(("Contact", contact))
        return Request(headers=headers, method=method, uri=self.remote_target)


def _strip_tag(value: str) -> str:
    addr = Address.parse(value)
    addr.params.pop("tag", None)
    return str(addr)


def _addr_uri(value: str) -> str:
    return str(Address.parse(value).uri)
