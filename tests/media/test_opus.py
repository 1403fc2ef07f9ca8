"""Opus (RFC 7587): round trip of a tone (frequency and SNR), concealment, FEC, errors, registry."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pbx_edge.media.codecs import (
    OPUS,
    CodecInfo,
    OpusDecoder,
    OpusEncoder,
    OpusUnavailableError,
    get_codec,
    known_codecs,
    opus_available,
)
from pbx_edge.media.codecs import opus as opus_module

needs_opus = pytest.mark.skipif(not opus_available(), reason="opuslib/libopus not installed")

RATE = 48000
FRAME = 960  # 20 ms
TONE_HZ = 440.0
# Measured with the defaults (24 kbit/s, complexity 5, VoIP) on libopus 1.3.1: 32.0 dB for this tone.
MIN_SNR_DB = 25.0


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def encode_all(pcm: npt.NDArray[np.int16], encoder: OpusEncoder) -> list[bytes]:
    """Encode ``pcm`` 20 ms at a time (a trailing partial frame is left out)."""
    return [encoder.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def peak_frequency(signal: npt.NDArray[np.float64]) -> float:
    """FFT peak of a Hann-windowed signal, refined by parabolic interpolation of the log magnitude."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / len(signal))


def best_aligned_snr(output: npt.NDArray[np.float64], reference: npt.NDArray[np.int16], start: int) -> float:
    """SNR in dB of ``output[start:]`` against the reference shifted by the lag that fits it best."""
    seg = output[start:]
    best_error = min(
        float(np.sum((seg - reference[start - lag : start - lag + len(seg)]) ** 2)) for lag in range(1000)
    )
    signal_energy = float(np.sum(reference[start : start + len(seg)].astype(np.float64) ** 2))
    return float(10 * np.log10(signal_energy / best_error))


# --- round trip ---


@needs_opus
def test_tone_round_trip_keeps_frequency_and_snr() -> None:
    reference = tone(TONE_HZ, 1.2)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets = encode_all(reference, encoder)
    assert len(packets) == 60
    assert all(0 < len(p) < 200 for p in packets)
    frames = [decoder.decode(p) for p in packets]
    assert all(f.dtype == np.int16 and f.shape == (FRAME,) for f in frames)
    output = np.concatenate(frames).astype(np.float64)
    start = RATE // 10  # skip the encoder's look-ahead and the decoder's start-up
    analysed = output[start : start + RATE]  # 1 s: 1 Hz bins
    assert abs(peak_frequency(analysed) - TONE_HZ) < 2.0
    assert best_aligned_snr(output[: start + RATE], reference, start) > MIN_SNR_DB


@needs_opus
def test_bitrate_steers_packet_size() -> None:
    reference = tone(TONE_HZ, 0.6)
    low = encode_all(reference, OpusEncoder(bitrate=12000))
    high = encode_all(reference, OpusEncoder(bitrate=48000))
    assert sum(map(len, low)) < sum(map(len, high))


@needs_opus
@pytest.mark.parametrize("samples", [120, 480, 960, 2880])
def test_encoder_accepts_every_opus_frame_size(samples: int) -> None:
    packet = OpusEncoder().encode(tone(TONE_HZ, samples / RATE))
    assert len(OpusDecoder().decode(packet)) == samples


@needs_opus
def test_stereo_stream_decodes_to_mono() -> None:
    opuslib = pytest.importorskip("opuslib")
    stereo = opuslib.Encoder(RATE, 2, "voip")
    left, right = tone(TONE_HZ, 0.02), tone(660.0, 0.02)
    packet = stereo.encode(np.column_stack([left, right]).tobytes(), FRAME)
    pcm = OpusDecoder().decode(packet)
    assert pcm.dtype == np.int16
    assert pcm.shape == (FRAME,)


@needs_opus
def test_dtx_shrinks_silence() -> None:
    encoder = OpusEncoder(dtx=True)
    packets = [encoder.encode(np.zeros(FRAME, dtype=np.int16)) for _ in range(30)]
    assert min(map(len, packets)) <= 2


# --- concealment ---


@needs_opus
@pytest.mark.parametrize("samples", [0, 120, 960, 1000, 5760, 12000])
def test_conceal_returns_the_requested_length(samples: int) -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    for packet in encode_all(tone(TONE_HZ, 0.2), encoder):
        decoder.decode(packet)
    filled = decoder.conceal(samples)
    assert filled.dtype == np.int16
    assert filled.shape == (samples,)


@needs_opus
def test_conceal_continues_the_tone_then_decoding_resumes() -> None:
    reference = tone(TONE_HZ, 0.4)
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets = encode_all(reference, encoder)
    for packet in packets[:10]:
        decoder.decode(packet)
    filled = decoder.conceal(FRAME)
    assert np.sqrt(np.mean(filled.astype(np.float64) ** 2)) > 1000  # PLC extends the tone, not silence
    assert decoder.decode(packets[11]).shape == (FRAME,)


def chirp(seconds: float) -> npt.NDArray[np.int16]:
    """A 200-500 Hz sweep: unlike a steady tone, plain concealment cannot predict it."""
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(8000 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.int16)


def lost_frame_snr(packets: list[bytes], lost: int, *, use_fec: bool) -> float:
    """SNR in dB of the concealed packet ``lost`` against the same packet decoded normally."""
    clean_decoder, lossy_decoder = OpusDecoder(), OpusDecoder()
    clean = [clean_decoder.decode(p) for p in packets[: lost + 1]][lost].astype(np.float64)
    for packet in packets[:lost]:
        lossy_decoder.decode(packet)
    filled = lossy_decoder.conceal(FRAME, next_payload=packets[lost + 1] if use_fec else None)
    assert filled.shape == (FRAME,)
    assert lossy_decoder.decode(packets[lost + 1]).shape == (FRAME,)
    error = filled.astype(np.float64) - clean
    return float(10 * np.log10(np.sum(clean**2) / np.sum(error**2)))


@needs_opus
def test_conceal_with_fec_from_the_next_packet_beats_plain_concealment() -> None:
    packets = encode_all(chirp(0.6), OpusEncoder(fec=True, packet_loss_percent=20))
    with_fec = lost_frame_snr(packets, 20, use_fec=True)
    without = lost_frame_snr(packets, 20, use_fec=False)
    # Measured on libopus 1.3.1: 22.1 dB with FEC, 3.2 dB without.
    assert with_fec > 15.0
    assert with_fec > without + 10.0


@needs_opus
def test_conceal_with_fec_spanning_several_packets() -> None:
    encoder, decoder = OpusEncoder(fec=True, packet_loss_percent=20), OpusDecoder()
    packets = encode_all(tone(TONE_HZ, 0.6), encoder)
    for packet in packets[:20]:
        decoder.decode(packet)
    recovered = decoder.conceal(2 * FRAME, next_payload=packets[22])  # packets 20 and 21 lost
    assert recovered.shape == (2 * FRAME,)
    assert decoder.decode(packets[22]).shape == (FRAME,)


@needs_opus
def test_conceal_rejects_negative_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        OpusDecoder().conceal(-1)


# --- errors ---


@needs_opus
@pytest.mark.parametrize("payload", [b"\xff", b"\x03", b"\x0b\x00", b"\x03\x00"])
def test_corrupt_payload_raises_value_error(payload: bytes) -> None:
    decoder = OpusDecoder()
    with pytest.raises(ValueError, match="invalid Opus packet: corrupted stream"):
        decoder.decode(payload)
    good = OpusEncoder().encode(tone(TONE_HZ, 0.02))
    assert decoder.decode(good).shape == (FRAME,)  # the decoder is still usable


@needs_opus
def test_empty_payload_raises_value_error() -> None:
    with pytest.raises(ValueError, match="empty Opus payload"):
        OpusDecoder().decode(b"")


@needs_opus
def test_encoder_input_validation() -> None:
    encoder = OpusEncoder()
    with pytest.raises(ValueError, match="Opus frame must be one of"):
        encoder.encode(np.zeros(1000, dtype=np.int16))
    with pytest.raises(TypeError, match="int16"):
        encoder.encode(np.zeros(FRAME, dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        encoder.encode(np.zeros((FRAME, 2), dtype=np.int16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bitrate": 1000}, "bitrate"),
        ({"complexity": 11}, "complexity"),
        ({"packet_loss_percent": -1}, "packet_loss_percent"),
    ],
)
def test_encoder_parameter_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpusEncoder(**kwargs)


# --- registry and availability ---


def test_codec_info_follows_rfc_7587() -> None:
    assert CodecInfo("opus", 111, 48000, 48000, 2) == OPUS.info
    assert OpusEncoder.info is OPUS.info
    assert OpusDecoder.info is OPUS.info


@needs_opus
@pytest.mark.parametrize("rtpmap", ["opus/48000/2", "OPUS/48000/2", "Opus/48000/2"])
def test_registry_resolves_the_sdp_rtpmap(rtpmap: str) -> None:
    name, clock, channels = rtpmap.split("/")
    codec = get_codec(name)
    assert codec is OPUS
    assert (codec.info.clock_rate, codec.info.channels) == (int(clock), int(channels))
    assert isinstance(codec.new_decoder(), OpusDecoder)
    assert isinstance(codec.new_encoder(), OpusEncoder)
    assert "OPUS" in known_codecs()


def test_missing_libopus_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus_module, "_load_opuslib", lambda: None)
    assert not opus_module.opus_available()
    with pytest.raises(OpusUnavailableError, match="pip install opuslib"):
        OpusDecoder()
    with pytest.raises(OpusUnavailableError, match="libopus"):
        OpusEncoder()


def test_codecs_package_imports_without_opuslib() -> None:
    code = (
        "import sys; sys.modules['opuslib'] = None\n"
        "from pbx_edge.media.codecs import known_codecs, opus_available\n"
        "assert not opus_available()\n"
        "assert 'OPUS' not in known_codecs() and 'PCMU' in known_codecs()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
