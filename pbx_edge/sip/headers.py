"""Typed views of the headers the stack itself reads: Via, CSeq, and the comma-splitting rule.

Header values stay text inside :class:`~pbx_edge.sip.message.Headers`; these classes parse a
value when a layer needs it (lazy parsing, as sippy does) and format it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pbx_edge.sip.uri import _HOST_CHARS, TOKEN_CHARS, _params, _port, is_token, join_params, parse_hostport

BRANCH_MAGIC = "z9hG4bK"

# sent-protocol with LWS around the slashes (RFC 3261 §25.1 SLASH = SWS "/" SWS); the fast path in
# Via.parse handles the usual "SIP/2.0/UDP " without it.
_VIA_PROTO_RE = re.compile(r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9.!%*_+`'~\-]+)[ \t]+(\S.*)", re.I)
# One element of a comma-separated list: quoted-strings and <...> are opaque, "," separates.
_LIST_ITEM_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^>]*>?|,', re.S)


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip(" \t")
        if text[:8].upper() != "SIP/2.0/":
            return cls._parse_lws(text)
        transport, sp, rest = text[8:].partition(" ")
        if not sp or not transport or transport.strip(TOKEN_CHARS):
            return cls._parse_lws(text)
        sent_by, semi, paramtext = rest.partition(";")
        host, port_sep, port_text = sent_by.strip(" \t").partition(":")
        if host and not host.strip(_HOST_CHARS):  # hostname or IPv4: the usual case
            port = _port(port_text, text) if port_sep else None
        else:
            host, port = parse_hostport(sent_by)
        return cls(transport.upper(), host, port, _params(paramtext, text) if semi else {})

    @classmethod
    def _parse_lws(cls, text: str) -> Via:
        match = _VIA_PROTO_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid Via {text!r}")
        sent_by, semi, paramtext = match.group(2).partition(";")
        host, port = parse_hostport(sent_by)
        params = _params(paramtext, text) if semi else {}
        return cls(transport=match.group(1).upper(), host=host, port=port, params=params)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{join_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"invalid CSeq {text!r}")
        number, method = parts
        if not (number.isdigit() and number.isascii()) or len(number) > 10:
            raise ValueError(f"invalid CSeq number {number[:20]!r}")
        seq = int(number)
        if seq >= 2**31:
            raise ValueError(f"CSeq number {seq} exceeds 2**31-1")
        if method.strip(TOKEN_CHARS):
            raise ValueError(f"invalid CSeq method {method[:40]!r}")
        return cls(seq, method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def is_valid_method(method: str) -> bool:
    return is_token(method)


def split_list(value: str) -> list[str]:
    """Every element of a comma-separated header value, stripped, *including* empty ones.

    Commas inside quoted-strings and ``<...>`` do not separate. The parser uses the empty elements
    to reject ``Via: a,,b``; :func:`split_comma_list` drops them.
    """
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    parts: list[str] = []
    start = 0
    for match in _LIST_ITEM_RE.finditer(value):
        if match.group() == ",":
            parts.append(value[start : match.start()].strip(" \t"))
            start = match.end()
    parts.append(value[start:].strip(" \t"))
    return parts


def split_comma_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    if "," not in value:
        return [value.strip()]
    return [p for p in split_list(value) if p]
