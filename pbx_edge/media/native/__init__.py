"""The native (C) RTP relay engine: recvmmsg/sendmmsg batching in threads, outside the GIL.

Build it with ``python -m pbx_edge.media.native.build``; :func:`available` says whether it loads.
``NativeRelayEngine`` is imported lazily so that running the build module with ``-m`` does not
import it twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbx_edge.media.native.engine import NativeRelayEngine

__all__ = ["NativeRelayEngine", "available"]


def available() -> bool:
    """Whether the native library is built and loads (it is never built implicitly)."""
    from pbx_edge.media.native.build import available as _available

    return _available()


def __getattr__(name: str) -> Any:
    if name == "NativeRelayEngine":
        from pbx_edge.media.native.engine import NativeRelayEngine

        return NativeRelayEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
