"""`audit`: discover, read, parse, index, run the rules, suppress, baseline, report.

Two passes over the Python files. The first parses each file, indexes it and keeps only
its `_skeleton`; the second (`_shard`) parses each file again and walks it with the rules,
in forked workers when there are several CPUs. The per-file part (the `Visitor`) depends
only on the file and the names it resolves through the index (so on the audited modules
it imports), which is why the second pass can be split: its result is the same in any
number of processes. Absence rules run once on the whole program afterwards. Syntax
trees are never all in memory at once: memory grows with the program's module-level
names and its findings, not with its code. With a cache directory
(`_cache.ResultCache`), a run on an unchanged tree reads and hashes the files and parses
nothing, and after a change the per-file rules run only on the files whose content or
imported modules changed.
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
from buttress.audit._check_data import check_data, find_migrations
from buttress.audit._check_files import TextFile, check_files, kind_of
from buttress.audit._config import AuditConfig
from buttress.audit._index import ModuleIndex, Program
from buttress.audit._rules import APPLIES, CATEGORIES, RULES
from buttress.audit._shard import Shared, collapsed, default_jobs, index_shards, run_shards
from buttress.audit._suppress import (
    Suppression,
    apply_baseline,
    apply_suppressions,
    line_fingerprint,
    text_suppressions,
)
from buttress.audit._walk import discover, read
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
    jobs: int | None = None,
) -> Report:
    """Audit the files under ``path`` (a directory or one file).

    ``cache_dir``: where to keep the result cache (None: no cache). ``jobs``: processes
    for the per-file rules (None: one per CPU; 1: all in this process). The report is
    the same whatever ``jobs`` is.

    Example::

        report = audit(Path("src"))
        print(to_markdown(report))
    """
    config = config or AuditConfig()
    started = time.perf_counter()
    root = path if path.is_dir() else path.parent
    other_paths: list[tuple[Path, str]] = []
    files, skipped = discover(path, config, other_paths)
    raw: list[tuple[Path, str, str]] = []  # path, relative path, sha256 (no bytes kept)
    for done, (file, rel) in enumerate(files, 1):
        data = read(file, rel, config)
        if isinstance(data, Skipped):
            skipped.append(data)
        else:
            raw.append((file, rel, hashlib.sha256(data).hexdigest()))
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
    for file, rel in find_migrations(root if path.is_dir() else path, config):
        data = read(file, rel, config)
        if not isinstance(data, Skipped):
            texts.append(TextFile(rel, "migration", data.decode("utf-8", errors="replace")))
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
        workers = default_jobs() if jobs is None else max(1, jobs)
        result = _analyse(raw, texts, config, cache, len(files), progress, workers)
        if cache is not None:
            present = {rel for _, rel, _ in raw}
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
    raw: list[tuple[Path, str, str]], texts: list[TextFile], skipped: list[Skipped]
) -> str:
    h = hashlib.sha256()
    for _, rel, digest in raw:
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


def _index(
    raw: list[tuple[Path, str, str]],
    config: AuditConfig,
    jobs: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[ModuleIndex], list[Skipped]]:
    """The first pass: every file parsed and indexed, kept as a skeleton."""
    modules: list[ModuleIndex] = []
    parse_skipped: list[Skipped] = []

    def indexed(done: int) -> None:
        if progress is not None:
            progress(total + done * total // (2 * max(1, len(raw))), total * 2)

    items = [(file, rel) for file, rel, _ in raw]
    for shard in index_shards(config, items, jobs, indexed):
        for loaded in shard:
            if isinstance(loaded, Skipped):
                parse_skipped.append(loaded)
            else:
                modules.append(loaded)
    return modules, parse_skipped


def _analyse(
    raw: list[tuple[Path, str, str]],
    texts: list[TextFile],
    config: AuditConfig,
    cache: ResultCache | None,
    total: int,
    progress: Callable[[int, int], None] | None,
    jobs: int,
) -> _Result:
    modules, parse_skipped = _index(raw, config, jobs, total, progress)
    program = Program(modules)
    deps = _dependencies(program) if cache is not None else {}
    shared = Shared(program=program, config=config, cache=cache, deps=deps)
    web = WebFacts()
    per_file: dict[str, list[Finding]] = {}
    marks: dict[str, list[Suppression]] = {}
    line_text: dict[str, dict[int, str]] = {}
    replayed = 0
    items = [(m.source.path, m.source.rel) for m in modules]

    def walked(done: int) -> None:
        if progress is not None:
            progress(total + (total + done * total // max(1, len(items))) // 2, total * 2)

    for shard in run_shards(shared, items, jobs, walked):
        web.merge(shard.web)
        for result in shard.files:
            per_file[result.rel] = result.findings
            marks[result.rel] = result.marks
            line_text[result.rel] = result.line_text
            if result.replayed:
                replayed += 1
            elif cache is not None:
                module = program.by_rel[result.rel]
                dep = deps.get(module.name, "")
                cache.store(result.rel, module.source.digest, dep, result.findings)
    for finding in absence_findings(web, program, config):
        per_file.setdefault(finding.location.path, []).append(finding)
    file_findings, tokens = check_files(texts, config)
    data_findings, data_tokens = check_data(texts, program, config)
    tokens |= data_tokens
    for finding in [*file_findings, *data_findings]:
        per_file.setdefault(finding.location.path, []).append(finding)
    findings: list[Finding] = []
    report_bare = config.enabled("BTR900")
    for module in modules:
        rel = module.source.rel
        mine = apply_suppressions(
            per_file.get(rel, []), marks.get(rel, []), rel, report_bare=report_bare
        )
        known = line_text.get(rel, {})
        if any(f.location.line not in known for f in mine):  # absence findings: read again
            known = _line_texts(module.source.path)
        findings += [_with_fingerprint(f, known) for f in _dedupe(mine)]
    for text in texts:
        rel = text.rel
        if rel not in per_file or rel in program.by_rel:
            continue  # no findings, or a Python module (--include-tests) handled above
        found = text_suppressions(text.text)
        mine = apply_suppressions(per_file[rel], found, rel, report_bare=report_bare)
        lines = text.text.splitlines()
        known = {f.location.line: collapsed(lines, f.location.line) for f in mine}
        findings += [_with_fingerprint(f, known) for f in _dedupe(mine)]
    rules = [rule for rule in RULES.values() if config.enabled(rule.id)]
    applicable = _applicable(rules, program, web, tokens)
    line_count = sum(m.lines for m in modules)
    return findings, parse_skipped, line_count, applicable, len(raw), replayed


def _line_texts(path: Path) -> dict[int, str]:
    """Every line of a file, whitespace collapsed (empty when it cannot be read now)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    except OSError:
        return {}
    return {n: " ".join(line.split()) for n, line in enumerate(text.splitlines(), 1)}


def _with_fingerprint(finding: Finding, line_text: dict[int, str]) -> Finding:
    text = line_text.get(finding.location.line, "")
    return dataclasses.replace(finding, fingerprint=line_fingerprint(finding, text))


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
