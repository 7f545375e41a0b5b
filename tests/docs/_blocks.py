"""The code blocks of the Markdown docs as Sybil examples (see test_examples.py for the rules)."""

from __future__ import annotations

import ast
import contextlib
import copy
import doctest
import functools
import io
import logging
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTest, DocTestRunner, OutputChecker
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[2]
#: The documents whose Python examples run: README.md and docs/*.md.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: ``...`` in shown output matches anything; trailing whitespace is ignored.
FLAGS = doctest.ELLIPSIS


@dataclass(frozen=True)
class Block:
    """One runnable block: its language, code, hidden set-up and the output it shows."""

    language: str  # "python" (a script) or "pycon" (a doctest session)
    source: str
    line: int  # the line of the block's first line of code in the document
    setup: str | None = None  # an invisible-code-block right before it
    setup_line: int = 0
    expected: str | None = None  # the ``text`` block right after it, if any
    argv: tuple[str, ...] = ()  # command-line arguments (sys.argv[1:]) the script gets


def _line(document: Document, position: int) -> int:
    return document.text.count("\n", 0, position) + 1


def _source_line(document: Document, region: Region) -> int:
    source = region.lexemes["source"]
    return _line(document, region.start + source.offset)


class BlockParser:
    """Yields one region per ``python``/``pycon`` block, with its set-up and shown output."""

    fences = FencedCodeBlockLexer(language=r"[\w+-]+")
    invisible = DirectiveInHTMLCommentLexer(directive=r"invisible-code-block", arguments=r"python")

    def __call__(self, document: Document) -> Iterable[Region]:
        fenced = [(r, r.lexemes["language"]) for r in self.fences(document)]
        hidden = [(r, "invisible") for r in self.invisible(document)]
        regions = sorted(fenced + hidden, key=lambda item: item[0].start)
        setup: Region | None = None
        skip_next = False
        for index, (region, kind) in enumerate(regions):
            if skip_next:  # the output block of the previous example
                skip_next = False
                continue
            if kind == "invisible":
                setup = region
                continue
            if kind not in ("python", "pycon"):
                setup = None
                continue
            start, end, expected = region.start, region.end, None
            if setup is not None:
                if document.text[setup.end : region.start].strip() not in ("", "-->"):
                    msg = f"{document.path}:{_line(document, setup.start)}: invisible-code-block"
                    raise ValueError(f"{msg} must come right before a python block")
                start = setup.start
            following = regions[index + 1] if index + 1 < len(regions) else None
            if (
                kind == "python"
                and following is not None
                and following[1] == "text"
                and not document.text[region.end : following[0].start].strip()
            ):
                expected = str(following[0].lexemes["source"])
                end = following[0].end
                skip_next = True
            block = Block(
                language=kind,
                source=str(region.lexemes["source"]),
                line=_source_line(document, region),
                setup=None if setup is None else str(setup.lexemes["source"]),
                setup_line=0 if setup is None else _source_line(document, setup),
                expected=expected,
            )
            setup = None
            yield Region(start, end, block, run_block)


SYBIL = Sybil(parsers=[SkipParser(), BlockParser()], path=str(ROOT))


def parse(path: Path) -> Document:
    return SYBIL.parse(path)


def relative(example: Example) -> str:
    return f"{Path(example.path).relative_to(ROOT)}:{example.line}"


# ------------------------------------------------------------------ running a block


def _compile(source: str, line: int, path: str) -> Any:
    # pad so that tracebacks point at the document's own lines
    return compile("\n" * (line - 1) + source, path, "exec", dont_inherit=True)


def _module_state(module: ModuleType) -> dict[str, Any]:
    return {
        name: copy.copy(value) if isinstance(value, (list, dict)) else value
        for name, value in vars(module).items()
        if not name.startswith("__")
        and not callable(value)
        and not isinstance(value, ModuleType)
        and isinstance(value, (type(None), bool, int, float, str, list, dict, tuple, io.IOBase))
    }


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Put back the process-wide state a script changes (each block is its own process)."""
    import prometheus_client
    import structlog

    from buttress import process_errors, telemetry
    from buttress.asgi import _context, _logging
    from buttress.resilience import registry

    environ, argv = dict(os.environ), sys.argv[:]
    excepthooks = sys.excepthook, threading.excepthook  # harden() installs its own
    installed = process_errors._installed[:]  # "installed once per process": not yet, here
    process_errors._installed.clear()
    django_settings = _django_settings(None)  # a script configures Django's settings once
    hooks = telemetry.global_hooks()
    logging_state = _module_state(_logging)
    loggers = {
        name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
        for name, lg in [("", logging.getLogger()), *logging.root.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    # what a fresh process starts with: no hooks, no logging set up, a new default registry
    default_registry = prometheus_client.REGISTRY
    prometheus_client.REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)
    structlog.reset_defaults()
    telemetry.clear_hooks()
    known = registry._breakers, registry._pipelines  # breakers other code left alive
    registry.clear()
    reported = _context._rewrite_reported  # "one error per process": not yet, in a new one
    _context._rewrite_reported = False
    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
    try:
        yield
    finally:
        structlog.reset_defaults()
        prometheus_client.REGISTRY = default_registry
        for name, (level, handlers, propagate, disabled) in loggers.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        for name in logging.root.manager.loggerDict.keys() - loggers.keys():
            lg = logging.getLogger(name)
            if isinstance(lg, logging.Logger):
                lg.handlers[:] = []
                lg.setLevel(logging.NOTSET)
        for name, value in logging_state.items():
            setattr(_logging, name, value)
        registry._breakers, registry._pipelines = known
        _context._rewrite_reported = reported
        telemetry.clear_hooks()
        for hook in hooks:
            telemetry.add_hook(hook)
        sys.argv[:] = argv
        sys.excepthook, threading.excepthook = excepthooks
        process_errors._installed[:] = installed
        _django_settings(django_settings)
        _close_sentry()
        os.environ.clear()
        os.environ.update(environ)


_UNCONFIGURED = object()


def _django_settings(restore: Any) -> Any:
    """Django's settings as a fresh process has them (None: save them; else put them back).

    A script may call ``settings.configure()``, which works once per process: the settings
    another block or test configured are set aside while a block runs, then put back, and
    the URL resolvers cached meanwhile are dropped.
    """
    if "django.conf" not in sys.modules:
        return _UNCONFIGURED
    from django.conf import settings
    from django.urls import clear_url_caches
    from django.utils.functional import empty

    if restore is None:
        saved = settings._wrapped
        settings._wrapped = empty
        return saved
    settings._wrapped = empty if restore is _UNCONFIGURED else restore
    clear_url_caches()
    return None


def _close_sentry() -> None:
    """The Sentry client a script initialised, closed (a process would end with it)."""
    if "sentry_sdk" not in sys.modules:
        return
    import sentry_sdk

    if sentry_sdk.get_client().is_active():
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
        sentry_sdk.get_isolation_scope().clear()


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """What the block prints, stdout and stderr together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield out


def _run_session(block: Block, namespace: dict[str, Any], path: str) -> str:
    """A ``pycon`` block as a doctest session; the failure report, or ''."""
    examples = doctest.DocTestParser().get_examples(block.source)
    for example in examples:
        example.lineno += block.line - 1
    runner = DocTestRunner(FLAGS)
    report: list[str] = []
    runner.run(
        DocTest(examples, namespace, name=path, filename=path, lineno=0, docstring=None),
        clear_globs=False,
        out=report.append,
    )
    return "".join(report)


def is_test_module(block: Block) -> bool:
    """A block without shown output that defines ``test_*`` functions is a pytest module."""
    if block.language != "python" or block.expected is not None:
        return False
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        for node in ast.parse(block.source).body
    )


@functools.cache
def pytest_results() -> dict[tuple[str, int], str]:
    """Run every test-module block of the docs with pytest, as a reader would: one process.

    Plain pytest (no plugin autoloading, warnings are errors), each block saved as its own
    ``test_*.py``; returns, per (document, line), '' when its tests passed, else why not.
    """
    tmp = Path(tempfile.mkdtemp(prefix="buttress-docs-"))
    modules: dict[str, tuple[str, int]] = {}
    for path in DOCUMENTS:
        for group in examples(path):
            block = group[-1].parsed
            if is_test_module(block):
                name = f"test_{path.stem.replace('-', '_')}_{block.line}"
                (tmp / f"{name}.py").write_text((block.setup or "") + "\n" + block.source)
                modules[name] = (str(path), block.line)
    (tmp / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(  # noqa: S603 - this interpreter's pytest on files we wrote
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            f"--junitxml={tmp / 'report.xml'}",
            str(tmp),
        ],
        cwd=tmp,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    passed = dict.fromkeys(modules, 0)
    problems: dict[str, list[str]] = {name: [] for name in modules}
    for case in ET.parse(tmp / "report.xml").iter("testcase"):
        module = (case.get("classname") or case.get("name") or "").split(".")[-1]
        if module not in modules:
            module = next((m for m in modules if m in (case.get("name") or "")), "")
        bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        if module in passed and not bad:
            passed[module] += 1
        elif module in problems:
            problems[module].append(f"{case.get('name')}: {', '.join(bad)}")
    results = {}
    for name, where in modules.items():
        if passed[name] and not problems[name]:
            results[where] = ""
        else:
            results[where] = (
                f"pytest {name}.py: {passed[name]} passed, {problems[name] or 'no tests'}\n"
                + proc.stdout[-4000:]
            )
    return results


def run(block: Block, path: str, namespace: dict[str, Any] | None = None) -> str:
    """Run ``block`` as the document ``path`` shows it: '' when it printed what is shown."""
    if is_test_module(block):
        return pytest_results()[(path, block.line)]
    namespace = {} if namespace is None else namespace
    namespace.clear()  # every block runs as it is, on its own: a fresh namespace
    # ...the globals of a module ``__main__``, as a script has (``ROOT_URLCONF=__name__``)
    script = ModuleType("__main__")
    main_module = sys.modules["__main__"]
    with isolated(), captured() as out:
        sys.modules["__main__"] = script
        try:
            sys.argv[:] = [path, *block.argv]
            if block.setup is not None:
                exec(_compile(block.setup, block.setup_line, path), vars(script))  # noqa: S102
            if block.language == "pycon":
                return _run_session(block, vars(script), path)
            exec(_compile(block.source, block.line, path), vars(script))  # noqa: S102
        finally:
            sys.modules["__main__"] = main_module
            namespace.update(vars(script))
    if block.expected is None:
        return ""
    got = out.getvalue()
    checker = OutputChecker()
    if checker.check_output(block.expected, got, FLAGS):
        return ""
    shown = doctest.Example(source="", want=block.expected, lineno=block.line)
    return checker.output_difference(shown, got, FLAGS)


def run_block(example: Example) -> str:
    """Sybil's evaluator for a `Block` region."""
    return run(example.parsed, example.path, example.namespace)


def examples(path: Path) -> list[list[Example]]:
    """The document's blocks, each with the skip directives right before it."""
    grouped: list[list[Example]] = []
    pending: list[Example] = []
    for example in parse(path):
        pending.append(example)
        if example.region.evaluator is run_block:
            grouped.append(pending)
            pending = []
    return grouped


def skips(path: Path) -> list[tuple[int, str]]:
    """The ``skip`` directives of a document: (line, reason)."""
    found = []
    for example in parse(path):
        if isinstance(example.region.evaluator, Skipper):
            action, reason = example.parsed
            found.append((example.line, f"{action} {reason}"))
    return found
