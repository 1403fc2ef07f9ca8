"""Typed views of the headers the stack itself reads: Via, CSeq, and the comma-splitting rule.

Header values stay text inside :class:`~pbx_edge.sip.message.Headers`; these classes parse a
value when a layer needs it (lazy parsing, as sippy does) and format it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pbx_edge.sip.uri import join_params, parse_hostport, split_params

BRANCH_MAGIC = "z9hG4bK"

_VIA_PROTO_RE = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-]+)\s+(.+)$", re.IGNORECASE)
_METHOD_RE = re.compile(r"^[A-Za-z0-9.!%*_+`'~\-]+$")


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_PROTO_RE.match(text.strip())
        if match is None:
            raise ValueError(f"invalid Via {text!r}")
        sent_by, _, paramtext = match.group(2).partition(";")
        host, port = parse_hostport(sent_by)
        params = split_params(paramtext)
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
        if not parts[0].isdigit() or len(parts[0]) > 10:
            raise ValueError(f"invalid CSeq number {parts[0]!r}")
        seq = int(parts[0])
        if seq >= 2**31:
            raise ValueError(f"CSeq number {seq} exceeds 2**31-1")
        if not _METHOD_RE.match(parts[1]):
            raise ValueError(f"invalid CSeq method {parts[1]!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def is_valid_method(method: str) -> bool:
    return bool(_METHOD_RE.match(method))


def split_comma_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]
