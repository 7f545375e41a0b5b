"""Error handling: bare except, swallowed exceptions, broad excepts that hide errors.

Rules BTR301 (bare except), BTR302 (swallowed), BTR303 (neither logged nor re-raised).

- A bare ``except:`` whose body ends in a bare ``raise`` (clean up, then propagate) is
  not flagged.
- BTR302: a broad handler (bare, ``Exception``, ``BaseException``) whose body only
  ``pass``/``continue``/``...``, or ``contextlib.suppress(Exception)``; a *typed* handler
  that does so inside a route handler (the client gets a success for a failure). Not
  when the guarded code only calls close-like methods (``close``, ``aclose``,
  ``disconnect``, ``unlink``...): ignoring a failed best-effort teardown is fine.
- BTR303: a broad handler with a body that neither raises, logs (a logger method,
  ``logging.*``, ``traceback.print_exc``, Sentry's ``capture_exception``, ``warnings.warn``,
  ``print``), exits, counts it (``self.errors += 1``: a metric), nor uses the exception
  it bound (``errors.append(exc)`` hands it on).
"""

from __future__ import annotations

import ast
import re

from buttress.audit._context import LOG_METHODS, FileContext

__all__ = ["check_except", "check_try", "check_with"]

_BROAD = frozenset({"Exception", "BaseException", "builtins.Exception", "builtins.BaseException"})
_REPORTING = frozenset(
    {"print_exc", "print_exception", "format_exc", "capture_exception", "capture_message",
     "warn", "exit", "_exit", "abort", "print_stack", "format_exception"}
)  # fmt: skip


def _is_broad(ctx: FileContext, node: ast.expr | None) -> bool:
    if node is None:
        return True
    if isinstance(node, ast.Tuple):
        return any(_is_broad(ctx, item) for item in node.elts)
    return ctx.qual(node) in _BROAD


_CLEANUP = frozenset(
    {"close", "aclose", "disconnect", "shutdown", "cancel", "unlink", "remove", "rmtree",
     "kill", "terminate", "release", "wait_closed", "stop", "join", "flush", "unregister"}
)  # fmt: skip
_COUNTER = re.compile(r"(error|fail|exception|dropped|lost)", re.IGNORECASE)


def _is_cleanup(body: list[ast.stmt]) -> bool:
    """True when ``body`` only calls close-like methods: best-effort teardown."""
    if not body:
        return False
    for stmt in body:
        if not isinstance(stmt, ast.Expr):
            return False
        calls = [n for n in ast.walk(stmt.value) if isinstance(n, ast.Call)]
        if not any(
            isinstance(c.func, ast.Attribute | ast.Name)
            and (c.func.attr if isinstance(c.func, ast.Attribute) else c.func.id) in _CLEANUP
            for c in calls
        ):
            return False
    return True


def _swallows(body: list[ast.stmt]) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.Pass | ast.Continue):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # ``...`` or a comment-like string
        return False
    return True


def _handles(handler: ast.ExceptHandler) -> bool:
    """True when the body raises, logs, reports, exits or uses the bound exception."""
    for stmt in handler.body:
        if isinstance(stmt, ast.AugAssign) and _COUNTER.search(ast.unparse(stmt.target)):
            return True  # counted as an error: a metric records it
        for node in ast.walk(stmt):
            if isinstance(node, ast.Raise):
                return True
            if isinstance(node, ast.Name) and handler.name and node.id == handler.name:
                return True
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in LOG_METHODS or name in _REPORTING or name == "print":
                    return True
    return False


def check_try(ctx: FileContext, node: ast.Try | ast.TryStar) -> None:
    """BTR301, BTR302, BTR303 on each handler of a ``try`` (a cleanup-only body is exempt)."""
    cleanup = _is_cleanup(node.body)
    for handler in node.handlers:
        if not (cleanup and handler.type is not None and _swallows(handler.body)):
            check_except(ctx, handler)


def check_except(ctx: FileContext, handler: ast.ExceptHandler) -> None:
    """BTR301, BTR302, BTR303 on one handler."""
    if handler.type is None:
        last = handler.body[-1] if handler.body else None
        if not (isinstance(last, ast.Raise) and last.exc is None):
            ctx.emit("BTR301", handler, "bare except: catches SystemExit and KeyboardInterrupt too")
        return
    broad = _is_broad(ctx, handler.type)
    if _swallows(handler.body):
        if broad:
            ctx.emit(
                "BTR302", handler, f"except {ctx.text(handler.type)}: the error is silently dropped"
            )
        elif ctx.handler_depth:
            ctx.emit(
                "BTR302",
                handler,
                f"except {ctx.text(handler.type)}: dropped silently in a route handler",
            )
        return
    if broad and not _handles(handler):
        ctx.emit(
            "BTR303",
            handler,
            f"except {ctx.text(handler.type)}: neither logged nor re-raised",
        )


def check_with(ctx: FileContext, node: ast.With | ast.AsyncWith) -> None:
    """BTR302 for ``with contextlib.suppress(Exception):``."""
    for item in node.items:
        call = item.context_expr
        if (
            isinstance(call, ast.Call)
            and ctx.qual(call.func) == "contextlib.suppress"
            and any(_is_broad(ctx, arg) for arg in call.args)
            and not _is_cleanup(node.body)
        ):
            ctx.emit("BTR302", call, "contextlib.suppress(Exception): errors silently dropped")
