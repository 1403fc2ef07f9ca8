"""Print the STT figures (load time, RTF, WER, latency) at the end of the run, captured or not."""

from __future__ import annotations

from typing import Any

from .speech import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("ai_serve STT figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
