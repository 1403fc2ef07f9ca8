"""SDP parsing (RFC 8866, formerly RFC 4566) and the bypass rewrite for the RTP relay.

Parsing keeps every line, in order, as a ``(type, value)`` pair: the session section first, then
one :class:`MediaSection` per ``m=`` line (its ``m=`` line first, followed by its own lines).
``bytes(SessionDescription.parse(data))`` gives back ``data`` exactly when ``data`` uses CRLF line
ends; bare LF line ends are accepted on input and written back as CRLF. Bytes that are not UTF-8
(RFC 8866 allows other charsets through ``a=charset``) survive the round trip unchanged through
``surrogateescape``.

The bypass rewrite
------------------
The edge relays RTP/RTCP itself, so the SDP sent to the other leg must point that leg's media at the
relay instead of at the far endpoint. :func:`rewrite_for_relay` changes the *transport* lines and
nothing else:

* the connection address of every ``c=`` line, session and media level (``IN IP4``/``IN IP6``; the
  address type follows the relay's address). An unspecified address (``c=IN IP4 0.0.0.0``, the
  legacy hold of RFC 3264 §8.4, or ``::``) is kept: rewriting it would turn a hold into an active
  stream.
* the port of each ``m=`` line (``ports[i]`` for m-line ``i``). ``None`` keeps the original port, and
  a port of 0 is always kept: a rejected or disabled stream (RFC 3264 §6) stays rejected. The
  ``/<number of ports>`` suffix and everything after the port are kept byte for byte.
* ``a=rtcp:`` (RFC 3605) of a rewritten stream, set to the new port + 1 with the relay's address.

Everything else (``o=``, ``s=``, ``t=``, ``b=``, ``a=rtpmap``/``fmtp``, direction attributes, ICE
candidates, unknown attributes, every further m-line) crosses untouched and in order: the codecs
are negotiated end to end, the relay only forwards packets.

``o=`` is deliberately not bumped. The relay is transparent: the B2BUA forwards each offer/answer
one for one, and the rewrite is a pure function of the endpoint's SDP and the call's relay
allocation, which stays fixed for a stream. So the rewritten SDP changes exactly when the endpoint's
SDP changes, and the endpoint's own version bump (RFC 3264 §8) already tells the other leg so; an
unchanged ``o=`` on a session refresh still truthfully means "nothing changed". The ``o=`` address is
not used to reach media (RFC 8866 §5.2), so it does not need rewriting either. A caller that moves a
stream to different relay ports within one call must therefore only do so on an SDP whose version
the endpoint bumped.

Malformed SDP raises :class:`~pbx_edge.media.interface.SdpRejected` with status 400 and a precise
reason; :meth:`SessionDescription.parse` raises nothing else for any byte input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from pbx_edge.media.interface import SdpRejected

__all__ = [
    "Connection",
    "Direction",
    "MediaSection",
    "RtcpAttribute",
    "SdpLine",
    "SessionDescription",
    "rewrite_for_relay",
]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_PORT_RE = re.compile(r"[0-9]{1,5}")
_COUNT_RE = re.compile(r"[0-9]{1,5}")
# RFC 8866 §9: token-char, used for media, proto and fmt (fmt is a token too).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def _bad(reason: str) -> SdpRejected:
    return SdpRejected(reason, 400)


class SdpLine(NamedTuple):
    """One ``<type>=<value>`` line, without its line end."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}={self.value}"


class Direction(Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


_DIRECTIONS = {d.value: d for d in Direction}


@dataclass(frozen=True, slots=True)
class Connection:
    """A ``c=`` line: ``c=<nettype> <addrtype> <address>[/<ttl>][/<count>]``."""

    nettype: str
    addrtype: str
    address: str  # without the multicast /ttl/count suffix
    suffix: str  # "" or e.g. "/127/3"

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split(" ")
        if len(parts) != 3 or not all(parts):
            raise _bad(f"bad c= line {value!r}: expected '<nettype> <addrtype> <address>'")
        address, slash, rest = parts[2].partition("/")
        if not address:
            raise _bad(f"bad c= line {value!r}: empty connection address")
        return cls(parts[0], parts[1], address, slash + rest)

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` or ``::``: the legacy hold address (RFC 3264 §8.4)."""
        return _is_unspecified(self.address)


def _is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class RtcpAttribute:
    """RFC 3605 ``a=rtcp:<port> [<nettype> <addrtype> <address>]``."""

    port: int
    nettype: str | None = None
    addrtype: str | None = None
    address: str | None = None

    @classmethod
    def parse(cls, value: str) -> RtcpAttribute:
        parts = value.split(" ")
        if len(parts) not in (1, 4) or not all(parts):
            raise _bad(f"bad a=rtcp attribute {value!r}: expected '<port> [<nettype> <addrtype> <addr>]'")
        port = _parse_port(parts[0], f"a=rtcp:{value}")
        if len(parts) == 1:
            return cls(port)
        return cls(port, parts[1], parts[2], parts[3])

    def __str__(self) -> str:
        if self.address is None:
            return str(self.port)
        return f"{self.port} {self.nettype} {self.addrtype} {self.address}"


def _parse_port(text: str, where: str) -> int:
    if _PORT_RE.fullmatch(text) is None:
        raise _bad(f"bad port {text!r} in {where!r}")
    port = int(text)
    if port > 65535:
        raise _bad(f"port {port} out of range in {where!r}")
    return port


def _attribute(line: SdpLine) -> tuple[str, str | None]:
    """``a=name:value`` -> ``(name, value)``; a property attribute ``a=name`` -> ``(name, None)``."""
    name, colon, value = line.value.partition(":")
    return name, (value if colon else None)


def _connection_in(lines: Sequence[SdpLine]) -> Connection | None:
    for line in lines:
        if line.type == "c":
            return Connection.parse(line.value)
    return None


def _direction_in(lines: Sequence[SdpLine]) -> Direction | None:
    found: Direction | None = None
    for line in lines:
        if line.type == "a":
            name, value = _attribute(line)
            if value is None and name in _DIRECTIONS:
                found = _DIRECTIONS[name]
    return found


@dataclass(frozen=True, slots=True)
class MediaSection:
    """One media description: its ``m=`` line (``lines[0]``) and every line up to the next ``m=``."""

    media: str
    port: int
    port_count: int | None  # the "/2" of "m=audio 49170/2 RTP/AVP 0"; None when absent
    proto: str
    formats: tuple[str, ...]
    lines: tuple[SdpLine, ...]

    @classmethod
    def from_lines(cls, lines: Sequence[SdpLine]) -> MediaSection:
        if not lines or lines[0].type != "m":
            raise _bad("media section does not start with an m= line")
        value = lines[0].value
        parts = value.split(" ")
        if len(parts) < 4 or not all(parts):
            raise _bad(f"bad m= line {value!r}: expected '<media> <port>[/<count>] <proto> <fmt> ...'")
        media, port_spec, proto, *formats = parts
        for token, what in (
            (media, "media"),
            (proto.replace("/", ""), "proto"),
            *((f, "fmt") for f in formats),
        ):
            if _TOKEN_RE.fullmatch(token) is None:
                raise _bad(f"bad m= line {value!r}: invalid {what} {token!r}")
        port_text, slash, count_text = port_spec.partition("/")
        port = _parse_port(port_text, f"m={value}")
        count: int | None = None
        if slash:
            if _COUNT_RE.fullmatch(count_text) is None or int(count_text) == 0:
                raise _bad(f"bad port count {count_text!r} in m= line {value!r}")
            count = int(count_text)
        section = cls(media, port, count, proto, tuple(formats), tuple(lines))
        # Validate the lines the accessors read, so that they cannot raise later.
        for line in section.lines[1:]:
            if line.type == "c":
                Connection.parse(line.value)
            elif line.type == "a":
                name, rtcp = _attribute(line)
                if name == "rtcp" and rtcp is not None:
                    RtcpAttribute.parse(rtcp)
        return section

    @property
    def connection(self) -> Connection | None:
        """The media-level ``c=`` (the first one); see :meth:`SessionDescription.connection_for`."""
        return _connection_in(self.lines)

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, or None; see :meth:`SessionDescription.direction_for`."""
        return _direction_in(self.lines)

    @property
    def rtcp(self) -> RtcpAttribute | None:
        for line in self.lines:
            if line.type == "a":
                name, value = _attribute(line)
                if name == "rtcp" and value is not None:
                    return RtcpAttribute.parse(value)
        return None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    session: tuple[SdpLine, ...]  # from v= up to (not including) the first m=
    media: tuple[MediaSection, ...]

    @classmethod
    def parse(cls, data: bytes) -> SessionDescription:
        """Parse an SDP body; raises only :class:`SdpRejected` (status 400)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise _bad("SDP body is not bytes")
        text = bytes(data).decode(_ENCODING, _ERRORS)
        raw = text.split("\n")
        if raw and raw[-1] == "":
            raw.pop()  # the final line end
        lines: list[SdpLine] = []
        for number, raw_line in enumerate(raw, 1):
            line = raw_line[:-1] if raw_line.endswith("\r") else raw_line
            if line == "":
                if all(r in ("", "\r") for r in raw[number - 1 :]):
                    break  # trailing blank lines, as some stacks send
                raise _bad(f"empty line {number} in SDP")
            if "\r" in line or "\x00" in line:
                raise _bad(f"line {number} contains a CR or NUL character")
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise _bad(f"line {number} {line[:40]!r} is not of the form '<type>=<value>'")
            lines.append(SdpLine(line[0], line[2:]))
        if not lines or lines[0].type != "v":
            raise _bad("SDP does not start with a v= line")
        if lines[0].value != "0":
            raise _bad(f"unsupported SDP version v={lines[0].value[:20]!r}")
        first_m = next((i for i, line in enumerate(lines) if line.type == "m"), len(lines))
        session = tuple(lines[:first_m])
        for session_line in session:
            if session_line.type == "c":
                Connection.parse(session_line.value)
        sections: list[MediaSection] = []
        start = first_m
        while start < len(lines):
            end = next((i for i in range(start + 1, len(lines)) if lines[i].type == "m"), len(lines))
            sections.append(MediaSection.from_lines(lines[start:end]))
            start = end
        sdp = cls(session, tuple(sections))
        session_c = sdp.connection
        for index, section in enumerate(sdp.media):
            if section.port != 0 and section.connection is None and session_c is None:
                raise _bad(f"m-line {index} ({section.media}) has no c= line and there is no session c=")
        return sdp

    @property
    def lines(self) -> tuple[SdpLine, ...]:
        """Every line, in order."""
        return tuple(self._iter_lines())

    def _iter_lines(self) -> Iterator[SdpLine]:
        yield from self.session
        for section in self.media:
            yield from section.lines

    def __bytes__(self) -> bytes:
        return "".join(f"{line}\r\n" for line in self._iter_lines()).encode(_ENCODING, _ERRORS)

    @property
    def connection(self) -> Connection | None:
        """The session-level ``c=``."""
        return _connection_in(self.session)

    @property
    def direction(self) -> Direction:
        """The session-level direction (default sendrecv)."""
        return _direction_in(self.session) or Direction.SENDRECV

    def connection_for(self, index: int) -> Connection | None:
        """The connection of m-line ``index``: its own ``c=``, else the session-level one."""
        return self.media[index].connection or self.connection

    def direction_for(self, index: int) -> Direction:
        """The direction of m-line ``index``: media level overrides session level; default sendrecv."""
        return self.media[index].direction or self.direction


def _rewrite_connection(value: str, address: str, addrtype: str) -> str:
    conn = Connection.parse(value)
    if conn.is_unspecified:
        return value  # legacy hold (RFC 3264 §8.4): stays on hold
    if conn.nettype != "IN" or conn.addrtype not in ("IP4", "IP6"):
        raise SdpRejected(f"unsupported connection c={value!r}", 488)
    # The multicast /ttl/count suffix is dropped: the relay address is unicast (RFC 8866 §5.7).
    return f"IN {addrtype} {address}"


def rewrite_for_relay(
    sdp: SessionDescription, address: str, ports: Sequence[int | None]
) -> SessionDescription:
    """Point ``sdp``'s media at the relay (``address``, ``ports[i]`` for m-line ``i``).

    See the module docstring for what changes. Raises :class:`ValueError` for a bad ``address``,
    a ``ports`` list of the wrong length or a port out of range (caller errors), and
    :class:`SdpRejected` (488) for a ``c=`` line that is not ``IN IP4``/``IN IP6``.
    """
    ip = ipaddress.ip_address(address)
    addrtype = "IP4" if ip.version == 4 else "IP6"
    address = str(ip)
    if len(ports) != len(sdp.media):
        raise ValueError(f"{len(ports)} ports given for {len(sdp.media)} m-lines")
    for port in ports:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"relay port {port} out of range")

    def rewrite_c(lines: Sequence[SdpLine]) -> list[SdpLine]:
        return [
            SdpLine("c", _rewrite_connection(line.value, address, addrtype)) if line.type == "c" else line
            for line in lines
        ]

    session = tuple(rewrite_c(sdp.session))
    sections: list[MediaSection] = []
    for section, new_port in zip(sdp.media, ports, strict=True):
        lines = rewrite_c(section.lines)
        if new_port is not None and section.port != 0:
            media, port_spec, rest = lines[0].value.split(" ", 2)
            _, slash, count = port_spec.partition("/")
            lines[0] = SdpLine("m", f"{media} {new_port}{slash}{count} {rest}")
            for i, line in enumerate(lines):
                if line.type != "a":
                    continue
                name, value = _attribute(line)
                if name != "rtcp" or value is None:
                    continue
                if new_port + 1 > 65535:
                    raise ValueError(f"relay port {new_port} leaves no room for RTCP on port + 1")
                old = RtcpAttribute.parse(value)
                if old.address is not None and _is_unspecified(old.address):
                    new = RtcpAttribute(new_port + 1, old.nettype, old.addrtype, old.address)
                else:
                    new = RtcpAttribute(new_port + 1, "IN", addrtype, address)
                lines[i] = SdpLine("a", f"rtcp:{new}")
        sections.append(MediaSection.from_lines(lines))
    return SessionDescription(session, tuple(sections))
