"""One walk per module, handing each node to the rules that look at it.

The walk keeps the context: function scopes, route handlers, ``__main__`` guards.
"""

from __future__ import annotations

import ast
from typing import Any

from buttress.audit import (
    _check_calls,
    _check_clients,
    _check_errors,
    _check_misc,
    _check_security,
)
from buttress.audit._context import FileContext
from buttress.audit._index import LEAVES, _is_main_guard, local_bindings
from buttress.audit._web import WebFacts, is_route_decorator

__all__ = ["Visitor"]


class Visitor(ast.NodeVisitor):
    """Runs the per-file rules on one module and records its web facts."""

    def __init__(self, ctx: FileContext, web: WebFacts) -> None:
        self.ctx = ctx
        self.web = web
        self._dispatch: dict[type[ast.AST], Any] = {}

    def visit(self, node: ast.AST) -> None:
        """Dispatch on the node's type (cached: `ast.NodeVisitor` builds a string per node)."""
        kind = type(node)
        method = self._dispatch.get(kind)
        if method is None:
            method = getattr(self, "visit_" + kind.__name__, None) or self.generic_visit
            self._dispatch[kind] = method
        method(node)

    def generic_visit(self, node: ast.AST) -> None:
        """Visit the children, skipping the `LEAVES` no rule looks at."""
        visit = self.visit
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST) and not isinstance(item, LEAVES):
                        visit(item)
            elif isinstance(value, ast.AST) and not isinstance(value, LEAVES):
                visit(value)

    def run(self) -> None:
        """Walk the module."""
        if not self.ctx.silent:
            _check_calls.collect_clients(self.ctx)
        self.web.on_module(self.ctx.module)
        _check_clients.on_module(self.ctx, self.web.db)
        self.visit(self.ctx.module.source.tree)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        ctx = self.ctx
        if not ctx.silent:
            for decorator in node.decorator_list:
                _check_calls.check_decorator(ctx, decorator)
            _check_misc.check_decorators(ctx, node)
            _check_security.check_function_defaults(ctx, node)
        self.web.on_function(ctx, node)
        handler = any(is_route_decorator(d) for d in node.decorator_list)
        for decorator in node.decorator_list:
            self.visit(decorator)
        for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(default)
        ctx.scopes.append(local_bindings(node))
        ctx.functions.append(node)
        ctx.handler_depth += handler
        try:
            for stmt in node.body:
                self.visit(stmt)
        finally:
            ctx.handler_depth -= handler
            ctx.functions.pop()
            ctx.scopes.pop()

    visit_FunctionDef = _function  # noqa: N815 - ast.NodeVisitor's naming
    visit_AsyncFunctionDef = _function  # noqa: N815

    def visit_If(self, node: ast.If) -> None:
        """``if __name__ == "__main__":`` bodies are entry-point code."""
        guard = not self.ctx.scopes and _is_main_guard(node)
        self.ctx.main_guard += guard
        try:
            self.generic_visit(node)
        finally:
            self.ctx.main_guard -= guard

    def visit_Call(self, node: ast.Call) -> None:
        """Calls: external calls, security, observability, web facts."""
        ctx = self.ctx
        if not ctx.silent:
            _check_calls.check_call(ctx, node)
            _check_security.check_call(ctx, node)
            _check_misc.check_call(ctx, node)
        _check_clients.check_call(ctx, node, self.web.db)
        self.web.on_call(ctx, node)
        self.generic_visit(node)

    def _try(self, node: ast.Try | ast.TryStar) -> None:
        """Error handling rules, on each handler."""
        if not self.ctx.silent:
            _check_errors.check_try(self.ctx, node)
        self.generic_visit(node)

    visit_Try = _try  # noqa: N815 - ast.NodeVisitor's naming
    visit_TryStar = _try  # noqa: N815

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        if not self.ctx.silent:
            _check_errors.check_with(self.ctx, node)
        self.generic_visit(node)

    visit_With = _with  # noqa: N815
    visit_AsyncWith = _with  # noqa: N815

    def _loop(self, node: ast.For | ast.While) -> None:
        """Hand-written retry loops."""
        if not self.ctx.silent:
            _check_clients.check_loop(self.ctx, node)
        self.generic_visit(node)

    visit_For = _loop  # noqa: N815
    visit_While = _loop  # noqa: N815

    def _assigned(self, target: ast.expr, value: ast.expr) -> None:
        ctx = self.ctx
        if isinstance(target, ast.Tuple | ast.List):
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._assigned(t, v)
            return
        if not ctx.silent:
            _check_security.check_assign(ctx, target, value)
            _check_calls.check_tls_assign(ctx, target, value)
        self.web.on_assign(ctx, target, value)

    def visit_Assign(self, node: ast.Assign) -> None:
        """Assignments: secrets, debug flags, TLS settings, web facts."""
        for target in node.targets:
            self._assigned(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        """Annotated assignments (settings classes): as assignments."""
        if node.value is not None:
            self._assigned(node.target, node.value)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        """Comparisons: a credential checked against a literal."""
        if not self.ctx.silent:
            _check_security.check_compare(self.ctx, node)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        """Dict literals: secrets under secret-like keys."""
        if not self.ctx.silent:
            _check_security.check_dict(self.ctx, node)
        self.generic_visit(node)
