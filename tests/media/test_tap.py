"""Decoded-audio tap: RTP in, exact 20 ms 16 kHz frames out; DTMF, segments, queues, payload maps."""

from __future__ import annotations

import asyncio
import itertools
import struct
import time

import numpy as np
import numpy.typing as npt
import pytest

from pbx_edge.media.codecs import get_codec, known_codecs
from pbx_edge.media.dtmf import TelephoneEvent
from pbx_edge.media.interface import Side
from pbx_edge.media.payload_types import (
    STATIC_PAYLOAD_TYPES,
    audio_payload_types,
    media_payload_types,
    parse_rtpmap,
    sample_rate_for,
)
from pbx_edge.media.rtp import RtcpRrPacket, RtpPacket
from pbx_edge.media.sdp import SessionDescription
from pbx_edge.media.tap import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    LegTap,
    TapFanout,
    TapFrame,
    TapQueue,
    TapQueueClosed,
)

TONE_HZ = 440.0
TAP_RATE = 16000
PT_EVENT = 101
G711_MAP = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    PT_EVENT: ("telephone-event", 8000, 1),
    13: ("CN", 8000, 1),
}

# Measured on a half-scale 440 Hz tone through the tap (sine-fit SNR of the 16 kHz output):
# PCMU 37.3 dB, PCMA 38.5 dB, Opus 36.7 dB (after its first 200 ms). With one packet lost and
# concealed (repeat with fade) the whole 2 s measure 19.0 dB; the rest of the signal keeps its SNR.
MIN_SNR_DB = {"PCMU": 33.0, "PCMA": 34.0, "opus": 28.0}
MIN_SNR_WITH_LOSS_DB = 15.0


# --- signal helpers ---


def tone(seconds: float, rate: int, freq: float = TONE_HZ, amplitude: float = 0.5) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_frequency(signal: npt.NDArray[np.float64], rate: int = TAP_RATE) -> float:
    """FFT peak of a Hann-windowed signal, refined by parabolic interpolation of the log magnitude."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(signal))


def sine_fit_snr(signal: npt.NDArray[np.float64], freq: float = TONE_HZ, rate: int = TAP_RATE) -> float:
    """SNR in dB against the sine of ``freq`` (any amplitude and phase) that fits ``signal`` best."""
    t = np.arange(len(signal)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coefficients, *_ = np.linalg.lstsq(basis, signal, rcond=None)
    fitted = basis @ coefficients
    return float(10 * np.log10(np.sum(fitted**2) / np.sum((signal - fitted) ** 2)))


def samples_of(frames: list[TapFrame]) -> npt.NDArray[np.float64]:
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").astype(np.float64)


# --- RTP helpers ---


def rtp(pt: int, seq: int, ts: int, payload: bytes, ssrc: int = 0x1234, marker: bool = False) -> bytes:
    packet = RtpPacket(
        payload_type=pt,
        marker=marker,
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    )
    return bytes(packet)


def packetize(
    pcm: npt.NDArray[np.int16],
    codec_name: str,
    pt: int,
    *,
    seq: int = 65500,  # wraps inside the tests
    ts: int = 2**32 - 3000,  # wraps too
    ssrc: int = 0x1234,
) -> list[bytes]:
    """20 ms RTP packets of ``pcm`` (at the codec's rate); sequence and timestamp wrap around."""
    codec = get_codec(codec_name)
    encoder = codec.new_encoder()
    n = codec.info.sample_rate // 50
    ticks = codec.info.clock_rate // 50
    return [
        rtp(pt, seq + i, ts + i * ticks, encoder.encode(pcm[i * n : (i + 1) * n]), ssrc)
        for i in range(len(pcm) // n)
    ]


def event(seq: int, ts: int, digit: int, duration: int, *, end: bool = False, marker: bool = False) -> bytes:
    payload = TelephoneEvent(event=digit, end=end, volume=10, duration=duration).serialize()
    return rtp(PT_EVENT, seq, ts, payload, marker=marker)


class Capture:
    """A tap with everything it emits collected."""

    def __init__(self, payload_types: dict[int, tuple[str, int, int]] = G711_MAP, **kwargs: float) -> None:
        self.frames: list[TapFrame] = []
        self.digits: list[tuple[str, Side, float]] = []
        self.tap = LegTap(
            Side.CALLER,
            payload_types,
            self.frames.append,
            lambda digit, leg, when: self.digits.append((digit, leg, when)),
            **kwargs,  # type: ignore[arg-type]
        )

    def feed_all(self, packets: list[bytes], start: float = 0.0, step: float = 0.02) -> None:
        for i, packet in enumerate(packets):
            self.tap.feed(packet, start + i * step)


def check_frames(frames: list[TapFrame], leg: Side = Side.CALLER) -> None:
    """Frames are whole, numbered 0, 1, 2... and their media times go up by at least 20 ms."""
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(f.leg is leg and len(f.pcm) == FRAME_BYTES for f in frames)
    times = [f.media_time for f in frames]
    assert all(b - a >= 0.02 - 1e-9 for a, b in itertools.pairwise(times))
    arrivals = [f.arrival for f in frames]
    assert arrivals == sorted(arrivals)


# --- G.711 audio ---


@pytest.mark.parametrize(("codec_name", "pt"), [("PCMU", 0), ("PCMA", 8)])
def test_in_order_tone(codec_name: str, pt: int) -> None:
    cap = Capture()
    cap.feed_all(packetize(tone(2.0, 8000), codec_name, pt))
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert [f.media_time for f in cap.frames] == pytest.approx([0.02 * k for k in range(100)], abs=1e-9)
    signal = samples_of(cap.frames)
    assert abs(peak_frequency(signal[1600 : 1600 + TAP_RATE]) - TONE_HZ) < 2.0
    assert sine_fit_snr(signal[800:-800]) > MIN_SNR_DB[codec_name]
    stats = cap.tap.stats
    assert (stats.packets_in, stats.decoded, stats.frames_emitted) == (100, 100, 100)
    assert (stats.lost, stats.concealed_frames, stats.segments) == (0, 0, 1)


def test_frames_come_out_promptly() -> None:
    """An in-order stream adds no jitter-buffer delay; the resampler holds back 20 ms at most."""
    cap = Capture()
    cap.feed_all(packetize(tone(1.0, 8000), "PCMU", 0), start=100.0)
    assert len(cap.frames) >= 48  # before flush
    for frame in cap.frames:
        frame_end = 100.0 + frame.media_time + 0.02
        assert frame.arrival - frame_end <= 0.02 + 1e-9


@pytest.mark.parametrize(("codec_name", "pt"), [("PCMU", 0), ("PCMA", 8)])
def test_reordered_duplicated_and_lost_packets(codec_name: str, pt: int) -> None:
    packets = packetize(tone(2.0, 8000), codec_name, pt)
    order = list(range(100))
    order[20], order[21] = 21, 20  # 21 first: held for 20
    order.insert(21, 21)  # a duplicate of 21 while it waits in the buffer
    order.remove(50)  # lost
    cap = Capture()
    cap.feed_all([packets[i] for i in order])
    cap.tap.flush()
    assert len(cap.frames) == 100  # the lost packet was concealed, the timeline is whole
    check_frames(cap.frames)
    stats = cap.tap.stats
    assert (stats.duplicates, stats.lost, stats.late, stats.concealed_frames) == (1, 1, 0, 1)
    assert stats.decoded == 99
    signal = samples_of(cap.frames)
    assert abs(peak_frequency(signal[1600 : 1600 + TAP_RATE]) - TONE_HZ) < 2.0
    assert sine_fit_snr(signal[800:-800]) > MIN_SNR_WITH_LOSS_DB
    assert sine_fit_snr(signal[800 : 48 * FRAME_SAMPLES]) > MIN_SNR_DB[codec_name]  # before the loss


def test_g711_loss_is_concealed_by_repeating_with_a_fade() -> None:
    packets = packetize(tone(1.0, 8000), "PCMU", 0)
    del packets[25]
    cap = Capture()
    cap.feed_all(packets)
    cap.tap.flush()
    signal = samples_of(cap.frames)
    rms = [
        float(np.sqrt(np.mean(signal[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES] ** 2))) for k in (24, 25)
    ]
    # Frame 25 is the last packet again under a gain falling from 1 to 2/3 (60 ms fade): not silence.
    assert 0.7 * rms[0] < rms[1] < rms[0]


def test_late_packet_is_dropped() -> None:
    packets = packetize(tone(1.0, 8000), "PCMU", 0)
    order = list(range(50))
    order.remove(10)
    order.insert(20, 10)  # long after its slot was concealed
    cap = Capture()
    cap.feed_all([packets[i] for i in order])
    cap.tap.flush()
    assert len(cap.frames) == 50
    assert (cap.tap.stats.late, cap.tap.stats.lost) == (1, 1)


def test_loss_at_the_end_is_flushed() -> None:
    """A packet stuck behind a hole when the call ends is still played by flush()."""
    packets = packetize(tone(1.0, 8000), "PCMU", 0)
    cap = Capture()
    cap.feed_all(packets[:48] + packets[49:])  # 48 lost, 49 waits for it
    cap.tap.flush()
    assert len(cap.frames) == 50
    assert cap.tap.stats.decoded == 49


def test_silence_suppression_gap_is_filled() -> None:
    """A timestamp gap without a sequence gap (VAD/DTX) is filled: 200 ms -> 10 frames."""
    pcm = tone(2.0, 8000)
    first = packetize(pcm[:8000], "PCMU", 0, seq=0, ts=0)
    second = packetize(pcm[8000:], "PCMU", 0, seq=50, ts=8000 + 1600)
    cap = Capture()
    cap.feed_all(first)
    cap.feed_all(second, start=1.2)
    cap.tap.flush()
    assert len(cap.frames) == 110
    check_frames(cap.frames)
    assert cap.tap.stats.concealed_frames == 10
    assert cap.tap.stats.segments == 1


def test_comfort_noise_gap_is_silent() -> None:
    pcm = tone(2.0, 8000)
    first = packetize(pcm[:8000], "PCMU", 0, seq=0, ts=0)
    cn = rtp(13, 50, 8000, bytes([40]))
    second = packetize(pcm[8000:], "PCMU", 0, seq=51, ts=8000 + 1600)
    cap = Capture()
    cap.feed_all([*first, cn])
    cap.feed_all(second, start=1.2)
    cap.tap.flush()
    assert len(cap.frames) == 110
    gap = samples_of(cap.frames[52:58])  # well inside the 200 ms gap, clear of the filter's ringing
    assert np.max(np.abs(gap)) <= 2  # silence, but for libsoxr's TPDF dither of its int16 output


def test_unknown_payload_type_is_counted_and_concealed() -> None:
    packets = packetize(tone(1.0, 8000), "PCMU", 0)
    packets[25] = rtp(99, 65500 + 25, 2**32 - 3000 + 25 * 160, b"\x00" * 160)
    cap = Capture()
    cap.feed_all(packets)
    cap.tap.flush()
    assert len(cap.frames) == 50
    assert cap.tap.stats.unknown_pt == 1
    assert cap.tap.stats.lost == 1


def test_rtcp_garbage_and_unsupported_codecs_are_counted() -> None:
    cap = Capture({0: ("PCMU", 8000, 1), 18: ("G729", 8000, 1)})
    cap.tap.feed(bytes(RtcpRrPacket(ssrc=1)), 0.0)
    cap.tap.feed(b"\x00\x01garbage", 0.0)
    cap.tap.feed(b"\x80", 0.0)
    cap.tap.feed(rtp(18, 1, 160, b"\x00" * 20), 0.0)
    stats = cap.tap.stats
    assert (stats.packets_in, stats.rtcp, stats.malformed, stats.unsupported) == (4, 1, 2, 1)
    assert cap.frames == []


def test_codec_change_by_update_payload_types() -> None:
    """A re-INVITE moves the stream from PCMU to PCMA: same clock, same segment, new decoder."""
    pcm = tone(2.0, 8000)
    first = packetize(pcm[:8000], "PCMU", 0, seq=10, ts=1000)
    second = packetize(pcm[8000:], "PCMA", 8, seq=60, ts=1000 + 8000)
    cap = Capture({0: ("PCMU", 8000, 1)})
    cap.feed_all(first)
    cap.tap.update_payload_types({8: ("PCMA", 8000, 1)})
    cap.feed_all(second, start=1.0)
    cap.tap.flush()
    assert len(cap.frames) == 100
    assert (cap.tap.stats.segments, cap.tap.stats.decoded) == (1, 100)
    signal = samples_of(cap.frames)
    assert sine_fit_snr(signal[800:-800]) > MIN_SNR_DB["PCMU"]


# --- segments ---


@pytest.mark.parametrize("pause", [0.0, 3.0])
def test_ssrc_change_starts_a_new_segment(pause: float) -> None:
    pcm = tone(2.0, 8000)
    first = packetize(pcm[:8000], "PCMU", 0, seq=100, ts=1000, ssrc=1)
    second = packetize(pcm[8000:], "PCMU", 0, seq=40000, ts=9_000_000, ssrc=2)
    cap = Capture()
    cap.feed_all(first)
    cap.feed_all(second, start=1.0 + pause)
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert cap.tap.stats.segments == 2
    # The new segment starts where the first ended, plus the time the leg was silent.
    assert cap.frames[50].media_time == pytest.approx(1.0 + pause)
    assert cap.frames[99].media_time == pytest.approx(1.98 + pause)


def test_timestamp_jump_starts_a_new_segment() -> None:
    """Same SSRC, sequence continues, timestamps leap 10 s: not 10 s of fill, a new segment."""
    pcm = tone(2.0, 8000)
    first = packetize(pcm[:8000], "PCMU", 0, seq=100, ts=1000)
    second = packetize(pcm[8000:], "PCMU", 0, seq=150, ts=1000 + 8000 + 80000)
    cap = Capture()
    cap.feed_all(first)
    cap.feed_all(second, start=1.0)
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert cap.tap.stats.segments == 2
    assert cap.tap.stats.concealed_frames == 0
    assert cap.frames[50].media_time == pytest.approx(1.0)


def test_timestamp_going_backwards_starts_a_new_segment() -> None:
    pcm = tone(1.0, 8000)
    cap = Capture()
    cap.feed_all(packetize(pcm, "PCMU", 0, seq=100, ts=500_000))
    cap.feed_all(packetize(pcm, "PCMU", 0, seq=150, ts=1000), start=1.0)
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert cap.tap.stats.segments == 2


def test_partial_frame_is_padded_at_segment_end() -> None:
    """30 ms packets: 1.5 frames each; the segment's last half frame is padded with silence."""
    codec = get_codec("PCMU")
    encoder = codec.new_encoder()
    pcm = tone(0.09, 8000)  # 3 packets of 30 ms = 4.5 frames
    packets = [rtp(0, i, i * 240, encoder.encode(pcm[i * 240 : (i + 1) * 240])) for i in range(3)]
    cap = Capture()
    cap.feed_all(packets, step=0.03)
    cap.tap.flush()
    assert len(cap.frames) == 5
    assert np.abs(samples_of(cap.frames)[-FRAME_SAMPLES // 2 + 20 :]).max() <= 2  # silence (+ dither)
    assert cap.tap.stats.concealed_frames == 0


# --- DTMF ---


def dtmf_call() -> tuple[list[bytes], int]:
    """1 s of audio, digit 5 (100 ms, redundant end packets, one retransmission), 1 s of audio,
    digit # whose end packets are all lost, 0.2 s of audio. Returns the packets and the frame count."""
    pcm = tone(2.2, 8000)
    packets = packetize(pcm[:8000], "PCMU", 0, seq=0, ts=0)
    start = 8000
    packets += [
        event(50, start, 5, 160, marker=True),
        event(51, start, 5, 320),
        event(51, start, 5, 320),  # retransmitted
        event(52, start, 5, 480),
        event(53, start, 5, 640),
        event(54, start, 5, 800, end=True),
        event(55, start, 5, 800, end=True),
        event(56, start, 5, 800, end=True),
    ]
    packets += packetize(pcm[8000:16000], "PCMU", 0, seq=57, ts=start + 800)
    start = 8000 + 800 + 8000
    packets += [event(107, start, 11, 160, marker=True), event(108, start, 11, 320)]
    packets += packetize(pcm[16000:17600], "PCMU", 0, seq=109, ts=start + 320)
    return packets, 50 + 5 + 50 + 2 + 10


def test_dtmf_each_digit_once_and_audio_timeline_whole() -> None:
    packets, frame_count = dtmf_call()
    cap = Capture()
    cap.feed_all(packets)
    assert [d for d, _, _ in cap.digits] == ["5"]
    cap.tap.flush()
    assert [d for d, _, _ in cap.digits] == ["5", "#"]  # # had no end packet: reported at flush
    assert all(leg is Side.CALLER for _, leg, _ in cap.digits)
    assert cap.digits[0][2] == pytest.approx(1.0)  # media time of the event's start
    assert len(cap.frames) == frame_count
    check_frames(cap.frames)
    stats = cap.tap.stats
    assert (stats.dtmf_packets, stats.dtmf_digits, stats.lost, stats.segments) == (10, 2, 0, 1)
    assert stats.concealed_frames == 7  # the 140 ms the events covered


def test_dtmf_before_any_audio() -> None:
    cap = Capture()
    cap.tap.feed(rtp(0, 1, 0, b"\xff" * 160, ssrc=9), 5.0)  # the leg's first packet
    cap.tap.feed(event(2, 160, 1, 800, end=True, marker=True), 5.5)  # another SSRC: no audio yet
    [(digit, leg, when)] = cap.digits
    assert (digit, leg) == ("1", Side.CALLER)
    assert when == pytest.approx(0.5)  # since the leg's first packet


def test_dtmf_without_callback_still_counts() -> None:
    packets, _ = dtmf_call()
    tap = LegTap(Side.CALLEE, G711_MAP, lambda frame: None)
    for i, packet in enumerate(packets):
        tap.feed(packet, i * 0.02)
    tap.flush()
    assert tap.stats.dtmf_digits == 2


# --- Opus, when the codec is registered ---


def opus_or_skip() -> None:
    pytest.importorskip("pbx_edge.media.codecs.opus")
    if "OPUS" not in known_codecs():
        pytest.skip("Opus codec not registered (opuslib/libopus missing)")


OPUS_MAP = {111: ("opus", 48000, 2), PT_EVENT: ("telephone-event", 48000, 1)}


@pytest.mark.parametrize("lose", [False, True])
def test_opus_tone(lose: bool) -> None:
    opus_or_skip()
    packets = packetize(tone(2.0, 48000), "opus", 111)
    if lose:
        del packets[50]
    cap = Capture(OPUS_MAP)
    cap.feed_all(packets)
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert cap.tap.stats.concealed_frames == (1 if lose else 0)
    signal = samples_of(cap.frames)
    assert abs(peak_frequency(signal[3200 : 3200 + TAP_RATE]) - TONE_HZ) < 2.0
    assert sine_fit_snr(signal[3200 : 48 * FRAME_SAMPLES]) > MIN_SNR_DB["opus"]
    if lose:
        assert sine_fit_snr(signal[3200:-800]) > MIN_SNR_WITH_LOSS_DB


def test_opus_corrupt_payload_is_concealed() -> None:
    opus_or_skip()
    packets = packetize(tone(1.0, 48000), "opus", 111)
    corrupt = RtpPacket.parse(packets[20])
    corrupt.payload = b"\xff"  # code-3 TOC without its frame count: libopus rejects it
    packets[20] = bytes(corrupt)
    cap = Capture(OPUS_MAP)
    cap.feed_all(packets)
    cap.tap.flush()
    assert len(cap.frames) == 50
    stats = cap.tap.stats
    assert (stats.decode_errors, stats.decoded, stats.concealed_frames) == (1, 49, 1)


def test_switch_from_pcmu_to_opus_starts_a_new_segment() -> None:
    opus_or_skip()
    cap = Capture({**G711_MAP, **OPUS_MAP})
    cap.feed_all(packetize(tone(1.0, 8000), "PCMU", 0, seq=1, ts=0))
    cap.feed_all(packetize(tone(1.0, 48000), "opus", 111, seq=51, ts=123_456), start=1.0)
    cap.tap.flush()
    assert len(cap.frames) == 100
    check_frames(cap.frames)
    assert cap.tap.stats.segments == 2


# --- cost ---


def test_per_packet_cost_is_small() -> None:
    """A loose guard against per-sample Python loops: measured ~35 us per packet on the dev box."""
    packets = packetize(tone(30.0, 8000), "PCMU", 0)
    tap = LegTap(Side.CALLER, G711_MAP, lambda frame: None)
    started = time.perf_counter()
    for i, packet in enumerate(packets):
        tap.feed(packet, i * 0.02)
    elapsed = time.perf_counter() - started
    assert tap.stats.frames_emitted >= 1498
    assert elapsed / len(packets) < 500e-6


# --- queues ---


def frame(seq: int) -> TapFrame:
    return TapFrame(Side.CALLER, seq, seq * 0.02, seq * 0.02, bytes(FRAME_BYTES))


def test_queue_drops_oldest_when_full() -> None:
    queue = TapQueue(capacity=3)
    for seq in range(5):
        queue.put_nowait(frame(seq))
    assert (len(queue), queue.dropped, queue.put_count) == (3, 2, 5)
    taken = [queue.get_nowait() for _ in range(4)]
    assert [f.seq if f else None for f in taken] == [2, 3, 4, None]


async def test_queue_async_iteration_ends_on_close() -> None:
    queue = TapQueue()
    received: list[int] = []

    async def consume() -> None:
        async for item in queue:
            received.append(item.seq)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for seq in range(3):
        queue.put_nowait(frame(seq))
        await asyncio.sleep(0)
    queue.put_nowait(frame(3))
    queue.close()
    queue.put_nowait(frame(4))  # ignored once closed
    await asyncio.wait_for(consumer, 1.0)
    assert received == [0, 1, 2, 3]
    with pytest.raises(TapQueueClosed):
        await queue.get()


async def test_queue_get_waits_and_survives_cancellation() -> None:
    queue = TapQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(frame(7))
    assert (await asyncio.wait_for(getter, 1.0)).seq == 7


async def test_cancelled_getter_passes_its_wakeup_on() -> None:
    queue = TapQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(frame(1))  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    assert (await asyncio.wait_for(second, 1.0)).seq == 1


def test_queue_capacity_validation() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        TapQueue(0)


async def test_fanout_subscribers_drop_independently() -> None:
    fanout = TapFanout()
    slow = fanout.subscribe(capacity=2)
    fast = fanout.subscribe(capacity=10)
    for seq in range(5):
        fanout.publish(frame(seq))
    assert (slow.dropped, fast.dropped) == (3, 0)
    assert (len(slow), len(fast)) == (2, 5)
    assert [(await slow.get()).seq for _ in range(2)] == [3, 4]
    fanout.unsubscribe(slow)
    assert slow.closed
    fanout.publish(frame(5))
    assert (len(slow), len(fast), len(fanout), fanout.published) == (0, 6, 1, 6)
    fanout.close()
    assert fast.closed and len(fanout) == 0
    assert [f.seq async for f in fast] == [0, 1, 2, 3, 4, 5]


def test_tap_feeds_a_fanout() -> None:
    fanout = TapFanout()
    queue = fanout.subscribe()
    tap = LegTap(Side.CALLEE, G711_MAP, fanout.publish)
    for i, packet in enumerate(packetize(tone(0.5, 8000), "PCMA", 8)):
        tap.feed(packet, i * 0.02)
    tap.flush()
    assert len(queue) == 25
    first = queue.get_nowait()
    assert first is not None and first.leg is Side.CALLEE and first.seq == 0


# --- payload type maps from SDP ---

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"m=audio 4000 RTP/AVP 111 0 8 9 18 13 101 97 3 35\r\n"
    b"a=rtpmap:111 opus/48000/2\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=rtpmap:3 GSM/8000\r\n"
    b"a=rtpmap:35 bad\r\n"
    b"a=sendrecv\r\n"
)


def test_payload_types_from_sdp() -> None:
    sdp = SessionDescription.parse(SDP)
    types = audio_payload_types(sdp)
    assert types == {
        111: ("opus", 48000, 2),
        0: ("PCMU", 8000, 1),
        8: ("PCMA", 8000, 1),
        9: ("G722", 8000, 1),
        18: ("G729", 8000, 1),
        13: ("CN", 8000, 1),
        101: ("telephone-event", 8000, 1),
        3: ("GSM", 8000, 1),
    }  # 97: dynamic without rtpmap; 35: malformed rtpmap
    assert list(types) == [111, 0, 8, 9, 18, 13, 101, 3]  # the m-line's preference order
    assert media_payload_types(sdp.media[0]) == {96: ("H264", 90000, 1)}
    assert audio_payload_types(SessionDescription.parse(SDP.split(b"m=audio")[0])) == {}


def test_parse_rtpmap() -> None:
    assert parse_rtpmap("96 opus/48000/2") == (96, ("opus", 48000, 2))
    assert parse_rtpmap("0 PCMU/8000") == (0, ("PCMU", 8000, 1))
    for bad in ("x PCMU/8000", "128 PCMU/8000", "96 opus", "96 opus/0", "96 opus/48000/x", "96 /8000"):
        with pytest.raises(ValueError, match="bad rtpmap"):
            parse_rtpmap(bad)


def test_static_table_and_sample_rates() -> None:
    assert STATIC_PAYLOAD_TYPES[9] == ("G722", 8000, 1)
    assert sample_rate_for("G722", 8000) == 16000
    assert sample_rate_for("g722", 8000) == 16000
    assert sample_rate_for("PCMU", 8000) == 8000
    assert sample_rate_for("opus", 48000) == 48000


def test_rtp_helper_matches_the_wire_format() -> None:
    data = rtp(0, 7, 160, b"\x01\x02", ssrc=5, marker=True)
    assert data[:12] == struct.pack("!BBHLL", 0x80, 0x80, 7, 160, 5)
