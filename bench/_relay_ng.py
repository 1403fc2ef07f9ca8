"""rtpengine for the relay benchmark: bencode, the ng control protocol over UDP, and the daemon as a
bounded subprocess.

The ng protocol (rtpengine's ``--listen-ng``): each request is ``<cookie> <bencoded dict>`` in one UDP
datagram and the reply is ``<cookie> <bencoded dict>``. A call is set up with ``offer`` (the caller's
SDP, ``call-id``, ``from-tag``; the reply's SDP is what the callee gets) and ``answer`` (the callee's
SDP and ``to-tag`` too; the reply's SDP is what the caller gets), and removed with ``delete``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench._relay_sip import Addr, build_sdp, sdp_audio_address

Bencodable = int | bytes | str | list[Any] | dict[str, Any]
RTPENGINE: str | None = shutil.which("rtpengine")


# ---------------------------------------------------------------------------------------------- bencode


def bencode(value: Bencodable) -> bytes:
    """Encode ints, byte/text strings, lists and dicts (keys sorted, as bencode requires)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode one bencoded value that fills ``data``; strings come back as ``bytes``."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes after bencoded value at offset {end}")
    return value


def _decode(data: bytes, i: int) -> tuple[Any, int]:
    if i >= len(data):
        raise ValueError("truncated bencode")
    lead = data[i : i + 1]
    if lead == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if lead == b"l":
        items: list[Any] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if lead == b"d":
        result: dict[str, Any] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i)
            if not isinstance(key, bytes):
                raise ValueError("bencode dict key is not a string")
            result[key.decode()], i = _decode(data, i)
        return result, i + 1
    if lead.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated bencode string")
        return data[start : start + length], start + length
    raise ValueError(f"bad bencode byte {lead!r} at offset {i}")


# ---------------------------------------------------------------------------------------------- ng client


class NgError(RuntimeError):
    """rtpengine answered with ``result: error``, or did not answer."""


class NgClient:
    """Requests to rtpengine's ng port, one at a time, retried on timeout."""

    def __init__(self, addr: Addr, timeout: float = 1.0, retries: int = 3) -> None:
        self.addr = addr
        self.timeout = timeout
        self.retries = retries
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(timeout)
        self._cookies = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def request(self, command: str, params: Mapping[str, Bencodable] | None = None) -> dict[str, Any]:
        """Send ``command`` with ``params``; the reply's dict (``result`` ok or pong)."""
        cookie = f"{os.getpid()}_{next(self._cookies)}".encode()
        payload = cookie + b" " + bencode({"command": command, **(params or {})})
        for _ in range(self.retries):
            self._sock.sendto(payload, self.addr)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                try:
                    data = self._sock.recv(65535)
                except TimeoutError:
                    break
                got, _, body = data.partition(b" ")
                if got != cookie:
                    continue  # the late reply to an earlier try
                reply: dict[str, Any] = bdecode(body)
                if reply.get("result") not in (b"ok", b"pong"):
                    reason = reply.get("error-reason", reply.get("result", b"?"))
                    raise NgError(f"rtpengine {command}: {reason.decode(errors='replace')}")
                return reply
        raise NgError(f"rtpengine did not answer {command} at {self.addr[0]}:{self.addr[1]}")

    def ping(self) -> bool:
        try:
            return self.request("ping").get("result") == b"pong"
        except (NgError, OSError):
            return False

    def open_call(self, index: int, caller: Addr, callee: Addr) -> tuple[Addr, Addr]:
        """Offer/answer one call; returns (where the caller sends RTP, where the callee sends RTP)."""
        call_id = f"relaybench-{os.getpid()}-{index}"
        offer = self.request(
            "offer", {"call-id": call_id, "from-tag": f"a{index}", "sdp": build_sdp(caller, 1000 + index)}
        )
        callee_dest = sdp_audio_address(offer["sdp"])
        answer = self.request(
            "answer",
            {
                "call-id": call_id,
                "from-tag": f"a{index}",
                "to-tag": f"b{index}",
                "sdp": build_sdp(callee, 5000 + index),
            },
        )
        return sdp_audio_address(answer["sdp"]), callee_dest

    def close_call(self, index: int) -> None:
        self.request("delete", {"call-id": f"relaybench-{os.getpid()}-{index}", "from-tag": f"a{index}"})


# ---------------------------------------------------------------------------------------------- daemon


class RtpEngineProcess:
    """``rtpengine`` in userspace mode (``--table=-1``) on 127.0.0.1, in the foreground, bounded by
    ``timeout`` and stopped with SIGTERM."""

    def __init__(
        self,
        workdir: Path,
        ng_port: int,
        port_min: int,
        port_max: int,
        threads: int = 2,
        max_lifetime_s: float = 600.0,
    ) -> None:
        if RTPENGINE is None:
            raise FileNotFoundError("rtpengine is not installed (Debian package rtpengine-daemon)")
        self.ng_addr: Addr = ("127.0.0.1", ng_port)
        self.log_path = workdir / f"rtpengine-{ng_port}.log"
        self.command = [
            RTPENGINE, "--table=-1", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}",
            f"--port-min={port_min}", f"--port-max={port_max}", "--delete-delay=0", "--foreground",
            "--log-stderr", f"--num-threads={threads}", "--log-level=4",
        ]  # fmt: skip
        timeout = shutil.which("timeout")
        if timeout is not None:
            self.command = [timeout, "-k", "5", str(round(max_lifetime_s)), *self.command]
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.client: NgClient | None = None

    @property
    def pid(self) -> int:
        """The daemon's own pid (below the ``timeout`` wrapper)."""
        assert self._proc is not None
        pid = self._proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        wrapped = self.command[0] != RTPENGINE
        return int(children[0]) if wrapped and children else pid

    def start(self, ready_timeout: float = 10.0) -> NgClient:
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.client = NgClient(self.ng_addr, timeout=0.5)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self.client.ping():
                self.client.timeout = 2.0
                return self.client
        self.stop()
        raise RuntimeError(f"rtpengine did not answer ping in {ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
