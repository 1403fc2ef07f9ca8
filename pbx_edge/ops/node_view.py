"""The running node as the admin API and the metrics see it (:class:`pbx_edge.ops.models.NodeView`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pbx_edge.b2bua.call import Call, EndReason
from pbx_edge.ops.models import CallInfo, PortUsage, RegistrationInfo

if TYPE_CHECKING:
    from pbx_edge.edge import EdgeNode


class EdgeNodeView:
    def __init__(self, node: EdgeNode, monotonic: Callable[[], float]) -> None:
        self.node = node
        self.node_id = node.config.node_id
        self.monotonic = monotonic

    @property
    def ready(self) -> bool:
        return self.node.started and self.node.core.refusing is None

    def _wall(self, mono: float) -> float:
        return time.time() - (self.monotonic() - mono)

    def codec_of(self, call: Call) -> str | None:
        media = self.node.media
        session = media.sessions.get(call.id) if media is not None else None
        return session.codec() if session is not None else None

    def _info(self, call: Call) -> CallInfo:
        media = self.node.media
        session = media.sessions.get(call.id) if media is not None else None
        return CallInfo(
            call_id=call.id,
            state=call.state.value,
            a_call_id=call.a.dialog.call_id,
            b_call_id=call.b.dialog.call_id if call.b is not None else None,
            caller=call.caller,
            callee=call.callee,
            start=self._wall(call.created_at),
            answer=self._wall(call.answered_at) if call.answered_at is not None else None,
            codec=session.codec() if session is not None else None,
            media_ports=list(session.ports.all()) if session is not None else [],
        )

    def active_calls(self) -> list[CallInfo]:
        return [self._info(call) for call in list(self.node.core.calls.values())]

    def call_info(self, call_id: str) -> CallInfo | None:
        call = self.node.core.calls.get(call_id) or self.node.core.call_for(call_id)
        return self._info(call) if call is not None else None

    def hangup(self, call_id: str) -> bool:
        call = self.node.core.calls.get(call_id) or self.node.core.call_for(call_id)
        if call is None:
            return False
        return self.node.hangup(call.id, EndReason.ADMIN)

    def port_usage(self) -> PortUsage | None:
        media = self.node.media
        if media is None:
            return None
        usage = media.usage()
        return PortUsage(
            allocated_calls=usage.allocated_calls,
            total_calls=usage.total_calls,
            allocated_ports=usage.allocated_ports,
            total_ports=usage.total_ports,
            unusable_blocks=usage.unusable_blocks,
        )

    def registrations(self) -> list[RegistrationInfo]:
        now = self.monotonic()
        return [
            RegistrationInfo(
                aor=binding.aor,
                contact=str(binding.contact.uri),
                source=f"{binding.source.transport.lower()}:{binding.source.host}:{binding.source.port}",
                expires_in=max(0.0, binding.expires_at - now),
            )
            for binding in self.node.core.location.all(now)
        ]
