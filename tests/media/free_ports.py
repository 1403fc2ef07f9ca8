"""Finding room for a relay's port pool on loopback in tests that open real sockets."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_udp_range(size: int, start: int = 6000) -> int:
    """A base port from ``start`` up, stepping by ``size``, with ``size`` free UDP ports from it.

    The search stays below 12000: under the e2e PortAllocator's ports, above the well-known ones.
    The ports are closed again before it returns, so the pool that takes them probes them anew.
    """
    for base in range(start, 12000 - size, size):
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((HOST, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free port range")
