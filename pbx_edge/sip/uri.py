"""SIP URIs (RFC 3261 §19.1) and the name-addr / addr-spec forms that carry them.

Parsing is tolerant of what real peers send and exact about what it cannot understand: a
malformed URI raises :class:`ValueError` with the reason, which the message layer turns into a
400 response. The raw text of user and parameters is kept as received so that a message relayed
through the edge is byte-for-byte what the peer sent, apart from the headers we rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(?::(\d{1,5}))?$")


def split_params(text: str) -> dict[str, str | None]:
    """Split ``;a=b;c`` into an ordered dict; names are case-insensitive (stored lower-case)."""
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise ValueError(f"empty parameter name in {text!r}")
        params[name] = value.strip() if sep else None
    return params


def join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_hostport(text: str) -> tuple[str, int | None]:
    match = _HOSTPORT_RE.match(text.strip())
    if match is None:
        raise ValueError(f"invalid host:port {text!r}")
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return match.group(1), port


@dataclass(slots=True)
class SipUri:
    """A ``sip:``/``sips:`` URI; any other scheme (``tel:``, ``mailto:``) keeps its text in ``opaque``."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or not scheme:
            raise ValueError(f"URI without scheme: {text!r}")
        scheme_l = scheme.lower()
        if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme_l):
            raise ValueError(f"invalid URI scheme {scheme!r}")
        if scheme_l not in ("sip", "sips"):
            if not rest or any(c in rest for c in " \t<>\""):
                raise ValueError(f"invalid {scheme_l} URI {text!r}")
            return cls(scheme=scheme_l, opaque=rest)
        rest, qsep, uri_headers = rest.partition("?")
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            hostpart = rest
        user = password = None
        if at:
            user, psep, pw = userinfo.partition(":")
            if not user:
                raise ValueError(f"empty user part in {text!r}")
            if any(c in user for c in " \t<>\"@"):
                raise ValueError(f"invalid character in user part of {text!r}")
            password = pw if psep else None
        hostport, _, paramtext = hostpart.partition(";")
        host, port = parse_hostport(hostport)
        return cls(
            scheme=scheme_l,
            user=user,
            password=password,
            host=host,
            port=port,
            params=split_params(paramtext),
            headers=uri_headers if qsep else None,
        )

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(join_params(self.params))
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        return (value or "udp").upper() if self.scheme == "sip" else "TLS"

    def aor(self) -> str:
        """Address-of-record key for the location table: ``sip:user@host`` lower-cased host."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        user = self.user_unescaped or ""
        return f"{self.scheme}:{user}@{self.host.lower()}"


_TOKEN_DISPLAY_RE = re.compile(r"^[^<\"]*$")


@dataclass(slots=True)
class Address:
    """name-addr or addr-spec with header parameters (From, To, Contact, Route, Record-Route)."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip()
        if not text:
            raise ValueError("empty address")
        display: str | None = None
        rest = text
        if rest.startswith('"'):
            end = _closing_quote(rest)
            display = rest[: end + 1]
            rest = rest[end + 1 :].lstrip()
            if not rest.startswith("<"):
                raise ValueError(f"quoted display name without <uri> in {text!r}")
        if "<" in rest:
            lt = rest.index("<")
            if display is None:
                token = rest[:lt].strip()
                if not _TOKEN_DISPLAY_RE.match(token):
                    raise ValueError(f"invalid display name in {text!r}")
                display = token or None
            elif rest[:lt].strip():
                raise ValueError(f"garbage between display name and <uri> in {text!r}")
            gt = rest.find(">", lt)
            if gt < 0:
                raise ValueError(f"unterminated <uri> in {text!r}")
            inner = rest[lt + 1 : gt]
            if " " in inner.strip() or "<" in inner:
                raise ValueError(f"whitespace inside <uri> in {text!r}")
            uri = SipUri.parse(inner)
            tail = rest[gt + 1 :].strip()
            if tail and not tail.startswith(";"):
                raise ValueError(f"unexpected text after <uri> in {text!r}")
            return cls(uri=uri, display=display, params=split_params(tail), bracketed=True)
        # addr-spec: parameters after the URI belong to the header, not the URI.
        if any(c in rest for c in " \t"):
            raise ValueError(f"whitespace in addr-spec {text!r}")
        uri_text, _, paramtext = rest.partition(";")
        if "?" in uri_text or "," in uri_text:
            raise ValueError(f"addr-spec with reserved characters must use <> in {text!r}")
        return cls(uri=SipUri.parse(uri_text), params=split_params(paramtext), bracketed=False)

    def __str__(self) -> str:
        if self.display is None and not self.bracketed:
            return f"{self.uri}{join_params(self.params)}"
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri}>{join_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    raise ValueError(f"unterminated quoted string in {text!r}")
