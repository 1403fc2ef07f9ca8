"""ITU-T G.711 µ-law (PCMU, PT 0) and A-law (PCMA, PT 8), vectorised with numpy lookup tables.

The tables are built once at import, with vectorised numpy arithmetic:

* decode: a 256-entry ``int16`` table indexed by the code byte;
* encode: a 65536-entry ``uint8`` table indexed by the ``int16`` sample viewed as ``uint16``.

The arithmetic is the classic 16-bit formulation of G.711 (as in the Sun / ITU-T G.191 reference
code): µ-law adds a bias of 0x84 and clips the magnitude at 32635; A-law works on the 13 most
significant bits. Modelled on aiortc's ``codecs/g711.py``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import Codec, CodecInfo, Decoder, Encoder, PcmArray, as_mono_int16, register_codec

PCMU_INFO = CodecInfo(name="PCMU", payload_type=0, clock_rate=8000, sample_rate=8000, channels=1)
PCMA_INFO = CodecInfo(name="PCMA", payload_type=8, clock_rate=8000, sample_rate=8000, channels=1)

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635

# Every int16 value, in uint16-view order: index i holds the sample whose uint16 view is i.
_ALL_SAMPLES = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = ~_ALL_CODES & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    t = ((mantissa << 3) + _ULAW_BIAS) << exponent
    out = np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS)
    return out.astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    s = _ALL_SAMPLES
    negative = s < 0
    mag = np.minimum(np.where(negative, -s, s), _ULAW_CLIP) + _ULAW_BIAS  # 132..32767
    exponent = np.zeros_like(mag)
    for bit in range(8, 15):  # position of the highest set bit, minus 7
        exponent += mag >= (1 << bit)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code: npt.NDArray[np.int32] = np.where(negative, 0x80, 0) | (exponent << 4) | mantissa
    return (~code & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = _ALL_CODES ^ 0x55
    mantissa = a & 0x0F
    segment = (a >> 4) & 0x07
    t = np.where(segment == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(segment - 1, 0))
    out = np.where(a & 0x80, t, -t)
    return out.astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    s = _ALL_SAMPLES
    positive = s >= 0
    mag = np.where(positive, s, -s - 1) >> 3  # 13-bit magnitude, 0..4095
    segment = np.zeros_like(mag)
    for end in (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF):
        segment += mag > end
    mantissa = np.where(segment < 2, mag >> 1, mag >> segment) & 0x0F
    code = ((segment << 4) | mantissa) ^ np.where(positive, 0xD5, 0x55)
    return code.astype(np.uint8)


ULAW_DECODE_TABLE: npt.NDArray[np.int16] = _build_ulaw_decode()
ULAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_ulaw_encode()
ALAW_DECODE_TABLE: npt.NDArray[np.int16] = _build_alaw_decode()
ALAW_ENCODE_TABLE: npt.NDArray[np.uint8] = _build_alaw_encode()
for _table in (ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE, ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE):
    _table.flags.writeable = False
del _table


def _decode(table: npt.NDArray[np.int16], payload: bytes) -> PcmArray:
    codes = np.frombuffer(payload, dtype=np.uint8)
    return table[codes]


def _encode(table: npt.NDArray[np.uint8], pcm: PcmArray) -> bytes:
    samples = as_mono_int16(pcm)
    return table[samples.view(np.uint16)].tobytes()


class PcmuDecoder(Decoder):
    info = PCMU_INFO

    def decode(self, payload: bytes) -> PcmArray:
        return _decode(ULAW_DECODE_TABLE, payload)


class PcmuEncoder(Encoder):
    info = PCMU_INFO

    def encode(self, pcm: PcmArray) -> bytes:
        return _encode(ULAW_ENCODE_TABLE, pcm)


class PcmaDecoder(Decoder):
    info = PCMA_INFO

    def decode(self, payload: bytes) -> PcmArray:
        return _decode(ALAW_DECODE_TABLE, payload)


class PcmaEncoder(Encoder):
    info = PCMA_INFO

    def encode(self, pcm: PcmArray) -> bytes:
        return _encode(ALAW_ENCODE_TABLE, pcm)


PCMU = Codec(info=PCMU_INFO, encoder_class=PcmuEncoder, decoder_class=PcmuDecoder)
PCMA = Codec(info=PCMA_INFO, encoder_class=PcmaEncoder, decoder_class=PcmaDecoder)
register_codec(PCMU)
register_codec(PCMA)
