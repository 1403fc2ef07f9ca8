"""Templates in flow and agent texts: ``{caller}``, ``{plan}``, ``{result.due_date}`` filled per call.

``{{``/``}}`` are literal braces. A tool argument that is one lone placeholder keeps its value's type
(:func:`render_value`); every other text is a string (:func:`render_template`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["render_template", "render_value", "template_fields"]

_FIELD = r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*"


def template_fields(template: str) -> list[str]:
    """Placeholder names in ``template`` (``{{``/``}}`` are literal braces); ValueError if malformed."""
    names = []
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion or re.fullmatch(_FIELD, field) is None:
            raise ValueError(f"bad placeholder {{{field}}}: use a plain name such as {{caller}}")
        names.append(field)
    return names


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and hasattr(node, part):
            node = getattr(node, part)
        else:
            raise KeyError(f"template value {dotted!r} is missing")
    return node


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` and ``{result.field}`` placeholders from ``values``; KeyError if one is missing."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            value = _lookup(values, field)
            out.append("" if value is None else str(value))
    return "".join(out)


def render_value(template: str, values: Mapping[str, Any]) -> Any:
    """A tool argument: a lone placeholder keeps the value's type (a number, None), else a string."""
    fields = template_fields(template)
    if len(fields) == 1 and template == "{" + fields[0] + "}":
        return _lookup(values, fields[0])
    return render_template(template, values)
