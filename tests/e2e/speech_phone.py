"""Talking phones for the live-transcription tests: espeak-ng speech laid on a call's two legs, sent
as PCMU RTP at 20 ms, and the scoring of the transcripts that come back.

- :func:`build_script` lays a call's turns on the caller and callee timelines (media seconds from
  each leg's first packet, which is where the edge's tap starts its clock): a turn is what one or
  both legs say at once, end-aligned; ``gap`` seconds of silence separate the turns.
- :func:`pcmu_packets` turns a leg's 16 kHz audio into G.711 µ-law RTP (resampled to 8 kHz),
  and :func:`play` sends every leg of every call from one task, one packet per leg per 20 ms tick.
- :func:`score` matches final transcripts to the lines by leg and time overlap and counts word and
  character errors (Levenshtein over words, and over characters with spaces removed).

Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ai_serve.eval.speech import SAMPLE_RATE, edit_distance, normalize, speech_extent, synth, with_noise
from pbx_edge.media.codecs import get_codec
from tests.e2e.rtp_peer import Phone, rtp_header

LegName = Literal["caller", "callee"]
LEGS: tuple[LegName, LegName] = ("caller", "callee")
PACKET_SECONDS = 0.02
PCMU_RATE = 8000
PCMU_SAMPLES = PCMU_RATE // 50  # 160 samples, 20 ms

FloatAudio = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Line:
    """One utterance on one leg: its text and where its speech lies on the leg's media clock."""

    leg: LegName
    text: str
    language: str
    start: float  # first sample above the espeak silence threshold, media seconds
    end: float  # last one


@dataclass(slots=True)
class Script:
    """What a call's two parties say: every line, and each leg's audio (16 kHz float, same length)."""

    language: str
    lines: list[Line]
    audio: dict[LegName, FloatAudio]

    @property
    def duration(self) -> float:
        return len(self.audio["caller"]) / SAMPLE_RATE


def build_script(
    turns: Sequence[Mapping[LegName, str]],
    language: str,
    voice: str,
    *,
    speed: int = 130,
    gap: float = 0.8,
    lead_in: float = 0.5,
    tail: float = 1.5,
    seed: int = 0,
) -> Script:
    """Lay ``turns`` on the two legs; each turn maps the legs that speak to what they say."""
    placed: list[tuple[LegName, str, FloatAudio, int]] = []  # leg, text, clip, sample offset of the clip
    lines: list[Line] = []
    cursor = lead_in  # where the next turn's speech may start
    for turn in turns:
        clips = {leg: synth(text, voice=voice, speed=speed) for leg, text in turn.items()}
        extents = {leg: speech_extent(clip) for leg, clip in clips.items()}
        longest = max(end - start for start, end in extents.values())
        turn_end = cursor + longest
        for leg, clip in clips.items():
            onset, offset = extents[leg]
            speech_start = turn_end - (offset - onset)
            at = round((speech_start - onset) * SAMPLE_RATE)
            placed.append((leg, turn[leg], clip, at))
            lines.append(Line(leg, turn[leg], language, at / SAMPLE_RATE + onset, at / SAMPLE_RATE + offset))
        cursor = turn_end + gap
    total = round((cursor - gap + tail) * SAMPLE_RATE)
    total = max(total, *(at + len(clip) for _, _, clip, at in placed))
    audio: dict[LegName, FloatAudio] = {leg: np.zeros(total, dtype=np.float32) for leg in LEGS}
    for leg, _, clip, at in placed:
        audio[leg][at : at + len(clip)] += clip
    for index, leg in enumerate(LEGS):
        audio[leg] = with_noise(audio[leg], seed=seed * 2 + index)  # a line is never digital silence
    lines.sort(key=lambda line: (line.start, line.leg))
    return Script(language, lines, audio)


def pcmu_packets(audio: FloatAudio, *, ssrc: int | None = None, seed: int = 0) -> list[bytes]:
    """16 kHz float audio → 8 kHz → G.711 µ-law, one RTP packet (payload type 0) per 20 ms."""
    import soxr  # type: ignore[import-untyped]  # no py.typed in the wheel

    rng = random.Random(seed)
    narrow = np.asarray(soxr.resample(audio, SAMPLE_RATE, PCMU_RATE), dtype=np.float32)
    narrow = np.concatenate([narrow, np.zeros((-narrow.size) % PCMU_SAMPLES, np.float32)])
    pcm = (np.clip(narrow, -1.0, 1.0) * 32767).astype(np.int16)
    encoder = get_codec("PCMU").new_encoder()
    ssrc = ssrc if ssrc is not None else rng.getrandbits(32)
    seq0, ts0 = rng.getrandbits(16), rng.getrandbits(32)
    return [
        rtp_header(0, seq0 + i, ts0 + i * PCMU_SAMPLES, ssrc, marker=i == 0)
        + encoder.encode(pcm[i * PCMU_SAMPLES : (i + 1) * PCMU_SAMPLES])
        for i in range(pcm.size // PCMU_SAMPLES)
    ]


@dataclass(slots=True)
class Stream:
    """One leg's packets and the phone that sends them; ``sent`` counts what has gone out."""

    phone: Phone
    packets: list[bytes]
    sent: int = 0


async def play(streams: Sequence[Stream], t0: float) -> None:
    """Send packet ``i`` of every stream at loop time ``t0 + i * 20 ms`` (late ticks catch up at once,
    as a phone's jitter buffer would see them); returns when every stream is spent."""
    loop = asyncio.get_running_loop()
    longest = max(len(s.packets) for s in streams)
    for tick in range(longest):
        delay = t0 + tick * PACKET_SECONDS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for stream in streams:
            if tick < len(stream.packets):
                stream.phone.send_rtp(stream.packets[tick])
                stream.sent += 1


# ------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True, slots=True)
class Final:
    """A final transcript as the edge published it (``transcript.final`` event data)."""

    leg: str
    text: str
    start: float
    end: float
    at: float = 0.0  # loop time the test saw it


def words(text: str) -> list[str]:
    return normalize(text)


def chars(text: str) -> list[str]:
    """Characters without spaces or punctuation (CER for languages whose word spacing varies)."""
    return list("".join(normalize(text)))


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return min(a_end, b_end) - max(a_start, b_start)


@dataclass(slots=True)
class Match:
    """The finals attributed to each line (by leg and overlap), and those that overlap no line of
    their leg (``strays``: a transcript on the wrong leg, or of audio nobody spoke)."""

    by_line: list[list[Final]]
    strays: list[Final] = field(default_factory=list)


def match(lines: Sequence[Line], finals: Sequence[Final]) -> Match:
    result = Match([[] for _ in lines])
    for final in sorted(finals, key=lambda f: (f.leg, f.start)):
        best, best_overlap = -1, 0.0
        for index, line in enumerate(lines):
            if line.leg != final.leg:
                continue
            shared = overlap(line.start, line.end, final.start, final.end)
            if shared > best_overlap:
                best, best_overlap = index, shared
        if best < 0:
            result.strays.append(final)
        else:
            result.by_line[best].append(final)
    return result


@dataclass(slots=True)
class Score:
    """Word and character errors of a set of lines against their matched finals."""

    utterances: int = 0
    missing: int = 0  # lines with no final at all
    ref_words: int = 0
    word_errors: int = 0
    ref_chars: int = 0
    char_errors: int = 0
    worst: list[tuple[int, str, str]] = field(default_factory=list)  # (word errors, reference, heard)
    utterance_cers: list[float] = field(default_factory=list)  # per line: robust to one runaway decode

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.ref_words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.ref_chars, 1)

    @property
    def median_cer(self) -> float:
        ordered = sorted(self.utterance_cers)
        if not ordered:
            return 0.0
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def add(self, line: Line, finals: Sequence[Final]) -> None:
        heard = " ".join(f.text for f in sorted(finals, key=lambda f: f.start))
        errors = edit_distance(words(line.text), words(heard))
        self.utterances += 1
        self.missing += not finals
        self.ref_words += len(words(line.text))
        self.word_errors += errors
        char_errors = edit_distance(chars(line.text), chars(heard))
        self.ref_chars += len(chars(line.text))
        self.char_errors += char_errors
        self.utterance_cers.append(char_errors / max(len(chars(line.text)), 1))
        self.worst.append((errors, line.text, heard))
        self.worst.sort(key=lambda item: -item[0])
        del self.worst[5:]

    def add_strays(self, strays: Sequence[Final]) -> None:
        """Transcripts of no line count as insertions."""
        for final in strays:
            self.word_errors += len(words(final.text))
            self.char_errors += len(chars(final.text))


def score(lines: Sequence[Line], finals: Sequence[Final], into: Score | None = None) -> Score:
    result = into if into is not None else Score()
    matched = match(lines, finals)
    for line, attributed in zip(lines, matched.by_line, strict=True):
        result.add(line, attributed)
    result.add_strays(matched.strays)
    return result
