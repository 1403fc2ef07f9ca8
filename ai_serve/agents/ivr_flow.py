"""IVR flows: the YAML a non-developer edits, validated with line numbers, and a hot-reloading registry.

The parts live in modules of their own, and this one gathers the names most callers need:

- :mod:`.flow_schema` the models of a flow file (intents, slots, actions, fallback);
- :mod:`.templates` the ``{placeholder}`` texts and tool arguments;
- :mod:`.flow_checks` the cross-checks pydantic cannot do field by field;
- :mod:`.flow_loader` strict loading with every problem at its line and column (:class:`FlowError`);
- :mod:`.flow_registry` the folder of flows, reloaded on change, the last good version kept live.
"""

from __future__ import annotations

from .flow_loader import FlowError, FlowProblem, load_flow, parse_flow
from .flow_registry import FlowRegistry, FlowWatcher, ReloadResult, watch_flows
from .flow_schema import CallToolAction, CollectSlotsAction, IvrFlow, TransferAction
from .templates import render_template, render_value, template_fields

__all__ = [
    "CallToolAction",
    "CollectSlotsAction",
    "FlowError",
    "FlowProblem",
    "FlowRegistry",
    "FlowWatcher",
    "IvrFlow",
    "ReloadResult",
    "TransferAction",
    "load_flow",
    "parse_flow",
    "render_template",
    "render_value",
    "template_fields",
    "watch_flows",
]
