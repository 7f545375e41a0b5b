"""The state one file's walk carries: where we are, what names mean, the findings so far."""

from __future__ import annotations

import ast
from collections import ChainMap
from dataclasses import dataclass, field

from buttress.audit._config import AuditConfig
from buttress.audit._index import Bindings, ModuleIndex, Program, Resolved, dotted
from buttress.audit._rules import RULES
from buttress.report import Finding, Location

__all__ = [
    "HTTP_METHODS",
    "LOG_METHODS",
    "FileContext",
    "const",
    "has_star_kwargs",
    "keyword",
    "location",
]

HTTP_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options", "request"})
LOG_METHODS = frozenset(
    {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log",
     "msg", "trace", "success"}
)  # fmt: skip


def keyword(call: ast.Call, name: str) -> ast.keyword | None:
    """The ``name=`` keyword argument of ``call``, if given."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw
    return None


def has_star_kwargs(call: ast.Call) -> bool:
    """True when ``call`` passes ``**kwargs`` (which may hold any option)."""
    return any(kw.arg is None for kw in call.keywords)


def const(node: ast.expr | None, value: object) -> bool:
    """True when ``node`` is the constant ``value`` (``True``, ``None``, ``0``...)."""
    return (
        isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value
    )


def location(rel: str, node: ast.AST) -> Location:
    """The 1-based location of ``node`` in the file ``rel``."""
    line = getattr(node, "lineno", 0)
    col = getattr(node, "col_offset", -1) + 1
    end_line = getattr(node, "end_lineno", None) or line
    end_col = (getattr(node, "end_col_offset", None) or 0) + 1 if line else 0
    return Location(path=rel, line=line, column=col, end_line=end_line, end_column=end_col)


@dataclass(slots=True, kw_only=True)
class FileContext:
    """One module being walked."""

    program: Program
    module: ModuleIndex
    config: AuditConfig
    findings: list[Finding] = field(default_factory=list)
    scopes: list[Bindings] = field(default_factory=list)
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=list)
    handler_depth: int = 0  # > 0 inside a route handler
    main_guard: int = 0  # > 0 inside ``if __name__ == "__main__":``
    sessions: set[str] = field(default_factory=set)  # names bound to requests sessions
    httpx_clients: set[str] = field(default_factory=set)
    configured_sessions: set[str] = field(default_factory=set)  # sessions with an adapter
    silent: bool = False  # per-file findings come from the cache: only gather program facts

    @property
    def rel(self) -> str:
        """The file's path relative to the audited root."""
        return self.module.source.rel

    def scope(self) -> Bindings | None:
        """The local bindings visible here (innermost function first), or None at top level."""
        if not self.scopes:
            return None
        if len(self.scopes) == 1:
            return self.scopes[0]
        return ChainMap(*(dict(s) for s in reversed(self.scopes)))

    def qual(self, node: ast.expr) -> str:
        """The dotted name ``node`` refers to, through imports."""
        return self.program.qualname(self.module, node, self.scope())

    def resolve(self, node: ast.expr) -> list[Resolved]:
        """What ``node`` may evaluate to."""
        return self.program.resolve(self.module, node, self.scope())

    def strings(self, node: ast.expr) -> list[str]:
        """The string constants ``node`` may hold."""
        return list(self.program.strings(self.module, node, self.scope()))

    def emit(self, rule_id: str, node: ast.AST, message: str) -> None:
        """Record a finding of ``rule_id`` at ``node`` (if the rule is enabled)."""
        if self.silent or not self.config.enabled(rule_id):
            return
        rule = RULES[rule_id]
        self.findings.append(
            Finding(
                rule_id=rule_id,
                category=rule.category,
                priority=self.config.severity.get(rule_id, rule.priority),
                message=message,
                location=location(self.rel, node),
                fix=rule.fix,
                docs=rule.docs,
            )
        )

    def text(self, node: ast.expr) -> str:
        """``node`` as source text, shortened for messages."""
        text = dotted(node) or ast.unparse(node)
        return text if len(text) <= 60 else text[:57] + "..."
