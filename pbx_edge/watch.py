"""``smartpbx watch``: follow live transcripts of an edge node in a terminal.

Polls the admin API's ``/api/events?name=transcript.*`` (the newest events, oldest first) and prints
every final segment and gap it has not printed yet; with ``--partials`` the newest partial of each
utterance too. Needs a viewer token: ``--token``, ``$SMARTPBX_TOKEN`` or ``--token-file`` (the file
``scripts/run.sh`` writes for the local node).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import aiohttp

__all__ = ["add_watch_parser", "format_event", "new_events", "watch"]

DEFAULT_TOKEN_FILE = "data/local-admin-token"
SEEN_KEPT = 10_000  # event ids remembered to skip repeats between polls


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes):02d}:{secs:04.1f}"


def format_event(event: dict[str, Any]) -> str | None:
    """One line for a ``transcript.*`` event; None for other events."""
    data = event.get("data") or {}
    call = str(event.get("call_id") or "?")[:8]
    leg = data.get("leg", "?")
    speaker = f" {data['speaker']}" if data.get("speaker") else ""
    span = f"{_clock(float(data.get('start', 0)))}-{_clock(float(data.get('end', 0)))}"
    who = f"{event.get('caller') or '?'}" if leg == "caller" else f"{event.get('callee') or '?'}"
    name = event.get("name")
    if name == "transcript.final":
        lang = f" [{data['language']}]" if data.get("language") else ""
        return f"{call} {span} {leg}({who}){speaker}{lang}: {data.get('text', '')}"
    if name == "transcript.partial":
        return f"{call} {span} {leg}({who}){speaker} ... {data.get('text', '')}"
    if name == "transcript.gap":
        return f"{call} {span} {leg}({who}) -- no transcript ({data.get('reason', '?')}) --"
    return None


def new_events(events: Iterable[dict[str, Any]], seen: set[str], order: deque[str]) -> list[dict[str, Any]]:
    """The events whose id was not seen before (and remember them, bounded)."""
    fresh = []
    for event in events:
        event_id = str(event.get("id"))
        if event_id in seen:
            continue
        seen.add(event_id)
        order.append(event_id)
        if len(order) > SEEN_KEPT:
            seen.discard(order.popleft())
        fresh.append(event)
    return fresh


async def watch(
    api: str,
    token: str,
    *,
    call_id: str | None = None,
    partials: bool = False,
    interval: float = 0.5,
    out: TextIO = sys.stdout,
    until: Callable[[], bool] = lambda: False,
) -> int:
    """Poll and print until interrupted (or ``until()`` is true); 0, or 1 when the API refused us."""
    params = {"name": "transcript.*", "limit": "200"}
    if call_id:
        params["call_id"] = call_id
    seen: set[str] = set()
    order: deque[str] = deque()
    headers = {"Authorization": f"Bearer {token}"}
    warned = False
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as http:
        while not until():
            try:
                async with http.get(f"{api.rstrip('/')}/api/events", params=params) as resp:
                    if resp.status in (401, 403):
                        print(
                            f"smartpbx watch: the admin API refused the token ({resp.status})",
                            file=sys.stderr,
                        )
                        return 1
                    resp.raise_for_status()
                    body = await resp.json()
                warned = False
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not warned:
                    print(f"smartpbx watch: {api} not reachable ({exc}); retrying", file=sys.stderr)
                    warned = True
                await asyncio.sleep(interval * 4)
                continue
            for event in new_events(body.get("items", []), seen, order):
                if event.get("name") == "transcript.partial" and not partials:
                    continue
                line = format_event(event)
                if line is not None:
                    print(line, file=out, flush=True)
            await asyncio.sleep(interval)
    return 0


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if os.environ.get("SMARTPBX_TOKEN"):
        return os.environ["SMARTPBX_TOKEN"]
    path = Path(args.token_file)
    return path.read_text().strip() if path.exists() else None


def _run(args: argparse.Namespace) -> int:
    token = _token(args)
    if token is None:
        print(
            "smartpbx watch: no token: pass --token, set SMARTPBX_TOKEN, or run scripts/run.sh "
            f"(it writes {DEFAULT_TOKEN_FILE}); make one with `smartpbx token`",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(watch(args.api, token, call_id=args.call, partials=args.partials))
    except KeyboardInterrupt:
        return 0


def add_watch_parser(sub: Any) -> None:
    parser = sub.add_parser("watch", help="follow live transcripts (polls the admin API)")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the edge's admin API")
    parser.add_argument("--token", help="viewer token (default: $SMARTPBX_TOKEN or --token-file)")
    parser.add_argument("--token-file", default=DEFAULT_TOKEN_FILE)
    parser.add_argument("--call", help="only this call (our id or either leg's SIP Call-ID)")
    parser.add_argument("--partials", action="store_true", help="also print partial transcripts")
    parser.set_defaults(func=_run)
