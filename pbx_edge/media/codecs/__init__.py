"""Audio codecs for the RTP relay's decoded-audio tap (one module per codec)."""

from __future__ import annotations

from .base import Codec, CodecInfo, Decoder, Encoder, PcmArray, get_codec, known_codecs, register_codec
from .g711 import PCMA, PCMU, PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from .opus import OPUS, OpusDecoder, OpusEncoder, OpusUnavailableError, opus_available

__all__ = [
    "OPUS",
    "PCMA",
    "PCMU",
    "Codec",
    "CodecInfo",
    "Decoder",
    "Encoder",
    "OpusDecoder",
    "OpusEncoder",
    "OpusUnavailableError",
    "PcmArray",
    "PcmaDecoder",
    "PcmaEncoder",
    "PcmuDecoder",
    "PcmuEncoder",
    "get_codec",
    "known_codecs",
    "opus_available",
    "register_codec",
]
