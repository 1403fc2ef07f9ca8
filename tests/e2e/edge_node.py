"""An edge node in the test's own process (so a test can read its event bus and calls), configured
for loopback with its stores in the test's work directory and the AI layer at a given port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pbx_edge.edge import EdgeNode
from pbx_edge.ops.config import parse_config
from pbx_edge.ops.models import Event
from tests.e2e.harness import E2E, LOOPBACK


def edge_config(
    e2e: E2E, sip_port: int, *, routing: dict[str, Any], media: tuple[int, int], ai_port: int | None
) -> dict[str, Any]:
    """A UDP-only edge with no admin API and no metrics; the AI layer off when ``ai_port`` is None."""
    return {
        "sip": {"listen": [{"transport": "udp", "host": LOOPBACK, "port": sip_port}]},
        "routing": routing,
        "media": {"port_start": media[0], "port_end": media[1]},
        "admin": {"enabled": False},
        "metrics": {"enabled": False},
        "cdr": {"url": f"sqlite:///{e2e.workdir}/cdr.sqlite3"},
        "webhooks": {"outbox_url": f"sqlite:///{e2e.workdir}/outbox.sqlite3"},
        "ai": {
            "enabled": ai_port is not None,
            "url": f"ws://{LOOPBACK}:{ai_port or 9}",
            "transcripts_dir": None,
        },
    }


@contextlib.asynccontextmanager
async def running_edge(settings: dict[str, Any]) -> AsyncIterator[tuple[EdgeNode, list[Event]]]:
    """The started node of ``settings`` and every event it publishes; stopped on the way out."""
    node = EdgeNode(parse_config(settings, environ={}))
    events: list[Event] = []
    node.ops.bus.subscribe(events.append)
    await node.start()
    try:
        yield node, events
    finally:
        await node.stop()
