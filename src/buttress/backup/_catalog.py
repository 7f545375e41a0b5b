"""What a database holds, read the same way at backup and at verification time.

`describe_postgres` reads, in the caller's transaction (so in the snapshot ``pg_dump`` was
given), the exact row count of every user table and large objects, and a description of
the schema from the catalog (columns, types, defaults, constraints, indexes, triggers,
views, sequences, functions, enums) with ``search_path`` pinned to ``pg_catalog`` so every
name is schema-qualified the same way in the source and in a restored copy. Owners and
grants are left out (a restore into a scratch database uses ``--no-owner``), and so are the
objects extensions create. `describe_sqlite` does the same for a SQLite file.

`count_rows` counts the rows of a database nobody else writes (a restored copy) over
several connections at once, biggest tables first, the same exact ``count(*)`` per table:
a verification's counting costs the time of its biggest table, not of all of them.
`inserted_rows` reads instead how many rows were inserted into each table of a freshly
restored copy, from the server's cumulative statistics (``n_tup_ins``): exact on
PostgreSQL 15 and later (statistics in shared memory, flushed by each session before it
ends) once every session that wrote has ended, and free: no table is read.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from buttress.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "LARGE_OBJECTS",
    "Description",
    "count_rows",
    "count_table",
    "describe_postgres",
    "describe_sqlite",
    "inserted_rows",
]

LARGE_OBJECTS = "pg_catalog.pg_largeobject_metadata"

_USER = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
    AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = %(cls)s::regclass AND d.objid = {oid} AND d.deptype = 'e')
"""

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND @USER(c.oid, cls)@
ORDER BY 1, 2
"""

_RELATIONS = """
SELECT n.nspname || '.' || c.relname, json_build_object(
  'kind', c.relkind,
  'columns', (SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated)
              ORDER BY a.attnum)
              FROM pg_attribute a LEFT JOIN pg_attrdef ad
                ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'constraints', (SELECT json_agg(json_build_array(co.conname, pg_get_constraintdef(co.oid))
                  ORDER BY co.conname) FROM pg_constraint co WHERE co.conrelid = c.oid),
  'indexes', (SELECT json_agg(pg_get_indexdef(i.indexrelid)
                       ORDER BY pg_get_indexdef(i.indexrelid))
              FROM pg_index i WHERE i.indrelid = c.oid),
  'triggers', (SELECT json_agg(pg_get_triggerdef(t.oid) ORDER BY pg_get_triggerdef(t.oid))
               FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
  'view', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND @USER(c.oid, cls)@
ORDER BY 1
"""

_ROUTINES = """
SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       p.prokind::text || ':' || md5(coalesce(p.prosrc, '')) || ':' || pg_get_function_result(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE @USER(p.oid, proc)@
ORDER BY 1
"""

_ENUMS = """
SELECT n.nspname || '.' || t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
WHERE @USER(t.oid, type)@
GROUP BY 1 ORDER BY 1
"""

_BIGGEST_FIRST = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND @USER(c.oid, cls)@
ORDER BY pg_relation_size(c.oid) DESC, 1, 2
"""

_INSERTED = """
SELECT n.nspname, c.relname, pg_stat_get_tuples_inserted(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND @USER(c.oid, cls)@
ORDER BY 1, 2
"""

_OTHER_SESSIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
"""

_NAMES = {"cls": "pg_class", "proc": "pg_proc", "type": "pg_type"}


def _expand(query: str) -> str:
    """Put the user-objects filter where ``@USER(oid, catalog)@`` stands (constants only)."""
    return re.sub(
        r"@USER\((\w+\.oid), (\w+)\)@",
        lambda m: _USER.replace("{oid}", m.group(1)).replace("%(cls)s", f"%({m.group(2)})s"),
        query,
    )


_TABLES, _RELATIONS, _ROUTINES, _ENUMS, _BIGGEST_FIRST, _INSERTED = map(
    _expand, (_TABLES, _RELATIONS, _ROUTINES, _ENUMS, _BIGGEST_FIRST, _INSERTED)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Description:
    """Row counts and schema hashes of one database (or of the copy restored from it)."""

    tables: dict[str, int]
    schema_hash: str
    table_schemas: dict[str, str]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _schema(objects: dict[str, Any]) -> tuple[str, dict[str, str]]:
    per_object = {name: _digest(value) for name, value in objects.items()}
    return _digest(per_object), per_object


def describe_postgres(conn: Any, *, counts: bool = True) -> Description:
    """Describe the database of psycopg connection ``conn``, inside its current transaction.

    Sets ``search_path`` for the transaction only (``SET LOCAL``): call it in a transaction.
    With ``counts=False`` only the schema is read (`count_rows` counts a copy faster).
    """
    conn.execute("SET LOCAL search_path = pg_catalog")
    objects: dict[str, Any] = {}
    for name, text in conn.execute(_RELATIONS, _NAMES).fetchall():
        objects[name] = json.loads(text)
    for name, text in conn.execute(_ROUTINES, _NAMES).fetchall():
        objects[f"routine {name}"] = text
    for name, labels in conn.execute(_ENUMS, _NAMES).fetchall():
        objects[f"enum {name}"] = labels
    schema_hash, table_schemas = _schema(objects)
    tables: dict[str, int] = {}
    if counts:
        for schema, table in conn.execute(_TABLES, _NAMES).fetchall():
            tables[f"{schema}.{table}"] = count_table(conn, schema, table)
        tables[LARGE_OBJECTS] = count_table(conn, "pg_catalog", "pg_largeobject_metadata")
    return Description(tables=tables, schema_hash=schema_hash, table_schemas=table_schemas)


def count_table(conn: Any, schema: str, table: str) -> int:
    """``SELECT count(*)`` of ``schema.table`` on psycopg connection ``conn``."""
    from psycopg import sql  # noqa: PLC0415 - the backup extra

    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return int(conn.execute(query).fetchone()[0])


def count_rows(dsn: str, *, jobs: int = 2, connect_timeout: int = 10) -> dict[str, int]:
    """The exact row count of every user table (and large objects) of the database ``dsn``.

    ``jobs`` connections count at once, the biggest tables first. For a database nobody
    writes while it runs (a restored copy): the counts are not taken in one snapshot.
    Raises ``psycopg.Error`` when the database cannot be read.

    Example::

        count_rows(scratch_dsn, jobs=4)   # {"public.orders": 150000, ...}
    """
    import psycopg  # noqa: PLC0415 - the backup extra

    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute("SET search_path = pg_catalog")
        names = [(str(s), str(t)) for s, t in conn.execute(_BIGGEST_FIRST, _NAMES).fetchall()]
    names.append(("pg_catalog", "pg_largeobject_metadata"))
    pending = iter(names)  # shared by the workers: next() on a list iterator is atomic
    counted: dict[str, int] = {}

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            for schema, table in pending:
                counted[f"{schema}.{table}"] = count_table(conn, schema, table)

    workers = max(1, min(jobs, len(names)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="buttress-count") as pool:
        for future in [pool.submit(work) for _ in range(workers)]:
            future.result()
    return {f"{s}.{t}": counted[f"{s}.{t}"] for s, t in sorted(names)}


def describe_sqlite(conn: sqlite3.Connection) -> Description:
    """Describe the SQLite database of ``conn``: the SQL of each object, rows per table."""
    rows = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name"
    ).fetchall()
    objects = {f"{kind} {name}": [table, text] for kind, name, table, text in rows}
    schema_hash, table_schemas = _schema(objects)
    tables = {}
    for kind, name, _, _ in rows:
        if kind == "table":
            quoted = '"' + name.replace('"', '""') + '"'
            query = "SELECT count(*) FROM " + quoted  # noqa: S608 - quoted identifier
            tables[name] = int(conn.execute(query).fetchone()[0])  # buttress: ignore[BTR404] quoted
    return Description(tables=tables, schema_hash=schema_hash, table_schemas=table_schemas)


def inserted_rows(
    dsn: str, *, wait: float = 10.0, poll: float = 0.02, clock: Clock = SYSTEM_CLOCK
) -> dict[str, int] | None:
    """Rows inserted into each user table of ``dsn`` (and its large objects), or None.

    For a database just filled by a restore and written by nothing else: the counts are
    those of ``count(*)`` without reading a table. Waits up to ``wait`` seconds for the
    other client sessions on the database to end (a session's statistics are flushed
    before it goes): call it before opening any other connection to ``dsn``.
    None when the answer would not be exact: a server older than PostgreSQL 15 (its
    statistics collector could drop messages), ``track_counts`` off, or sessions still
    there after ``wait``; then use `count_rows`.

    Example::

        counts = inserted_rows(scratch_dsn) or count_rows(scratch_dsn, jobs=2)
    """
    import psycopg  # noqa: PLC0415 - the backup extra

    def value(conn: Any, query: str) -> Any:
        row = conn.execute(query).fetchone()
        return None if row is None else row[0]

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        version = int(value(conn, "SHOW server_version_num"))
        if version < 150000 or value(conn, "SHOW track_counts") != "on":
            return None
        deadline = clock.now() + wait
        while int(value(conn, _OTHER_SESSIONS)) > 0:
            if clock.now() >= deadline:
                return None
            clock.sleep(poll)
        conn.execute("SET search_path = pg_catalog")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = {
            f"{schema}.{table}": int(inserted)
            for schema, table, inserted in conn.execute(_INSERTED, _NAMES).fetchall()
        }
        tables[LARGE_OBJECTS] = count_table(conn, "pg_catalog", "pg_largeobject_metadata")
    return tables
