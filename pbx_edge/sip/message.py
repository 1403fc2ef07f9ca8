"""SIP message model, parser and serializer (RFC 3261 §7, §20).

Theory of operation: a datagram or a framed TCP message is turned into a :class:`Request` or a
:class:`Response` by :func:`parse_message`. Header names are case-insensitive and compact forms are
expanded, so ``i:`` and ``CALL-ID:`` both read back as ``Call-ID``. List headers that the stack
manipulates one element at a time (Via, Route, Record-Route, Contact) are split on top-level commas;
all other values are kept verbatim (folded lines joined by one space) and parsed on demand by the
typed views in :mod:`pbx_edge.sip.headers` and :mod:`pbx_edge.sip.uri`.

``Content-Length`` is not stored as a header: it is framing, taken from the body on serialization.
Thus ``parse_message(bytes(m)) == m`` for every message the stack builds, and for every message
``parse_message`` accepts, ``parse_message(bytes(parse_message(data)))`` equals the first parse.

Validation on receipt: the headers every layer relies on (Via, From, To, Call-ID, CSeq, Contact,
Route, Record-Route, Max-Forwards, the Request-URI) must parse, so that a message that gets past
the parser never makes an accessor raise. Everything else is carried as text and judged, if ever,
by the layer that reads it (a bad ``Date`` does not fail the message: RFC 4475 §3.1.2.12).

Errors: :class:`SipParseError` carries a reason phrase and a status (400, 505 or 513) and, when
the request line and the headers needed to answer were readable, the partially parsed request so
that the transport can answer instead of dropping it. Responses are never answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from pbx_edge.sip.headers import BRANCH_MAGIC, CSeq, Via, split_list
from pbx_edge.sip.uri import TOKEN_CHARS, Address, SipUri

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
# Canonical names: stored exactly so, hence matched by plain equality.
_KNOWN_NAMES = frozenset(_CANONICAL.values()) | frozenset(COMPACT_FORMS.values())
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE = frozenset({"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type"})
# How the header reader treats a name: collected for validation, split on commas, or framing.
_TRACKED, _LIST, _LENGTH = "tracked", "list", "length"
_KINDS = {
    **dict.fromkeys(("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type"), _TRACKED),
    **dict.fromkeys(("Via", "Route", "Record-Route", "Contact"), _LIST),
    "Content-Length": _LENGTH,
}

# Spelling as received -> canonical name. Bounded in entries and key length: a peer inventing header
# names (or sending a 60 kB line without a colon) must not grow it.
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 4096
_NAME_CACHE_KEY_MAX = 64
# Header name as received (with the whitespace before the colon) -> canonical name ("" when not a
# token) and kind (see _KINDS).
_PARSE_NAME_CACHE: dict[str, tuple[str, str | None]] = {}

# Control characters other than HTAB, CR and LF (stray CR/LF are caught by the line split).
_CTL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# bytes.translate(None, _NOT_CTL) keeps only those control characters: a fast "any CTL?" test.
_NOT_CTL = bytes(b for b in range(256) if not ((b < 32 and b not in (9, 10, 13)) or b == 127))
_VERSION_NOT_SUPPORTED = "Version Not Supported"
_VERSION_RE = re.compile(r"SIP/[0-9]{1,3}\.[0-9]{1,3}", re.I)
# Lenient top-Via check for answering an otherwise broken request: sent-protocol and sent-by.
_VIA_SENT_BY_RE = re.compile(
    r"SIP[ \t]*/[ \t]*[0-9]+\.[0-9]+[ \t]*/[ \t]*[A-Za-z0-9.!%*_+`'~\-]+[ \t]+[^ \t;,]", re.I
)


def canonical_name(name: str) -> str:
    """``CALL-id`` -> ``Call-ID``; ``i`` -> ``Call-ID``; unknown names keep their spelling."""
    canonical = _NAME_CACHE.get(name)
    if canonical is not None:
        return canonical
    lower = name.lower()
    canonical = COMPACT_FORMS.get(lower) if len(name) == 1 else None
    if canonical is None:
        canonical = _CANONICAL.get(lower, name)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX and len(name) <= _NAME_CACHE_KEY_MAX:
        _NAME_CACHE[name] = canonical
    return canonical


def _parse_header_name(raw: str) -> tuple[str, str | None]:
    """Canonical name and kind for a name as received (``"TO "`` -> ``To``); ``""`` if not a token."""
    name = raw.rstrip(" \t")
    canonical = canonical_name(name) if name and not name.strip(TOKEN_CHARS) else ""
    entry = (canonical, _KINDS.get(canonical))
    if len(_PARSE_NAME_CACHE) < _NAME_CACHE_MAX and len(raw) <= _NAME_CACHE_KEY_MAX:
        _PARSE_NAME_CACHE[raw] = entry
    return entry


class SipParseError(ValueError):
    """A message could not be parsed. ``reason`` is fit for a reason phrase.

    ``status`` is the response the error calls for: 400, 505 (Version Not Supported) or 513
    (Message Too Large). ``partial`` is the request as far as it was read, set only when a response
    can be built from it (Via, From, To, Call-ID and CSeq readable); None means drop silently.
    """

    def __init__(self, reason: str, partial: Request | None = None, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.status = status


class Headers:
    """Ordered, case-insensitive multi-valued header list. Each element is one header field value.

    Names are stored canonical (:func:`canonical_name`); a name the stack does not know keeps the
    spelling it was added or received with, and is matched case-insensitively.
    """

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
        if key in _KNOWN_NAMES:
            for n, v in self._items:
                if n == key:
                    return v
        else:
            lower = key.lower()
            for n, v in self._items:
                if n.lower() == lower:
                    return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        if key in _KNOWN_NAMES:
            return [v for n, v in self._items if n == key]
        lower = key.lower()
        return [v for n, v in self._items if n.lower() == lower]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of the same name (or at the top): how Via is pushed."""
        key = canonical_name(name)
        positions = _positions(self._items, key)
        self._items.insert(positions[0] if positions else 0, (key, value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one, at the position of the first."""
        self.set_all(name, [value])

    def set_all(self, name: str, values: list[str]) -> None:
        key = canonical_name(name)
        positions = _positions(self._items, key)
        if not positions:
            self._items.extend((key, v) for v in values)
            return
        first = positions[0]
        drop = set(positions)
        items = self._items
        self._items = [it for i, it in enumerate(items[:first]) if i not in drop]
        self._items.extend((key, v) for v in values)
        self._items.extend(it for i, it in enumerate(items[first:], first) if i not in drop)

    def remove(self, name: str) -> None:
        drop = set(_positions(self._items, canonical_name(name)))
        if drop:
            self._items = [it for i, it in enumerate(self._items) if i not in drop]

    def pop_first(self, name: str) -> str | None:
        positions = _positions(self._items, canonical_name(name))
        if not positions:
            return None
        return self._items.pop(positions[0])[1]


def _positions(items: list[tuple[str, str]], key: str) -> list[int]:
    """Indexes of the items named ``key`` (a canonical name)."""
    if key in _KNOWN_NAMES:
        return [i for i, (n, _) in enumerate(items) if n == key]
    lower = key.lower()
    return [i for i, (n, _) in enumerate(items) if n.lower() == lower]


# Placeholder the start-line parser gives a message until parse_message sets its own Headers.
_NO_HEADERS = Headers()


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
        parts = [start_line, "\r\n"]
        for name, value in self.headers._items:
            parts += (name, ": ", value, "\r\n")
        parts += ("Content-Length: ", str(len(self.body)), "\r\n\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True, eq=True)
class Request(_Message):
    method: str = "OPTIONS"
    uri: str = ""
    # The SIP-Version of the request line. Only a received request that is answered 505 has
    # another; set by the parser, hence not an __init__ argument.
    version: str = field(default=SIP_VERSION, init=False, repr=False)

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __bytes__(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {self.version}")


@dataclass(slots=True, eq=True)
class Response(_Message):
    status: int = 200
    reason: str = "OK"

    def __bytes__(self) -> bytes:
        return self._serialize(f"{SIP_VERSION} {self.status} {self.reason}")


Message = Request | Response


def parse_message(data: bytes, *, stream: bool = False, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one whole message. ``stream=True`` means TCP: Content-Length is mandatory.

    A datagram (``stream=False``) may omit Content-Length (the body is the rest of the datagram,
    RFC 3261 §18.3) and may carry octets after the body, which are ignored (RFC 4475 §3.1.1.8).
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not data:
        raise SipParseError("Empty Message")
    # The header block ends at the first LF followed by an empty line: CRLF CRLF as RFC 3261 has
    # it, or any mix with bare LFs, which are tolerated as line ends.
    end = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, len(data) if end < 0 else end + 1)
    if lf >= 0:
        end, body_start = lf, lf + 2
    elif end >= 0:
        body_start = end + 3
    elif stream or not data.endswith(b"\n"):
        raise SipParseError("Missing Empty Line After Headers")
    else:
        # A header block with no empty line: accepted on UDP when it ends with a line break.
        end, body_start = len(data) - 1, len(data)
    head_end = end - 1 if end and data[end - 1] == 13 else end  # without the CR of the last line
    too_large = len(data) > max_size
    if too_large and head_end > max_size:
        raise SipParseError("Message Too Large", status=513)
    raw_head = data[:head_end]
    try:
        head = raw_head.decode("utf-8")
    except UnicodeDecodeError:
        head = raw_head.decode("utf-8", "surrogateescape")
    bad: str | None = None
    lines = head.split("\r\n")
    breaks = len(lines) - 1
    if raw_head.count(b"\n") != breaks or raw_head.count(b"\r") != breaks:
        # Bare LF line ends (tolerated) or a stray CR (not).
        head = head.replace("\r\n", "\n")
        if "\r" in head:
            bad = "Invalid Character in Header"
        lines = head.split("\n")
    if raw_head.translate(None, _NOT_CTL) and not _ctls_quoted(head):
        bad = "Invalid Character in Header"
    message = _parse_start_line(lines[0])
    if isinstance(message, str):
        raise SipParseError(message)
    start_error = _request_line_error(message) if isinstance(message, Request) else None
    read = _read_headers(lines)
    if read is None:  # folded lines: join them and read again (rare, so not on the fast path)
        lines, folded_start = _unfold(lines)
        if folded_start:
            bad = bad or "Continuation Line After Start Line"
        read = _read_headers(lines) or ([], {}, [], "Malformed Header Folding")  # (cannot happen)
    items, seen, lengths, header_error = read
    bad = bad or header_error
    headers = Headers.__new__(Headers)
    headers._items = items
    message.headers = headers

    # --- body ----------------------------------------------------------------------------------
    body = data[body_start:]
    if too_large:
        _fail(message, seen, "Message Too Large", 513)
    if lengths:
        text = lengths[0]
        if len(lengths) > 1 and any(v != text for v in lengths):
            _fail(message, seen, "Conflicting Content-Length")
        if not (text.isdigit() and text.isascii()) or len(text) > 9:
            _fail(message, seen, f"Invalid Content-Length {text[:20]!r}")
        length = int(text)
        if length > len(body):
            _fail(message, seen, "Content-Length Exceeds Body")
        message.body = body[:length] if length < len(body) else body
    elif stream:
        _fail(message, seen, "Missing Content-Length")
    else:
        message.body = body

    # --- validation ----------------------------------------------------------------------------
    if start_error is not None:
        _fail(message, seen, start_error, 505 if start_error == _VERSION_NOT_SUPPORTED else 400)
    if bad is not None:
        _fail(message, seen, bad)
    error = _validate(message, seen)
    if error is not None:
        _fail(message, seen, error)
    return message


_HeaderRead = tuple[list[tuple[str, str]], dict[str, list[str]], list[str], str | None]


def _read_headers(lines: list[str]) -> _HeaderRead | None:
    """Header items, the values of the validated headers, the Content-Lengths and the first error.

    None when a line continues the previous one (folding): the caller unfolds and reads again.
    """
    items: list[tuple[str, str]] = []
    append = items.append
    seen: dict[str, list[str]] = {}
    lengths: list[str] = []
    bad: str | None = None
    parse_cache = _PARSE_NAME_CACHE
    lines_iter = iter(lines)
    next(lines_iter)  # the start line
    for line in lines_iter:
        name, colon, value = line.partition(":")
        key, kind = parse_cache.get(name) or _parse_header_name(name)
        if not key or not colon:
            if line[:1] in (" ", "\t"):
                return None
            bad = bad or f"Malformed Header Line {line[:40]!r}"
            continue
        value = value.strip(" \t")
        if kind is None:
            append((key, value))
            continue
        if kind is _LENGTH:
            lengths.append(value)
            continue
        if kind is _LIST and "," in value and not (value == "*" and key == "Contact"):
            values = split_list(value)
            if "" in values:
                bad = bad or f"Empty Element in {key} Header"
                values = [v for v in values if v]
            items.extend((key, v) for v in values)
            (seen.get(key) or seen.setdefault(key, [])).extend(values)
            continue
        append((key, value))
        known = seen.get(key)
        if known is None:
            seen[key] = [value]
        else:
            known.append(value)
    return items, seen, lengths, bad


def _ctls_quoted(head: str) -> bool:
    """True when every control character is the second half of a quoted-pair (RFC 4475 intmeth)."""
    for match in _CTL_RE.finditer(head):
        at = match.start()
        if at == 0 or head[at - 1] != "\\":
            return False
    return True


def _unfold(lines: list[str]) -> tuple[list[str], bool]:
    """Join continuation lines to their header with one SP; True if the start line was continued."""
    out: list[str] = [lines[0]]
    folded_start = False
    pieces: list[str] | None = None  # the header being continued, in parts (joined once: linear)
    for i in range(1, len(lines)):
        line = lines[i]
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                folded_start = True
            elif pieces is None:
                pieces = [out[-1].rstrip(" \t"), line.strip(" \t")]
            else:
                pieces[-1] = pieces[-1].rstrip(" \t")
                pieces.append(line.strip(" \t"))
            continue
        if pieces is not None:
            out[-1] = " ".join(pieces).lstrip(" \t")  # (lstrip: a fold of an empty line)
            pieces = None
        out.append(line)
    if pieces is not None:
        out[-1] = " ".join(pieces).lstrip(" \t")
    return out, folded_start


def _parse_start_line(line: str) -> Request | Response | str:
    """The message the start line begins, or the reason it cannot be answered (drop).

    A request line that is malformed but recognisable (a method, and a SIP-Version at the end)
    yields a Request whose fields :func:`_request_line_error` then judges, so that a 400 or 505
    can be answered once the headers are read.
    """
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        if version.upper() != SIP_VERSION:
            return f"Unsupported Version {version[:20]!r}"
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not (code.isdigit() and code.isascii()) or code[0] not in "123456":
            return f"Invalid Status Code {code[:12]!r}"
        return Response(_NO_HEADERS, b"", int(code), reason)
    parts = line.split(" ")
    if len(parts) == 3 and parts[1] and parts[2]:
        method, uri, version = parts
    else:  # extra or missing SP: answerable with a 400 if otherwise recognisable (RFC 4475 §3.1.2.9)
        method, uri, version = parts[0], "", line.rstrip(" \t").rpartition(" ")[2]
    if not method or method.strip(TOKEN_CHARS):
        return f"Malformed Request Line {line[:40]!r}"
    request = Request(_NO_HEADERS, b"", method, uri)
    if version != SIP_VERSION and version.upper() != SIP_VERSION:  # "sip/2.0" is SIP/2.0
        if _VERSION_RE.fullmatch(version) is None:
            return f"Malformed Request Line {line[:40]!r}"
        request.version = version
    return request


def _request_line_error(request: Request) -> str | None:
    uri = request.uri
    if not uri:
        return "Malformed Request Line"
    if request.version.upper() != SIP_VERSION:
        return _VERSION_NOT_SUPPORTED
    try:
        parsed = SipUri.parse(uri)
    except ValueError as exc:
        return f"Invalid Request-URI ({exc})"
    if parsed.headers is not None:
        return "Request-URI Must Not Contain Headers"  # RFC 3261 §19.1.1, table 1
    return None


def _fail(message: Message, seen: dict[str, list[str]], reason: str, status: int = 400) -> NoReturn:
    partial = message if isinstance(message, Request) and _answerable(seen) else None
    raise SipParseError(_reason_phrase(reason), partial=partial, status=status)


def _reason_phrase(text: str) -> str:
    """At most 200 printable characters: the reason goes verbatim into a status line."""
    text = text[:200]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _answerable(seen: dict[str, list[str]]) -> bool:
    """True when a response can be built: Via, From, To, Call-ID and CSeq are present and sane.

    Deliberately lenient (RFC 4475 wants a 400 for a broken To or a huge CSeq number): the values
    are copied verbatim into the response, so only the top Via must be usable (a sent-protocol and
    a sent-by). Values carrying control characters are never echoed back.
    """
    for key in _REQUIRED:
        values = seen.get(key)
        if not values or not values[0] or _CTL_RE.search(values[0]) is not None:
            return False
    return _VIA_SENT_BY_RE.match(seen["Via"][0]) is not None


def _validate(message: Message, seen: dict[str, list[str]]) -> str | None:
    """The reason the message must be rejected, or None. Parses what every layer will read."""
    if not ("From" in seen and "To" in seen and "Call-ID" in seen and "CSeq" in seen and seen.get("Via")):
        for key in _REQUIRED:
            if not seen.get(key):
                return f"Missing {key} Header"
    for key, values in seen.items():
        if len(values) > 1 and key in _SINGLE:
            return f"Duplicate {key} Header"
    key = "CSeq"
    try:
        cseq = CSeq.parse(seen["CSeq"][0])
        key = "Via"
        vias = seen["Via"]
        top = Via.parse(vias[0])
        if len(vias) > 1:
            for value in vias[1:]:
                Via.parse(value)
        key = "From"
        Address.parse(seen["From"][0])
        key = "To"
        Address.parse(seen["To"][0])
        key = "Contact"
        for value in seen.get(key, ()):
            if value != "*":  # where "*" may stand is the registrar's business (RFC 3261 §10.3)
                Address.parse(value)
        if "Route" in seen or "Record-Route" in seen:
            for key in ("Route", "Record-Route"):
                for value in seen.get(key, ()):
                    Address.parse(value)
    except ValueError as exc:
        return f"Invalid {key} Header ({exc})"
    call_id = seen["Call-ID"][0]
    if not call_id or " " in call_id or "\t" in call_id:
        return "Invalid Call-ID Header"
    max_forwards = seen.get("Max-Forwards")
    if max_forwards is not None:
        text = max_forwards[0]
        if not (text.isdigit() and text.isascii()) or len(text) > 10 or int(text) > 255:
            return f"Invalid Max-Forwards Header {text[:20]!r}"
    if isinstance(message, Request):
        if cseq.method != message.method:
            return f"CSeq Method {cseq.method[:20]!r} Does Not Match {message.method[:20]!r}"
        if top.params.get("branch") == BRANCH_MAGIC:
            return "Missing Transaction Identifier"  # RFC 4475 §3.2.1: answered statelessly
    return None
