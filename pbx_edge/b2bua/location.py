"""The location service (RFC 3261 §10): address-of-record -> contact bindings, with expiry.

Theory of operation: the registrar writes bindings (:meth:`LocationTable.bind`,
:meth:`LocationTable.unbind`); the router reads them (:meth:`LocationTable.lookup`); the core asks
:meth:`LocationTable.next_expiry` for its next wake-up and drains :meth:`LocationTable.expire`
to emit ``registration.expired`` events. Nothing here reads a clock: every call that cares about
time is given ``now``.

Keys: the AOR is the ``sip:user@host`` string of :meth:`SipUri.aor` (lower-case host, no port or
parameters). Within an AOR a contact is identified by :func:`contact_key`, an approximation of the
URI comparison rules of RFC 3261 §19.1.4, so that a refresh which re-orders or adds an
insignificant parameter (``;ob``, ``;rinstance``) replaces the binding instead of adding a second.

Expired bindings stay stored until :meth:`LocationTable.expire` removes them (so that each one is
reported exactly once), but :meth:`LocationTable.lookup` and :meth:`LocationTable.all` never
return them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.timers import TimerHeap
from pbx_edge.sip.uri import Address, SipUri

# RFC 3261 §19.1.4: these URI parameters must match when present in either URI; any other
# parameter only matters when both URIs carry it, which we approximate by ignoring it.
_SIGNIFICANT_PARAMS = ("transport", "user", "ttl", "method", "maddr")


def contact_key(uri: SipUri) -> str:
    """Identity of a contact URI within one AOR (RFC 3261 §19.1.4, simplified).

    Scheme, user, password, port and the significant parameters compare as sent (parameter values
    case-insensitively); the host case-insensitively; all other parameters and URI headers are
    ignored. A missing port and the default port are *different* URIs per §19.1.4.
    """
    if uri.opaque is not None:
        return f"{uri.scheme}:{uri.opaque}"
    parts = [f"{uri.scheme}:"]
    if uri.user is not None:
        parts.append(uri.user_unescaped or "")
        if uri.password is not None:
            parts.append(":" + uri.password)
        parts.append("@")
    parts.append(uri.host.lower())
    if uri.port is not None:
        parts.append(f":{uri.port}")
    for name in _SIGNIFICANT_PARAMS:
        if name in uri.params:
            value = uri.params[name]
            parts.append(f";{name}" if value is None else f";{name}={value.lower()}")
    return "".join(parts)


def parse_q(value: str | None) -> float | None:
    """Parse a ``q`` contact parameter (RFC 3261 §25.1 qvalue); None when malformed."""
    if value is None:
        return 1.0
    text = value.strip()
    try:
        q = float(text)
    except ValueError:
        return None
    if not 0.0 <= q <= 1.0 or not all(c.isdigit() or c == "." for c in text):
        return None
    return q


def default_port(uri: SipUri) -> int:
    return 5061 if uri.scheme == "sips" or uri.transport == "TLS" else 5060


def bare_host(host: str) -> str:
    """``[::1]`` -> ``::1``: URIs bracket IPv6 literals, socket addresses do not."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def copy_address(address: Address) -> Address:
    """A copy that shares no mutable state (Address and SipUri are mutable dataclasses)."""
    uri = address.uri
    return Address(
        uri=SipUri(
            scheme=uri.scheme,
            user=uri.user,
            password=uri.password,
            host=uri.host,
            port=uri.port,
            params=dict(uri.params),
            headers=uri.headers,
            opaque=uri.opaque,
        ),
        display=address.display,
        params=dict(address.params),
        bracketed=address.bracketed,
    )


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of one AOR. ``contact`` is stored without its ``expires`` parameter.

    ``source`` is where the REGISTER came from; ``registered_at`` is the ``now`` of the REGISTER
    that created or last refreshed the binding.
    """

    aor: str
    contact: Address
    expires_at: float
    source: Endpoint
    call_id: str
    cseq: int
    q: float = 1.0
    registered_at: float = 0.0

    def __hash__(self) -> int:
        # Address is a mutable (unhashable) dataclass; hash what identifies this registration so
        # that bindings can be set members and dict keys (equal bindings hash equal).
        return hash((self.aor, self.key, self.expires_at, self.call_id, self.cseq, self.registered_at))

    @property
    def key(self) -> str:
        """Identity of the contact within its AOR (see :func:`contact_key`)."""
        return contact_key(self.contact.uri)

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    @property
    def contact_endpoint(self) -> Endpoint:
        """Where the Contact URI itself says to send requests (host, port, transport)."""
        uri = self.contact.uri
        return Endpoint(uri.transport, bare_host(uri.host), uri.port or default_port(uri))

    @property
    def behind_nat(self) -> bool:
        """True when the REGISTER did not come from the address its Contact names.

        A UA behind a NAT writes its private address into Contact, and a UA on TCP sends from an
        ephemeral port but advertises its listening port; in both cases the Contact address is
        not reachable from here while the flow the REGISTER arrived on is (it is the same address
        that Via ``received``/``rport`` would record, RFC 3581). The same holds when the REGISTER
        came through a proxy: then the proxy is the way back to the UA.
        """
        contact = self.contact_endpoint
        return (contact.host.lower(), contact.port) != (bare_host(self.source.host).lower(), self.source.port)

    @property
    def dest(self) -> Endpoint:
        """Where to send requests for this contact: the Contact address, or the source when NATed."""
        return self.source if self.behind_nat else self.contact_endpoint


class LocationTable:
    """AOR -> bindings. Not thread-safe: owned by the single-threaded core."""

    __slots__ = ("_by_aor", "_counter", "_generation", "_seq", "_timers")

    def __init__(self) -> None:
        # Inner dicts keep insertion order; a refresh re-inserts, so order is bind order.
        self._by_aor: dict[str, dict[str, Binding]] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._counter = itertools.count()
        self._timers: TimerHeap[tuple[str, str]] = TimerHeap()
        self._generation = 0

    def __len__(self) -> int:
        """Number of stored bindings, including expired ones not yet removed by :meth:`expire`."""
        return sum(len(contacts) for contacts in self._by_aor.values())

    def __iter__(self) -> Iterator[Binding]:
        """Every stored binding, including expired ones not yet removed by :meth:`expire`."""
        for contacts in list(self._by_aor.values()):
            yield from list(contacts.values())

    @property
    def generation(self) -> int:
        """Incremented on every change, so that observers can tell when to re-read the table."""
        return self._generation

    def get(self, aor: str, contact_uri: SipUri | str) -> Binding | None:
        """The stored binding (live or not) of one contact URI, if any."""
        uri = SipUri.parse(contact_uri) if isinstance(contact_uri, str) else contact_uri
        return self._by_aor.get(aor, {}).get(contact_key(uri))

    def bind(
        self,
        aor: str,
        contact: Address,
        expires: int,
        source: Endpoint,
        call_id: str,
        cseq: int,
        now: float,
    ) -> Binding:
        """Add or replace (same contact URI, see :func:`contact_key`) a binding of ``aor``.

        ``q`` is taken from the contact's ``q`` parameter (1.0 when absent or malformed; the
        registrar rejects malformed ones before calling this). ``expires`` must be positive:
        removal is :meth:`unbind`.
        """
        if expires <= 0:
            raise ValueError(f"expires must be positive, got {expires}; use unbind() to remove")
        stored = copy_address(contact)
        q = parse_q(stored.params.get("q"))
        stored.params.pop("expires", None)
        binding = Binding(
            aor=aor,
            contact=stored,
            expires_at=now + expires,
            source=source,
            call_id=call_id,
            cseq=cseq,
            q=1.0 if q is None else q,
            registered_at=now,
        )
        key = binding.key
        contacts = self._by_aor.setdefault(aor, {})
        contacts.pop(key, None)
        contacts[key] = binding
        self._seq[(aor, key)] = next(self._counter)
        self._timers.schedule((aor, key), binding.expires_at)
        self._generation += 1
        return binding

    def unbind(self, aor: str, contact_uri: str | None = None) -> list[Binding]:
        """Remove one contact (by URI, compared as in :func:`contact_key`) or, with None, all of
        ``aor``. Returns what was removed, expired or not. Raises ValueError for a bad URI."""
        contacts = self._by_aor.get(aor)
        if not contacts:
            return []
        if contact_uri is None:
            keys = list(contacts)
        else:
            key = contact_key(SipUri.parse(contact_uri))
            keys = [key] if key in contacts else []
        return [self._remove(aor, key) for key in keys]

    def _remove(self, aor: str, key: str) -> Binding:
        contacts = self._by_aor[aor]
        binding = contacts.pop(key)
        if not contacts:
            del self._by_aor[aor]
        del self._seq[(aor, key)]
        self._timers.cancel((aor, key))
        self._generation += 1
        return binding

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``: highest q first, then most recently registered first."""
        return self.lookup_many((aor,), now)

    def lookup_many(self, aors: Iterable[str], now: float) -> list[Binding]:
        """Live bindings of several AORs (duplicates ignored), in one :meth:`lookup` order."""
        found: list[Binding] = []
        for aor in dict.fromkeys(aors):
            found.extend(b for b in self._by_aor.get(aor, {}).values() if b.expires_at > now)
        return self._ordered(found)

    def _ordered(self, bindings: list[Binding]) -> list[Binding]:
        return sorted(bindings, key=lambda b: (-b.q, -self._seq[(b.aor, b.key)]))

    def all(self, now: float) -> list[Binding]:
        """Every live binding, grouped by AOR (sorted), each group in :meth:`lookup` order."""
        out: list[Binding] = []
        for aor in sorted(self._by_aor):
            out.extend(self.lookup(aor, now))
        return out

    def expire(self, now: float) -> list[Binding]:
        """Remove and return the bindings whose expiry is at or before ``now``, earliest first."""
        return [self._remove(aor, key) for aor, key in self._timers.pop_due(now)]

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work, or None when the table is empty."""
        return self._timers.next_deadline()
