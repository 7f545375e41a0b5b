"""`audit`: discover, parse, index, run the rules, suppress, baseline, and build the report.

The per-file part (the `Visitor`) depends only on the file and the names it resolves
through the index; absence rules run once on the whole program afterwards. A later slice
can cache per-file results keyed by ``SourceFile.digest`` (plus the digests of the
project modules it resolved names through).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from buttress import __version__
from buttress.audit._config import AuditConfig
from buttress.audit._context import FileContext
from buttress.audit._index import ModuleIndex, Program
from buttress.audit._rules import APPLIES, CATEGORIES, RULES
from buttress.audit._suppress import (
    apply_baseline,
    apply_suppressions,
    fingerprint,
    suppressions,
)
from buttress.audit._visitor import Visitor
from buttress.audit._walk import SourceFile, discover, load
from buttress.audit._web import WebFacts, absence_findings
from buttress.report import Check, CheckStatus, Finding, Report, Rule, Skipped

__all__ = ["audit"]


def audit(
    path: Path,
    config: AuditConfig | None = None,
    *,
    baseline: Counter[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Audit the Python files under ``path`` (a directory or one file).

    Example::

        report = audit(Path("src"))
        print(to_markdown(report))
    """
    config = config or AuditConfig()
    started = time.perf_counter()
    root = path if path.is_dir() else path.parent
    files, skipped = discover(path, config)
    sources: list[SourceFile] = []
    for done, (file, rel) in enumerate(files, 1):
        loaded = load(file, rel, config)
        if isinstance(loaded, Skipped):
            skipped.append(loaded)
        else:
            sources.append(loaded)
        if progress is not None:
            progress(done, len(files) * 2)
    modules = [ModuleIndex.build(source) for source in sources]
    program = Program(modules)
    web = WebFacts()
    per_file: dict[str, list[Finding]] = {}
    for done, module in enumerate(modules, len(files) + 1):
        ctx = FileContext(program=program, module=module, config=config)
        Visitor(ctx, web).run()
        per_file[module.source.rel] = ctx.findings
        if progress is not None:
            progress(done, len(files) * 2)
    for finding in absence_findings(web, program, config):
        per_file.setdefault(finding.location.path, []).append(finding)
    findings: list[Finding] = []
    for module in modules:
        rel = module.source.rel
        mine = apply_suppressions(
            per_file.get(rel, []),
            suppressions(module.source.text),
            rel,
            report_bare=config.enabled("BTR900"),
        )
        lines = module.source.lines
        findings += [_with_fingerprint(f, lines) for f in _dedupe(mine)]
    if baseline is not None:
        findings = apply_baseline(findings, baseline)
    rules = [rule for rule in RULES.values() if config.enabled(rule.id)]
    checks = _checks(rules, findings, program, web)
    return Report(
        tool="buttress audit",
        version=__version__,
        target=str(root),
        rules=tuple(rules),
        checks=tuple(checks),
        findings=tuple(findings),
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
        files=len(sources),
        lines=sum(s.text.count("\n") + 1 for s in sources),
        duration=time.perf_counter() - started,
        baseline_used=baseline is not None,
    )


def _with_fingerprint(finding: Finding, lines: list[str]) -> Finding:
    return dataclasses.replace(finding, fingerprint=fingerprint(finding, lines))


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, int, int, str]] = set()
    out = []
    for f in findings:
        key = (f.rule_id, f.location.line, f.location.column, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _checks(
    rules: list[Rule], findings: list[Finding], program: Program, web: WebFacts
) -> list[Check]:
    counted = Counter(f.rule_id for f in findings if not f.suppressed)
    kinds = {app.kind for app in web.apps.values()}
    order = {category: i for i, category in enumerate(CATEGORIES)}
    checks = []
    for rule in sorted(rules, key=lambda r: (order.get(r.category, 99), r.id)):
        tokens = APPLIES.get(rule.id, ("*",))
        applicable = bool(program.modules) and (
            "*" in tokens
            or ("app" in tokens and bool(kinds))
            or ("asgi-app" in tokens and bool(kinds & {"fastapi", "starlette", "quart"}))
            or program.imports_any(tokens)
        )
        if counted[rule.id]:
            status = CheckStatus.FAIL
        elif applicable:
            status = CheckStatus.PASS
        else:
            status = CheckStatus.NOT_APPLICABLE
        checks.append(Check(rule=rule, status=status, findings=counted[rule.id]))
    return checks
