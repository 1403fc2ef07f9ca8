"""The media interface the B2BUA calls whenever it sees SDP.

For every SDP body crossing the edge, the B2BUA asks the call's :class:`MediaSession` to rewrite it
for the other leg (offer or answer, RFC 3264). The media issue replaces :class:`PassThroughMedia`
with the relay (port pool, SDP bypass rewrite, RTP/RTCP); the B2BUA does not change.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol


class Side(Enum):
    CALLER = "caller"  # A leg: the party that sent the initial INVITE
    CALLEE = "callee"  # B leg: the party the edge called


class SdpKind(Enum):
    OFFER = "offer"
    ANSWER = "answer"


class MediaUnavailable(Exception):
    """No media resources (port pool exhausted): the INVITE gets 503 with Retry-After."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SdpRejected(Exception):
    """The SDP cannot be used: the request gets ``status`` (400 or 488) with ``reason``."""

    def __init__(self, reason: str, status: int = 488) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MediaSession(Protocol):
    def rewrite(self, from_side: Side, kind: SdpKind, sdp: bytes) -> bytes:
        """SDP received from ``from_side``, rewritten to be sent to the other side."""
        ...

    def close(self) -> None: ...


class MediaManager(Protocol):
    def open_session(self, call_id: str) -> MediaSession:
        """Reserve media for a new call; raises :class:`MediaUnavailable` when none is left."""
        ...


class PassThroughSession:
    """Media flows directly between the endpoints; the SDP crosses unchanged."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def rewrite(self, from_side: Side, kind: SdpKind, sdp: bytes) -> bytes:
        return sdp

    def close(self) -> None:
        self.closed = True


class PassThroughMedia:
    def __init__(self) -> None:
        self.sessions_opened = 0

    def open_session(self, call_id: str) -> MediaSession:
        self.sessions_opened += 1
        return PassThroughSession()
