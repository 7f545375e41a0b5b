"""YAML read with its line numbers: PyYAML's node graph, walked by a reader that collects errors.

`yaml.safe_load` forgets where a value came from; the node graph (`yaml.compose_all`)
keeps a mark on every node. `Node` wraps one, `Problems` collects every error of a
document with its line and column (instead of stopping at the first), and the readers
(`Node.field`, `Node.text`, `Node.number`...) check types and name what was expected.
Duplicate keys, which PyYAML keeps silently (the last one wins), are errors here.

Example::

    problems = Problems("slo.yml")
    for doc in documents(text, problems):
        name = doc.field("service").text()
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Node", "Problem", "Problems", "documents"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in a spec: where it is (1-based line and column) and what to do."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


@dataclass(slots=True)
class Problems:
    """The errors found in one file, in the order found."""

    path: str
    items: list[Problem] = field(default_factory=list)

    def add(self, node: Node | None, message: str) -> None:
        """Record ``message`` at ``node`` (the top of the file when None)."""
        line, column = (node.line, node.column) if node is not None else (1, 1)
        self.items.append(Problem(self.path, line, column, message))


class _Constructor(yaml.constructor.SafeConstructor):
    """Builds the Python value of a scalar node (int, float, bool, str, null)."""


_CONSTRUCTOR = _Constructor()


class Node:
    """One YAML node with its mark; ``where`` names it in messages (``slos[0].objective``)."""

    __slots__ = ("_node", "problems", "where")

    def __init__(self, node: yaml.Node, where: str, problems: Problems) -> None:
        self._node = node
        self.where = where
        self.problems = problems

    @property
    def line(self) -> int:
        """1-based line of the node's start."""
        return int(self._node.start_mark.line) + 1

    @property
    def column(self) -> int:
        """1-based column of the node's start."""
        return int(self._node.start_mark.column) + 1

    def error(self, message: str) -> None:
        """Record an error at this node."""
        self.problems.add(self, f"{self.where}: {message}" if self.where else message)

    # -- mappings

    def is_mapping(self) -> bool:
        """True when the node is a mapping."""
        return isinstance(self._node, yaml.MappingNode)

    def mapping(self, allowed: Sequence[str]) -> dict[str, Node] | None:
        """The entries of a mapping whose keys are all in ``allowed``; None (and an error) else.

        Unknown and duplicate keys are errors (with the closest allowed key); the known
        entries are still returned so that the rest of the document is checked too.
        """
        if not isinstance(self._node, yaml.MappingNode):
            self.error(f"expected a mapping (key: value), found {self._kind()}")
            return None
        entries: dict[str, Node] = {}
        for key_node, value_node in self._node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key_at = Node(key_node, self.where, self.problems)
            if not isinstance(key, str):
                key_at.error("keys are plain names")
                continue
            where = f"{self.where}.{key}" if self.where else key
            if key in entries:
                key_at.error(f"{key!r} is given twice (first on line {entries[key].line})")
                continue
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                key_at.error(f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")
                continue
            entries[key] = Node(value_node, where, self.problems)
        return entries

    # -- sequences

    def items(self) -> list[Node]:
        """The items of a sequence (a single scalar counts as a one-item list)."""
        if isinstance(self._node, yaml.SequenceNode):
            return [
                Node(item, f"{self.where}[{i}]", self.problems)
                for i, item in enumerate(self._node.value)
            ]
        if isinstance(self._node, yaml.ScalarNode) and self._node.value != "":
            return [self]
        self.error(f"expected a list, found {self._kind()}")
        return []

    # -- scalars

    def value(self) -> Any:
        """The Python value of a scalar node; None (and an error) for anything else."""
        if not isinstance(self._node, yaml.ScalarNode):
            self.error(f"expected a single value, found {self._kind()}")
            return None
        try:
            return _CONSTRUCTOR.construct_object(self._node, deep=True)
        except yaml.YAMLError as exc:
            self.error(f"cannot read this value ({exc})")
            return None

    def text(self) -> str | None:
        """A non-empty string (numbers are refused: quote them)."""
        value = self.value()
        if isinstance(value, str) and value.strip():
            return value.strip()
        if value is not None or isinstance(self._node, yaml.ScalarNode):
            self.error(f"expected text, found {value!r}")
        return None

    def number(self) -> float | None:
        """An int or a float (booleans are refused)."""
        value = self.value()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(self._node, yaml.ScalarNode):
            self.error(f"expected a number, found {value!r}")
        return None

    def _kind(self) -> str:
        if isinstance(self._node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self._node, yaml.SequenceNode):
            return "a list"
        return f"{self._node.value!r}"


def documents(text: str, problems: Problems) -> Iterator[Node]:
    """Each YAML document of ``text`` as a `Node`; a syntax error is one problem, at its line."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.items.append(Problem(problems.path, line, column, f"YAML syntax: {what}"))
        return
    except yaml.YAMLError as exc:
        problems.add(None, f"YAML syntax: {exc}")
        return
    for node in nodes:
        if node is not None:
            yield Node(node, "", problems)
