"""The shipped agent config files agree with each other: every tool an IVR flow calls is declared in
config/tools.yaml and lets the intents that reach that action call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_serve.agents.flow_checks import reaching_intents
from ai_serve.agents.ivr_flow import CallToolAction, load_flow
from ai_serve.agents.tools import CallerContext, ToolRegistry

ROOT = Path(__file__).resolve().parents[3]
FLOWS = sorted((ROOT / "config" / "ivr").glob("*.yaml"))
ENV_VARS = (
    "BILLING_URL",
    "BILLING_TOKEN",
    "CRM_URL",
    "CRM_API_KEY",
    "ORDERS_URL",
    "ORDERS_USER",
    "ORDERS_PASSWORD",
)


@pytest.mark.parametrize("path", FLOWS, ids=[p.name for p in FLOWS])
def test_flow_tools_exist_and_allow_the_intents_that_reach_them(path: Path) -> None:
    environ = {name: "http://127.0.0.1:9" if name.endswith("_URL") else "x" for name in ENV_VARS}
    registry = ToolRegistry.from_yaml(ROOT / "config" / "tools.yaml", environ=environ)
    flow = load_flow(path)
    reach = reaching_intents(flow)
    calls = [a for a in flow.actions if isinstance(a, CallToolAction)]
    assert calls, "the example flow should exercise tool calling"
    for action in calls:
        assert registry.spec(action.tool) is not None, (
            f"{path.name}: {action.name} calls unknown {action.tool}"
        )
        for intent in reach[action.name]:
            who = CallerContext(call_id="check", agent="ivr", intent=intent.name if intent else None)
            assert registry.allows(action.tool, who), f"{action.tool} does not allow intent {who.intent}"
