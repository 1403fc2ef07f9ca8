"""Codec base classes and the codec registry.

A codec is a pair of per-stream objects: a :class:`Decoder` that turns one RTP payload into mono
``int16`` PCM at the codec's ``sample_rate``, and an :class:`Encoder` that does the reverse. They are
plain synchronous objects (no asyncio, no clock reads) so the RTP relay and the decoded-audio tap
can call them inline. Modelled on aiortc's ``codecs/base.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PcmArray = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """Static description of a codec as it appears in SDP (``a=rtpmap``)."""

    name: str
    payload_type: int  # static/default RTP payload type (RFC 3551)
    clock_rate: int  # RTP timestamp rate
    sample_rate: int  # rate of the decoded PCM
    channels: int = 1


class Decoder(ABC):
    """Per-stream decoder: one RTP payload in, mono int16 PCM out."""

    info: CodecInfo

    @abstractmethod
    def decode(self, payload: bytes) -> PcmArray:
        """Decode one RTP payload to mono int16 PCM at ``info.sample_rate``."""


class Encoder(ABC):
    """Per-stream encoder: mono int16 PCM in, one RTP payload out."""

    info: CodecInfo

    @abstractmethod
    def encode(self, pcm: PcmArray) -> bytes:
        """Encode mono int16 PCM at ``info.sample_rate`` into one RTP payload."""


@dataclass(frozen=True, slots=True)
class Codec:
    """A registry entry: the codec's description and factories for per-stream coders."""

    info: CodecInfo
    encoder_class: type[Encoder]
    decoder_class: type[Decoder]

    def new_encoder(self) -> Encoder:
        return self.encoder_class()

    def new_decoder(self) -> Decoder:
        return self.decoder_class()


_REGISTRY: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Add ``codec`` to the registry under its (case-insensitive) name."""
    key = codec.info.name.upper()
    if key in _REGISTRY and _REGISTRY[key] != codec:
        raise ValueError(f"codec {codec.info.name!r} is already registered")
    _REGISTRY[key] = codec


def known_codecs() -> list[str]:
    """Names of the registered codecs, sorted."""
    return sorted(_REGISTRY)


def get_codec(name: str) -> Codec:
    """The registered codec called ``name`` (case-insensitive, e.g. ``"pcmu"``).

    Raises :class:`KeyError` naming the known codecs when there is none.
    """
    try:
        return _REGISTRY[name.upper()]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; known codecs: {', '.join(known_codecs())}") from None


def as_mono_int16(pcm: PcmArray) -> PcmArray:
    """Check that ``pcm`` is a 1-D int16 array (mono PCM) and return it C-contiguous."""
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
        raise TypeError("PCM must be a numpy int16 array")
    if pcm.ndim != 1:
        raise ValueError(f"PCM must be mono (1-D), got shape {pcm.shape}")
    return np.ascontiguousarray(pcm)
