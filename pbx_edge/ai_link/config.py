"""The ``ai:`` section of the edge configuration: where the AI layer is and how much to send it.

Kept out of :mod:`pbx_edge.ops.config` so that module can import it without a cycle; it follows
the same rules (unknown keys are errors, values are frozen).
"""

from __future__ import annotations

from string import Formatter
from typing import TypeVar
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .protocol import Language, Mode

__all__ = ["AiLinkConfig"]

_T = TypeVar("_T")


class AiLinkConfig(BaseModel):
    """How the edge streams calls to the AI layer (see pbx_edge/ai_link/client.py).

    ``max_streams`` caps the calls streamed at once by this edge process: calls beyond it are
    connected as usual but not streamed (counted as shed); the edge sheds AI work, never calls.
    ``languages`` and ``modes`` map a callee prefix to a value; the longest matching prefix wins,
    else ``language`` / ``mode``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    url: str = "ws://127.0.0.1:8000"  # base URL of the Serve ingress
    path: str = "/v1/calls/{call_id}/stream"
    max_streams: int = Field(50, ge=0)
    batch_frames: int = Field(5, ge=1, le=100)  # 20 ms records per binary message
    queue_frames: int = Field(250, ge=1)  # tap queue capacity per streamed call (250 = 5 s)
    control_queue: int = Field(64, ge=1)  # controls (dtmf, hold...) kept while disconnected
    reconnect_initial: float = Field(0.5, gt=0)  # seconds before the first reconnection attempt
    reconnect_max: float = Field(10.0, gt=0)  # backoff cap
    connect_timeout: float = Field(5.0, gt=0)
    close_timeout: float = Field(2.0, gt=0)  # stop(): time to flush and send ``end``
    drain_timeout: float = Field(10.0, gt=0)  # ... then to receive the last transcripts and the AI's close
    heartbeat: float | None = Field(15.0, gt=0)  # WebSocket ping interval; a missing pong reconnects
    language: Language = "auto"
    languages: dict[str, Language] = Field(default_factory=dict)  # callee prefix -> language
    mode: Mode = "transcribe"
    modes: dict[str, Mode] = Field(default_factory=dict)  # callee prefix -> mode
    transcripts_dir: str | None = "data/transcripts"  # final transcripts by day (ai_link/transcripts.py)

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("must be a ws:// or wss:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment (the stream path is added to it)")
        return value.rstrip("/")

    @field_validator("path")
    @classmethod
    def _path_template(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        try:
            fields = {name for _, name, _, _ in Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        if fields != {"call_id"}:
            raise ValueError("must contain the placeholder {call_id} and no other")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> AiLinkConfig:
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError(
                f"reconnect_max ({self.reconnect_max}) must be >= "
                f"reconnect_initial ({self.reconnect_initial})"
            )
        return self

    def stream_url(self, call_id: str) -> str:
        """The WebSocket URL of one call's stream (the call id is percent-encoded)."""
        return self.url + self.path.format(call_id=quote(call_id, safe=""))

    def language_for(self, callee: str) -> Language:
        return _longest_prefix(self.languages, callee, self.language)

    def mode_for(self, callee: str) -> Mode:
        return _longest_prefix(self.modes, callee, self.mode)


def _longest_prefix(table: dict[str, _T], key: str, default: _T) -> _T:
    best = -1
    value = default
    for prefix, candidate in table.items():
        if len(prefix) > best and key.startswith(prefix):
            best, value = len(prefix), candidate
    return value
