"""A YAML config file read so that every problem can name its line and column.

The text is composed into nodes first and each node's mark is indexed by its path (``("intents", 0,
"slots", 1, "type")``); pydantic's error locations and a config's own cross-check paths are then looked
up in that index (:meth:`YamlDocument.problem`). Duplicate keys, which YAML silently lets the later one
win, are reported too. Used by the IVR flows and the multi-agent config.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = [
    "Loc",
    "YamlDocument",
    "YamlProblem",
    "YamlSourceError",
    "content_version",
    "dotted",
    "parse_mapping",
    "read_source",
]

Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    """``("intents", 0, "slots")`` as ``intents[0].slots``; the empty path is ``(top level)``."""
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class YamlProblem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # e.g. intents[0].slots[1].type
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class YamlSourceError(ValueError):
    """The file cannot be read as a YAML mapping; ``problems`` says where."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class _Where:
    value: yaml.Mark
    key: yaml.Mark | None  # the mapping key's mark when the node is a mapping value


@dataclass(slots=True)
class YamlDocument:
    """A YAML mapping (``data``) and the position of each of its nodes."""

    source: str
    data: dict[str, Any]
    marks: dict[Loc, _Where] = field(default_factory=dict)
    duplicates: list[YamlProblem] = field(default_factory=list)

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> YamlProblem:
        """``message`` at the node of ``loc`` (a pydantic location or a path of the data); ``key``: the
        problem is the key itself (an unknown field), not its value."""
        path, is_key = _resolve(loc, self.data)
        mark = _position(path, is_key or key, self.marks)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return YamlProblem(self.source, line, col, dotted(path), message)

    def validation_problems(self, error: ValidationError) -> list[YamlProblem]:
        """Each of pydantic's errors at its place in the file."""
        problems = []
        for err in error.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
            problems.append(self.problem(loc, err["msg"], key=err["type"] == "extra_forbidden"))
        return problems


def _index_marks(
    node: yaml.Node,
    loc: Loc,
    key: yaml.Mark | None,
    marks: dict[Loc, _Where],
    dups: list[tuple[Loc, yaml.Mark]],
) -> None:
    marks[loc] = _Where(node.start_mark, key)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            name = key_node.value
            if name in seen:
                dups.append(((*loc, name), key_node.start_mark))
            seen.add(name)
            _index_marks(value_node, (*loc, name), key_node.start_mark, marks, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_marks(item, (*loc, i), None, marks, dups)


def _resolve(loc: Loc, data: Any) -> tuple[Loc, bool]:
    """A pydantic location as a YAML path (union tags dropped) and whether it names a dict key."""
    path: list[str | int] = []
    node = data
    for seg in loc:
        if seg == "[key]":
            return tuple(path), True
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, dict) and seg not in node and node.get("type") == seg:
            continue  # the discriminated union's tag
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            node = node[seg]
        else:
            node = None
        path.append(seg)
    return tuple(path), False


def _position(loc: Loc, is_key: bool, marks: dict[Loc, _Where]) -> yaml.Mark | None:
    for n in range(len(loc), -1, -1):
        where = marks.get(loc[:n])
        if where is None:
            continue
        if n < len(loc):  # a missing field: the mapping that lacks it
            return where.key or where.value
        if where.key is not None and (is_key or where.key.line != where.value.line):
            return where.key  # the key itself, or "key:" above a nested block
        return where.value
    return None


def parse_mapping(text: str, source: str, what: str) -> YamlDocument:
    """Compose ``text`` and index its nodes; :class:`YamlSourceError` unless it is a YAML mapping.

    ``what`` names the file in that error ("a flow" gives "a flow is a mapping, this file is a list").
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise YamlSourceError([YamlProblem(source, line, col, "(yaml)", msg or "not valid YAML")]) from None
    finally:
        loader.dispose()
    if node is None or not isinstance(data, dict):
        kind = "empty" if node is None else f"a {type(data).__name__}"
        raise YamlSourceError(
            [YamlProblem(source, 1, 1, "(top level)", f"{what} is a mapping, this file is {kind}")]
        )
    doc = YamlDocument(source, data)
    dups: list[tuple[Loc, yaml.Mark]] = []
    _index_marks(node, (), None, doc.marks, dups)
    doc.duplicates = [
        YamlProblem(source, m.line + 1, m.column + 1, dotted(loc), "duplicate key (the later one would win)")
        for loc, m in dups
    ]
    return doc


def read_source(path: str | Path) -> str:
    """The file's text; :class:`YamlSourceError` (at ``(file)``) when it cannot be read."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise YamlSourceError([YamlProblem(str(p), 1, 1, "(file)", f"cannot read: {e}")]) from None


def content_version(text: str) -> str:
    """The version of a file that names none: a hash of its text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
