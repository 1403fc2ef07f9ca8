"""SIP URIs (RFC 3261 §19.1) and the name-addr / addr-spec forms that carry them.

Parsing is tolerant of what real peers send and exact about what it cannot understand: a
malformed URI raises :class:`ValueError` with the reason, which the message layer turns into a
400 response. The raw text of user and parameter values is kept as received so that a message
relayed through the edge is byte-for-byte what the peer sent, apart from the headers we rewrite;
parameter *names* are case-insensitive and stored lower-case.

The parsers are on the hot path (every message is validated on receipt), so the usual cases take
``str`` methods only; regular expressions merely scan for forbidden characters. ``not s.strip(CHARS)``
is the idiom for "every character of ``s`` is in ``CHARS``": ``strip`` eats the whole string
exactly when it has no other character.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from urllib.parse import unquote

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
_TOKEN_LWS = TOKEN_CHARS + " \t"
_HOST_CHARS = string.ascii_letters + string.digits + "-._"
_IPV6_CHARS = string.hexdigits + ":."
_SCHEME_CHARS = string.ascii_lowercase + string.digits + "+-."
_HEX = frozenset(string.hexdigits)
# Characters that never appear unescaped in any part of a URI (and would break the framing of the
# header that carries it); everything else is accepted, as phones send "#" and worse in user parts.
_URI_FORBIDDEN = re.compile(r'[ \t<>"\\]').search
_PARAM_NAME_FORBIDDEN = re.compile(r'[ \t<>"=,;?@\\]').search
_PARAM_VALUE_FORBIDDEN = re.compile(r'[ \t<>",;\\]').search
# Characters of the usual parameter value (token, host, IPv6 reference): no further check needed.
_VALUE_CHARS = TOKEN_CHARS + ":[]/&+$@?=()"


def is_token(text: str) -> bool:
    """RFC 3261 ``token``: non-empty, only token characters."""
    return bool(text) and not text.strip(TOKEN_CHARS)


def quoted_end(text: str, start: int = 0) -> int:
    """Index of the ``"`` closing the quoted-string that opens at ``text[start]``.

    Honours quoted-pairs (``\\"``, ``\\\\``); raises :class:`ValueError` when unterminated.
    """
    end = text.find('"', start + 1)
    if end < 0:
        raise ValueError(f"unterminated quoted string in {text!r}")
    backslash = text.find("\\", start + 1, end)
    if backslash < 0:
        return end
    i = backslash
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    raise ValueError(f"unterminated quoted string in {text!r}")


def _split_quoted(text: str, sep: str) -> list[str]:
    """``text.split(sep)`` that does not split inside quoted-strings."""
    parts: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i = quoted_end(text, i) + 1
            continue
        if ch == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _params(text: str, source: str) -> dict[str, str | None]:
    """Parameters from the text after the first ``;``: every ``;``-separated part must be a parameter.

    The usual name (a token) and value (token or host) pass the ``strip`` tests without further
    work; anything else gets the LWS trimmed and the lenient checks.
    """
    params: dict[str, str | None] = {}
    for part in _split_quoted(text, ";") if '"' in text else text.split(";"):
        name, sep, value = part.partition("=")
        if name.strip(TOKEN_CHARS):
            name = name.strip(" \t")
            if not name:
                raise ValueError(f"empty parameter in {source!r}")
            if _PARAM_NAME_FORBIDDEN(name):  # URI pnames may hold "[]/:&+$" as well
                raise ValueError(f"invalid parameter name {name!r} in {source!r}")
        elif not name:
            raise ValueError(f"empty parameter in {source!r}")
        if not sep:
            params[name.lower()] = None
            continue
        if value.strip(_VALUE_CHARS):
            value = value.strip(" \t")
            if value[:1] == '"':
                if quoted_end(value) != len(value) - 1:
                    raise ValueError(f"text after quoted parameter value in {source!r}")
            elif _PARAM_VALUE_FORBIDDEN(value):
                raise ValueError(f"invalid value for parameter {name!r} in {source!r}")
        params[name.lower()] = value
    return params


def split_params(text: str) -> dict[str, str | None]:
    """Split ``;a=b;c`` into an ordered dict; names are case-insensitive (stored lower-case).

    A leading ``;`` is optional; an empty parameter (``;;``, a trailing ``;``) is an error, as are
    LWS inside a name or an unquoted value. LWS around ``;`` and ``=`` is allowed (RFC 3261 §25.1).
    """
    text = text.strip(" \t")
    if not text:
        return {}
    if text[0] == ";":
        text = text[1:]
    return _params(text, text)


def join_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _port(text: str, source: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > 5:
        raise ValueError(f"invalid port in {source!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {source!r}")
    return port


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` where host is a hostname, an IPv4 address or a bracketed IPv6 reference."""
    text = text.strip(" \t")
    if text[:1] == "[":
        close = text.find("]")
        inner = text[1:close]
        if close < 0 or not inner or inner.strip(_IPV6_CHARS):
            raise ValueError(f"invalid host:port {text!r}")
        host = text[: close + 1]
        rest = text[close + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ValueError(f"invalid host:port {text!r}")
        return host, _port(rest[1:], text)
    host, colon, port = text.partition(":")
    if not host or host.strip(_HOST_CHARS):
        raise ValueError(f"invalid host:port {text!r}")
    return host, _port(port, text) if colon else None


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
        text = text.strip(" \t")
        if text[:4] == "sip:":
            scheme, rest = "sip", text[4:]
        elif text[:5] == "sips:":
            scheme, rest = "sips", text[5:]
        else:
            colon = text.find(":")
            if colon <= 0:
                raise ValueError(f"URI without scheme: {text!r}")
            scheme = text[:colon].lower()
            rest = text[colon + 1 :]
            if scheme != "sip" and scheme != "sips":
                if not scheme[0].isalpha() or scheme.strip(_SCHEME_CHARS):
                    raise ValueError(f"invalid URI scheme {text[:colon]!r}")
                if not rest or _URI_FORBIDDEN(rest):
                    raise ValueError(f"invalid {scheme} URI {text!r}")
                return cls(scheme, None, None, "", None, {}, None, rest)
        if _URI_FORBIDDEN(rest):
            raise ValueError(f"invalid character in {text!r}")
        # An unescaped "@" can only end the userinfo: user, password, host, parameters and
        # headers all exclude it, while the user part may hold ";", "?" and "/" (RFC 3261 §25.1).
        at = rest.find("@")
        user = password = None
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            user, psep, pw = userinfo.partition(":")
            if not user:
                raise ValueError(f"empty user part in {text!r}")
            if "%" in userinfo:
                _check_escapes(userinfo, text)
            if psep:
                password = pw
        hostpart, qsep, uri_headers = rest.partition("?")
        hostport, semi, paramtext = hostpart.partition(";")
        host, port_sep, port_text = hostport.partition(":")
        if host and not host.strip(_HOST_CHARS):  # hostname or IPv4: the usual case
            port = _port(port_text, text) if port_sep else None
        else:
            host, port = parse_hostport(hostport)
        return cls(
            scheme,
            user,
            password,
            host,
            port,
            _params(paramtext, text) if semi else {},
            uri_headers if qsep else None,
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
        if self.params:
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


def _utf8_tokens(text: str) -> bool:
    """Tokens and LWS, with non-ASCII letters tolerated (``J\u00fcrgen <sip:...>``, sent unquoted)."""
    return not text.isascii() and all(ch in _TOKEN_LWS or ch > "\x7f" for ch in text)


def _check_escapes(text: str, source: str) -> None:
    """Every ``%`` in a user part must start an ``escaped`` (``%`` HEXDIG HEXDIG)."""
    i = text.find("%")
    while i >= 0:
        if text[i + 1 : i + 2] not in _HEX or text[i + 2 : i + 3] not in _HEX:
            raise ValueError(f"invalid escape in {source!r}")
        i = text.find("%", i + 3)


@dataclass(slots=True)
class Address:
    """name-addr or addr-spec with header parameters (From, To, Contact, Route, Record-Route)."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip(" \t")
        if not text:
            raise ValueError("empty address")
        first = text[0]
        display: str | None = None
        if first == "<":
            lt = 0
        elif first == '"':
            end = quoted_end(text)
            display = text[: end + 1]
            lt = text.find("<", end + 1)
            if lt < 0 or (lt > end + 1 and text[end + 1 : lt].strip(" \t")):
                raise ValueError(f"quoted display name without <uri> in {text!r}")
        else:
            lt = text.find("<")
            if lt < 0 or text.find(";", 0, lt) >= 0:  # no display name holds ";": an addr-spec
                return cls._parse_addr_spec(text)
            token = text[:lt].strip(" \t")
            if token.strip(_TOKEN_LWS) and not _utf8_tokens(token):
                raise ValueError(f"invalid display name in {text!r}")
            display = token or None
        gt = text.find(">", lt)
        if gt < 0:
            raise ValueError(f"unterminated <uri> in {text!r}")
        inner = text[lt + 1 : gt]
        if not inner or " " in inner or "\t" in inner or "<" in inner:
            raise ValueError(f"whitespace or '<' inside <uri> in {text!r}")
        uri = SipUri.parse(inner)
        tail = text[gt + 1 :].lstrip(" \t")
        if not tail:
            return cls(uri, display, {}, True)
        if tail[0] != ";":
            raise ValueError(f"unexpected text after <uri> in {text!r}")
        return cls(uri, display, _params(tail[1:], text), True)

    @classmethod
    def _parse_addr_spec(cls, text: str) -> Address:
        # In addr-spec form every ";" starts a header parameter (RFC 3261 §20.10): a URI with
        # parameters, headers or a comma must be written as name-addr.
        uri_text, semi, paramtext = text.partition(";")
        uri_text = uri_text.rstrip(" \t")
        if " " in uri_text or "\t" in uri_text:
            raise ValueError(f"whitespace in addr-spec {text!r}")
        if "?" in uri_text or "," in uri_text:
            raise ValueError(f"addr-spec with reserved characters must use <> in {text!r}")
        params = _params(paramtext, text) if semi else {}
        return cls(uri=SipUri.parse(uri_text), params=params, bracketed=False)

    def __str__(self) -> str:
        params = join_params(self.params) if self.params else ""
        if self.display is None and not self.bracketed:
            return f"{self.uri}{params}"
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri}>{params}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")
