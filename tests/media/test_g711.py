"""G.711 PCMU/PCMA: lookup tables against a scalar reference, round trips, known values, SNR."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from pbx_edge.media.codecs import (
    PCMA,
    PCMU,
    CodecInfo,
    Decoder,
    Encoder,
    PcmaDecoder,
    PcmaEncoder,
    PcmuDecoder,
    PcmuEncoder,
    g711,
    get_codec,
    known_codecs,
)

# --- straightforward scalar reference of ITU-T G.711 (16-bit formulation of the Sun/G.191 code) ---

_BIAS = 0x84
_CLIP = 32635


def ref_ulaw_encode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0x00
    mag = -sample if sample < 0 else sample
    mag = min(mag, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not mag & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + _BIAS) << ((code & 0x70) >> 4)
    return _BIAS - t if code & 0x80 else t - _BIAS


_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ref_alaw_encode(sample: int) -> int:
    pcm = sample >> 3  # 13-bit, arithmetic shift
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = 0
    while seg < 8 and pcm > _SEG_AEND[seg]:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def ref_alaw_decode(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if code & 0x80 else -t


ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = bytes(range(256))


# --- tables against the reference ---


def test_ulaw_decode_table_matches_reference() -> None:
    assert g711.ULAW_DECODE_TABLE.dtype == np.int16
    assert g711.ULAW_DECODE_TABLE.shape == (256,)
    assert [int(v) for v in g711.ULAW_DECODE_TABLE] == [ref_ulaw_decode(c) for c in range(256)]


def test_alaw_decode_table_matches_reference() -> None:
    assert g711.ALAW_DECODE_TABLE.dtype == np.int16
    assert [int(v) for v in g711.ALAW_DECODE_TABLE] == [ref_alaw_decode(c) for c in range(256)]


def test_ulaw_encode_table_matches_reference_for_every_int16() -> None:
    assert g711.ULAW_ENCODE_TABLE.dtype == np.uint8
    assert g711.ULAW_ENCODE_TABLE.shape == (65536,)
    got = PcmuEncoder().encode(ALL_INT16)
    assert got == bytes(ref_ulaw_encode(int(s)) for s in ALL_INT16)


def test_alaw_encode_table_matches_reference_for_every_int16() -> None:
    assert g711.ALAW_ENCODE_TABLE.dtype == np.uint8
    assert g711.ALAW_ENCODE_TABLE.shape == (65536,)
    got = PcmaEncoder().encode(ALL_INT16)
    assert got == bytes(ref_alaw_encode(int(s)) for s in ALL_INT16)


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_DECODE_TABLE[0] = 1


# --- known values ---


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8)],
)
def test_ulaw_known_values(code: int, value: int) -> None:
    assert ref_ulaw_decode(code) == value
    assert int(PcmuDecoder().decode(bytes([code]))[0]) == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x54, -24)],
)
def test_alaw_known_values(code: int, value: int) -> None:
    assert ref_alaw_decode(code) == value
    assert int(PcmaDecoder().decode(bytes([code]))[0]) == value


def test_silence_encodes_to_idle_codes() -> None:
    zeros = np.zeros(160, dtype=np.int16)
    assert PcmuEncoder().encode(zeros) == b"\xff" * 160
    assert PcmaEncoder().encode(zeros) == b"\xd5" * 160


# --- round trips ---


@pytest.mark.parametrize(
    ("encoder", "decoder"), [(PcmuEncoder(), PcmuDecoder()), (PcmaEncoder(), PcmaDecoder())]
)
def test_codes_round_trip(encoder: Encoder, decoder: Decoder) -> None:
    """encode(decode(c)) == c for every code, except µ-law's negative zero 0x7F (-> 0xFF)."""
    back = encoder.encode(decoder.decode(ALL_CODES))
    expected = bytearray(ALL_CODES)
    if isinstance(encoder, PcmuEncoder):
        expected[0x7F] = 0xFF
    assert back == bytes(expected)


def _ulaw_half_step(code: int) -> int:
    exponent = ((~code & 0xFF) >> 4) & 0x07
    return 1 << (exponent + 2)


def _alaw_half_step(code: int) -> int:
    seg = ((code ^ 0x55) >> 4) & 0x07
    return 8 if seg == 0 else 1 << (seg + 2)


def test_ulaw_round_trip_error_bounded_by_segment() -> None:
    codes = np.frombuffer(PcmuEncoder().encode(ALL_INT16), dtype=np.uint8)
    decoded = PcmuDecoder().decode(codes.tobytes()).astype(np.int32)
    error = np.abs(decoded - ALL_INT16.astype(np.int32))
    bound = np.array([_ulaw_half_step(c) for c in range(256)], dtype=np.int32)[codes]
    in_range = np.abs(ALL_INT16.astype(np.int32)) <= _CLIP
    assert np.all(error[in_range] <= bound[in_range])
    # beyond the clip level the output saturates at ±32124
    assert np.all(np.abs(decoded[~in_range]) == 32124)
    assert int(error.max()) == 32768 - 32124


def test_alaw_round_trip_error_bounded_by_segment() -> None:
    codes = np.frombuffer(PcmaEncoder().encode(ALL_INT16), dtype=np.uint8)
    decoded = PcmaDecoder().decode(codes.tobytes()).astype(np.int32)
    error = np.abs(decoded - ALL_INT16.astype(np.int32))
    bound = np.array([_alaw_half_step(c) for c in range(256)], dtype=np.int32)[codes]
    assert np.all(error <= bound)
    # small signals: step 16 in 16-bit units
    small = np.abs(ALL_INT16.astype(np.int32)) < 256
    assert int(error[small].max()) <= 8


def test_decode_is_monotonic() -> None:
    for decoder, encoder in ((PcmuDecoder(), PcmuEncoder()), (PcmaDecoder(), PcmaEncoder())):
        decoded = decoder.decode(encoder.encode(ALL_INT16)).astype(np.int32)
        assert np.all(np.diff(decoded) >= 0)


def _snr_db(reference: npt.NDArray[np.int16], degraded: npt.NDArray[np.int16]) -> float:
    ref = reference.astype(np.float64)
    noise = degraded.astype(np.float64) - ref
    return 10.0 * math.log10(float(np.sum(ref**2)) / float(np.sum(noise**2)))


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
@pytest.mark.parametrize("amplitude", [0.5, 0.05])
def test_440hz_tone_snr(name: str, amplitude: float) -> None:
    codec = get_codec(name)
    rate = codec.info.sample_rate
    t = np.arange(rate) / rate
    tone = np.round(amplitude * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    encoder, decoder = codec.new_encoder(), codec.new_decoder()
    # 20 ms packets, as the relay would see them
    out = np.concatenate(
        [decoder.decode(encoder.encode(tone[i : i + 160])) for i in range(0, len(tone), 160)]
    )
    assert out.dtype == np.int16
    assert out.shape == tone.shape
    snr = _snr_db(tone, out)
    assert snr > 30.0, f"{name} SNR {snr:.1f} dB"
    assert snr < 45.0  # sanity: the quantisation noise is real


# --- API ---


def test_decode_output_shape_and_type() -> None:
    pcm = PcmuDecoder().decode(b"\xff" * 160)
    assert pcm.dtype == np.int16
    assert pcm.shape == (160,)
    assert PcmaDecoder().decode(b"").shape == (0,)
    assert PcmuEncoder().encode(np.zeros(0, dtype=np.int16)) == b""


def test_decode_output_is_writable_copy() -> None:
    pcm = PcmuDecoder().decode(b"\x00\x01")
    pcm[0] = 1  # not a view on the read-only table
    assert int(g711.ULAW_DECODE_TABLE[0]) == -32124


def test_encode_accepts_non_contiguous_input() -> None:
    pcm = np.arange(-1000, 1000, dtype=np.int16)
    assert PcmaEncoder().encode(pcm[::2]) == PcmaEncoder().encode(pcm[::2].copy())


def test_encode_rejects_wrong_dtype_and_shape() -> None:
    with pytest.raises(TypeError):
        PcmuEncoder().encode(np.zeros(10, dtype=np.float32))
    with pytest.raises(TypeError):
        PcmuEncoder().encode([0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mono"):
        PcmaEncoder().encode(np.zeros((10, 2), dtype=np.int16))


def test_codec_info() -> None:
    assert PCMU.info == CodecInfo("PCMU", 0, 8000, 8000, 1)
    assert PCMA.info == CodecInfo("PCMA", 8, 8000, 8000, 1)
    assert PcmuEncoder.info is PCMU.info
    assert PcmaDecoder.info is PCMA.info
    with pytest.raises(AttributeError):
        PCMU.info.payload_type = 3  # type: ignore[misc]


def test_registry_is_case_insensitive() -> None:
    assert get_codec("PCMU") is PCMU
    assert get_codec("pcmu") is PCMU
    assert get_codec("PcMa") is PCMA
    assert isinstance(get_codec("pcma").new_decoder(), PcmaDecoder)
    assert isinstance(get_codec("pcmu").new_encoder(), PcmuEncoder)
    assert {"PCMU", "PCMA"} <= set(known_codecs())


def test_registry_unknown_codec_lists_known_names() -> None:
    with pytest.raises(KeyError) as excinfo:
        get_codec("g729")
    message = str(excinfo.value)
    assert "g729" in message
    assert "PCMA" in message
    assert "PCMU" in message
