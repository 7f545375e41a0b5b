"""`audit`: discover, read, parse, index, run the rules, suppress, baseline, report.

The per-file part (the `Visitor`) depends only on the file and the names it resolves
through the index (so on the audited modules it imports); absence rules run once on the
whole program afterwards. With a cache directory (`_cache.ResultCache`), a run on an
unchanged tree reads and hashes the files and parses nothing, and after a change the
per-file rules run only on the files whose content or imported modules changed.
Non-Python files (Dockerfiles, compose, requirements, lock files, CI workflows) are read
as text by `_check_files`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buttress import __version__
from buttress.audit._cache import (
    ResultCache,
    finding_from,
    finding_to,
    skipped_from,
    skipped_to,
)
from buttress.audit._check_files import TextFile, check_files, kind_of
from buttress.audit._config import AuditConfig
from buttress.audit._context import FileContext
from buttress.audit._index import ModuleIndex, Program
from buttress.audit._rules import APPLIES, CATEGORIES, RULES
from buttress.audit._suppress import (
    apply_baseline,
    apply_suppressions,
    fingerprint,
    suppressions,
    text_suppressions,
)
from buttress.audit._visitor import Visitor
from buttress.audit._walk import SourceFile, discover, parse, read
from buttress.audit._web import WebFacts, absence_findings
from buttress.report import Check, CheckStatus, Finding, Report, Rule, Skipped

__all__ = ["audit"]


def audit(
    path: Path,
    config: AuditConfig | None = None,
    *,
    baseline: Counter[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> Report:
    """Audit the files under ``path`` (a directory or one file).

    ``cache_dir``: where to keep the result cache (None: no cache).

    Example::

        report = audit(Path("src"))
        print(to_markdown(report))
    """
    config = config or AuditConfig()
    started = time.perf_counter()
    root = path if path.is_dir() else path.parent
    other_paths: list[tuple[Path, str]] = []
    files, skipped = discover(path, config, other_paths)
    raw: list[tuple[Path, str, bytes, str]] = []
    for done, (file, rel) in enumerate(files, 1):
        data = read(file, rel, config)
        if isinstance(data, Skipped):
            skipped.append(data)
        else:
            raw.append((file, rel, data, hashlib.sha256(data).hexdigest()))
        if progress is not None:
            progress(done, len(files) * 2)
    texts: list[TextFile] = []
    for file, rel in other_paths:
        data = read(file, rel, config)
        if isinstance(data, Skipped):
            skipped.append(data)
            continue
        kind = kind_of(rel)
        if kind is not None:
            texts.append(TextFile(rel, kind, data.decode("utf-8", errors="replace")))
    tree_digest = _tree_digest(raw, texts, skipped)
    cache = ResultCache(cache_dir, config) if cache_dir is not None else None
    cached = cache.result(tree_digest) if cache is not None else None
    result = None
    if cached is not None:
        try:
            result = _from_cache(cached)
        except (KeyError, ValueError, TypeError):
            result = None
    if result is None:
        result = _analyse(raw, texts, config, cache, len(files), progress)
        if cache is not None:
            present = {rel for _, rel, _, _ in raw}
            cache.save(tree_digest, _to_cache(result), present)
    findings, parse_skipped, lines, applicable, parsed, replayed = result
    if baseline is not None:
        findings = apply_baseline(findings, baseline)
    rules = [rule for rule in RULES.values() if config.enabled(rule.id)]
    checks = _checks(rules, findings, applicable)
    return Report(
        tool="buttress audit",
        version=__version__,
        target=str(root),
        rules=tuple(rules),
        checks=tuple(checks),
        findings=tuple(findings),
        skipped=tuple(sorted([*skipped, *parse_skipped], key=lambda s: s.path)),
        files=len(raw) - len(parse_skipped) + len(texts),
        lines=lines,
        duration=time.perf_counter() - started,
        baseline_used=baseline is not None,
        extra={
            "parsed": str(parsed),
            "replayed": str(replayed),
            "cache": "hit" if cached is not None and parsed == 0 else "miss",
        },
    )


# findings, skipped while parsing, lines, applicable rule ids, files parsed, files replayed
_Result = tuple[list[Finding], list[Skipped], int, set[str], int, int]


def _tree_digest(
    raw: list[tuple[Path, str, bytes, str]], texts: list[TextFile], skipped: list[Skipped]
) -> str:
    h = hashlib.sha256()
    for _, rel, _, digest in raw:
        h.update(f"{rel}\0{digest}\n".encode())
    for text in texts:
        h.update(f"{text.rel}\0{hashlib.sha256(text.text.encode()).hexdigest()}\n".encode())
    for item in skipped:
        h.update(f"skip\0{item.path}\0{item.reason}\n".encode())
    return h.hexdigest()


def _to_cache(result: _Result) -> dict[str, Any]:
    findings, parse_skipped, lines, applicable, _, _ = result
    return {
        "findings": [finding_to(f) for f in findings],
        "skipped": skipped_to(parse_skipped),
        "lines": lines,
        "applicable": sorted(applicable),
    }


def _from_cache(data: dict[str, Any]) -> _Result:
    return (
        [finding_from(f) for f in data["findings"]],
        skipped_from(data["skipped"]),
        int(data["lines"]),
        {str(r) for r in data["applicable"]},
        0,
        0,
    )


def _dependencies(program: Program) -> dict[str, str]:
    """Per module, a hash of the audited modules it imports, transitively.

    Reachability as bit sets (one bit per module), iterated to a fixed point; the hash
    XORs a per-module hash of (name, content digest) over the reachable set.
    """
    names = list(program.modules)
    bit = {name: 1 << i for i, name in enumerate(names)}
    direct: dict[str, list[str]] = {}
    for name, module in program.modules.items():
        deps: set[str] = set()
        for target in module.imported | set(module.aliases.values()):
            parts = target.split(".")
            for cut in range(len(parts), 0, -1):
                prefix = ".".join(parts[:cut])
                if prefix in program.modules:
                    deps.add(prefix)
                    break
        deps.discard(name)
        direct[name] = sorted(deps)
    reach = {name: sum(bit[d] for d in direct[name]) for name in names}
    changed = True
    while changed:
        changed = False
        for name in names:
            value = reach[name]
            for dep in direct[name]:
                value |= reach[dep]
            value &= ~bit[name]
            if value != reach[name]:
                reach[name] = value
                changed = True
    stamp = [
        int.from_bytes(
            hashlib.sha256(f"{n}\0{program.modules[n].source.digest}".encode()).digest()[:16],
            "big",
        )
        for n in names
    ]
    out: dict[str, str] = {}
    for name in names:
        value, mixed = reach[name], 0
        while value:
            low = value & -value
            mixed ^= stamp[low.bit_length() - 1]
            value ^= low
        out[name] = f"{mixed:032x}"
    return out


def _analyse(
    raw: list[tuple[Path, str, bytes, str]],
    texts: list[TextFile],
    config: AuditConfig,
    cache: ResultCache | None,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> _Result:
    sources: list[SourceFile] = []
    parse_skipped: list[Skipped] = []
    for file, rel, data, _ in raw:
        loaded = parse(file, rel, data)
        if isinstance(loaded, Skipped):
            parse_skipped.append(loaded)
        else:
            sources.append(loaded)
    modules = [ModuleIndex.build(source) for source in sources]
    program = Program(modules)
    deps = _dependencies(program) if cache is not None else {}
    web = WebFacts()
    per_file: dict[str, list[Finding]] = {}
    replayed = 0
    for done, module in enumerate(modules, total + 1):
        rel, digest = module.source.rel, module.source.digest
        dep = deps.get(module.name, "")
        hit = cache.findings(rel, digest, dep) if cache is not None else None
        ctx = FileContext(program=program, module=module, config=config, silent=hit is not None)
        Visitor(ctx, web).run()
        if hit is None:
            per_file[rel] = ctx.findings
            if cache is not None:
                cache.store(rel, digest, dep, ctx.findings)
        else:
            per_file[rel] = hit
            replayed += 1
        if progress is not None:
            progress(done, total * 2)
    for finding in absence_findings(web, program, config):
        per_file.setdefault(finding.location.path, []).append(finding)
    file_findings, tokens = check_files(texts, config)
    for finding in file_findings:
        per_file.setdefault(finding.location.path, []).append(finding)
    findings: list[Finding] = []
    report_bare = config.enabled("BTR900")
    for module in modules:
        rel = module.source.rel
        marks = suppressions(module.source.text)
        mine = apply_suppressions(per_file.get(rel, []), marks, rel, report_bare=report_bare)
        lines = module.source.lines
        findings += [_with_fingerprint(f, lines) for f in _dedupe(mine)]
    for text in texts:
        rel = text.rel
        if rel not in per_file:
            continue
        marks = text_suppressions(text.text)
        mine = apply_suppressions(per_file[rel], marks, rel, report_bare=report_bare)
        lines = text.text.splitlines()
        findings += [_with_fingerprint(f, lines) for f in _dedupe(mine)]
    rules = [rule for rule in RULES.values() if config.enabled(rule.id)]
    applicable = _applicable(rules, program, web, tokens)
    line_count = sum(s.text.count("\n") + 1 for s in sources)
    return findings, parse_skipped, line_count, applicable, len(raw), replayed


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


def _applicable(rules: list[Rule], program: Program, web: WebFacts, tokens: set[str]) -> set[str]:
    """The ids of the rules whose check applies to this tree (see `APPLIES`)."""
    kinds = {app.kind for app in web.apps.values()}
    out = set()
    for rule in rules:
        wanted = APPLIES.get(rule.id, ("*",))
        file_tokens = {t for t in wanted if t.startswith("file:")}
        if file_tokens:
            if file_tokens & tokens:
                out.add(rule.id)
            continue
        if bool(program.modules) and (
            "*" in wanted
            or ("app" in wanted and bool(kinds))
            or ("asgi-app" in wanted and bool(kinds & {"fastapi", "starlette", "quart"}))
            or program.imports_any(wanted)
        ):
            out.add(rule.id)
    return out


def _checks(rules: list[Rule], findings: list[Finding], applicable: set[str]) -> list[Check]:
    counted = Counter(f.rule_id for f in findings if not f.suppressed)
    order = {category: i for i, category in enumerate(CATEGORIES)}
    checks = []
    for rule in sorted(rules, key=lambda r: (order.get(r.category, 99), r.id)):
        if counted[rule.id]:
            status = CheckStatus.FAIL
        elif rule.id in applicable:
            status = CheckStatus.PASS
        else:
            status = CheckStatus.NOT_APPLICABLE
        checks.append(Check(rule=rule, status=status, findings=counted[rule.id]))
    return checks
