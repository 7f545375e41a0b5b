"""What the whole-program index keeps of a module once its file has been walked.

A run keeps every module's index (other files resolve names through it) but not every
syntax tree: `skeleton` reduces a `ModuleIndex` to what resolution from *other* files
reads, so memory grows with the program's module-level names, not with its code.

Kept: import aliases, module-level assignments (their values whole), the ``__main__``
guards (their tests), classes (bases, decorators, class-level assignments, and the HTTP
method names they define: Django and aiohttp views), top-level functions (decorators,
argument names, and the defaults and annotations that call something: authentication
dependencies; from the body only the calls that may construct a web app and the HTTP
verbs it compares against: factories and function views), the file's digest, line count
and backup marker. The syntax kept is pickled (`_index.Packed`) until a lookup needs it.
Dropped: every other statement, the node list and the source text. Positions are the
original ones: web facts keyed by position (`_web.Key`) match between a skeleton and a
fresh parse.
"""

from __future__ import annotations

import ast
import dataclasses
from bisect import bisect_right
from typing import Any, TypeVar

from buttress.audit._index import ModuleIndex, Packed, dotted

__all__ = ["skeleton"]

#: The last name of every web app constructor `_web.APP_CTORS` knows.
_APP_NAMES = frozenset({"FastAPI", "Starlette", "Flask", "Quart", "Application"})
_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # `_web._view_facts` looks for them
_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
_EMPTY = ast.Module(body=[], type_ignores=[])
_PASS = ast.Pass()
_ANY = ast.Name(id="object", ctx=ast.Load())  # an annotation no rule reads
_NO_ARGS = ast.arguments(
    posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
)

_N = TypeVar("_N", bound=ast.AST)


def _copy(node: _N, **changes: Any) -> _N:
    """A shallow copy of ``node`` with some fields replaced."""
    new = type(node)()
    for name in (*node._fields, *node._attributes):  # noqa: SLF001 - the ast API
        if hasattr(node, name):
            setattr(new, name, getattr(node, name))
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def _kept(index: ModuleIndex) -> dict[int, list[ast.expr]]:
    """Per top-level function (by line), the expressions its skeleton keeps."""
    starts = sorted(f.lineno for f in index.functions.values())
    found: dict[int, list[ast.expr]] = {}
    if not starts:
        return found
    for node in index.nodes:
        if isinstance(node, ast.Call):
            name = dotted(node.func) or ""
            if name.rpartition(".")[2] not in _APP_NAMES:
                continue
        elif not (isinstance(node, ast.Constant) and node.value in _VERBS):
            continue
        where = bisect_right(starts, getattr(node, "lineno", 0)) - 1
        if where >= 0:
            found.setdefault(starts[where], []).append(node)
    return found


def _calls(node: ast.expr | None) -> ast.expr | None:
    """``node`` if it holds a call (``Depends(auth)``, ``Annotated[U, Security(...)]``)."""
    if node is None or isinstance(node, ast.Constant | ast.Name | ast.Attribute):
        return None
    return node if any(isinstance(n, ast.Call) for n in ast.walk(node)) else None


def _arguments(args: ast.arguments) -> ast.arguments:
    """The arguments with only the defaults and annotations that hold calls."""

    def arg(a: ast.arg) -> ast.arg:
        return _copy(a, annotation=_calls(a.annotation), type_comment=None)

    return _copy(
        args,
        posonlyargs=[arg(a) for a in args.posonlyargs],
        args=[arg(a) for a in args.args],
        kwonlyargs=[arg(a) for a in args.kwonlyargs],
        vararg=None,
        kwarg=None,
        defaults=[d for d in args.defaults if _calls(d) is not None],
        kw_defaults=[_calls(d) for d in args.kw_defaults],
    )


def _function(
    func: ast.FunctionDef | ast.AsyncFunctionDef, kept: list[ast.expr]
) -> ast.FunctionDef | ast.AsyncFunctionDef:
    last = func.end_lineno or func.lineno
    inside: list[ast.stmt] = [
        ast.Expr(value=node) for node in kept if func.lineno <= node.lineno <= last
    ]
    return _copy(
        func, args=_arguments(func.args), body=inside or [_PASS], returns=None, type_comment=None
    )


def _class(klass: ast.ClassDef) -> ast.ClassDef:
    body: list[ast.stmt] = []
    for stmt in klass.body:
        if isinstance(stmt, ast.Assign):
            body.append(stmt)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            body.append(_copy(stmt, annotation=_ANY))
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name in _METHODS:
            body.append(_copy(stmt, args=_NO_ARGS, body=[_PASS], decorator_list=[], returns=None))
    return _copy(klass, body=body or [_PASS])


def skeleton(index: ModuleIndex) -> ModuleIndex:
    """``index`` without its syntax tree: what other files' resolution reads (see above)."""
    kept = _kept(index)
    return dataclasses.replace(
        index,
        source=dataclasses.replace(index.source, text="", tree=_EMPTY),
        assigns=Packed(index.assigns),
        functions=Packed(
            {
                name: _function(func, kept.get(func.lineno, []))
                for name, func in index.functions.items()
            }
        ),
        classes=Packed({name: _class(klass) for name, klass in index.classes.items()}),
        main_guards=[_copy(guard, body=[ast.Pass()], orelse=[]) for guard in index.main_guards],
        nodes=[],
    )
