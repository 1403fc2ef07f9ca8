"""Reading an IVR flow file: strict, and every problem reported at once with its line and column.

Unknown keys are errors; pydantic's errors and the cross-checks' (:mod:`.flow_checks`) are placed at
the YAML node at fault (:mod:`.yaml_source`) and raised together as a :class:`FlowError`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from .flow_checks import cross_check
from .flow_schema import IvrFlow
from .yaml_source import YamlProblem, YamlSourceError, content_version, parse_mapping, read_source

__all__ = ["FlowError", "FlowProblem", "load_flow", "parse_flow"]

FlowProblem = YamlProblem
"""One problem of a flow file: ``file:line:column: path: message``."""


class FlowError(ValueError):
    """A flow file is invalid; ``problems`` lists each one with its position in the file."""

    def __init__(self, problems: list[FlowProblem]) -> None:
        self.problems = problems
        super().__init__("invalid IVR flow:\n  " + "\n  ".join(str(p) for p in problems))


def parse_flow(text: str, source: str = "<string>") -> IvrFlow:
    """Validate a flow's YAML text; raises :class:`FlowError` listing every problem with its line."""
    try:
        doc = parse_mapping(text, source, "a flow")
    except YamlSourceError as e:
        raise FlowError(e.problems) from None
    problems = list(doc.duplicates)
    try:
        flow = IvrFlow.model_validate(doc.data, context={"skip_cross_checks": True})
    except ValidationError as e:
        problems.extend(doc.validation_problems(e))
        raise FlowError(sorted(problems, key=lambda p: (p.line, p.column))) from None
    problems.extend(doc.problem(loc, msg) for loc, msg in cross_check(flow))
    if problems:
        raise FlowError(sorted(problems, key=lambda p: (p.line, p.column)))
    return flow if flow.version else flow.model_copy(update={"version": content_version(text)})


def load_flow(path: str | Path) -> IvrFlow:
    """Read and validate one flow file (:func:`parse_flow`)."""
    try:
        text = read_source(path)
    except YamlSourceError as e:
        raise FlowError(e.problems) from None
    return parse_flow(text, str(Path(path)))
