"""Where a message came from or goes to: transport + address, as the core sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    transport: str  # "UDP" or "TCP"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"
