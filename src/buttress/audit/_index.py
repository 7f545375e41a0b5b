"""The whole-program index: modules, imports, simple assignments, and name resolution.

`ModuleIndex` holds what one module binds: import aliases (``import requests as rq``,
``from .settings import ORIGINS``, relative imports resolved), module-level assignments,
functions and classes. `Program` resolves an expression to what it was assigned from,
following local variables, module globals, imports of other audited modules and class
attribute defaults (``settings.cors_origins`` where ``settings = Settings()`` and the
class says ``cors_origins: list[str] = ["*"]``), a bounded number of steps. Nothing is
imported or executed: values the index cannot see resolve to themselves.
"""

from __future__ import annotations

import ast
import pickle
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from buttress.audit._walk import SourceFile

__all__ = [
    "LEAVES",
    "Bindings",
    "ModuleIndex",
    "Packed",
    "Program",
    "Resolved",
    "fast_walk",
    "local_bindings",
]

#: Node types no rule looks at (contexts and operators): the walks skip them.
LEAVES = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


def fast_walk(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but the `LEAVES`, breadth first (as `ast.walk`, faster)."""
    out: list[ast.AST] = [tree]
    append = out.append
    index = 0
    while index < len(out):
        node = out[index]
        index += 1
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST) and not isinstance(item, LEAVES):
                        append(item)
            elif isinstance(value, ast.AST) and not isinstance(value, LEAVES):
                append(value)
    return out


#: Local name -> the expressions assigned to it (in source order).
Bindings = Mapping[str, list[ast.expr]]

_MAX_DEPTH = 12
_BACKUP_CODE = re.compile(r"\bBackupCheck\b|buttress\.backup\b")

_CLI_MODULES = frozenset({"argparse", "click", "typer", "fire", "docopt"})
_CLI_FILES = frozenset({"__main__.py", "cli.py", "manage.py", "setup.py", "noxfile.py"})
_CLI_DIRS = frozenset({"scripts", "bin", "tools", "examples", "docs", "bench", "benchmarks"})


@dataclass(frozen=True, slots=True)
class Resolved:
    """An expression and the module it is written in."""

    node: ast.expr
    module: ModuleIndex


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    parts = [test.left, *test.comparators]
    names = {p.id for p in parts if isinstance(p, ast.Name)}
    values = {p.value for p in parts if isinstance(p, ast.Constant)}
    return "__name__" in names and "__main__" in values


def _collect_bindings(body: list[ast.stmt], into: dict[str, list[ast.expr]]) -> None:
    """Assignments in ``body`` (not inside nested functions or classes)."""
    stack = list(body)
    while stack:
        stmt = stack.pop(0)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                _bind_target(target, stmt.value, into)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            _bind_target(stmt.target, stmt.value, into)
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                if item.optional_vars is not None:
                    _bind_target(item.optional_vars, item.context_expr, into)
        for name in ("body", "orelse", "finalbody", "handlers"):
            child = getattr(stmt, name, None)
            if isinstance(child, list):
                stack.extend(s for s in child if isinstance(s, ast.stmt))
            if name == "handlers" and isinstance(child, list):
                for handler in child:
                    stack.extend(handler.body)


def _bind_target(target: ast.expr, value: ast.expr, into: dict[str, list[ast.expr]]) -> None:
    if isinstance(target, ast.Name):
        into.setdefault(target.id, []).append(value)
    elif isinstance(target, ast.Attribute):
        text = dotted(target)
        if text:
            into.setdefault(text, []).append(value)
    elif (
        isinstance(target, ast.Tuple | ast.List)
        and isinstance(value, ast.Tuple | ast.List)
        and len(target.elts) == len(value.elts)
    ):
        for t, v in zip(target.elts, value.elts, strict=True):
            _bind_target(t, v, into)


def local_bindings(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[ast.expr]]:
    """What a function body assigns to its names (and ``self.x`` attributes)."""
    into: dict[str, list[ast.expr]] = {}
    _collect_bindings(func.body, into)
    return into


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


_V = TypeVar("_V")
#: How many `Packed` mappings are unpacked at a time (the least recently used is packed).
UNPACKED = 256
_unpacked: OrderedDict[int, Packed[object]] = OrderedDict()


class Packed(Mapping[str, _V], Generic[_V]):
    """A name -> syntax mapping kept pickled, unpacked when a value is read.

    The whole-program index holds one per module and kind; at most `UNPACKED` are
    unpacked at once, so the index's syntax stays a few bytes per source line however
    large the program is. Names (``in``, iteration) are answered without unpacking.
    Values are rebuilt on each unpacking: never key anything by their ``id``.
    """

    __slots__ = ("_blob", "_names", "_values")

    def __init__(self, values: Mapping[str, _V]) -> None:
        self._names = tuple(values)
        self._blob = pickle.dumps(dict(values), protocol=pickle.HIGHEST_PROTOCOL)
        self._values: dict[str, _V] | None = None

    def __reduce__(self) -> tuple[object, ...]:
        return (_packed_from, (self._names, self._blob))

    def _unpacked(self) -> dict[str, _V]:
        values = self._values
        me = id(self)
        if values is None:
            values = self._values = pickle.loads(self._blob)  # noqa: S301 - our own bytes
            _unpacked[me] = self  # type: ignore[assignment]
            while len(_unpacked) > UNPACKED:
                _, oldest = _unpacked.popitem(last=False)
                oldest._values = None  # noqa: SLF001 - the same class
        else:
            _unpacked.move_to_end(me, last=True)
        return values

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> _V:
        if name not in self._names:
            raise KeyError(name)
        return self._unpacked()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _packed_from(names: tuple[str, ...], blob: bytes) -> Packed[object]:
    packed: Packed[object] = Packed.__new__(Packed)
    packed._names, packed._blob, packed._values = names, blob, None  # noqa: SLF001
    return packed


@dataclass(slots=True, kw_only=True)
class ModuleIndex:
    """What one module imports and binds."""

    source: SourceFile
    name: str
    is_package: bool
    aliases: dict[str, str] = field(default_factory=dict)
    imported: set[str] = field(default_factory=set)  # full names of imported modules
    assigns: Mapping[str, list[ast.expr]] = field(default_factory=dict)
    functions: Mapping[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    classes: Mapping[str, ast.ClassDef] = field(default_factory=dict)
    main_guards: list[ast.If] = field(default_factory=list)
    nodes: list[ast.AST] = field(default_factory=list)  # every node, walked once
    lines: int = 0  # the number of source lines
    backup_code: bool = False  # names BackupCheck or buttress.backup (BTR707)

    @property
    def roots(self) -> set[str]:
        """The top-level packages this module imports (``requests``, ``fastapi``...)."""
        return {name.split(".")[0] for name in self.imported}

    @property
    def is_cli(self) -> bool:
        """True for a command-line script, where ``print`` is the interface.

        It has a ``__main__`` guard, uses argparse/click/typer, lives in scripts/,
        bin/, tools/, examples/, or is a Django management command.
        """
        rel = self.source.rel
        parts = rel.split("/")
        return bool(
            self.main_guards
            or self.roots & _CLI_MODULES
            or parts[-1] in _CLI_FILES
            or any(p in _CLI_DIRS for p in parts[:-1])
            or parts[-3:-1] == ["management", "commands"]  # Django management commands
        )

    @classmethod
    def build(cls, source: SourceFile) -> ModuleIndex:
        """Index one parsed file."""
        index = cls(
            source=source,
            name=source.module,
            is_package=source.rel.endswith("__init__.py"),
        )
        tree = source.tree
        index.lines = source.text.count("\n") + 1
        index.backup_code = _BACKUP_CODE.search(source.text) is not None
        index.nodes = fast_walk(tree)
        for node in index.nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    index.imported.add(alias.name)
                    if alias.asname:
                        index.aliases[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        index.aliases.setdefault(top, top)
            elif isinstance(node, ast.ImportFrom):
                base = index._absolute(node.module, node.level)
                if base is None:
                    continue
                index.imported.add(base)
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    index.aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        assigns: dict[str, list[ast.expr]] = {}
        functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        classes: dict[str, ast.ClassDef] = {}
        _collect_bindings(tree.body, assigns)
        index.assigns, index.functions, index.classes = assigns, functions, classes
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[stmt.name] = stmt
            elif isinstance(stmt, ast.ClassDef):
                classes[stmt.name] = stmt
            elif isinstance(stmt, ast.If) and _is_main_guard(stmt):
                index.main_guards.append(stmt)
        return index

    def _absolute(self, module: str | None, level: int) -> str | None:
        if not level:
            return module
        package = self.name.split(".") if self.name else []
        if not self.is_package:
            package = package[:-1]
        if level > 1:
            if level - 1 > len(package):
                return None
            package = package[: len(package) - (level - 1)]
        parts = [*package, *([module] if module else [])]
        return ".".join(parts) or None


class Program:
    """Every module of the audited tree, and resolution across them."""

    def __init__(self, modules: list[ModuleIndex]) -> None:
        self.modules = {m.name: m for m in modules}
        self.by_rel = {m.source.rel: m for m in modules}

    def imports_any(self, names: tuple[str, ...]) -> bool:
        """True when some module imports one of the top-level packages ``names``."""
        wanted = set(names)
        return any(m.roots & wanted for m in self.modules.values())

    def qualname(self, module: ModuleIndex, node: ast.expr, scope: Bindings | None = None) -> str:
        """The dotted name ``node`` refers to, through imports.

        ``rq.get`` -> ``requests.get``; names bound in the module stay local (``app.get``).
        """
        text = dotted(node)
        if text is None:
            if isinstance(node, ast.Call):
                inner = self.qualname(module, node.func, scope)
                return f"{inner}()" if inner else ""
            return ""
        head, _, rest = text.partition(".")
        if scope is not None and head in scope:
            return text
        target = module.aliases.get(head)
        if target is None:
            return text
        return f"{target}.{rest}" if rest else target

    def resolve(
        self, module: ModuleIndex, node: ast.expr, scope: Bindings | None = None
    ) -> list[Resolved]:
        """What ``node`` may evaluate to, as far as simple assignments and imports tell."""
        out: list[Resolved] = []
        self._resolve(module, node, scope, out, 0, set())
        return out

    def _resolve(
        self,
        module: ModuleIndex,
        node: ast.expr,
        scope: Bindings | None,
        out: list[Resolved],
        depth: int,
        seen: set[int],
    ) -> None:
        if depth > _MAX_DEPTH or id(node) in seen:
            out.append(Resolved(node, module))
            return
        seen = seen | {id(node)}
        text = dotted(node)
        if text is None:
            out.append(Resolved(node, module))
            return
        if scope is not None and text in scope:
            for value in scope[text]:
                self._resolve(module, value, None if value is node else scope, out, depth + 1, seen)
            return
        if text in module.assigns:
            for value in module.assigns[text]:
                self._resolve(module, value, None, out, depth + 1, seen)
            return
        head, _, rest = text.partition(".")
        if head in module.aliases:
            found = self._lookup(module.aliases[head] + (f".{rest}" if rest else ""))
            if found is not None:
                other, name = found
                first = name.partition(".")[0]
                if first in other.assigns or first in other.aliases:
                    self._resolve(other, _expr(name, node), None, out, depth + 1, seen)
                    return
        if isinstance(node, ast.Attribute):
            attr = self._attribute(module, node, scope, depth, seen)
            if attr is not None:
                self._resolve(attr.module, attr.node, None, out, depth + 1, seen)
                return
        out.append(Resolved(node, module))

    def _lookup(self, qualified: str) -> tuple[ModuleIndex, str] | None:
        """(module, remaining dotted name) for a name defined in an audited module."""
        parts = qualified.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:cut])
            if name in self.modules:
                return self.modules[name], ".".join(parts[cut:])
        return None

    def _attribute(
        self,
        module: ModuleIndex,
        node: ast.Attribute,
        scope: Bindings | None,
        depth: int,
        seen: set[int],
    ) -> Resolved | None:
        """``obj.attr`` where ``obj`` is an instance (or the class) of an audited class."""
        for base in self.resolve(module, node.value, scope):
            call = base.node
            target = call.func if isinstance(call, ast.Call) else call
            cls = self.class_def(base.module, target)
            if cls is None:
                continue
            klass, owner = cls
            for stmt in klass.body:
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and stmt.target.id == node.attr
                    and stmt.value is not None
                ):
                    return Resolved(_field_default(stmt.value), owner)
                if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.attr for t in stmt.targets
                ):
                    return Resolved(stmt.value, owner)
        return None

    def class_def(
        self, module: ModuleIndex, node: ast.expr
    ) -> tuple[ast.ClassDef, ModuleIndex] | None:
        """The audited class ``node`` names, and its module."""
        text = dotted(node)
        if text is None:
            return None
        if text in module.classes:
            return module.classes[text], module
        head, _, rest = text.partition(".")
        if head in module.aliases:
            found = self._lookup(module.aliases[head] + (f".{rest}" if rest else ""))
            if found is not None and found[1] in found[0].classes:
                return found[0].classes[found[1]], found[0]
        return None

    def function_def(
        self, module: ModuleIndex, node: ast.expr
    ) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, ModuleIndex] | None:
        """The audited function ``node`` names, and its module."""
        text = dotted(node)
        if text is None:
            return None
        if text in module.functions:
            return module.functions[text], module
        head, _, rest = text.partition(".")
        if head in module.aliases:
            found = self._lookup(module.aliases[head] + (f".{rest}" if rest else ""))
            if found is not None and found[1] in found[0].functions:
                return found[0].functions[found[1]], found[0]
        return None

    def strings(
        self, module: ModuleIndex, node: ast.expr, scope: Bindings | None = None
    ) -> Iterator[str]:
        """The string constants ``node`` may hold (itself, or the items of a list/tuple/set)."""
        for found in self.resolve(module, node, scope):
            value = found.node
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.value
            elif isinstance(value, ast.List | ast.Tuple | ast.Set):
                for item in value.elts:
                    yield from self.strings(found.module, item)


def _expr(name: str, where: ast.expr) -> ast.expr:
    """The Name/Attribute chain for a dotted ``name``, located at ``where``."""
    first, *rest = name.split(".")
    node: ast.expr = ast.Name(id=first, ctx=ast.Load())
    for attr in rest:
        node = ast.Attribute(value=node, attr=attr, ctx=ast.Load())
    for sub in ast.walk(node):
        ast.copy_location(sub, where)
    return node


def _field_default(value: ast.expr) -> ast.expr:
    """``Field(default=[...])`` / ``Field(["*"])`` (pydantic) -> the default expression."""
    if isinstance(value, ast.Call) and dotted(value.func) in ("Field", "pydantic.Field"):
        for kw in value.keywords:
            if kw.arg == "default":
                return kw.value
        if value.args:
            return value.args[0]
    return value
