"""Offline transcription of a recording: ``smartpbx transcribe FILE.wav`` or :func:`transcribe_file`.

Runs in-process: no Ray cluster, no edge, nothing to deploy, which is what a notebook or a one-off
batch job wants. The same pieces as the live path are used, in the same order:

1. The WAV (PCM 8/16/24/32-bit, any rate) is read and resampled to 16 kHz with soxr. A mono file is one
   channel (leg ``mono``); a stereo file is a call recording, one leg per channel: left ``caller``,
   right ``callee``.
2. Each channel is cut into utterances by the Silero VAD (:class:`~ai_serve.stt.vad.StreamingVad`
   over 20 ms frames, as the ingress does), with the ingress's 0.2 s pre-roll and 0.15 s tail.
3. Each utterance is transcribed by faster-whisper (whisper-base from its packages unless ``model_dir``
   says otherwise).
4. Each channel is diarized (:func:`~ai_serve.diarization.recording.diarize_audio`: speaker embeddings
   of the same utterances, clustered); every transcript segment takes the speaker who overlaps it the
   most. Labels S1, S2, ... are per leg.

Output: one line per segment, ``[00:01.20-00:03.40] caller S1: text`` (an en dash between the
times), or with ``--json`` one JSON object per line with the call store's fields (``leg``,
``speaker``, ``text``, ``start``, ``end``, ``confidence``, ``language``; see
:mod:`pbx_edge.ai_link.transcripts`).

Limits: an utterance in which two people speak without a pause keeps one speaker per Whisper segment;
WAV files in float format are not read (convert with ``sox in.wav -b 16 out.wav``).
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .diarization.clustering import DEFAULT_THRESHOLD
from .diarization.embedders import SpeakerEmbedder, create_embedder
from .diarization.recording import DiarizationParams, diarize_audio, speaker_at, speech_regions
from .models.whisper_assets import WhisperAssetsError
from .stt.backends import SAMPLE_RATE, SttBackend
from .stt.vad import SpeechScorer, default_scorer

__all__ = ["TranscriptSegment", "format_line", "main", "read_wav", "transcribe_audio", "transcribe_file"]

FloatArray = npt.NDArray[np.float32]

PRE_ROLL = 0.2  # as ai_serve.ingress.UtteranceCutter
TAIL = 0.15
STEREO_LEGS = ("caller", "callee")
MONO_LEG = "mono"
_EN_DASH = "\u2013"
LANGUAGES = {"auto": None, "en": "en", "ko": "ko"}


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One transcript segment; times in seconds from the start of the file."""

    leg: str  # "caller" / "callee" (stereo), "mono" (mono)
    speaker: str | None  # "S1", "S2", ... within the leg; None when nothing could be embedded
    text: str
    start: float
    end: float
    confidence: float | None
    language: str | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        if self.confidence is not None:
            d["confidence"] = round(self.confidence, 4)
        return d


class WavError(ValueError):
    """The file is not a WAV this reader handles."""


def read_wav(path: str | Path) -> list[FloatArray]:
    """The channels of a PCM WAV file as float32 at 16 kHz (one array per channel, at most two)."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise WavError(f"{path}: not a PCM WAV file ({e})") from e
    if channels not in (1, 2):
        raise WavError(f"{path}: {channels} channels; expected mono or stereo (one channel per leg)")
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
        samples = ints.astype(np.float32) / 8388608.0
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise WavError(f"{path}: unsupported sample width {width} bytes")
    frames = samples[: samples.size - samples.size % channels].reshape(-1, channels)
    if rate != SAMPLE_RATE:
        import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

        frames = np.asarray(soxr.resample(frames, rate, SAMPLE_RATE), dtype=np.float32).reshape(-1, channels)
    return [np.ascontiguousarray(frames[:, c], dtype=np.float32) for c in range(channels)]


def _transcribe_channel(
    audio: FloatArray,
    leg: str,
    stt: SttBackend,
    embedder: SpeakerEmbedder,
    scorer: SpeechScorer,
    language: str | None,
    num_speakers: int | None,
    params: DiarizationParams,
) -> list[TranscriptSegment]:
    regions = speech_regions(audio, scorer)
    turns = diarize_audio(audio, embedder, num_speakers=num_speakers, params=params, regions=regions)
    out: list[TranscriptSegment] = []
    duration = audio.size / SAMPLE_RATE
    for start, end in regions:
        lo, hi = max(0.0, start - PRE_ROLL), min(duration, end + TAIL)
        pcm = audio[round(lo * SAMPLE_RATE) : round(hi * SAMPLE_RATE)]
        for s in stt.transcribe(pcm, language):
            seg_start = min(max(lo + s.start, start), end)
            seg_end = max(min(lo + s.end, end), seg_start)
            out.append(
                TranscriptSegment(
                    leg=leg,
                    speaker=speaker_at(turns, seg_start, seg_end),
                    text=s.text,
                    start=seg_start,
                    end=seg_end,
                    confidence=s.confidence,
                    language=s.language or language,
                )
            )
    return out


def transcribe_audio(
    channels: Sequence[FloatArray],
    *,
    language: str | None = None,
    num_speakers: int | None = None,
    stt: SttBackend | None = None,
    embedder: SpeakerEmbedder | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    model_dir: str | Path | None = None,
) -> list[TranscriptSegment]:
    """Transcribe and diarize 16 kHz channels (one: ``mono``; two: ``caller``, ``callee``)."""
    if len(channels) not in (1, 2):
        raise ValueError(f"expected 1 or 2 channels, got {len(channels)}")
    if num_speakers is not None and num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
    if stt is None:
        from .models import assemble_whisper_base
        from .stt.backends import FasterWhisperBackend

        stt = FasterWhisperBackend(model_dir if model_dir is not None else assemble_whisper_base())
    if embedder is None:
        embedder = create_embedder("resemblyzer")
    params = DiarizationParams(threshold=threshold)
    legs = (MONO_LEG,) if len(channels) == 1 else STEREO_LEGS
    segments: list[TranscriptSegment] = []
    for leg, audio in zip(legs, channels, strict=True):
        segments += _transcribe_channel(
            audio, leg, stt, embedder, default_scorer(), language, num_speakers, params
        )
    segments.sort(key=lambda s: (s.start, s.leg))
    return segments


def transcribe_file(
    path: str | Path,
    *,
    language: str | None = None,
    num_speakers: int | None = None,
    stt: SttBackend | None = None,
    embedder: SpeakerEmbedder | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    model_dir: str | Path | None = None,
) -> list[TranscriptSegment]:
    """Transcribe and diarize a WAV file in-process; see the module docstring.

    ``language``: ISO code to force ("en", "ko"), None to detect. ``num_speakers``: per leg, when known.
    ``stt`` / ``embedder``: reuse loaded models across files (default: whisper-base and resemblyzer).
    """
    return transcribe_audio(
        read_wav(path),
        language=language,
        num_speakers=num_speakers,
        stt=stt,
        embedder=embedder,
        threshold=threshold,
        model_dir=model_dir,
    )


def _clock(seconds: float) -> str:
    minutes, sec = divmod(max(seconds, 0.0), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{sec:05.2f}" if hours else f"{minutes:02d}:{sec:05.2f}"


def format_line(segment: TranscriptSegment) -> str:
    """``[00:01.20-00:03.40] caller S1: text`` (an en dash between the times)."""
    who = f"{segment.leg} {segment.speaker}" if segment.speaker else segment.leg
    return f"[{_clock(segment.start)}{_EN_DASH}{_clock(segment.end)}] {who}: {segment.text}"


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartpbx transcribe",
        description="Transcribe a WAV recording with speaker labels, in-process (no Ray). "
        "Mono: one leg; stereo: left = caller, right = callee.",
    )
    parser.add_argument("file", type=Path, help="PCM WAV file, any rate, mono or stereo")
    parser.add_argument("--language", choices=sorted(LANGUAGES), default="auto", help="default: auto")
    parser.add_argument("--speakers", type=_positive_int, default=None, help="speakers per leg, if known")
    parser.add_argument("--json", action="store_true", help="one JSON object per segment (call store fields)")
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="clustering cosine threshold"
    )
    parser.add_argument("--model", type=Path, default=None, help="CTranslate2 Whisper folder (default: base)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2: bad input or missing dependency)."""
    args = build_parser().parse_args(argv)
    try:
        segments = transcribe_file(
            args.file,
            language=LANGUAGES[args.language],
            num_speakers=args.speakers,
            threshold=args.threshold,
            model_dir=args.model,
        )
    except (OSError, WavError, ImportError, WhisperAssetsError) as e:
        print(f"smartpbx transcribe: {e}", file=sys.stderr)
        return 2
    for s in segments:
        print(json.dumps(s.as_dict(), ensure_ascii=False) if args.json else format_line(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
