"""Audio codecs for the RTP relay's decoded-audio tap (one module per codec)."""

from __future__ import annotations

from .base import Codec, CodecInfo, Decoder, Encoder, PcmArray, get_codec, known_codecs, register_codec
from .g711 import PCMA, PCMU, PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder

__all__ = [
    "PCMA",
    "PCMU",
    "Codec",
    "CodecInfo",
    "Decoder",
    "Encoder",
    "PcmArray",
    "PcmaDecoder",
    "PcmaEncoder",
    "PcmuDecoder",
    "PcmuEncoder",
    "get_codec",
    "known_codecs",
    "register_codec",
]
