"""Media peers for the end-to-end tests: pcap files for SIPp to play, and a minimal SIP phone.

- :func:`pcap_udp_payloads` reads the RTP packets out of a pcap (Ethernet/IPv4/UDP, as SIPp ships);
  :func:`write_rtp_pcap` writes one that SIPp's ``play_pcap_audio`` can play.
- :func:`tone_rtp` encodes a sine as RTP packets in any registered codec.
- :class:`Phone` is a tiny SIP user agent on asyncio (UDP): it answers INVITEs or places one, with
  an SDP naming its own RTP socket, and records every RTP packet it receives with its arrival time.
  It speaks real SIP over real sockets; the parser is the edge's, only to read the replies.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass, field

import numpy as np

from pbx_edge.media.codecs import get_codec
from pbx_edge.media.pcap import pcap_udp_payloads, pcm_to_rtp, rtp_header, write_rtp_pcap
from pbx_edge.sip.message import Request, Response, parse_message

LOOPBACK = "127.0.0.1"
__all__ = ["LOOPBACK", "Dialog", "Phone", "dominant_frequency", "pcap_udp_payloads", "rtp_header", "tone_rtp",
           "tone_snr_db", "write_rtp_pcap"]  # fmt: skip


def tone_rtp(
    codec_name: str, pt: int, seconds: float, freq: float = 440.0, ssrc: int = 0x51B0
) -> list[bytes]:
    """A sine at ``freq`` Hz, 20 ms per packet, encoded with the registered codec ``codec_name``."""
    rate = get_codec(codec_name).info.sample_rate
    t = np.arange(round(seconds * 50) * (rate // 50)) / rate
    return pcm_to_rtp((np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16), codec_name, pt, ssrc)


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    window = np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * window))
    peak = int(np.argmax(spectrum[1:])) + 1
    # Parabolic interpolation between bins for sub-bin accuracy.
    a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float((peak + shift) * rate / len(pcm))


def tone_snr_db(pcm: np.ndarray, rate: int, freq: float) -> float:
    """SNR of a pure tone: power of the best-fitting sine at ``freq`` over the residual's power."""
    t = np.arange(len(pcm)) / rate
    basis = np.column_stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)])
    signal = pcm.astype(np.float64)
    coeffs, *_ = np.linalg.lstsq(basis, signal, rcond=None)
    fitted = basis @ coeffs
    noise = signal - fitted
    return float(10 * np.log10(np.sum(fitted**2) / max(np.sum(noise**2), 1e-9)))


# ------------------------------------------------------------------------------------------ phone
def sdp_for(port: int, payload_types: dict[int, str], host: str = LOOPBACK) -> bytes:
    lines = [
        "v=0",
        f"o=phone 1 1 IN IP4 {host}",
        "s=phone",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(pt) for pt in payload_types)}",
        *(f"a=rtpmap:{pt} {name}" for pt, name in payload_types.items()),
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_media_address(body: bytes) -> tuple[str, int]:
    host, port = "", 0
    for line in body.decode().splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return host, port


@dataclass
class Received:
    data: bytes
    source: tuple[str, int]
    at: float


@dataclass
class Phone(asyncio.DatagramProtocol):
    """A SIP UA with one RTP socket. As callee it answers every INVITE with 200 + SDP."""

    payload_types: dict[int, str] = field(default_factory=lambda: {0: "PCMU/8000"})
    sip_port: int = 0
    rtp_port: int = 0
    rtp: list[Received] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    responses: asyncio.Queue[Response] = field(default_factory=asyncio.Queue)
    remote_media: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    rtp_sock: socket.socket | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    byed: asyncio.Event = field(default_factory=asyncio.Event)
    host: str = LOOPBACK  # another 127.x address makes this phone a different source
    answer_with: int = 200  # status for incoming INVITEs (486: busy)
    user: str = "phone"  # the From user of its calls (the caller's number the edge sees)

    async def start(self) -> Phone:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.sip_port)
        )
        self.transport = transport
        self.sip_port = transport.get_extra_info("sockname")[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, self.rtp_port))
        sock.setblocking(False)
        self.rtp_sock = sock
        self.rtp_port = sock.getsockname()[1]
        loop.add_reader(sock.fileno(), self._on_rtp)
        return self

    def close(self) -> None:
        if self.rtp_sock is not None:
            asyncio.get_running_loop().remove_reader(self.rtp_sock.fileno())
            self.rtp_sock.close()
        if self.transport is not None:
            self.transport.close()

    def _on_rtp(self) -> None:
        assert self.rtp_sock is not None
        now = asyncio.get_running_loop().time()
        while True:
            try:
                data, source = self.rtp_sock.recvfrom(4096)
            except BlockingIOError:
                return
            self.rtp.append(Received(data, source, now))

    def send_rtp(self, data: bytes) -> None:
        assert self.rtp_sock is not None and self.remote_media is not None
        self.rtp_sock.sendto(data, self.remote_media)

    # --- SIP -------------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Response):
            self.responses.put_nowait(message)
            return
        self.requests.append(message)
        if message.method == "INVITE":
            self.remote_media = sdp_media_address(message.body)
            if self.answer_with != 200:
                self._reply(message, addr, self.answer_with, "Busy Here")
                return
            self._reply(message, addr, 200, "OK", sdp_for(self.rtp_port, self.payload_types, self.host))
            self.answered.set()
        elif message.method == "BYE":
            self._reply(message, addr, 200, "OK")
            self.byed.set()
        elif message.method != "ACK":
            self._reply(message, addr, 200, "OK")

    def _reply(
        self, req: Request, addr: tuple[str, int], status: int, reason: str, body: bytes = b""
    ) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in req.headers.get_all(name):
                if name == "To" and req.to_tag is None:
                    value += ";tag=phone"
                lines.append(f"{name}: {value}")
        lines.append(f"Contact: <sip:phone@{self.host}:{self.sip_port}>")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, addr)

    async def call(self, edge: tuple[str, int], user: str = "echo") -> Dialog:
        """Place a call through ``edge``; returns once it is answered (200 + ACK)."""
        call_id = uuid.uuid4().hex
        dialog = Dialog(self, edge, call_id, f"sip:{user}@{edge[0]}:{edge[1]}")
        self._send(dialog.request("INVITE", 1, sdp_for(self.rtp_port, self.payload_types, self.host)), edge)
        while True:
            resp = await asyncio.wait_for(self.responses.get(), 10)
            if resp.call_id != call_id or resp.status < 200:
                continue
            if resp.status >= 300:
                dialog.final = resp.status
                self._send(dialog.request("ACK", 1, to=resp.headers.get("To")), edge)
                return dialog
            dialog.final = resp.status
            dialog.to = resp.headers.get("To") or ""
            self.remote_media = sdp_media_address(resp.body)
            self._send(dialog.request("ACK", 1), edge)
            return dialog

    async def register(
        self, edge: tuple[str, int], user: str, domain: str | None = None, expires: int = 300
    ) -> int:
        """REGISTER ``user@domain`` (default: the edge's address, as desk phones do) at ``edge`` with
        this phone as its contact; returns the final status."""
        domain = domain or edge[0]
        call_id = uuid.uuid4().hex
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        lines = [
            f"REGISTER sip:{edge[0]}:{edge[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.sip_port};branch={branch};rport",
            "Max-Forwards: 70",
            f"To: <sip:{user}@{domain}>",
            f"From: <sip:{user}@{domain}>;tag=reg-{call_id[:8]}",
            f"Call-ID: {call_id}",
            "CSeq: 1 REGISTER",
            f"Contact: <sip:{user}@{self.host}:{self.sip_port}>;expires={expires}",
            "Content-Length: 0",
        ]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode(), edge)
        while True:
            resp = await asyncio.wait_for(self.responses.get(), 10)
            if resp.call_id == call_id and resp.status >= 200:
                return resp.status

    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)


@dataclass
class Dialog:
    phone: Phone
    edge: tuple[str, int]
    call_id: str
    uri: str
    to: str = ""
    final: int = 0

    def request(
        self,
        method: str,
        cseq: int,
        body: bytes = b"",
        to: str | None = None,
        content_type: str = "application/sdp",
    ) -> bytes:
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        lines = [
            f"{method} {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.phone.host}:{self.phone.sip_port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.phone.user}@{self.phone.host}>;tag=caller-{self.call_id[:8]}",
            f"To: {to or self.to or '<' + self.uri + '>'}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.phone.user}@{self.phone.host}:{self.phone.sip_port}>",
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def bye(self) -> int:
        self.phone._send(self.request("BYE", 2), self.edge)
        while True:
            resp = await asyncio.wait_for(self.phone.responses.get(), 10)
            if resp.call_id == self.call_id and resp.cseq.method == "BYE" and resp.status >= 200:
                return resp.status
