"""Opus (RFC 6716) carried over RTP as RFC 7587 describes, through ``opuslib`` and the system libopus.

RFC 7587 in short:

* the SDP rtpmap is always ``opus/48000/2``: the RTP clock is 48 kHz whatever bandwidth the encoder
  really uses, and the ``/2`` only says that the stream *may* be stereo, not that it is;
* the payload type is dynamic (we default to 111, as browsers do);
* one RTP payload is one Opus packet (one or more frames, 2.5 to 120 ms in all).

Here the decoder always produces mono ``int16`` PCM at 48 kHz (libopus can mix any stream, stereo
included, down to mono), and the encoder takes mono ``int16`` at 48 kHz, normally 20 ms (960 samples)
per packet, in VoIP mode at 24 kbit/s unless told otherwise.

``opuslib`` raises a bare ``Exception`` at import when libopus is missing, so it is loaded behind
:func:`opus_available`; this module imports without it, registers :data:`OPUS` only when it is
available, and the coders raise :class:`OpusUnavailableError` (with the install hint) otherwise.
We call libopus through ``opuslib.api`` with numpy buffers rather than through ``opuslib``'s classes:
that avoids a Python list per packet and the classes' broken FEC/DTX setters.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Codec, CodecInfo, Decoder, Encoder, PcmArray, as_mono_int16, register_codec

# ``channels=2`` is the rtpmap's channel count (RFC 7587 section 7); decoded PCM is mono all the same.
OPUS_INFO = CodecInfo(name="opus", payload_type=111, clock_rate=48000, sample_rate=48000, channels=2)

SAMPLES_PER_MS = 48
FRAME_SAMPLES = 20 * SAMPLES_PER_MS  # the usual 20 ms packet
MAX_PACKET_SAMPLES = 120 * SAMPLES_PER_MS  # the longest Opus packet, 120 ms
PLC_GRANULE = 5 * SAMPLES_PER_MS // 2  # libopus conceals in multiples of 2.5 ms
ENCODER_FRAME_SIZES = frozenset(n * SAMPLES_PER_MS // 2 for n in (5, 10, 20, 40, 80, 120, 160, 200, 240))
MAX_PAYLOAD_BYTES = 4000  # libopus's recommended output buffer; far above any VoIP packet

DEFAULT_BITRATE = 24000
DEFAULT_COMPLEXITY = 5  # of 0..10; a per-stream CPU/quality trade for an edge that codes many calls

_INSTALL_HINT = "Opus needs the opuslib package and libopus: pip install opuslib; apt install libopus0"

_Int16Pointer = ctypes.POINTER(ctypes.c_int16)


class OpusUnavailableError(ImportError):
    """Raised when an Opus coder is created but opuslib or libopus cannot be loaded."""


@dataclass(frozen=True, slots=True)
class _LibOpus:
    """The parts of ``opuslib.api`` we use (untyped, hence ``Any``)."""

    decoder: Any
    encoder: Any
    ctl: Any
    application_voip: int
    strerror: Any

    def error_text(self, code: int) -> str:
        text = self.strerror(code)
        return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)


@functools.cache
def _load_opuslib() -> _LibOpus | None:
    try:
        opuslib = importlib.import_module("opuslib")
        return _LibOpus(
            decoder=importlib.import_module("opuslib.api.decoder"),
            encoder=importlib.import_module("opuslib.api.encoder"),
            ctl=importlib.import_module("opuslib.api.ctl"),
            application_voip=opuslib.APPLICATION_VOIP,
            strerror=importlib.import_module("opuslib.api.info").strerror,
        )
    except Exception:  # opuslib raises a bare Exception when libopus is not found
        return None


def opus_available() -> bool:
    """Whether opuslib and libopus can be loaded (checked once, then cached)."""
    return _load_opuslib() is not None


def _lib() -> _LibOpus:
    lib = _load_opuslib()
    if lib is None:
        raise OpusUnavailableError(_INSTALL_HINT)
    return lib


class OpusDecoder(Decoder):
    """Per-stream Opus decoder: one RTP payload in, mono int16 PCM at 48 kHz out.

    :meth:`decode` raises :class:`ValueError` for an empty or corrupt payload (libopus's error text in
    the message); the decoder stays usable. :meth:`conceal` fills a gap that the jitter buffer reports.
    """

    info = OPUS_INFO

    def __init__(self) -> None:
        self._lib = _lib()
        self._state: Any = self._lib.decoder.create_state(OPUS_INFO.sample_rate, 1)
        self._pcm = np.zeros(MAX_PACKET_SAMPLES, dtype=np.int16)
        self._pcm_pointer = self._pcm.ctypes.data_as(_Int16Pointer)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._lib.decoder.destroy(state)
            self._state = None

    def decode(self, payload: bytes) -> PcmArray:
        """Decode one Opus packet (one RTP payload) to mono int16 PCM at 48 kHz."""
        if not payload:
            raise ValueError("empty Opus payload; use conceal() for a missing packet")
        return self._run(bytes(payload), MAX_PACKET_SAMPLES, fec=False)

    def conceal(self, samples: int, next_payload: bytes | None = None) -> PcmArray:
        """Audio for ``samples`` missing samples (48 kHz), continuing the stream smoothly.

        Without ``next_payload`` this is libopus's packet loss concealment. With the packet that
        follows the gap, the end of the gap is rebuilt from that packet's in-band FEC data when the
        sender put some there (encoder ``fec=True``), and concealed otherwise; decode that packet
        normally afterwards. libopus conceals in steps of 2.5 ms (120 samples): a length that is not
        a multiple is concealed rounded up and cut to ``samples``.
        """
        if samples < 0:
            raise ValueError(f"cannot conceal a negative number of samples ({samples})")
        rounded = -(-samples // PLC_GRANULE) * PLC_GRANULE
        if rounded == 0:
            return np.zeros(0, dtype=np.int16)
        parts: list[PcmArray] = []
        fec_span = min(rounded, MAX_PACKET_SAMPLES) if next_payload else 0
        todo = rounded - fec_span
        while todo > 0:
            chunk = min(todo, MAX_PACKET_SAMPLES)
            parts.append(self._run(None, chunk, fec=False))
            todo -= chunk
        if next_payload:
            parts.append(self._run(bytes(next_payload), fec_span, fec=True))
        return np.concatenate(parts)[:samples]

    def _run(self, payload: bytes | None, frame_size: int, *, fec: bool) -> PcmArray:
        length = len(payload) if payload is not None else 0
        result: int = self._lib.decoder.libopus_decode(
            self._state, payload, length, self._pcm_pointer, frame_size, int(fec)
        )
        if result < 0:
            what = "invalid Opus packet" if payload is not None else "Opus concealment failed"
            raise ValueError(f"{what}: {self._lib.error_text(result)} (libopus error {result})")
        return self._pcm[:result].copy()


class OpusEncoder(Encoder):
    """Per-stream Opus encoder (VoIP application): mono int16 PCM at 48 kHz in, one Opus packet out.

    ``fec`` turns on in-band forward error correction, tuned for ``packet_loss_percent`` expected
    loss (FEC only costs bits when that is above zero). With ``dtx`` the encoder sends 1-2 byte
    packets during silence; RFC 7587 lets the sender skip transmitting those.
    """

    info = OPUS_INFO

    def __init__(
        self,
        bitrate: int = DEFAULT_BITRATE,
        *,
        complexity: int = DEFAULT_COMPLEXITY,
        fec: bool = False,
        packet_loss_percent: int = 0,
        dtx: bool = False,
    ) -> None:
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be between 6000 and 510000 bit/s, got {bitrate}")
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be between 0 and 10, got {complexity}")
        if not 0 <= packet_loss_percent <= 100:
            raise ValueError(f"packet_loss_percent must be between 0 and 100, got {packet_loss_percent}")
        self._lib = _lib()
        lib = self._lib
        self._state: Any = lib.encoder.create_state(OPUS_INFO.sample_rate, 1, lib.application_voip)
        for request, value in (
            (lib.ctl.set_bitrate, bitrate),
            (lib.ctl.set_complexity, complexity),
            (lib.ctl.set_inband_fec, int(fec)),
            (lib.ctl.set_packet_loss_perc, packet_loss_percent),
            (lib.ctl.set_dtx, int(dtx)),
        ):
            lib.encoder.encoder_ctl(self._state, request, value)
        self.bitrate = bitrate
        self.fec = fec
        self.dtx = dtx
        self._out = ctypes.create_string_buffer(MAX_PAYLOAD_BYTES)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._lib.encoder.destroy(state)
            self._state = None

    def encode(self, pcm: PcmArray) -> bytes:
        """Encode one frame of mono int16 PCM at 48 kHz (normally 960 samples, 20 ms) to one packet.

        Any Opus frame size is accepted: 2.5, 5, 10, 20, 40, 60, 80, 100 or 120 ms.
        """
        samples = as_mono_int16(pcm)
        if len(samples) not in ENCODER_FRAME_SIZES:
            sizes = ", ".join(str(n) for n in sorted(ENCODER_FRAME_SIZES))
            raise ValueError(f"Opus frame must be one of {sizes} samples at 48 kHz, got {len(samples)}")
        result: int = self._lib.encoder.libopus_encode(
            self._state, samples.ctypes.data_as(_Int16Pointer), len(samples), self._out, MAX_PAYLOAD_BYTES
        )
        if result < 0:
            error = self._lib.error_text(result)
            raise RuntimeError(f"Opus encoding failed: {error} (libopus error {result})")
        return ctypes.string_at(self._out, result)


OPUS = Codec(info=OPUS_INFO, encoder_class=OpusEncoder, decoder_class=OpusDecoder)
if opus_available():
    register_codec(OPUS)
