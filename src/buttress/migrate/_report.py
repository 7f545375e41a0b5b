"""A `Rehearsal` judged: the checks, the findings and the verdict, in the shared report model.

`to_report` fills a `buttress.report.Report` (the scorecard, writers and gates of
``buttress audit`` and ``buttress probe``). Each check carries its evidence (durations,
the locks and how long they were held), so the JSON and Markdown reports hold the
measurements too. `verdict` says whether the migration is safe to run in production:
it is when it ran, and no P0 or P1 finding is left (the reasons are the findings' lines).
"""

from __future__ import annotations

import shlex

from buttress import __version__
from buttress.migrate._locks import LockHold
from buttress.migrate._rehearse import Rehearsal
from buttress.migrate._rules import RULES, SQUAWK_RULES
from buttress.migrate._squawk import lint_findings
from buttress.report import Check, CheckStatus, Finding, Location, Priority, Report, Rule

__all__ = ["to_report", "verdict"]

_TABLE_KINDS = frozenset({"r", "p", "m"})


def _size(hold: LockHold) -> str:
    parts = []
    if hold.rows is not None:
        parts.append(f"{hold.rows:,} rows")
    if hold.size_bytes is not None:
        parts.append(f"{hold.size_bytes / 1048576:.1f} MiB")
    return f" ({', '.join(parts)})" if parts else ""


def _lock_line(hold: LockHold) -> str:
    state = "held" if hold.granted else "waited for"
    took = f"{hold.seconds:.2f} s" if hold.seconds else "under one sample interval"
    return f"{hold.mode_name} on {hold.relation}{_size(hold)} {state} {took}"


class _Builder:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.findings: list[Finding] = []

    def check(self, rid: str, status: CheckStatus, evidence: str = "", *found: Finding) -> None:
        self.checks.append(
            Check(rule=RULES[rid], status=status, findings=len(found), evidence=evidence)
        )
        self.findings.extend(found)

    @staticmethod
    def finding(rid: str, message: str, where: str, *, key: str = "") -> Finding:
        rule: Rule = RULES[rid]
        return Finding(
            rule_id=rid, category=rule.category, priority=rule.priority, message=message,
            location=Location(path=where), fix=rule.fix, docs=rule.docs,
            fingerprint=f"{rid}:{key or where}",
        )  # fmt: skip


def _big(hold: LockHold, r: Rehearsal) -> bool:
    o = r.options
    rows_big = hold.rows is not None and hold.rows >= o.big_table_rows
    bytes_big = hold.size_bytes is not None and hold.size_bytes >= o.big_table_bytes
    return hold.kind in _TABLE_KINDS and (rows_big or bytes_big)


def _run_checks(b: _Builder, r: Rehearsal, command: str) -> None:
    up = r.upgrade
    timeouts = (
        f"lock_timeout {r.options.lock_timeout:g} s, "
        f"statement_timeout {r.options.statement_timeout:g} s"
    )
    if up.ok:
        b.check("MIG001", CheckStatus.PASS, f"{command}: exit 0 in {up.seconds:.2f} s ({timeouts})")
        b.check("MIG002", CheckStatus.NOT_APPLICABLE, "the run succeeded")
        within = up.seconds <= r.options.max_duration
        evidence = f"{up.seconds:.2f} s (limit {r.options.max_duration:g} s)"
        b.check(
            "MIG003", CheckStatus.PASS if within else CheckStatus.FAIL, evidence,
            *(() if within else (b.finding(
                "MIG003", f"the migration ran {up.seconds:.1f} s on the copy, over the "
                f"{r.options.max_duration:g} s limit", "command"),)),
        )  # fmt: skip
        return
    message = f"{command} failed ({up.outcome}) after {up.seconds:.2f} s: {up.last_line}"
    b.check("MIG001", CheckStatus.FAIL, message, b.finding("MIG001", message, "command"))
    if r.partial_change:
        text = f"the failed run left the schema changed: {r.partial_change}"
        b.check("MIG002", CheckStatus.FAIL, text, b.finding("MIG002", text, "command"))
    else:
        b.check("MIG002", CheckStatus.PASS, "the failed run left the schema as it was")
    b.check("MIG003", CheckStatus.NOT_APPLICABLE, "the run failed")


def _lock_checks(b: _Builder, r: Rehearsal) -> None:
    if r.sampler_error is not None or r.samples == 0:
        why = r.sampler_error or "no sample was taken"
        for rid in ("MIG010", "MIG011"):
            b.check(rid, CheckStatus.WARN, f"the locks could not be sampled: {why}")
        return
    # tables others can see: not indexes (their table's lock says it), not relations the
    # migration created and has not committed (nobody else can wait for those)
    held = [h for h in r.holds if h.granted and h.kind in _TABLE_KINDS and not h.relation.isdigit()]
    every = f"{r.samples} samples every {r.options.sample_interval * 1000:g} ms"
    seen = (
        f"{every}; " + "; ".join(_lock_line(h) for h in _one_per_relation(held)[:3])
        if held
        else f"{every}; no table lock seen"
    )
    brief = r.options.max_exclusive_seconds
    big = [h for h in held if h.mode == "AccessExclusiveLock" and _big(h, r) and h.seconds >= brief]
    found = [
        b.finding("MIG010", f"{_lock_line(h)}: reads and writes wait for it", h.relation)
        for h in _one_per_relation(big)
    ]
    b.check("MIG010", CheckStatus.FAIL if found else CheckStatus.PASS, seen, *found)
    limit = r.options.max_lock_seconds
    long = [h for h in held if h.blocks_writes and h.seconds > limit]
    found = [
        b.finding("MIG011", f"{_lock_line(h)}, over {limit:g} s: writes wait for it", h.relation)
        for h in _one_per_relation(long)
    ]
    b.check("MIG011", CheckStatus.FAIL if found else CheckStatus.PASS, seen, *found)


def _one_per_relation(holds: list[LockHold]) -> list[LockHold]:
    """The longest hold of each relation (``holds`` is longest first)."""
    kept: dict[str, LockHold] = {}
    for hold in holds:
        kept.setdefault(hold.relation, hold)
    return list(kept.values())


def _roundtrip_check(b: _Builder, r: Rehearsal) -> None:
    if r.downgrade is None:
        b.check("MIG020", CheckStatus.NOT_APPLICABLE, f"not checked: {r.roundtrip_skipped}")
        return
    steps = [r.downgrade] + ([r.again] if r.again is not None else [])
    timing = ", ".join(f"{s.name} {s.outcome} in {s.seconds:.2f} s" for s in steps)
    if not r.roundtrip_problems:
        b.check("MIG020", CheckStatus.PASS, f"{timing}; each schema restored")
        return
    found = [b.finding("MIG020", p, "downgrade", key=p[:40]) for p in r.roundtrip_problems]
    b.check("MIG020", CheckStatus.FAIL, timing, *found)


def _lint_checks(b: _Builder, r: Rehearsal) -> None:
    if r.lint_problem is not None:
        b.check("MIG030", CheckStatus.WARN, r.lint_problem)
        return
    rules = len({i.rule for i in r.lint_issues})
    b.check(
        "MIG030", CheckStatus.PASS,
        f"squawk (PostgreSQL {r.server_version}) on {'; '.join(r.lint_sources)}: "
        f"{len(r.lint_issues)} warning{'s' if len(r.lint_issues) != 1 else ''}, {rules} rule"
        f"{'s' if rules != 1 else ''}",
    )  # fmt: skip
    findings = lint_findings(list(r.lint_issues))
    for rule in SQUAWK_RULES:  # one check per squawk rule that fired
        mine = [f for f in findings if f.rule_id == rule.id]
        if mine:
            names = sorted({f.message.split(":", 1)[0].removeprefix("squawk ") for f in mine})
            b.check(rule.id, CheckStatus.FAIL, f"squawk {', '.join(names)}", *mine)


def to_report(r: Rehearsal) -> Report:
    """The report of rehearsal ``r``.

    Example::

        report = to_report(rehearse_on(dsn, opts, source="pg_dump of staging"))
        safe, reasons = verdict(report)
    """
    command = shlex.join(r.options.command)
    b = _Builder()
    _run_checks(b, r, command)
    _lock_checks(b, r)
    _roundtrip_check(b, r)
    _lint_checks(b, r)
    return Report(
        tool="buttress migrate rehearse",
        version=__version__,
        target=f"{command} on {r.source}",
        rules=tuple(RULES.values()),
        checks=tuple(b.checks),
        findings=tuple(b.findings),
        files=len(r.lint_sources),
        duration=r.duration,
        extra={
            "source": r.source,
            "restore_seconds": f"{r.restore_seconds:.2f}",
            "migration_seconds": f"{r.upgrade.seconds:.2f}",
            "server_version": r.server_version,
        },
    )


def verdict(report: Report) -> tuple[bool, list[str]]:
    """(safe to run in production, why not): safe when no active P0 or P1 finding is left.

    Example::

        safe, reasons = verdict(report)
        print("safe" if safe else "NOT safe: " + "; ".join(reasons))
    """
    blocking = [f for f in report.findings if f.active and f.priority.at_least(Priority.P1)]
    reasons = [f"{f.rule_id} {f.message}" for f in blocking]
    return not blocking, reasons
