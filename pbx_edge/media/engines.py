"""Choosing the relay engine the config asks for (``media.engine``: auto, native or python)."""

from __future__ import annotations

import logging

from pbx_edge.media.engine import RelayEngine
from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.ops.config import ConfigError, MediaConfig

log = logging.getLogger("pbx_edge.media")


def native_available() -> bool:
    try:
        from pbx_edge.media.native import available

        return bool(available())
    except Exception:  # not built, or built for another platform: the asyncio engine takes over
        return False


def make_engine(config: MediaConfig) -> RelayEngine:
    """The native engine when built (``auto``/``native``), else the asyncio one (``auto``/``python``).

    ``native`` without the built library is a start-up error, not a silent fallback."""
    if config.engine != "python":
        if native_available():
            from pbx_edge.media.native import NativeRelayEngine

            return NativeRelayEngine(threads=config.native_threads)
        if config.engine == "native":
            raise ConfigError(
                "media.engine: 'native' but the native relay library is not built "
                "(run: python -m pbx_edge.media.native.build)"
            )
        log.warning("native relay engine not built; using the asyncio engine (slower)")
    return PythonRelayEngine()
