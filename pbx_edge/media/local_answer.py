"""The relay answering an offer itself, for a leg the edge terminates (the AI attendant).

Normally the relay only rewrites SDP that crosses the edge. When the edge answers a caller itself
there is no far SDP to rewrite: :func:`build_answer` writes an RFC 3264 answer to the offer, with
the relay's address and port, the first offered codec the injector can encode (in the offer's order
of preference) and ``telephone-event`` when offered; every other m-line is refused (port 0).
:func:`answer_locally` records that answer on a :class:`~pbx_edge.media.relay.RelaySession` as if
the callee side had sent it, so the tap decodes the caller and the injector encodes for it, and
clears any callee address so nothing from the caller is relayed to a callee that never answered.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pbx_edge.media.call_audio import ENGINE_SIDE, OTHER
from pbx_edge.media.codecs import get_codec, opus_available
from pbx_edge.media.interface import SdpRejected, Side
from pbx_edge.media.payload_types import media_payload_types
from pbx_edge.media.sdp import MediaSection, SdpLine, SessionDescription, rewrite_for_relay

if TYPE_CHECKING:
    from pbx_edge.media.relay import RelaySession

__all__ = ["answer_locally", "build_answer", "encodable", "transfer_offer"]

_versions = itertools.count(1)


def encodable(encoding: str) -> bool:
    """Whether the injector can encode ``encoding`` (an rtpmap name such as ``PCMU`` or ``opus``)."""
    try:
        get_codec(encoding)
    except KeyError:
        return False
    return encoding.upper() != "OPUS" or opus_available()


def _chosen(section: MediaSection) -> tuple[int | None, int | None]:
    """The codec and telephone-event payload types to answer ``section`` with."""
    codec: int | None = None
    event: int | None = None
    for pt, (name, clock, _) in media_payload_types(section).items():
        if name.upper() == "TELEPHONE-EVENT":
            if event is None and clock == 8000:
                event = pt
        elif codec is None and encodable(name):
            codec = pt
    return codec, event


def _answer_section(section: MediaSection, port: int) -> tuple[MediaSection, bool]:
    """The answer to one audio m-line: (section, accepted)."""
    codec, event = _chosen(section)
    if codec is None:
        return _refused(section), False
    formats = [codec] + ([event] if event is not None else [])
    lines = [SdpLine("m", f"audio {port} {section.proto} {' '.join(str(f) for f in formats)}")]
    wanted = {str(f) for f in formats}
    for line in section.lines[1:]:
        if line.type != "a":
            continue
        name, _, value = line.value.partition(":")
        if name in ("rtpmap", "fmtp") and value.split(" ", 1)[0] in wanted:
            lines.append(line)
    if not any(line.value.startswith(f"rtpmap:{codec} ") for line in lines):
        name, clock, channels = media_payload_types(section)[codec]
        suffix = f"/{channels}" if channels != 1 else ""
        lines.append(SdpLine("a", f"rtpmap:{codec} {name}/{clock}{suffix}"))
    lines += [SdpLine("a", "ptime:20"), SdpLine("a", "sendrecv")]
    return MediaSection.from_lines(lines), True


def _refused(section: MediaSection) -> MediaSection:
    fmt = section.formats[0] if section.formats else "0"
    return MediaSection.from_lines([SdpLine("m", f"{section.media} 0 {section.proto} {fmt}")])


def build_answer(offer: SessionDescription, address: str, ports: Sequence[int | None]) -> SessionDescription:
    """Our answer to ``offer``: its first active audio m-line on ``address``:``ports[i]`` (i: the
    m-line's index; None: the relay has no port there), the rest refused. Raises
    :class:`SdpRejected` (488) when no audio stream offers a codec we encode."""
    ip = ipaddress.ip_address(address)
    addrtype = "IP4" if ip.version == 4 else "IP6"
    version = next(_versions)
    session = (
        SdpLine("v", "0"),
        SdpLine("o", f"- {version} {version} IN {addrtype} {ip}"),
        SdpLine("s", "-"),
        SdpLine("c", f"IN {addrtype} {ip}"),
        SdpLine("t", "0 0"),
    )
    sections: list[MediaSection] = []
    accepted = False
    for index, section in enumerate(offer.media):
        port = ports[index] if index < len(ports) else None
        usable = section.media == "audio" and section.port != 0 and section.proto.startswith("RTP/")
        if not accepted and usable and port is not None:
            answered, accepted = _answer_section(section, port)
            sections.append(answered)
        else:
            sections.append(_refused(section))
    if not accepted:
        raise SdpRejected("no offered audio codec the edge can play to (PCMU, PCMA, opus)", 488)
    return SessionDescription(session, tuple(sections))


def answer_locally(session: RelaySession, offer_side: Side = Side.CALLER) -> bytes:
    """Answer the offer ``offer_side`` sent (already given to :meth:`RelaySession.rewrite`) from the
    relay itself; returns the SDP to send to ``offer_side``."""
    offer = session.sdp.get(offer_side)
    if offer is None or session.closed:
        raise SdpRejected(f"no SDP offer from the {offer_side.value} to answer", 488)
    ports = session.ports
    if offer_side is Side.CALLER:
        relay_ports = [ports.caller_rtp, ports.caller_aux_rtp]
    else:
        relay_ports = [ports.callee_rtp, ports.callee_aux_rtp]
    usable = [port if session.stream_ids[i] is not None else None for i, port in enumerate(relay_ports)]
    answer = build_answer(offer, session.manager.address, usable)
    other = OTHER[offer_side]
    for stream_id in session.stream_ids:
        if stream_id is not None:
            session.manager.engine.set_remote(stream_id, ENGINE_SIDE[other], None, None)
    session.sdp[other] = answer
    session.hold[other] = False
    session.answer_from = other
    session.idle_since = session.manager.clock()
    session.audio.apply()
    return bytes(answer)


def transfer_offer(session: RelaySession) -> bytes:
    """After :func:`answer_locally` for the caller: an offer for a new callee leg (a transfer
    target) with what we answered the caller (its codec, telephone-event) on the relay's callee
    side, so the relay forwards between the two without transcoding."""
    ours = session.sdp.get(Side.CALLEE)
    if ours is None or session.answer_from is not Side.CALLEE or session.closed:
        raise SdpRejected("the caller was not answered by the edge: nothing to offer", 488)
    ports = session.ports
    relay_ports: list[int | None] = [ports.callee_rtp, ports.callee_aux_rtp, *([None] * len(ours.media))]
    relay_ports = relay_ports[: len(ours.media)]
    return bytes(rewrite_for_relay(ours, session.manager.address, relay_ports))
