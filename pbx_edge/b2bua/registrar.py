"""The registrar (RFC 3261 §10.3): turns REGISTER requests into location-table changes.

Every REGISTER is accepted without authentication (the edge trusts its network; RFC 3261 §10.3
steps 3 and 4 are where a challenge would go). The remaining steps are followed:

* step 2: a ``Require`` header naming any extension is answered 420 (the registrar supports none);
* step 5: the AOR is the To URI, keyed ``sip:user@host`` (any host: call-centre phones register
  with the PBX's IP address as their domain); a To URI without a user part, or not sip/sips, is
  answered 404;
* step 6: ``Contact: *`` is valid only alone and with ``Expires: 0`` (else 400). Each contact's
  interval is its ``expires`` parameter, else the Expires header, else the configured default; a
  requested non-zero interval below ``min_expires`` (and below one hour) is answered 423 with
  ``Min-Expires``; intervals are then clamped to ``[min_expires, max_expires]``; ``0`` removes;
* step 7: for a contact already bound with the same Call-ID, a CSeq not higher than the stored one
  means the request is stale (re-ordered or replayed): the whole request fails, 400 *Invalid CSeq
  Number* as Kamailio answers it, and nothing is changed. All checks run before the first change,
  so a request is applied entirely or not at all;
* step 8: 200 OK lists every current binding of the AOR with its remaining ``expires``, plus
  ``Date`` and, unless the request was a pure query (no Contact), ``Expires`` with the interval
  granted to this request (0 when it only removed).

Responses are built by a private ``_make_response`` (same contract as
``pbx_edge.sip.responses.make_response``, which did not exist when this was written).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from pbx_edge.b2bua.location import Binding, LocationTable, contact_key, copy_address, parse_q
from pbx_edge.ops.config import SipConfig
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.ids import new_tag
from pbx_edge.sip.message import Headers, Request, Response
from pbx_edge.sip.uri import Address

# RFC 3261 §10.3 step 6: only intervals under one hour may be refused as too brief.
_MAX_REFUSABLE_INTERVAL = 3600
# RFC 3261 §20.19: a malformed expiry is treated as 3600 seconds.
_MALFORMED_EXPIRES = 3600


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """The response to send, and what changed: ``added`` holds bindings for contacts the AOR did
    not have, ``refreshed`` those that replaced a live binding of the same contact, ``removed``
    those taken away by ``expires=0`` or ``*``. Nothing changed when the response is not 2xx."""

    response: Response
    added: list[Binding]
    removed: list[Binding]
    refreshed: list[Binding] = field(default_factory=list)


class _Reject(Exception):
    def __init__(self, status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra or []


def _make_response(request: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """RFC 3261 §8.2.6.2 response skeleton: Via, From, To (tagged), Call-ID and CSeq copied.

    Private stand-in for ``pbx_edge.sip.responses.make_response``, which did not exist yet.
    """
    headers = Headers()
    for via in request.headers.get_all("Via"):
        headers.add("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None:
            try:
                to = Address.parse(value)
            except ValueError:
                to = None  # answering a request whose To we could not read: copy it verbatim
            if to is not None and to.tag is None:
                to.params["tag"] = to_tag
                value = str(to)
        headers.add(name, value)
    return Response(headers=headers, status=status, reason=reason)


def _parse_expires(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isdigit() else _MALFORMED_EXPIRES


@dataclass(frozen=True, slots=True)
class _Change:
    contact: Address
    expires: int  # 0: remove


class Registrar:
    """Stateless apart from the table it writes. ``tag_factory`` makes To tags (tests pin it)."""

    __slots__ = ("_config", "_table", "_tag_factory")

    def __init__(
        self,
        table: LocationTable,
        config: SipConfig,
        *,
        tag_factory: Callable[[], str] | None = None,
    ) -> None:
        self._table = table
        self._config = config
        self._tag_factory = tag_factory or new_tag

    @property
    def table(self) -> LocationTable:
        return self._table

    def handle_register(
        self, request: Request, source: Endpoint, now: float, *, wall_time: float | None = None
    ) -> RegisterResult:
        """Apply one REGISTER and build its final response.

        ``source`` is the address the request arrived from; it becomes the binding's destination
        when the Contact is not reachable (see :attr:`Binding.dest`). The ``Date`` header is
        rendered from ``wall_time`` (seconds since the epoch) or, when not given, from ``now``:
        callers whose ``now`` is a monotonic clock should pass ``wall_time``.
        """
        if request.method != "REGISTER":
            raise ValueError(f"not a REGISTER: {request.method}")
        tag = self._tag_factory()
        try:
            aor = self._aor(request)
            changes = self._changes(request)
            plan = self._check_stale(aor, request, changes, now)
            wildcard = changes is None
        except _Reject as reject:
            response = _make_response(request, reject.status, reject.reason, to_tag=tag)
            for name, value in reject.extra:
                response.headers.add(name, value)
            self._decorate(response, now, wall_time)
            return RegisterResult(response=response, added=[], removed=[])
        added: list[Binding] = []
        refreshed: list[Binding] = []
        removed: list[Binding] = []
        cseq = request.cseq.seq
        for change, had_live in plan:
            if change.expires == 0:
                removed.extend(self._table.unbind(aor, str(change.contact.uri)))
                continue
            binding = self._table.bind(
                aor, change.contact, change.expires, source, request.call_id, cseq, now
            )
            (refreshed if had_live else added).append(binding)
        response = _make_response(request, 200, "OK", to_tag=tag)
        for binding in self._table.lookup(aor, now):
            echoed = copy_address(binding.contact)
            echoed.bracketed = True
            echoed.params["expires"] = str(math.ceil(binding.remaining(now)))
            response.headers.add("Contact", str(echoed))
        granted = [0] if wildcard else [c.expires for c, _ in plan]
        if granted:
            # The interval this request obtained (0 when it only removed): what a UA with a
            # single contact, which looks at Expires only, needs for its refresh timer.
            response.headers.add("Expires", str(max(granted)))
        self._decorate(response, now, wall_time)
        return RegisterResult(response=response, added=added, removed=removed, refreshed=refreshed)

    def _decorate(self, response: Response, now: float, wall_time: float | None) -> None:
        response.headers.add("Date", formatdate(now if wall_time is None else wall_time, usegmt=True))
        response.headers.add("Server", self._config.user_agent)

    @staticmethod
    def _aor(request: Request) -> str:
        try:
            request.cseq  # noqa: B018 - validate before any change is planned
        except ValueError as exc:
            raise _Reject(400, f"Bad Request ({exc})"[:120]) from None
        if not request.call_id:
            raise _Reject(400, "Bad Request (missing Call-ID)")
        required = request.option_tags("Require")
        if required:
            raise _Reject(420, "Bad Extension", [("Unsupported", ", ".join(sorted(required)))])
        try:
            to_uri = request.to_addr.uri
        except ValueError as exc:
            raise _Reject(400, f"Bad Request (To: {exc})"[:120]) from None
        if to_uri.scheme not in ("sip", "sips") or not to_uri.user or not to_uri.host:
            raise _Reject(404, "Not Found")
        return to_uri.aor()

    def _changes(self, request: Request) -> list[_Change] | None:
        """The requested bindings with their granted intervals, None for ``Contact: *``.

        A contact listed twice counts once, with its last interval. Raises _Reject for 400/423.
        """
        raw = request.headers.get_all("Contact")
        header_text = request.headers.get("Expires")
        if header_text is not None and not header_text.strip().isdigit():
            raise _Reject(400, "Bad Request (invalid Expires)")
        header_expires = _parse_expires(header_text)
        if any(value.strip() == "*" for value in raw):
            if len(raw) != 1 or header_expires != 0:
                raise _Reject(400, "Bad Request (Contact * needs Expires: 0 and no other Contact)")
            return None
        try:
            contacts = [Address.parse(value) for value in raw]
        except ValueError as exc:
            raise _Reject(400, f"Bad Request (Contact: {exc})"[:120]) from None
        config = self._config
        changes: dict[str, _Change] = {}
        for contact in contacts:
            if contact.uri.scheme not in ("sip", "sips") or not contact.uri.host:
                raise _Reject(400, "Bad Request (Contact must be a sip: or sips: URI)")
            if parse_q(contact.params.get("q")) is None:
                raise _Reject(400, "Bad Request (invalid q in Contact)")
            expires = _parse_expires(contact.params.get("expires"))
            if expires is None:
                expires = header_expires
            requested = expires is not None
            if expires is None:
                expires = config.default_expires
            if expires != 0:
                # Only what the UA asked for can be too brief; our own default is just raised.
                too_brief = expires < config.min_expires and expires < _MAX_REFUSABLE_INTERVAL
                if requested and too_brief:
                    raise _Reject(423, "Interval Too Brief", [("Min-Expires", str(config.min_expires))])
                expires = max(min(expires, config.max_expires), config.min_expires, 1)
            key = contact_key(contact.uri)
            changes.pop(key, None)
            changes[key] = _Change(contact, expires)
        return list(changes.values())

    def _check_stale(
        self, aor: str, request: Request, changes: list[_Change] | None, now: float
    ) -> list[tuple[_Change, bool]]:
        """Step 7: pair each change with whether it touches a live binding; reject stale CSeqs.

        ``Contact: *`` (``changes`` None) becomes one removal per live binding, and fails as a
        whole if any of them was stored by this Call-ID with a CSeq not lower than the request's.
        """
        call_id = request.call_id
        cseq = request.cseq.seq
        live = {b.key: b for b in self._table.lookup(aor, now)}
        if changes is None:
            changes = [_Change(b.contact, 0) for b in live.values()]
        plan: list[tuple[_Change, bool]] = []
        for change in changes:
            existing = live.get(contact_key(change.contact.uri))
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                raise _Reject(400, "Invalid CSeq Number")
            plan.append((change, existing is not None))
        return plan
