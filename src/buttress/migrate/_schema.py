"""A database's schema as comparable lines: what the round trip and a failed run compare.

`schema_lines` reads the catalogs (tables and their columns with type, nullability and
default; indexes; constraints; enum types; views) of every user schema and returns one
sorted line per object, so two snapshots compare with ``==`` and differ readably
(`schema_diff`). Tables named in ``ignore`` (Alembic's ``alembic_version``, which a
downgrade to base empties but keeps) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

__all__ = ["schema_diff", "schema_lines"]

_QUERIES: Final = (
    """SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname || ' '
              || format_type(a.atttypid, a.atttypmod)
              || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
              || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
            c.relname, n.nspname
       FROM pg_attribute a
       JOIN pg_class c ON c.oid = a.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
       WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped""",
    """SELECT 'table ' || n.nspname || '.' || c.relname, c.relname, n.nspname
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p')""",
    """SELECT 'index ' || pg_get_indexdef(i.indexrelid), c.relname, n.nspname
       FROM pg_index i
       JOIN pg_class c ON c.oid = i.indrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace""",
    """SELECT 'constraint ' || n.nspname || '.' || c.relname || ' ' || k.conname || ' '
              || pg_get_constraintdef(k.oid), c.relname, n.nspname
       FROM pg_constraint k
       JOIN pg_class c ON c.oid = k.conrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace""",
    """SELECT 'enum ' || n.nspname || '.' || t.typname || ' '
              || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder), t.typname, n.nspname
       FROM pg_type t
       JOIN pg_enum e ON e.enumtypid = t.oid
       JOIN pg_namespace n ON n.oid = t.typnamespace
       GROUP BY n.nspname, t.typname""",
    """SELECT 'view ' || n.nspname || '.' || c.relname || ' ' || pg_get_viewdef(c.oid),
              c.relname, n.nspname
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('v', 'm')""",
)


def _system(schema: str) -> bool:
    return schema in ("information_schema", "pg_catalog") or schema.startswith("pg_")


def schema_lines(conn: Any, *, ignore: Iterable[str] = ("alembic_version",)) -> tuple[str, ...]:
    """The schema of ``conn``'s database (a psycopg connection) as sorted lines.

    Example::

        before = schema_lines(conn)
        ...  # upgrade, then downgrade
        assert schema_lines(conn) == before
    """
    skip = set(ignore)
    lines: set[str] = set()
    for query in _QUERIES:
        for line, relation, schema in conn.execute(query).fetchall():
            if relation not in skip and not _system(schema):
                lines.add(str(line))
    return tuple(sorted(lines))


def schema_diff(before: tuple[str, ...], after: tuple[str, ...], *, limit: int = 5) -> str:
    """What changed from ``before`` to ``after``: ``+ added; - removed`` lines, at most ``limit``.

    Example::

        >>> schema_diff(("table public.a",), ("table public.a", "table public.b"))
        '+ table public.b'
    """
    old, new = set(before), set(after)
    changes = [f"- {line}" for line in sorted(old - new)]
    changes += [f"+ {line}" for line in sorted(new - old)]
    shown = "; ".join(changes[:limit])
    more = len(changes) - limit
    return shown + (f"; ... and {more} more" if more > 0 else "")
