"""The PostgreSQL store's SQL: the named statements of ``sql/postgres.sql``, per schema.

``sql/postgres.sql`` (package data) holds every statement under a ``-- name:`` line, with
``@schema`` where the store's schema goes; the ``ddl_*`` ones create, complete or upgrade
the schema. The sweep is built here from `buttress.stores._sql.TABLES`.
"""

# ruff: noqa: S608 - SQL built from constant table and column names, never from input

from __future__ import annotations

from importlib.resources import files

from buttress.stores._sql import TABLES

__all__ = ["NOW", "STATEMENTS", "Statements", "ddl"]

#: The server's clock unless the store was given one (the first parameter).
NOW = "coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8)"


def _read_statements() -> dict[str, str]:
    """The named statements of ``sql/postgres.sql`` (package data), ``@schema`` unfilled."""
    text = (files("buttress.stores") / "sql" / "postgres.sql").read_text(encoding="utf-8")
    statements: dict[str, str] = {}
    for section in text.split("\n-- name: ")[1:]:
        name, _, body = section.partition("\n")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):  # the statement's own comment
            del lines[0]
        statements[name.strip()] = "\n".join(lines)
    return statements


STATEMENTS = _read_statements()


def ddl(s: str) -> list[str]:
    """The statements creating (or completing, or upgrading) the schema in schema ``s``."""
    return [sql.replace("@schema", s) for name, sql in STATEMENTS.items() if name[:4] == "ddl_"]


def _sweep_sql(s: str) -> str:
    """One statement sweeping a batch of every table (params: now, then per table)."""
    ctes = [f"t AS (SELECT {NOW} AS now)"]
    results = []
    for i, table in enumerate(TABLES):
        name = f"{s}.{table.name}"
        cols = ", ".join(table.keys)
        same = " AND ".join(f"x.{c} = y.{c}" for c in table.keys)
        ctes += [
            f"s{i} AS ({table.scan('%s', name)})",
            f"l{i} AS (SELECT {', '.join('x.' + c for c in table.keys)} "
            f"FROM {name} AS x, s{i} AS y, t WHERE {same} AND y.e <= t.now "
            f"AND x.{table.expiry} <= t.now FOR UPDATE OF x SKIP LOCKED)",
            f"d{i} AS (DELETE FROM {name} AS x USING l{i} AS y WHERE {same} RETURNING 1)",
        ]
        desc = ", ".join(f"{c} DESC" for c in table.keys)
        results += [
            f"(SELECT count(*) FROM s{i})",
            f"(SELECT ARRAY[{cols}] FROM s{i} ORDER BY {desc} LIMIT 1)",
            f"(SELECT count(*) FROM d{i})",
        ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(results)}"


class Statements:
    """The statements of one schema (built once per store)."""

    __slots__ = (
        "acquire",
        "acquire_one",
        "begin",
        "complete",
        "publish",
        "release",
        "renew",
        "reports",
        "sweep",
    )

    def __init__(self, s: str) -> None:
        def named(name: str) -> str:
            return STATEMENTS[name].replace("@schema", s)

        self.acquire_one = named("acquire_one")
        self.acquire = named("acquire")
        self.begin = named("begin")
        self.renew = named("renew")
        self.complete = named("complete")
        self.release = named("release")
        self.publish = named("publish")
        self.reports = named("reports")
        self.sweep = _sweep_sql(s)
