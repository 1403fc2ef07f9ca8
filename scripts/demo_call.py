#!/usr/bin/env python3
"""Place one SIPp call with synthesized speech through a running edge and print its live transcript.

With ``scripts/run.sh`` running (edge on 127.0.0.1:5060, AI layer, admin API on :8080)::

    .venv/bin/python scripts/demo_call.py                     # English
    .venv/bin/python scripts/demo_call.py --language ko       # Korean: calls 8200 (ai.languages "82")

What it does: espeak-ng says ``--text``; the speech is encoded as PCMU RTP into a pcap; a SIPp UAS
answers on 127.0.0.1:5070 (the sample config's default route); a SIPp UAC calls the edge and plays
the pcap (SIPp's ``play_pcap_audio`` needs a raw socket: run as root or give sipp CAP_NET_RAW);
meanwhile the transcript events of that call are read from the admin API (the token that run.sh
wrote) and printed. Everything stays on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections import deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pbx_edge.media.pcap import pcm_to_rtp, write_rtp_pcap  # noqa: E402
from pbx_edge.watch import format_event, new_events  # noqa: E402

TEMPLATE = ROOT / "scripts" / "sipp" / "uac_pcap.xml.tmpl"
TEXT = {
    "en": "Hello, I would like to check the status of my order. It was shipped last Monday. "
    "Could you tell me when it will arrive?",
    "ko": "안녕하세요. 주문 상태를 확인하고 싶습니다. 언제 도착하나요?",
}
VOICE = {"en": "en-us", "ko": "ko"}


def speech_pcm(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of ``text`` at 8 kHz int16, with 0.5 s of silence around it."""
    import soxr  # type: ignore[import-untyped]

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    speech = np.asarray(soxr.resample(pcm, rate, 8000))
    pad = np.zeros(4000, dtype=np.float32)
    out: np.ndarray = np.clip(np.concatenate([pad, speech, pad]), -32768, 32767).astype(np.int16)
    return out


def free_udp_port() -> int:
    """A UDP port free right now on loopback, even (RTP), with the next one free too (RTCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1] & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair on 127.0.0.1")


async def follow(api: str, token: str, sip_call_id: str, stop: asyncio.Event) -> int:
    """Print the call's transcript events until ``stop`` is set, then a few seconds more."""
    import aiohttp

    seen: set[str] = set()
    order: deque[str] = deque()
    printed = 0
    params = {"name": "transcript.*", "call_id": sip_call_id, "limit": "200"}
    headers = {"Authorization": f"Bearer {token}"}
    deadline: float | None = None
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as http:
        while deadline is None or time.monotonic() < deadline:
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + 6.0  # the last finals arrive after the BYE
            try:
                async with http.get(f"{api}/api/events", params=params) as resp:
                    resp.raise_for_status()
                    items = (await resp.json())["items"]
            except Exception as exc:  # the demo keeps going; the user sees why
                print(f"(admin API: {exc})", file=sys.stderr)
                items = []
            for event in new_events(items, seen, order):
                line = format_event(event)
                if line is not None and event["name"] != "transcript.partial":
                    print("  " + line, flush=True)
                    printed += 1
            await asyncio.sleep(0.3)
    return printed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edge", default="127.0.0.1:5060", help="the edge's SIP address")
    parser.add_argument(
        "--callee",
        help="number dialled (languages by prefix: default 2000, or 8200 for ko, see ai.languages)",
    )
    parser.add_argument("--uas-port", type=int, default=5070, help="SIPp UAS port (0: do not start one)")
    parser.add_argument("--language", choices=sorted(TEXT), default="en")
    parser.add_argument("--text", help="what the caller says (default: a sentence in --language)")
    parser.add_argument("--speed", type=int, default=130, help="espeak-ng words per minute")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the edge's admin API")
    parser.add_argument("--token-file", default=str(ROOT / "data" / "local-admin-token"))
    args = parser.parse_args(argv)

    for tool in ("sipp", "espeak-ng"):
        if shutil.which(tool) is None:
            print(f"demo_call: {tool} not found (bash scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    token_file = Path(args.token_file)
    token = os.environ.get("SMARTPBX_TOKEN") or (
        token_file.read_text().strip() if token_file.exists() else ""
    )
    if not token:
        print(f"demo_call: no admin token ({token_file} or $SMARTPBX_TOKEN); start scripts/run.sh first",
              file=sys.stderr)  # fmt: skip
        return 2
    if os.geteuid() != 0:
        print(
            "demo_call: note: SIPp plays the pcap through a raw socket (root or CAP_NET_RAW)", file=sys.stderr
        )

    text = args.text or TEXT[args.language]
    args.callee = args.callee or ("8200" if args.language == "ko" else "2000")
    pcm = speech_pcm(text, VOICE[args.language], args.speed)
    seconds = len(pcm) / 8000
    with tempfile.TemporaryDirectory(prefix="smartpbx-demo-") as tmp:
        work = Path(tmp)
        pcap = write_rtp_pcap(work / "speech.pcap", pcm_to_rtp(pcm, "PCMU", 0))
        scenario = work / "uac_speech.xml"
        scenario.write_text(
            TEMPLATE.read_text().format(
                pcap=pcap, pt=0, rtpmap="PCMU/8000", pause_ms=int(seconds * 1000) + 800
            )
        )
        tag = uuid.uuid4().hex[:10]
        sip_call_id = f"demo-{tag}-1@127.0.0.1"
        print(f"calling {args.callee} via {args.edge}: {seconds:.1f} s of speech ({args.language}): {text!r}")
        uas = None
        if args.uas_port:
            uas = subprocess.Popen(
                ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(args.uas_port), "-m", "1", "-nostdin",
                 "-mp", str(free_udp_port()), "-timeout", str(int(seconds) + 60)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
            )  # fmt: skip
        uac_cmd = [
            "sipp", args.edge, "-sf", str(scenario), "-s", args.callee, "-m", "1", "-i", "127.0.0.1",
            "-p", str(free_udp_port()), "-mp", str(free_udp_port()), "-cid_str", f"demo-{tag}-%u@%s",
            "-nostdin", "-timeout", str(int(seconds) + 30), "-trace_err",
        ]  # fmt: skip

        async def run() -> tuple[int, int]:
            stop = asyncio.Event()
            watcher = asyncio.create_task(follow(args.api.rstrip("/"), token, sip_call_id, stop))
            proc = await asyncio.create_subprocess_exec(
                *uac_cmd, cwd=work, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            stop.set()
            if proc.returncode != 0:
                print(f"SIPp UAC failed (exit {proc.returncode}): {err.decode(errors='replace')[-400:]}")
            return proc.returncode or 0, await watcher

        try:
            code, printed = asyncio.run(run())
        finally:
            if uas is not None:
                uas.terminate()
                uas.wait(5)
    if printed == 0:
        print("no transcript arrived: is the AI layer up (scripts/run.sh) and ai.enabled on the edge?")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
