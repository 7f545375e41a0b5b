"""Observability (print, f-string log messages) and resources (unbounded caches, queues).

Rules BTR501 (print), BTR502 (f-string log messages), BTR201 (caches), BTR202 (queues).

- ``print`` is fine in command-line modules (a ``__main__`` guard, argparse/click/typer,
  ``cli.py``, ``__main__.py``, scripts/ and the like) and inside a ``__main__`` guard.
- A logger is a receiver named like one (``log``, ``logger``, ``_log``, ``LOGGER``,
  ``self.logger``...), the ``logging`` module, or a name assigned from
  ``logging.getLogger``/``structlog.get_logger``.
- A cache decorator on a function without parameters (``get_settings()``) holds one
  entry: not flagged.
"""

from __future__ import annotations

import ast
import re

from buttress.audit._context import LOG_METHODS, FileContext, const, keyword

__all__ = ["check_call", "check_decorators"]

_LOGGER_NAME = re.compile(r"^_*(log|logger|logging|LOG|LOGGER|\w*_log|\w*_logger|\w*Logger)$")
_LOGGER_FACTORIES = frozenset(
    {"logging.getLogger", "structlog.get_logger", "structlog.getLogger",
     "structlog.stdlib.get_logger", "logging.LoggerAdapter"}
)  # fmt: skip
_QUEUES = frozenset(
    {"asyncio.Queue", "asyncio.LifoQueue", "asyncio.PriorityQueue", "asyncio.queues.Queue",
     "queue.Queue", "queue.LifoQueue", "queue.PriorityQueue", "queue.SimpleQueue",
     "multiprocessing.Queue", "janus.Queue"}
)  # fmt: skip


def _is_logger(ctx: FileContext, node: ast.expr) -> bool:
    qual = ctx.qual(node)
    if qual in ("logging", "loguru.logger", "structlog"):
        return True
    last = qual.rpartition(".")[2]
    if _LOGGER_NAME.match(last):
        return True
    for found in ctx.resolve(node):
        value = found.node
        if isinstance(value, ast.Call):
            inner = ctx.program.qualname(found.module, value.func)
            if inner in _LOGGER_FACTORIES or inner.endswith((".getLogger", ".get_logger")):
                return True
    return False


def _formatted(node: ast.expr) -> str | None:
    if isinstance(node, ast.JoinedStr) and any(
        isinstance(v, ast.FormattedValue) for v in node.values
    ):
        return "an f-string"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return "str.format()"
    return None


def check_call(ctx: FileContext, call: ast.Call) -> None:
    """BTR501, BTR502, BTR202 on one call."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "print":
        if not ctx.module.is_cli and not ctx.main_guard and "print" not in ctx.module.assigns:
            ctx.emit("BTR501", call, "print() in service code: not structured, no level")
        return
    if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS and call.args:
        message = call.args[1] if func.attr == "log" and len(call.args) > 1 else call.args[0]
        how = _formatted(message)
        if how and _is_logger(ctx, func.value):
            ctx.emit("BTR502", message, f"log message built with {how}: fields are lost")
        return
    qual = ctx.qual(func)
    if qual in _QUEUES:
        size = keyword(call, "maxsize")
        value = size.value if size is not None else (call.args[0] if call.args else None)
        if qual.endswith("SimpleQueue"):
            ctx.emit("BTR202", call, f"{qual}() is always unbounded")
        elif value is None or const(value, 0) or const(value, None):
            ctx.emit("BTR202", call, f"{qual}() without maxsize grows without limit")


def _has_parameters(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = func.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names = [n for n in names if n not in ("self", "cls")]
    return bool(names or args.vararg or args.kwarg)


def check_decorators(ctx: FileContext, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    """BTR201 on a function's decorators."""
    if not _has_parameters(func):
        return
    for decorator in func.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        qual = ctx.qual(target)
        if qual == "functools.cache" and not isinstance(decorator, ast.Call):
            ctx.emit(
                "BTR201", decorator, f"@cache on {func.name}(): one entry per argument, forever"
            )
        elif qual == "functools.lru_cache" and isinstance(decorator, ast.Call):
            size = keyword(decorator, "maxsize")
            value = (
                size.value if size is not None else (decorator.args[0] if decorator.args else None)
            )
            if value is not None and const(value, None):
                ctx.emit(
                    "BTR201", decorator, f"@lru_cache(maxsize=None) on {func.name}(): unbounded"
                )
