"""RTP payload type maps from SDP: ``{payload_type: (encoding, clock_rate, channels)}``.

The tap and the injector need to know what each payload type of a stream carries. Dynamic types
(96-127) are defined only by ``a=rtpmap``; the static types of RFC 3551 section 6 may come without
one, so their defaults are filled in. An ``a=rtpmap`` for a static type wins over the default.

The clock rate is the RTP timestamp rate, which is not always the audio sample rate: G.722 is
sampled at 16 kHz but its RTP clock is 8000 for historical reasons (RFC 3551 section 4.5.2), and
Opus always says 48000 (RFC 7587). :func:`sample_rate_for` gives the real rate.
"""

from __future__ import annotations

from .sdp import MediaSection, SessionDescription

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "PayloadTypeMap",
    "audio_payload_types",
    "media_payload_types",
    "parse_rtpmap",
    "sample_rate_for",
]

PayloadTypeMap = dict[int, tuple[str, int, int]]

# RFC 3551 table 4 (audio). 1, 2 and 19 are reserved; 20-95 unassigned or video.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}

# Encodings whose RTP clock differs from their sample rate, keyed by upper-case name.
_SAMPLE_RATE_BY_CLOCK: dict[tuple[str, int], int] = {("G722", 8000): 16000}


def sample_rate_for(encoding: str, clock_rate: int) -> int:
    """The audio sample rate behind an rtpmap clock rate (``G722/8000`` is 16 kHz audio)."""
    return _SAMPLE_RATE_BY_CLOCK.get((encoding.upper(), clock_rate), clock_rate)


def parse_rtpmap(value: str) -> tuple[int, tuple[str, int, int]]:
    """Parse the value of ``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]``.

    Raises :class:`ValueError` with the reason when the value is malformed.
    """
    pt_text, _, spec = value.strip().partition(" ")
    if not pt_text.isdigit() or not 0 <= int(pt_text) <= 127:
        raise ValueError(f"bad rtpmap {value!r}: payload type must be 0-127")
    parts = spec.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"bad rtpmap {value!r}: expected '<pt> <encoding>/<clock>[/<channels>]'")
    if not parts[1].isdigit() or int(parts[1]) == 0:
        raise ValueError(f"bad rtpmap {value!r}: clock rate must be a positive integer")
    channels = 1
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) == 0:
            raise ValueError(f"bad rtpmap {value!r}: channel count must be a positive integer")
        channels = int(parts[2])
    return int(pt_text), (parts[0], int(parts[1]), channels)


def media_payload_types(section: MediaSection) -> PayloadTypeMap:
    """Payload types of one m-line, in the m-line's order: rtpmap first, else the static default.

    Formats that are not RTP payload type numbers, dynamic types without an rtpmap and malformed
    rtpmap lines are left out: the B2BUA has already accepted the SDP, so the tap makes do.
    """
    rtpmaps: PayloadTypeMap = {}
    for line in section.lines[1:]:
        if line.type == "a" and line.value.startswith("rtpmap:"):
            try:
                pt, entry = parse_rtpmap(line.value[len("rtpmap:") :])
            except ValueError:
                continue
            rtpmaps.setdefault(pt, entry)
    result: PayloadTypeMap = {}
    for fmt in section.formats:
        if not fmt.isdigit() or int(fmt) > 127:
            continue
        pt = int(fmt)
        found = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
        if found is not None:
            result[pt] = found
    return result


def audio_payload_types(sdp: SessionDescription) -> PayloadTypeMap:
    """Payload types of the first active (non-zero port) ``m=audio`` line; empty when there is none."""
    for section in sdp.media:
        if section.media == "audio" and section.port != 0:
            return media_payload_types(section)
    return {}
