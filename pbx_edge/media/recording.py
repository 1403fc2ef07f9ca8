"""Optional per-call recording to a stereo WAV file, fed by the decoded-audio tap.

File format: RIFF/WAVE, PCM (format tag 1), 2 channels, 16-bit signed little-endian samples, at
``sample_rate`` (16 kHz by default), interleaved as usual: left = caller, right = callee. Sample ``n``
of the file is media time ``n / sample_rate`` seconds since the call's media started, for both
channels; a leg that sent nothing for a while (on hold, muted with DTX, not yet answered) is
silence (zeros) there. The header's lengths are patched each time a chunk is written, so a file
cut short by a crash is still readable up to its last chunk.

Theory of operation. Each leg delivers frames of mono s16 PCM stamped with their media time, at
its own pace. The recorder holds a short window (2 s by default) of stereo samples starting at
``written``, the first sample not yet in the file; a frame is copied into the window at the sample
its timestamp names, overwriting whatever was there (the latest frame wins on an overlap). Samples
are written out once both legs have passed them, or once they fall further than the window behind
the newest sample of either leg, so a silent leg delays the file by at most the window. A frame
(or its part) older than ``written`` is dropped and counted. A frame whose timestamp lands within
``snap`` seconds of where the leg's previous frame ended is placed right there, so timestamp jitter
does not make one-sample clicks or gaps.

It is a plain synchronous class (file I/O inside :meth:`add` happens once per chunk, about every
half second); it is not thread-safe: feed it from one task or thread.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import numpy as np
import numpy.typing as npt

Leg = Literal["caller", "callee"]
LEGS: tuple[Leg, Leg] = ("caller", "callee")
_CHANNEL: dict[str, int] = {"caller": 0, "callee": 1}
_SAMPLE = np.dtype("<i2")


class CallRecorder:
    """Writes one call's two legs to a stereo WAV (caller left, callee right), aligned by timestamp.

    ``window`` (seconds) bounds the audio held in memory; ``chunk`` (seconds) is the least written
    at once before :meth:`close`; ``snap`` (seconds) is the timestamp jitter absorbed per leg.
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int = 16000,
        *,
        window: float = 2.0,
        chunk: float = 0.5,
        snap: float = 0.005,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if not 0 < chunk < window:
            raise ValueError(f"need 0 < chunk < window, got chunk={chunk} window={window}")
        if snap < 0:
            raise ValueError(f"snap must not be negative, got {snap}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._window = round(window * sample_rate)
        self._chunk = round(chunk * sample_rate)
        if not 0 < self._chunk < self._window:
            raise ValueError(f"chunk and window are too short for {sample_rate} Hz")
        self._snap = round(snap * sample_rate)
        self._buffer: npt.NDArray[np.int16] = np.zeros((self._window, 2), dtype=_SAMPLE)
        self._written = 0  # absolute index of the first sample not yet written (= buffer[0])
        self._ends: dict[str, int | None] = dict.fromkeys(LEGS)  # where each leg's last frame ended
        self._dropped: dict[str, int] = dict.fromkeys(LEGS, 0)
        self._closed = False
        self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - held open until close()
        self._wav.setnchannels(2)
        self._wav.setsampwidth(_SAMPLE.itemsize)
        self._wav.setframerate(sample_rate)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def frames_written(self) -> int:
        """Stereo sample frames already in the file."""
        return self._written

    @property
    def dropped_samples(self) -> dict[str, int]:
        """Per leg, samples dropped because they arrived after their time was written out."""
        return dict(self._dropped)

    def add(self, leg: Leg, timestamp: float, pcm: bytes) -> None:
        """Record one frame of mono s16le PCM for ``leg``, starting ``timestamp`` s into the call's media."""
        if self._closed:
            raise RuntimeError(f"recorder for {self.path} is closed")
        channel = _CHANNEL.get(leg)
        if channel is None:
            raise ValueError(f"leg must be 'caller' or 'callee', got {leg!r}")
        if not math.isfinite(timestamp) or timestamp < 0:
            raise ValueError(f"timestamp must be a finite number of seconds >= 0, got {timestamp}")
        if len(pcm) % _SAMPLE.itemsize:
            raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        samples = np.frombuffer(pcm, dtype=_SAMPLE)
        start = round(timestamp * self.sample_rate)
        previous_end = self._ends[leg]
        if previous_end is not None and abs(start - previous_end) <= self._snap:
            start = previous_end
        end = start + len(samples)
        self._ends[leg] = end if previous_end is None else max(previous_end, end)
        piece = self._window - self._chunk  # longest piece that always fits after making room
        for offset in range(0, len(samples), piece):
            self._place(channel, start + offset, samples[offset : offset + piece])
        caller_end, callee_end = self._ends["caller"], self._ends["callee"]
        if caller_end is not None and callee_end is not None:
            both = min(caller_end, callee_end)
            if both - self._written >= self._chunk:
                self._flush_to(both)

    def close(self) -> Path:
        """Write out everything up to the later leg's last sample, finalise the header, return the path.

        Calling it again does nothing.
        """
        if not self._closed:
            self._closed = True
            try:
                self._flush_to(max((e for e in self._ends.values() if e is not None), default=0))
            finally:
                self._wav.close()
        return self.path

    def _flush_to(self, target: int) -> None:
        """Write samples up to (not including) absolute index ``target`` and slide the window."""
        while self._written < target:
            count = min(target - self._written, self._window)
            self._wav.writeframes(self._buffer[:count].tobytes())
            self._buffer[: self._window - count] = self._buffer[count:]
            self._buffer[self._window - count :] = 0
            self._written += count

    def _place(self, channel: int, start: int, samples: npt.NDArray[np.int16]) -> None:
        """Copy ``samples`` into the window at absolute index ``start``, first making room if needed."""
        end = start + len(samples)
        if start < self._written:
            late = min(self._written, end) - start
            self._dropped[LEGS[channel]] += late
            samples = samples[late:]
            start += late
        if end > self._written + self._window:
            # Write out what is older than the window, plus a chunk so that this is not once a frame.
            self._flush_to(end - self._window + self._chunk)
        if len(samples):
            self._buffer[start - self._written : end - self._written, channel] = samples
