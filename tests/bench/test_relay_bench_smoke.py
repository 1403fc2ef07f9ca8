"""Smoke test of ``bench/relay.py``: the C generator builds and a tiny direct-only run prints its table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="no C compiler to build bench/rtpload.c",
)


def test_direct_run_prints_the_table(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    report = tmp_path / "relay.json"
    out = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "bench" / "relay.py"),
            "--calls", "5", "--duration", "1.5", "--warmup", "0.3", "--drain", "0.2",
            "--targets", "direct", "--no-search", "--idle-wait", "0", "--json", str(report),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assert "N = 5 calls" in out.stdout
    direct = re.search(
        r"^\s+direct\s+5\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s.*?(\d+\.\d+)\s", out.stdout, re.M
    )
    assert direct is not None, out.stdout
    p50, p99, p999 = (float(direct.group(i)) for i in (1, 2, 3))
    assert 0 <= p50 <= p99 <= p999 < 1000
    assert report.exists()
