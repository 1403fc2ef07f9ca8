"""The sample back-office server the run command starts (ai_serve/agents/sample_systems.py), as the run
command starts it: a process that writes the tools' variables to an env file; the shipped tools
(config/tools.yaml) reach billing, CRM and orders through it, and wrong credentials are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_serve.agents.tools import CallerContext, ToolRegistry
from tests.ai_serve.agents.session_parts import ROOT, TOOLS, closed_port

WHO = CallerContext(call_id="c-1", agent="ivr", intent="check_bill", caller="01055501234")


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    env_file = tmp_path / "sample.env"
    port = closed_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ai_serve.agents.sample_systems", "--port", str(port),
         "--env-file", str(env_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the sample systems did not start"
            time.sleep(0.05)
        assert oct(os.stat(env_file).st_mode & 0o777) == "0o600"  # it holds secrets
        yield _read_env(env_file)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0


async def test_the_shipped_tools_reach_the_sample_systems(server: dict[str, str]) -> None:
    assert server["BILLING_URL"].startswith("http://127.0.0.1:") and len(server["BILLING_TOKEN"]) > 20
    async with ToolRegistry.from_yaml(TOOLS, environ=server) as tools:
        bill = await tools.call("billing.lookup", {"phone": "01055501234"}, who=WHO)
        assert bill.ok and bill.data["balance"] == 39000 and bill.data["due_date"] == "2026-12-10"
        order = await tools.call("orders.status", {"order_id": "ORD-20240117-0042"}, who=WHO)
        assert order.ok and order.data["status"] == "in transit"
        ticket = await tools.call(
            "crm.create_ticket",
            {
                "caller_phone": "01055501234",
                "category": "technical",
                "summary": "No signal since this morning.",
            },
            who=CallerContext(call_id="c-1", agent="support", intent="report_problem"),
        )
        assert ticket.ok and ticket.data["ticket_id"] == "T-1001"
    wrong = {**server, "BILLING_TOKEN": "not-the-token", "ORDERS_PASSWORD": "nope"}
    async with ToolRegistry.from_yaml(TOOLS, environ=wrong) as tools:
        refused = await tools.call("billing.lookup", {"phone": "01055501234"}, who=WHO)
        assert not refused.ok and refused.status == 401
        refused = await tools.call("orders.status", {"order_id": "ORD-20240117-0042"}, who=WHO)
        assert not refused.ok and refused.status == 401
