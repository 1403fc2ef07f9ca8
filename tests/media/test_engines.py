"""media.engine: auto picks native when built, python is always there, native unbuilt is an error."""

from __future__ import annotations

import pytest

from pbx_edge.media import engines
from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.ops.config import ConfigError, MediaConfig


def test_python_is_always_available() -> None:
    assert isinstance(engines.make_engine(MediaConfig(engine="python")), PythonRelayEngine)


def test_auto_falls_back_to_python_without_the_native_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "native_available", lambda: False)
    assert isinstance(engines.make_engine(MediaConfig(engine="auto")), PythonRelayEngine)


def test_native_without_the_library_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "native_available", lambda: False)
    with pytest.raises(ConfigError, match=r"media\.engine.*not built"):
        engines.make_engine(MediaConfig(engine="native"))


@pytest.mark.skipif(not engines.native_available(), reason="native relay not built")
def test_auto_prefers_the_native_engine() -> None:
    from pbx_edge.media.native import NativeRelayEngine

    assert isinstance(engines.make_engine(MediaConfig(engine="auto")), NativeRelayEngine)
