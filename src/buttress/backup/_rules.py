"""The checks of ``buttress backup verify``: ids ``BKP###``, in the shared report model."""

from __future__ import annotations

from buttress.report import Priority, Rule

__all__ = ["RULES"]

_DOCS = "https://github.com/buttress-dev/buttress/blob/main/docs/data-safety.md"


def _r(rid: str, title: str, priority: Priority, fix: str) -> Rule:
    return Rule(
        id=rid,
        title=title,
        category="backups",
        priority=priority,
        fix=fix,
        docs=f"{_DOCS}#{rid.lower()}",
    )


P0, P1 = Priority.P0, Priority.P1

RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        _r("BKP001", "The stored dump matches its manifest's size and SHA-256", P0,
           "the file was damaged in storage or transfer: take a new backup and check the "
           "storage (buttress backup run)"),
        _r("BKP002", "The dump restores into a scratch database", P0,
           "read the restore error; a dump that does not restore is not a backup"),
        _r("BKP003", "Every table has the row count the manifest recorded", P0,
           "the dump misses data: check pg_dump's options (--exclude-table...) and re-run"),
        _r("BKP004", "The restored schema matches the manifest's schema hash", P0,
           "the dump misses schema objects: check pg_dump's options and extensions"),
        _r("BKP005", "The sanity queries return what is expected", P1,
           "the data restored is not what the service needs: check what the query expects"),
        _r("BKP006", "The restore fits the recovery time objective (RTO)", P1,
           "restore faster (pg_restore --jobs, a larger scratch server) or agree a longer RTO"),
        _r("BKP007", "The backup is younger than the recovery point objective (RPO)", P1,
           "schedule backups more often than the RPO (a cron line, a CI schedule)"),
    )
}  # fmt: skip
