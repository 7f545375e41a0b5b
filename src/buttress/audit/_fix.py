"""``buttress audit --fix`` / ``--diff``: the mechanical fixes, on a concrete syntax tree.

The audit finds; this module rewrites the lines it found with libcst, which keeps every
comment, blank line and formatting choice that the fix does not touch. A fix applies to
one finding at its exact location (line and column) and only to the node shape the rule
flagged, so a file edited since the audit is left alone where it no longer matches.

What is fixed (`FIXABLE`):

- BTR001: ``timeout=None`` becomes ``timeout=10``; a requests call (or ``urlopen``)
  without a timeout gets ``timeout=10`` as its last argument.
- BTR002: a Redis client gets ``socket_timeout=5`` (``None`` becomes ``5``).
- BTR004: ``smtplib.SMTP(...)`` and ``socket.create_connection(...)`` get ``timeout=10``
  (aiohttp's timeout is an object: the hint says what to write).
- BTR201: ``lru_cache(maxsize=None)`` becomes ``lru_cache(maxsize=1024)``; ``@cache`` and
  ``@functools.cache`` become ``lru_cache(maxsize=1024)`` (the import added when needed).
- BTR301: a bare ``except:`` becomes ``except Exception:``.
- BTR402: ``debug=True`` / ``reload=True`` / ``DEBUG = True`` / ``app.debug = True``
  become ``False``.
- BTR403: ``verify=False`` (requests, httpx) and ``ssl=False`` (aiohttp) are removed, so
  the library's default (verify) applies.

Every fix is idempotent: the fixed line no longer matches its rule, so a second run
changes nothing. Nothing is imported or executed.
"""

from __future__ import annotations

import difflib
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from buttress.report import Finding

__all__ = ["FIXABLE", "FileFix", "apply_fixes", "fix_source", "plan_fixes", "unified_diff"]

#: The rules whose findings ``--fix`` rewrites.
FIXABLE = frozenset({"BTR001", "BTR002", "BTR004", "BTR201", "BTR301", "BTR402", "BTR403"})

HTTP_TIMEOUT = "10"  # seconds: requests, httpx, urlopen, smtplib, sockets
REDIS_TIMEOUT = "5"  # seconds: redis-py socket_timeout
CACHE_SIZE = "1024"  # entries: lru_cache's bound


@dataclass(frozen=True, slots=True, kw_only=True)
class FileFix:
    """The fixes for one file: its text before and after, and the findings fixed."""

    rel: str
    before: str
    after: str
    fixed: tuple[Finding, ...]


_Key = tuple[int, int]  # (1-based line, 0-based column in characters)


def _key(finding: Finding, lines: Sequence[str]) -> _Key:
    """Where a finding starts, in libcst's terms (ast columns count UTF-8 bytes)."""
    line = finding.location.line
    column = max(finding.location.column - 1, 0)
    if 0 < line <= len(lines):
        raw = lines[line - 1].encode("utf-8")[:column]
        column = len(raw.decode("utf-8", errors="ignore"))
    return line, column


def _const_name(node: cst.BaseExpression, value: str) -> bool:
    return isinstance(node, cst.Name) and node.value == value


class _Fixer(cst.CSTTransformer):
    """Rewrites the nodes at the targeted locations, one rule shape at a time."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, targets: dict[_Key, set[str]], context: CodemodContext) -> None:
        super().__init__()
        self.targets = targets
        self.context = context
        self.done: set[tuple[_Key, str]] = set()

    def _at(self, node: cst.CSTNode) -> tuple[_Key, set[str]]:
        where = self.get_metadata(PositionProvider, node, None)
        if not isinstance(where, CodeRange):
            return (0, -1), set()
        key = (where.start.line, where.start.column)
        return key, self.targets.get(key, set())

    def _mark(self, key: _Key, rule_id: str) -> None:
        self.done.add((key, rule_id))

    # ------------------------------------------------------------------ calls

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:  # noqa: N802
        """Timeouts added or set (BTR001, BTR002, BTR004), keyword flags (BTR402, BTR403)."""
        key, rules = self._at(original_node)
        node = updated_node
        for rule_id, name, value in (
            ("BTR001", "timeout", HTTP_TIMEOUT),
            ("BTR004", "timeout", HTTP_TIMEOUT),
            ("BTR002", "socket_timeout", REDIS_TIMEOUT),
        ):
            if rule_id in rules:
                node = _set_keyword(node, name, value)
                self._mark(key, rule_id)
        removed: list[int] = []
        args = list(node.args)
        for index, arg in enumerate(original_node.args):
            value_key, value_rules = self._at(arg.value)
            keyword = arg.keyword.value if arg.keyword is not None else None
            if "BTR402" in value_rules and _const_name(arg.value, "True"):
                args[index] = args[index].with_changes(value=cst.Name("False"))
                self._mark(value_key, "BTR402")
            elif (
                "BTR403" in value_rules
                and keyword in ("verify", "ssl")
                and _const_name(arg.value, "False")
            ):
                removed.append(index)
                self._mark(value_key, "BTR403")
        if removed:
            args = _without(args, removed)
        return node.with_changes(args=args) if args != list(node.args) or removed else node

    # ------------------------------------------------------------- decorators

    def leave_Decorator(  # noqa: N802
        self, original_node: cst.Decorator, updated_node: cst.Decorator
    ) -> cst.Decorator:
        """Unbounded caches get a bound (BTR201)."""
        key, rules = self._at(original_node.decorator)
        if "BTR201" not in rules:
            return updated_node
        expr = updated_node.decorator
        if isinstance(expr, cst.Call):  # lru_cache(maxsize=None) / lru_cache(None)
            args = list(expr.args)
            for index, arg in enumerate(args):
                named = arg.keyword is not None and arg.keyword.value == "maxsize"
                if (named or (arg.keyword is None and index == 0)) and _const_name(
                    arg.value, "None"
                ):
                    args[index] = arg.with_changes(value=cst.Integer(CACHE_SIZE))
                    self._mark(key, "BTR201")
                    return updated_node.with_changes(decorator=expr.with_changes(args=args))
            return updated_node
        bound = _keyword_arg("maxsize", CACHE_SIZE)
        if isinstance(expr, cst.Attribute) and expr.attr.value == "cache":
            func: cst.BaseExpression = expr.with_changes(attr=cst.Name("lru_cache"))
        elif isinstance(expr, cst.Name) and expr.value == "cache":
            AddImportsVisitor.add_needed_import(self.context, "functools", "lru_cache")
            RemoveImportsVisitor.remove_unused_import(self.context, "functools", "cache")
            func = cst.Name("lru_cache")
        else:
            return updated_node
        self._mark(key, "BTR201")
        return updated_node.with_changes(decorator=cst.Call(func=func, args=[bound]))

    # --------------------------------------------------------------- handlers

    def leave_ExceptHandler(  # noqa: N802
        self, original_node: cst.ExceptHandler, updated_node: cst.ExceptHandler
    ) -> cst.ExceptHandler:
        """``except:`` -> ``except Exception:`` (BTR301)."""
        key, rules = self._at(original_node)
        if "BTR301" not in rules or updated_node.type is not None:
            return updated_node
        self._mark(key, "BTR301")
        return updated_node.with_changes(
            type=cst.Name("Exception"), whitespace_after_except=cst.SimpleWhitespace(" ")
        )

    # ------------------------------------------------------------ assignments

    def leave_Assign(  # noqa: N802
        self, original_node: cst.Assign, updated_node: cst.Assign
    ) -> cst.Assign:
        """``DEBUG = True`` / ``app.debug = True`` -> ``False`` (BTR402)."""
        if not _const_name(updated_node.value, "True"):
            return updated_node
        for target in original_node.targets:
            key, rules = self._at(target.target)
            if "BTR402" in rules:
                self._mark(key, "BTR402")
                return updated_node.with_changes(value=cst.Name("False"))
        return updated_node


def _keyword_arg(name: str, value: str) -> cst.Arg:
    """``name=value`` (no spaces around ``=``)."""
    tight = cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace(""))
    return cst.Arg(keyword=cst.Name(name), value=cst.Integer(value), equal=tight)


def _set_keyword(call: cst.Call, name: str, value: str) -> cst.Call:
    """``call`` with ``name=value``: a ``None`` value replaced, or the argument appended."""
    args = list(call.args)
    for index, arg in enumerate(args):
        if arg.keyword is not None and arg.keyword.value == name:
            if _const_name(arg.value, "None"):
                args[index] = arg.with_changes(value=cst.Integer(value))
                return call.with_changes(args=args)
            return call  # set to something: nothing to do
        if arg.star == "**":
            return call  # may hold it: the audit gives the benefit of the doubt
    new = _keyword_arg(name, value)
    if not args:
        return call.with_changes(args=[new])
    last = args[-1]
    if isinstance(last.comma, cst.Comma):  # a trailing comma: the new one takes its place
        separator = args[-2].comma if len(args) > 1 else None
        if not isinstance(separator, cst.Comma):
            separator = cst.Comma(whitespace_after=_indent_after_paren(call))
        args[-1] = last.with_changes(comma=separator)
        args.append(new.with_changes(comma=last.comma))
    else:
        separator = args[-2].comma if len(args) > 1 else None
        if not isinstance(separator, cst.Comma):
            separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        args[-1] = last.with_changes(comma=separator)
        args.append(new)
    return call.with_changes(args=args)


def _indent_after_paren(call: cst.Call) -> cst.BaseParenthesizableWhitespace:
    """The whitespace after ``(`` (a newline and indent in a call split over lines)."""
    space = call.whitespace_before_args
    if isinstance(space, cst.ParenthesizedWhitespace):
        return space
    return cst.SimpleWhitespace(" ")


def _without(args: list[cst.Arg], removed: list[int]) -> list[cst.Arg]:
    """``args`` without the ``removed`` indexes, keeping the commas well formed."""
    drop = set(removed)
    kept = [arg for index, arg in enumerate(args) if index not in drop]
    if kept and (len(args) - 1) in drop:  # the old last argument went: its comma carries over
        old_last = args[-1].comma
        kept[-1] = kept[-1].with_changes(
            comma=old_last if isinstance(old_last, cst.Comma) else cst.MaybeSentinel.DEFAULT
        )
    return kept


def fix_source(source: bytes, findings: Iterable[Finding]) -> tuple[bytes, list[Finding]]:
    """Apply the fixes of ``findings`` (one file's) to ``source``; the new bytes, fixed ones.

    A source libcst cannot parse (it is stricter than nothing, laxer than ast in places)
    is returned unchanged.
    """
    wanted = [f for f in findings if f.rule_id in FIXABLE and not f.suppressed]
    if not wanted:
        return source, []
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError:
        return source, []
    lines = module.code.splitlines()
    targets: dict[_Key, set[str]] = {}
    for finding in wanted:
        targets.setdefault(_key(finding, lines), set()).add(finding.rule_id)
    context = CodemodContext()
    fixer = _Fixer(targets, context)
    changed = MetadataWrapper(module).visit(fixer)
    if not fixer.done:
        return source, []
    changed = AddImportsVisitor(context).transform_module(changed)
    changed = RemoveImportsVisitor(context).transform_module(changed)
    fixed = [f for f in wanted if (_key(f, lines), f.rule_id) in fixer.done]
    return changed.bytes, fixed


def plan_fixes(root: Path, findings: Iterable[Finding]) -> list[FileFix]:
    """The fixes for the findings of an audit of ``root``, per file (nothing written)."""
    by_file: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.rule_id in FIXABLE and not finding.suppressed:
            by_file.setdefault(finding.location.path, []).append(finding)
    plans = []
    for rel, mine in sorted(by_file.items()):
        path = root / rel if root.is_dir() else root
        try:
            before = path.read_bytes()
        except OSError:
            continue
        after, fixed = fix_source(before, mine)
        if fixed and after != before:
            plans.append(
                FileFix(
                    rel=rel,
                    before=before.decode("utf-8", errors="replace"),
                    after=after.decode("utf-8", errors="replace"),
                    fixed=tuple(fixed),
                )
            )
    return plans


def unified_diff(fixes: Iterable[FileFix]) -> str:
    """The fixes as one unified diff (``a/`` and ``b/`` paths, as git shows them)."""
    out: list[str] = []
    for fix in fixes:
        out += difflib.unified_diff(
            fix.before.splitlines(keepends=True),
            fix.after.splitlines(keepends=True),
            fromfile=f"a/{fix.rel}",
            tofile=f"b/{fix.rel}",
        )
    return "".join(out)


def apply_fixes(root: Path, fixes: Iterable[FileFix]) -> int:
    """Write the fixed files (each replaced whole, atomically); the number of findings fixed."""
    count = 0
    for fix in fixes:
        path = root / fix.rel if root.is_dir() else root
        temporary = path.with_name(f".{path.name}.buttress-fix")
        temporary.write_bytes(fix.after.encode("utf-8"))
        temporary.chmod(stat.S_IMODE(path.stat().st_mode))
        temporary.replace(path)
        count += len(fix.fixed)
    return count
