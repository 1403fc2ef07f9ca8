"""CallRecorder: alignment of two unevenly arriving legs into a stereo WAV, gaps, overlaps, bounds."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pbx_edge.media.recording import CallRecorder, Leg

RATE = 16000
FRAME = 320  # 20 ms
FRAME_S = FRAME / RATE


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")


def frames(leg: Leg, pcm: npt.NDArray[np.int16], skip: range = range(0)) -> list[tuple[Leg, float, bytes]]:
    """``pcm`` cut into 20 ms frames stamped with their media time, without the frames in ``skip``."""
    return [
        (leg, i * FRAME_S, pcm[i * FRAME : (i + 1) * FRAME].tobytes())
        for i in range(len(pcm) // FRAME)
        if i not in skip
    ]


def read_wav(path: Path) -> tuple[wave._wave_params, npt.NDArray[np.int16]]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        data = np.frombuffer(wav.readframes(params.nframes), dtype="<i2").reshape(-1, params.nchannels)
    return params, data


def peak_frequency(signal: npt.NDArray[np.int16]) -> float:
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(len(signal))))
    return float(np.argmax(spectrum)) * RATE / len(signal)


def test_two_legs_uneven_with_a_gap(tmp_path: Path) -> None:
    seconds = 4.0
    caller = tone(440.0, seconds)
    callee = tone(1000.0, seconds)
    gap = range(50, 75)  # the callee sends nothing from 1.0 s to 1.5 s (hold, DTX...)
    caller_frames = frames("caller", caller)
    callee_frames = frames("callee", callee, skip=gap)
    # Uneven arrival: the callee runs 30 frames (0.6 s) behind, and the caller comes in bursts of 5.
    arrivals: list[tuple[Leg, float, bytes]] = []
    for burst in range(0, len(caller_frames), 5):
        arrivals += caller_frames[burst : burst + 5]
        arrivals += [f for f in callee_frames if burst * FRAME_S - 0.6 <= f[1] < (burst + 5) * FRAME_S - 0.6]
    arrivals += [f for f in callee_frames if f not in arrivals]
    assert len(arrivals) == len(caller_frames) + len(callee_frames)

    path = tmp_path / "call.wav"
    recorder = CallRecorder(path)
    for leg, timestamp, pcm in arrivals:
        recorder.add(leg, timestamp, pcm)
    assert recorder.close() == path

    params, data = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, RATE)
    assert params.nframes == round(seconds * RATE)
    left, right = data[:, 0], data[:, 1]
    np.testing.assert_array_equal(left, caller)  # sample-exact: nothing dropped, nothing shifted
    gap_samples = slice(gap.start * FRAME, gap.stop * FRAME)
    assert not right[gap_samples].any()
    expected_right = callee.copy()
    expected_right[gap_samples] = 0
    np.testing.assert_array_equal(right, expected_right)
    assert peak_frequency(left) == pytest.approx(440.0, abs=1.0)
    assert peak_frequency(right[: gap_samples.start]) == pytest.approx(1000.0, abs=2.0)
    assert recorder.dropped_samples == {"caller": 0, "callee": 0}


def test_close_is_idempotent_and_add_after_close_fails(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "call.wav")
    recorder.add("caller", 0.0, tone(440.0, FRAME_S).tobytes())
    first = recorder.close()
    size = first.stat().st_size
    assert recorder.close() == first
    assert recorder.closed
    assert first.stat().st_size == size == 44 + 4 * FRAME
    with pytest.raises(RuntimeError, match="closed"):
        recorder.add("caller", 0.02, tone(440.0, FRAME_S).tobytes())


def test_context_manager_and_empty_call(tmp_path: Path) -> None:
    with CallRecorder(tmp_path / "empty.wav") as recorder:
        pass
    assert recorder.closed
    params, data = read_wav(tmp_path / "empty.wav")
    assert (params.nchannels, params.framerate, params.nframes) == (2, RATE, 0)
    assert data.size == 0


def test_late_starting_leg_and_trailing_silence(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller, callee = tone(440.0, 1.0), tone(1000.0, 0.5)
    with CallRecorder(path) as recorder:
        for leg, timestamp, pcm in frames("caller", caller):
            recorder.add(leg, timestamp, pcm)
        for leg, timestamp, pcm in frames("callee", callee):
            recorder.add(leg, timestamp + 0.3, pcm)  # answered 0.3 s in
    _, data = read_wav(path)
    assert len(data) == RATE
    assert not data[: round(0.3 * RATE), 1].any()
    np.testing.assert_array_equal(data[round(0.3 * RATE) : round(0.8 * RATE), 1], callee)
    assert not data[round(0.8 * RATE) :, 1].any()


def test_timestamp_jitter_is_snapped(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller = tone(440.0, 0.4)
    rng = np.random.default_rng(7)
    with CallRecorder(path) as recorder:
        for leg, timestamp, pcm in frames("caller", caller):
            jitter = rng.uniform(-0.003, 0.003) if timestamp else 0.0  # the first frame sets the origin
            recorder.add(leg, timestamp + jitter, pcm)
    _, data = read_wav(path)
    np.testing.assert_array_equal(data[:, 0], caller)


def test_overlap_latest_frame_wins(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    first, second = np.full(FRAME, 1000, dtype="<i2"), np.full(FRAME, -2000, dtype="<i2")
    with CallRecorder(path, snap=0.0) as recorder:
        recorder.add("caller", 0.0, first.tobytes())
        recorder.add("caller", 0.01, second.tobytes())  # overlaps the second half of the first
    _, data = read_wav(path)
    assert len(data) == FRAME + FRAME // 2
    assert (data[: FRAME // 2, 0] == 1000).all()
    assert (data[FRAME // 2 :, 0] == -2000).all()


def test_window_bounds_memory_and_late_frames_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path, window=1.0, chunk=0.25)
    caller = tone(440.0, 5.0)
    for leg, timestamp, pcm in frames("caller", caller):  # the callee never sends anything
        recorder.add(leg, timestamp, pcm)
        assert round(timestamp * RATE) + FRAME - recorder.frames_written <= RATE  # at most the window
    assert recorder.frames_written >= 4 * RATE
    recorder.add("callee", 0.5, tone(1000.0, FRAME_S).tobytes())  # long written out: dropped
    assert recorder.dropped_samples == {"caller": 0, "callee": FRAME}
    recorder.close()
    _, data = read_wav(path)
    np.testing.assert_array_equal(data[:, 0], caller)
    assert not data[:, 1].any()


def test_frame_longer_than_the_window(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    long_pcm = tone(300.0, 3.0)
    with CallRecorder(path, window=1.0, chunk=0.25) as recorder:
        recorder.add("callee", 0.0, long_pcm.tobytes())
    _, data = read_wav(path)
    np.testing.assert_array_equal(data[:, 1], long_pcm)


def test_timestamp_jump_writes_silence_in_bounded_steps(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    with CallRecorder(path) as recorder:
        recorder.add("caller", 0.0, tone(440.0, FRAME_S).tobytes())
        recorder.add("caller", 30.0, tone(440.0, FRAME_S).tobytes())
    _, data = read_wav(path)
    assert len(data) == 30 * RATE + FRAME
    assert not data[FRAME : 30 * RATE].any()


@pytest.mark.parametrize(
    ("leg", "timestamp", "pcm", "message"),
    [
        ("agent", 0.0, b"\x00\x00", "leg must be"),
        ("caller", -0.1, b"\x00\x00", "timestamp"),
        ("caller", float("nan"), b"\x00\x00", "timestamp"),
        ("caller", 0.0, b"\x00\x00\x00", "whole 16-bit samples"),
    ],
)
def test_add_validation(tmp_path: Path, leg: str, timestamp: float, pcm: bytes, message: str) -> None:
    with CallRecorder(tmp_path / "call.wav") as recorder, pytest.raises(ValueError, match=message):
        recorder.add(leg, timestamp, pcm)  # type: ignore[arg-type]


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        CallRecorder(tmp_path / "a.wav", sample_rate=0)
    with pytest.raises(ValueError, match="chunk < window"):
        CallRecorder(tmp_path / "a.wav", window=1.0, chunk=1.0)
    with pytest.raises(ValueError, match="snap"):
        CallRecorder(tmp_path / "a.wav", snap=-1.0)
