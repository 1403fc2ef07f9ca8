"""Message framing for SIP over a byte stream (TCP, TLS): RFC 3261 §18.3, RFC 5626 §3.5.1.

A :class:`StreamFramer` is sans-I/O: the transport adapter feeds it whatever bytes arrived and gets
back every message completed by them, each the header block, the empty line and exactly
Content-Length octets of body, ready for :func:`~pbx_edge.sip.message.parse_message` with
``stream=True``. It looks no further into a message than the Content-Length it needs.

CRLFs between messages are keep-alives: a double CRLF is an RFC 5626 "ping" (counted in
:attr:`StreamFramer.pings_received`; the adapter answers each with a single CRLF, :data:`PONG`),
a single CRLF a "pong" (ignored).

A framing error (a header block longer than ``max_size``, a Content-Length that is missing,
malformed, conflicting or makes the message longer than ``max_size``) raises
:class:`~pbx_edge.sip.message.SipParseError`. The stream cannot be re-synchronised after one, so
the framer stays failed (every later :meth:`StreamFramer.feed` raises the same error) and the
adapter closes the connection. Messages completed before the error by the same :meth:`feed` are
still returned, the error being raised by the next call (and visible at once as
:attr:`StreamFramer.error`).
"""

from __future__ import annotations

import re

from pbx_edge.sip.message import MAX_MESSAGE_SIZE, SipParseError

PING = b"\r\n\r\n"
PONG = b"\r\n"

# The end of a header block: an empty line, with CRLF or (tolerated) bare LF line ends.
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
# Content-Length lines of a header block (long or compact form), value up to the line end.
_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:(.*)$", re.I | re.M)


class StreamFramer:
    """Splits a SIP byte stream into messages; see the module docstring."""

    __slots__ = ("_buf", "_error", "_scanned", "_total", "max_size", "pings_received")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self.pings_received = 0
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched in vain for the end of the header block
        self._total: int | None = None  # length of the message at the front of _buf, once known
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Every message that ``data`` completes, in order (often none, sometimes several)."""
        if self._error is not None:
            raise self._error
        self._buf += data
        messages: list[bytes] = []
        try:
            while self._skip_keepalives():
                message = self._next_message()
                if message is None:
                    break
                messages.append(message)
        except SipParseError as exc:
            self._error = exc
            if not messages:
                raise
        return messages

    @property
    def error(self) -> SipParseError | None:
        """The framing error that ended the stream, if any. Set while :meth:`feed` still returns
        the messages completed before it (the next call raises it): an adapter may close at once."""
        return self._error

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before the next message; False when nothing but (part of) a keep-alive is left."""
        buf = self._buf
        if self._total is not None:
            return True
        while buf and buf[0] in (13, 10):  # CR, LF
            if buf[:4] == PING:
                self.pings_received += 1
                del buf[:4]
            elif buf[:2] == PONG and len(buf) >= 4:
                del buf[:2]  # a pong, or a CRLF before a message (RFC 3261 §7.5)
            elif len(buf) < 4 and PING.startswith(buf):
                return False  # a ping or a pong, still arriving
            else:
                del buf[:1]  # bare LF keep-alive (tolerated) or a stray CR
            self._scanned = 0
        return bool(buf)

    def _next_message(self) -> bytes | None:
        buf = self._buf
        total = self._total
        if total is None:
            match = _HEAD_END_RE.search(buf, max(0, self._scanned - 3))
            if match is None:
                if len(buf) > self.max_size:
                    raise SipParseError("Header Block Too Large", status=513)
                self._scanned = len(buf)
                return None
            if match.start() > self.max_size:
                raise SipParseError("Header Block Too Large", status=513)
            total = match.end() + _content_length(bytes(buf[: match.start()]))
            if total > self.max_size:
                raise SipParseError("Message Too Large", status=513)
            self._total = total
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        self._total = None
        self._scanned = 0
        return message


def _content_length(head: bytes) -> int:
    """The Content-Length of a header block; a folded value is joined (RFC 3261 §7.3.1)."""
    values: list[bytes] = []
    for match in _LENGTH_RE.finditer(head):
        if match.start() == 0:
            continue  # the start line (of a method named "l"), not a header
        parts = [match.group(1).strip(b" \t\r")]
        end = match.end()  # at the LF ending the line, or at the end of the block
        while head[end + 1 : end + 2] in (b" ", b"\t"):
            nl = head.find(b"\n", end + 1)
            stop = len(head) if nl < 0 else nl
            parts.append(head[end + 1 : stop].strip(b" \t\r"))
            end = stop
        values.append(b" ".join(p for p in parts if p))
    if not values:
        raise SipParseError("Missing Content-Length")
    text = values[0]
    if any(v != text for v in values[1:]):
        raise SipParseError("Conflicting Content-Length")
    if not text.isdigit() or len(text) > 9:
        raise SipParseError(f"Invalid Content-Length {text[:20]!r}")
    return int(text)
