"""ai_link: the edge's client of the AI layer, one WebSocket per call (see DESIGN.md).

:mod:`.protocol` is the wire contract (shared with the Serve ingress), :mod:`.config` the ``ai:``
configuration section, :mod:`.client` one call's stream (``CallStream``), :mod:`.link` the node-wide
owner (``AiLink``) and :mod:`.bridge` its wiring into the node. Only the
first two are re-exported here, so that ``pbx_edge.ops.config`` can import the config without pulling
in aiohttp and the media stack.
"""

from .config import AiLinkConfig
from .protocol import (
    PROTOCOL_VERSION,
    ActionMessage,
    AiMessage,
    AudioFrame,
    ControlMessage,
    EdgeMessage,
    ProtocolError,
    StartMessage,
    TranscriptEvent,
    TranscriptGap,
    decode_batch,
    decode_frame,
    encode_batch,
    encode_frame,
    parse_ai_message,
    parse_edge_message,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ActionMessage",
    "AiLinkConfig",
    "AiMessage",
    "AudioFrame",
    "ControlMessage",
    "EdgeMessage",
    "ProtocolError",
    "StartMessage",
    "TranscriptEvent",
    "TranscriptGap",
    "decode_batch",
    "decode_frame",
    "encode_batch",
    "encode_frame",
    "parse_ai_message",
    "parse_edge_message",
]
