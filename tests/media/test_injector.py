"""Injector: RTP numbering, timestamps that follow time, marker bits, pacing, barge-in, round trip."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from pbx_edge.media.codecs import get_codec, known_codecs
from pbx_edge.media.injector import DEFAULT_MAX_BURST, Injector
from pbx_edge.media.rtp import RtpPacket, seq_distance, ts_distance

TONE_HZ = 440.0
# Measured: a half-scale 440 Hz tone at 16 kHz, injected and decoded back, peaks at 440.01 Hz and fits
# a pure sine to 36.9 dB as PCMU, 39.5 dB as PCMA, 35.5 dB as Opus (after its first 100 ms).
MIN_SNR_DB = {"PCMU": 33.0, "PCMA": 34.0, "opus": 28.0}


def tone(seconds: float, rate: int = 16000, amplitude: float = 0.5) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def peak_frequency(signal: npt.NDArray[np.float64], rate: int) -> float:
    """FFT peak of a Hann-windowed signal, refined by parabolic interpolation of the log magnitude."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(signal))


def sine_fit_snr(signal: npt.NDArray[np.float64], rate: int) -> float:
    t = np.arange(len(signal)) / rate
    basis = np.stack([np.sin(2 * np.pi * TONE_HZ * t), np.cos(2 * np.pi * TONE_HZ * t)], axis=1)
    coefficients, *_ = np.linalg.lstsq(basis, signal, rcond=None)
    fitted = basis @ coefficients
    return float(10 * np.log10(np.sum(fitted**2) / np.sum((signal - fitted) ** 2)))


def make(codec_name: str = "PCMU", pt: int = 0, **kwargs: object) -> Injector:
    options: dict[str, object] = {
        "ssrc": 0xABCDEF01,
        "initial_sequence": 65530,
        "initial_timestamp": 2**32 - 500,
    }
    options.update(kwargs)
    return Injector(get_codec(codec_name), pt, **options)  # type: ignore[arg-type]


def run(injector: Injector, start: float, until: float, step: float = 0.02) -> list[tuple[float, RtpPacket]]:
    """Drive ``packets_due`` every ``step`` from ``start`` to ``until``; (time, packet) pairs."""
    out: list[tuple[float, RtpPacket]] = []
    for k in range(round((until - start) / step) + 1):
        now = start + k * step
        out.extend((now, RtpPacket.parse(p)) for p in injector.packets_due(now))
    return out


def decode(codec_name: str, packets: list[RtpPacket]) -> npt.NDArray[np.float64]:
    decoder = get_codec(codec_name).new_decoder()
    return np.concatenate([decoder.decode(p.payload) for p in packets]).astype(np.float64)


def check_continuous(packets: list[RtpPacket], ticks: int) -> None:
    """Consecutive sequence numbers; timestamps +``ticks`` each (wrapping)."""
    for a, b in itertools.pairwise(packets):
        assert seq_distance(a.sequence_number, b.sequence_number) == 1
        assert ts_distance(a.timestamp, b.timestamp) == ticks


# --- a whole prompt ---


@pytest.mark.parametrize(("codec_name", "pt"), [("PCMU", 0), ("PCMA", 8)])
def test_tone_round_trip(codec_name: str, pt: int) -> None:
    injector = make(codec_name, pt)
    assert injector.play(tone(1.0)) == pytest.approx(1000.0)
    assert injector.playing
    sent = run(injector, 10.0, 12.0)
    packets = [p for _, p in sent]
    assert len(packets) == 50
    assert not injector.playing
    assert all(p.payload_type == pt and p.ssrc == 0xABCDEF01 and len(p.payload) == 160 for p in packets)
    assert packets[0].sequence_number == 65530 and packets[-1].sequence_number == (65530 + 49) & 0xFFFF
    check_continuous(packets, 160)
    assert [p.marker for p in packets] == [True] + [False] * 49
    assert [t for t, _ in sent] == pytest.approx([10.0 + 0.02 * k for k in range(50)])
    audio = decode(codec_name, packets)
    assert len(audio) == 8000
    assert abs(peak_frequency(audio, 8000) - TONE_HZ) < 2.0
    assert sine_fit_snr(audio[160:-160], 8000) > MIN_SNR_DB[codec_name]


def test_timestamps_follow_the_clock() -> None:
    """Timestamp = base + (slot time - clock origin) * 8000, so RTP time and wall time agree."""
    injector = make(clock=100.0)
    injector.play(tone(0.2))
    packets = run(injector, 101.5, 102.0)
    first = packets[0][1]
    assert ts_distance(2**32 - 500, first.timestamp) == 1.5 * 8000


def test_last_partial_frame_is_padded_with_silence() -> None:
    injector = make()
    injector.play(tone(0.03))  # 1.5 packets
    packets = [p for _, p in run(injector, 0.0, 0.2)]
    assert len(packets) == 2
    tail = decode("PCMU", packets)[240:]
    assert np.max(np.abs(tail)) <= 8  # the µ-law code closest to zero decodes to +-8 at most


def test_input_formats() -> None:
    pcm = tone(0.1)
    by_array, by_bytes, by_float = make(), make(), make()
    by_array.play(pcm)
    by_bytes.play(pcm.astype("<i2").tobytes())
    by_float.play(pcm.astype(np.float64) / 32767)
    payloads = [[p.payload for _, p in run(inj, 0.0, 0.2)] for inj in (by_array, by_bytes, by_float)]
    assert payloads[0] == payloads[1]
    assert len(payloads[2]) == len(payloads[0]) == 5
    narrowband = make()
    source = tone(0.1, rate=8000)
    narrowband.play(source, sample_rate=8000)  # the codec's own rate: no resampling, a copy
    source[:] = 0
    assert decode("PCMU", [p for _, p in run(narrowband, 0.0, 0.2)]).max() > 10000


def test_bad_arguments() -> None:
    codec = get_codec("PCMU")
    with pytest.raises(ValueError, match="payload type"):
        Injector(codec, 128)
    with pytest.raises(ValueError, match="max_burst"):
        Injector(codec, 0, max_burst=0)
    injector = Injector(codec, 0)
    assert 0 <= injector.ssrc < 2**32
    with pytest.raises(ValueError, match="even number of bytes"):
        injector.play(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="mono"):
        injector.play(np.zeros((10, 2), dtype=np.int16))
    with pytest.raises(TypeError, match="int16 or float"):
        injector.play(np.zeros(10, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample rate"):
        injector.play(tone(0.1), sample_rate=0)
    assert not injector.playing


# --- pacing ---


def test_pacing_first_packet_at_once_then_one_per_slot() -> None:
    injector = make()
    assert injector.next_due() is None
    injector.play(tone(0.2))
    assert injector.next_due() == 0.0  # at once
    assert len(injector.packets_due(5.0)) == 1
    assert injector.next_due() == pytest.approx(5.02)
    assert injector.packets_due(5.01) == []
    assert len(injector.packets_due(5.02)) == 1
    assert len(injector.packets_due(5.055)) == 1  # the 5.04 slot, late
    assert injector.packets_due(5.058) == []
    assert len(injector.packets_due(5.0595)) == 1  # the 5.06 slot: up to 1 ms early is in time
    assert len(injector.packets_due(5.12)) == 3  # 5.08, 5.10, 5.12: a late driver catches up


def test_stalled_driver_catches_up_a_few_packets_only() -> None:
    injector = make()
    injector.play(tone(1.0))
    first = [RtpPacket.parse(p) for p in injector.packets_due(0.0)]
    burst = [RtpPacket.parse(p) for p in injector.packets_due(0.5)]  # 25 slots due
    assert len(burst) == DEFAULT_MAX_BURST
    skipped = 25 - DEFAULT_MAX_BURST
    assert injector.slots_skipped == skipped
    # No audio is lost, but the timestamps keep to the clock: they jump over the skipped slots.
    assert seq_distance(first[0].sequence_number, burst[0].sequence_number) == 1
    assert ts_distance(first[0].timestamp, burst[0].timestamp) == (1 + skipped) * 160
    check_continuous(burst, 160)
    assert not any(p.marker for p in burst)
    rest = [p for _, p in run(injector, 0.52, 2.0)]
    assert 1 + len(burst) + len(rest) == 50
    assert ts_distance(burst[-1].timestamp, rest[0].timestamp) == 160


def test_marker_survives_a_stall_before_the_first_packet() -> None:
    injector = make()
    injector.play(tone(0.1))
    injector.packets_due(0.0)
    injector.stop()
    injector.play(tone(1.0))
    assert injector.packets_due(0.01) == []  # the spurt waits for the 0.02 slot...
    burst = [RtpPacket.parse(p) for p in injector.packets_due(1.0)]  # ...and the driver stalls
    assert [p.marker for p in burst] == [True, False, False]


def test_two_plays_with_a_pause() -> None:
    injector = make()
    injector.play(tone(0.1))
    first = [p for _, p in run(injector, 0.0, 0.5)]
    assert len(first) == 5 and not injector.playing
    injector.play(tone(0.1))
    second = [p for _, p in run(injector, 1.0, 1.5)]
    assert len(second) == 5
    # Sequence numbers go on; the timestamp jumps by the 1 s pause; a new talk spurt is marked.
    check_continuous(first, 160)
    check_continuous(second, 160)
    assert seq_distance(first[-1].sequence_number, second[0].sequence_number) == 1
    assert ts_distance(first[0].timestamp, second[0].timestamp) == 8000
    assert [p.marker for p in first + second] == [True, False, False, False, False] * 2
    assert injector.talk_spurts == 2


def test_play_queued_before_the_next_slot_continues_the_spurt() -> None:
    """Prompts chained from on_finished play back to back: no marker, no timestamp gap."""
    finished: list[float] = []
    injector = make()

    def next_prompt() -> None:
        finished.append(0.0)
        if len(finished) == 1:
            injector.play(tone(0.1))

    injector.on_finished = next_prompt
    injector.play(tone(0.1))
    packets = [p for _, p in run(injector, 0.0, 1.0)]
    assert len(packets) == 10
    check_continuous(packets, 160)
    assert [p.marker for p in packets] == [True] + [False] * 9
    assert len(finished) == 2
    assert injector.talk_spurts == 1


def test_play_after_an_empty_slot_is_a_new_spurt() -> None:
    injector = make()
    injector.play(tone(0.04))
    assert len(run(injector, 0.0, 0.06)) == 2  # the 0.04 and 0.06 slots pass with nothing to send
    injector.play(tone(0.04))
    later = [p for _, p in run(injector, 0.07, 0.2, step=0.01)]
    assert [p.marker for p in later] == [True, False]
    assert injector.talk_spurts == 2


# --- barge-in ---


def test_stop_drops_everything_at_once() -> None:
    finished: list[bool] = []
    injector = make(on_finished=lambda: finished.append(True))
    injector.play(tone(1.0))
    sent = [p for _, p in run(injector, 0.0, 0.18)]
    assert len(sent) == 10
    dropped = injector.stop()
    assert 795 <= dropped <= 805  # 800 ms, give or take the resampler's held-back samples
    assert not injector.playing
    assert injector.packets_due(0.2) == []
    assert injector.stop() == 0
    assert finished == []  # stop() is not a natural end
    # Speaking again later: a new spurt, sequence continuous, timestamp by elapsed time.
    injector.play(tone(0.1))
    again = [p for _, p in run(injector, 0.5, 1.0)]
    assert len(again) == 5 and again[0].marker
    assert seq_distance(sent[-1].sequence_number, again[0].sequence_number) == 1
    assert ts_distance(sent[0].timestamp, again[0].timestamp) == 0.5 * 8000
    assert finished == [True]


def test_play_right_after_stop_waits_for_the_next_slot() -> None:
    """Never two packets in one 20 ms slot, even across a stop."""
    injector = make()
    injector.play(tone(1.0))
    first = RtpPacket.parse(injector.packets_due(0.0)[0])
    injector.stop()
    injector.play(tone(0.1))
    assert injector.packets_due(0.005) == []
    [second] = [RtpPacket.parse(p) for p in injector.packets_due(0.02)]
    assert second.marker
    assert ts_distance(first.timestamp, second.timestamp) == 160


# --- Opus ---


def test_opus_round_trip() -> None:
    pytest.importorskip("pbx_edge.media.codecs.opus")
    if "OPUS" not in known_codecs():
        pytest.skip("Opus codec not registered (opuslib/libopus missing)")
    injector = make("opus", 111)
    assert (injector.clock_rate, injector.frame_samples, injector.frame_ticks) == (48000, 960, 960)
    injector.play(tone(1.2))
    packets = [p for _, p in run(injector, 0.0, 2.0)]
    assert len(packets) == 60
    check_continuous(packets, 960)
    audio = decode("opus", packets)
    analysed = audio[4800 : 4800 + 48000]
    assert abs(peak_frequency(analysed, 48000) - TONE_HZ) < 2.0
    assert sine_fit_snr(analysed, 48000) > MIN_SNR_DB["opus"]
