"""SIP message model, parser and serializer (RFC 3261 §7, §20).

Theory of operation: a datagram or a framed TCP message is turned into a :class:`Request` or a
:class:`Response` by :func:`parse_message`. Header names are case-insensitive and compact forms are
expanded, so ``i:`` and ``CALL-ID:`` both read back as ``Call-ID``. List headers that the stack
manipulates one element at a time (Via, Route, Record-Route, Contact) are split on top-level commas;
all other values are kept verbatim and parsed on demand by the typed views in
:mod:`pbx_edge.sip.headers` and :mod:`pbx_edge.sip.uri`.

``Content-Length`` is not stored as a header: it is framing, taken from the body on serialization.
Thus ``parse_message(bytes(m)) == m`` for every message the stack builds.

Errors: :class:`SipParseError` carries a reason phrase for the 400 response and, when the request
line and the headers needed to answer were readable, the partially parsed request so that the
transport can answer instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pbx_edge.sip.headers import CSeq, Via, is_valid_method, split_comma_list
from pbx_edge.sip.uri import Address, SipUri

MAX_MESSAGE_SIZE = 65535
SIP_VERSION = "SIP/2.0"

COMPACT_FORMS = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}
_SPLIT_HEADERS = frozenset({"via", "route", "record-route", "contact"})
_REQUIRED_REQUEST_HEADERS = ("call-id", "cseq", "from", "to", "via")


def canonical_name(name: str) -> str:
    """``CALL-id`` -> ``Call-ID``; ``i`` -> ``Call-ID``; unknown names keep their spelling."""
    if len(name) == 1:
        full = COMPACT_FORMS.get(name.lower())
        if full is not None:
            return full
    return _CANONICAL.get(name.lower(), name)


class SipParseError(ValueError):
    """A message could not be parsed. ``reason`` is fit for a 400 reason phrase."""

    def __init__(self, reason: str, partial: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


class Headers:
    """Ordered, case-insensitive multi-valued header list. Each element is one header field value."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or ():
            self.add(name, value)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical_name(name)
        for n, v in self._items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        return [v for n, v in self._items if n == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of the same name (or at the top): how Via is pushed."""
        key = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items.insert(i, (key, value))
                return
        self._items.insert(0, (key, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one, at the position of the first."""
        key = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items[i] = (key, value)
                self._items = [it for j, it in enumerate(self._items) if j <= i or it[0] != key]
                return
        self._items.append((key, value))

    def set_all(self, name: str, values: list[str]) -> None:
        key = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for item in self._items:
            if item[0] != key:
                out.append(item)
            elif not placed:
                out.extend((key, v) for v in values)
                placed = True
        if not placed:
            out.extend((key, v) for v in values)
        self._items = out

    def remove(self, name: str) -> None:
        key = canonical_name(name)
        self._items = [it for it in self._items if it[0] != key]

    def pop_first(self, name: str) -> str | None:
        key = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if n == key:
                del self._items[i]
                return v
        return None


@dataclass(slots=True, eq=True)
class _Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # --- typed accessors (parsed on demand) -------------------------------------------------
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self.headers.get("CSeq") or "")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise ValueError("message has no Via")
        return Via.parse(value)

    @property
    def from_addr(self) -> Address:
        return Address.parse(self.headers.get("From") or "")

    @property
    def to_addr(self) -> Address:
        return Address.parse(self.headers.get("To") or "")

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def contacts(self) -> list[Address]:
        return [Address.parse(v) for v in self.headers.get_all("Contact") if v.strip() != "*"]

    def option_tags(self, name: str) -> set[str]:
        """Option tags of Require/Supported/Proxy-Require/Unsupported, lower-cased."""
        tags: set[str] = set()
        for value in self.headers.get_all(name):
            tags.update(t.strip().lower() for t in value.split(",") if t.strip())
        return tags

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{n}: {v}" for n, v in self.headers)
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True, eq=True)
class Request(_Message):
    method: str = "OPTIONS"
    uri: str = ""

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __bytes__(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass(slots=True, eq=True)
class Response(_Message):
    status: int = 200
    reason: str = "OK"

    def __bytes__(self) -> bytes:
        return self._serialize(f"{SIP_VERSION} {self.status} {self.reason}")


Message = Request | Response


def parse_message(data: bytes, *, stream: bool = False, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one whole message. ``stream=True`` means TCP: Content-Length is mandatory."""
    if len(data) > max_size:
        raise SipParseError("Message Too Large")
    head_end = data.find(b"\r\n\r\n")
    sep_len = 4
    if head_end < 0:
        head_end = data.find(b"\n\n")
        sep_len = 2
    if head_end < 0:
        # A header block with no empty line: accept on UDP when it ends with a line break.
        if stream or not data.endswith(b"\n"):
            raise SipParseError("Missing Empty Line After Headers")
        head_end, sep_len = len(data), 0
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError:
        head = data[:head_end].decode("utf-8", "surrogateescape")
    body = data[head_end + sep_len :]
    lines = _unfold(head)
    while lines and not lines[0]:
        lines.pop(0)  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not lines:
        raise SipParseError("Empty Message")
    message = _parse_start_line(lines[0])
    headers = message.headers
    bad_header: str | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or any(c in name for c in " \t"):
            bad_header = bad_header or f"Malformed Header Line {line[:40]!r}"
            continue
        key = canonical_name(name)
        value = value.strip()
        if key.lower() in _SPLIT_HEADERS and value != "*":
            for item in split_comma_list(value):
                headers._items.append((key, item))
        else:
            headers._items.append((key, value))
    lengths = headers.get_all("Content-Length")
    headers.remove("Content-Length")
    message.body = _frame_body(body, lengths, stream)
    if bad_header is not None:
        _fail(message, bad_header)
    _validate(message)
    return message


def _unfold(head: str) -> list[str]:
    lines: list[str] = []
    for raw in head.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1].rstrip() + " " + raw.strip()
        else:
            lines.append(raw.rstrip("\r"))
    return lines


def _parse_start_line(line: str) -> Message:
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0] != SIP_VERSION:
            raise SipParseError(f"Unsupported Version {parts[0][:20]!r}")
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(f"Invalid Status Code {code[:10]!r}")
        return Response(headers=Headers(), status=int(code), reason=parts[2] if len(parts) > 2 else "")
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError("Malformed Request Line")
    method, uri, version = parts
    if not is_valid_method(method):
        raise SipParseError(f"Invalid Method {method[:20]!r}")
    request = Request(headers=Headers(), method=method, uri=uri)
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"Version Not Supported {version[:20]!r}")
    return request


def _frame_body(body: bytes, lengths: list[str], stream: bool) -> bytes:
    if not lengths:
        if stream:
            raise SipParseError("Missing Content-Length")
        return body
    if len(set(v.strip() for v in lengths)) > 1:
        raise SipParseError("Conflicting Content-Length")
    text = lengths[0].strip()
    if not text.isdigit() or len(text) > 9:
        raise SipParseError(f"Invalid Content-Length {text[:20]!r}")
    length = int(text)
    if length > len(body):
        raise SipParseError("Content-Length Exceeds Body")
    return body[:length]


def _fail(message: Message, reason: str) -> None:
    partial = message if isinstance(message, Request) and _answerable(message) else None
    raise SipParseError(reason, partial=partial)


def _answerable(request: Request) -> bool:
    """True when a response can be built: Via, From, To, Call-ID and CSeq are all readable."""
    try:
        request.top_via  # noqa: B018 - parse for validation
        request.from_addr  # noqa: B018
        request.to_addr  # noqa: B018
        request.cseq  # noqa: B018
    except ValueError:
        return False
    return bool(request.call_id)


def _validate(message: Message) -> None:
    headers = message.headers
    for key in _REQUIRED_REQUEST_HEADERS:
        if headers.get(key) is None:
            _fail(message, f"Missing {canonical_name(key)} Header")
    for key in ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type"):
        if len(headers.get_all(key)) > 1:
            _fail(message, f"Duplicate {key} Header")
    try:
        cseq = message.cseq
        for via in headers.get_all("Via"):
            Via.parse(via)
        message.from_addr  # noqa: B018
        message.to_addr  # noqa: B018
        for value in headers.get_all("Contact"):
            if value.strip() != "*":
                Address.parse(value)
        for name in ("Route", "Record-Route"):
            for value in headers.get_all(name):
                Address.parse(value)
        max_forwards = headers.get("Max-Forwards")
        if max_forwards is not None and (not max_forwards.isdigit() or int(max_forwards) > 255):
            raise ValueError(f"invalid Max-Forwards {max_forwards!r}")
        expires = headers.get("Expires")
        if expires is not None and not expires.isdigit():
            raise ValueError(f"invalid Expires {expires!r}")
        if isinstance(message, Request):
            SipUri.parse(message.uri)
            if cseq.method != message.method:
                raise ValueError(f"CSeq method {cseq.method} does not match {message.method}")
    except ValueError as exc:
        _fail(message, f"Bad Request ({exc})"[:200])
