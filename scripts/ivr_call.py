#!/usr/bin/env python3
"""Call the IVR number of a running product and ask it something; print what happened.

With ``scripts/run.sh`` running (edge on 127.0.0.1:5060, admin API on :8080, the sample back-office
systems)::

    .venv/bin/python scripts/ivr_call.py                        # "I want to check my bill" to 1200
    .venv/bin/python scripts/ivr_call.py --calls 3              # three calls, one after the other

A SIP phone on loopback (tests/e2e/rtp_peer.py, from the number ``--caller``) sends PCMU RTP in real
time: a noise floor, and espeak-ng saying ``--say`` once the greeting has played. It prints when the
greeting started after the INVITE, when the answer started after the caller stopped speaking, and
the tool calls of the audit log (``GET /api/tools/audit``, the admin token run.sh wrote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._attendant_call import SpeakingCaller, talk_ends, until  # noqa: E402


async def one_call(edge: tuple[str, int], number: str, caller_number: str, say: str) -> tuple[float, float]:
    """One call: returns (greeting after the INVITE, answer after the end of the question), seconds."""
    caller = SpeakingCaller(number=caller_number)
    await caller.start()
    try:
        loop = asyncio.get_running_loop()
        invited = loop.time()
        dialog = await caller.call(edge, user=number)
        if dialog.final != 200:
            raise RuntimeError(f"the edge answered the INVITE with {dialog.final}")
        greeting = await until(caller, lambda: caller.first_loud(invited), 60, "the greeting")
        greeting_end = await talk_ends(caller, greeting, 60)
        caller.say(say)
        await until(caller, lambda: True if caller.speech_ended.is_set() else None, 30, "the question")
        asked = caller.speech_ended_at
        answer = await until(caller, lambda: caller.first_loud(max(asked, greeting_end)), 60, "the answer")
        await talk_ends(caller, answer, 60)
        caller.phone._send(dialog.request("BYE", 3), edge)
        await asyncio.sleep(1.0)
        return greeting - invited, answer - asked
    finally:
        await caller.close()


def audit_rows(admin: str, token_file: Path, limit: int) -> list[dict[str, object]]:
    token = token_file.read_text().strip()
    request = urllib.request.Request(
        f"{admin}/api/tools/audit?limit={limit}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        items: list[dict[str, object]] = json.load(response)["items"]
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--edge", default="127.0.0.1:5060", help="the edge's SIP address (UDP)")
    parser.add_argument("--number", default="1200", help="the IVR number to call")
    parser.add_argument("--caller", default="01055501234", help="the caller's number (From)")
    parser.add_argument("--say", default="I want to check my bill")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--admin", default="http://127.0.0.1:8080")
    parser.add_argument("--token-file", type=Path, default=ROOT / "data" / "local-admin-token")
    args = parser.parse_args()
    host, _, port = args.edge.rpartition(":")
    for n in range(1, args.calls + 1):
        greeting_s, answer_s = asyncio.run(one_call((host, int(port)), args.number, args.caller, args.say))
        print(f"call {n}: greeting {greeting_s:.2f} s after the INVITE; answer {answer_s:.2f} s after the "
              f"caller stopped speaking")  # fmt: skip
    if args.token_file.exists():
        for row in audit_rows(args.admin, args.token_file, args.calls):
            print(f"audit: {row['tool']} {row['status']} {row['arguments']} {row.get('latency_ms')} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
