"""The rehearsal's rules: ids ``MIG###``, in the report model ``audit`` and ``probe`` share.

``MIG0xx`` are what the rehearsal itself measures on the restored copy (the command ran,
its locks, its duration, the way back). ``MIG1xx`` are squawk's lint rules, one id each,
so a finding keeps squawk's rule name in its message and links to squawk's page for it;
a rule this table does not know yet (a newer squawk) reports as ``MIG199``.
"""

from __future__ import annotations

from typing import Final

from buttress.report import Priority, Rule

__all__ = ["RULES", "SQUAWK_DOCS", "SQUAWK_RULES", "squawk_rule"]

_DOCS: Final = "https://github.com/buttress-dev/buttress/blob/main/docs/migrations.md"
SQUAWK_DOCS: Final = "https://squawkhq.com/docs/"
"""Where squawk documents each of its rules (``SQUAWK_DOCS + rule_name``)."""

P0, P1, P2 = Priority.P0, Priority.P1, Priority.P2


def _r(rid: str, title: str, category: str, priority: Priority, fix: str) -> Rule:
    return Rule(
        id=rid, title=title, category=category, priority=priority, fix=fix,
        docs=f"{_DOCS}#{rid.lower()}",
    )  # fmt: skip


_REHEARSAL = (
    _r("MIG001", "The migration succeeds on a restored copy", "rehearsal", P0,
       "fix the error shown, then rehearse again: production would fail the same way"),
    _r("MIG002", "A failed run leaves no partial change", "rehearsal", P0,
       "run each migration in one transaction (PostgreSQL DDL is transactional); split "
       "non-transactional steps (CREATE INDEX CONCURRENTLY) into migrations of their own"),
    _r("MIG003", "The migration finishes within --max-duration", "rehearsal", P1,
       "batch data changes, move backfills out of the migration, or plan a window"),
    _r("MIG010", "No ACCESS EXCLUSIVE lock held on a big table", "locks", P0,
       "avoid table rewrites: add a new column and backfill in batches, validate "
       "constraints NOT VALID then VALIDATE, create indexes CONCURRENTLY"),
    _r("MIG011", "No lock that blocks writes held longer than --max-lock-seconds", "locks", P1,
       "shorten the statement holding the lock, or split it; set lock_timeout so a blocked "
       "migration gives up instead of queueing every query behind it"),
    _r("MIG020", "Downgrade, then upgrade again, restores each schema", "rollback", P1,
       "write a downgrade() that undoes upgrade() exactly, and rehearse it"),
    _r("MIG030", "The migration's SQL was linted", "lint", P2,
       "pass --sql FILE, or use an Alembic command (its offline mode gives the SQL)"),
)  # fmt: skip

# squawk rule name -> (id, title, priority). P0: blocks reads and writes on a live table
# or breaks running code; P1: blocks writes or risks a long lock; P2: advice.
_SQUAWK: Final[dict[str, tuple[str, str, Priority]]] = {
    "changing-column-type": ("MIG101", "Column type change rewrites the table", P0),
    "adding-required-field": ("MIG102", "NOT NULL column added without a default", P0),
    "adding-not-nullable-field": ("MIG103", "SET NOT NULL scans the table under lock", P1),
    "setting-not-nullable-field": ("MIG103", "SET NOT NULL scans the table under lock", P1),
    "adding-field-with-default": ("MIG104", "Column added with a volatile default", P0),
    "adding-serial-primary-key-field": ("MIG105", "Serial primary key rewrites the table", P0),
    "constraint-missing-not-valid": ("MIG106", "Constraint added without NOT VALID", P1),
    "adding-foreign-key-constraint": ("MIG107", "Foreign key added without NOT VALID", P1),
    "disallowed-unique-constraint": ("MIG108", "Unique constraint built under lock", P1),
    "require-concurrent-index-creation": ("MIG109", "Index created without CONCURRENTLY", P1),
    "require-concurrent-index-deletion": ("MIG110", "Index dropped without CONCURRENTLY", P1),
    "ban-concurrent-index-creation-in-transaction": (
        "MIG111", "CREATE INDEX CONCURRENTLY inside a transaction", P0),
    "renaming-column": ("MIG112", "Column renamed under running code", P0),
    "renaming-table": ("MIG113", "Table renamed under running code", P0),
    "ban-drop-column": ("MIG114", "Column dropped under running code", P1),
    "ban-drop-table": ("MIG115", "Table dropped", P1),
    "ban-drop-database": ("MIG116", "Database dropped", P0),
    "ban-drop-not-null": ("MIG117", "NOT NULL dropped", P2),
    "ban-truncate-cascade": ("MIG118", "TRUNCATE CASCADE", P0),
    "require-lock-timeout": ("MIG119", "No lock_timeout before a locking statement", P2),
    "require-statement-timeout": ("MIG120", "No statement_timeout before a slow statement", P2),
    "require-timeout-settings": ("MIG119", "No lock_timeout before a locking statement", P2),
    "transaction-nesting": ("MIG121", "Nested transaction", P1),
    "ban-uncommitted-transaction": ("MIG122", "Transaction left open", P1),
    "prefer-robust-stmts": ("MIG123", "Statement not safe to retry", P2),
    "prefer-bigint-over-int": ("MIG124", "32-bit integer column", P2),
    "prefer-bigint-over-smallint": ("MIG124", "32-bit integer column", P2),
    "prefer-identity": ("MIG125", "serial instead of identity", P2),
    "prefer-text-field": ("MIG126", "varchar(n) instead of text", P2),
    "prefer-timestamp-tz": ("MIG127", "timestamp without time zone", P2),
    "ban-char-field": ("MIG128", "char(n) column", P2),
    "ban-create-domain-with-constraint": ("MIG129", "Domain with a constraint", P2),
    "ban-alter-domain-with-add-constraint": ("MIG129", "Domain with a constraint", P2),
    "require-enum-value-ordering": ("MIG130", "Enum value added without BEFORE/AFTER", P2),
    "identifier-too-long": ("MIG131", "Identifier longer than 63 bytes", P1),
}  # fmt: skip
_OTHER: Final = ("MIG199", "Another squawk rule", P1)


def _squawk_rules() -> tuple[Rule, ...]:
    seen: dict[str, Rule] = {}
    for name, (rid, title, priority) in [*_SQUAWK.items(), ("", _OTHER)]:
        if rid not in seen:
            seen[rid] = Rule(
                id=rid,
                title=title,
                category="lint",
                priority=priority,
                fix="see squawk's page for the rule (the finding names it)",
                docs=SQUAWK_DOCS + name if name else SQUAWK_DOCS + "rules",
            )
    return tuple(seen.values())


SQUAWK_RULES: Final = _squawk_rules()
"""One `Rule` per squawk rule this table maps (and ``MIG199`` for any other)."""

RULES: Final[dict[str, Rule]] = {r.id: r for r in (*_REHEARSAL, *SQUAWK_RULES)}
"""Every rule of ``buttress migrate rehearse`` by id."""


def squawk_rule(name: str) -> Rule:
    """The `Rule` a squawk rule name reports as (``MIG199`` when the name is unknown).

    Example::

        >>> squawk_rule("changing-column-type").id
        'MIG101'
    """
    rid = _SQUAWK.get(name, _OTHER)[0]
    return RULES[rid]
