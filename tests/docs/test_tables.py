"""The docs' reference tables, held to the code they describe.

- the settings tables (docs/asgi.md, docs/shared-state.md): every `HardenSettings` field
  has a row, with its default and its ``BUTTRESS_*`` variable;
- the error taxonomy (docs/concepts.md), which says it is generated from `ErrorCode`;
- the problem types (docs/observability.md): every code, its type slug and its status.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buttress.asgi import HardenSettings
from buttress.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]


def tables(path: Path, header: str) -> list[list[str]]:
    """The rows (cells, stripped) of every table of ``path`` whose header starts ``header``."""
    rows: list[list[str]] = []
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith(header):
            inside = True
            continue
        if inside and line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        else:
            inside = False
    return rows


def shown(value: Any) -> str:
    """A default as the tables write it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(map(shown, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{shown(k)}: {shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


def test_every_setting_has_a_row_with_its_default_and_variable() -> None:
    header = "| field | default | variable |"
    rows = tables(ROOT / "docs/asgi.md", header) + tables(ROOT / "docs/shared-state.md", header)
    documented = {}
    for cells in rows:
        names = re.findall(r"`([\w*]+)`", cells[0])
        if len(names) == 1:
            documented[names[0]] = cells
    problems = []
    for field in dataclasses.fields(HardenSettings):
        cells = documented.get(field.name)
        if cells is None:
            problems.append(f"{field.name}: no row")
            continue
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()
        )
        if not cells[1].startswith(f"`{shown(default)}`"):
            problems.append(f"{field.name}: default {shown(default)}, the docs say {cells[1]}")
        variable = f"BUTTRESS_{field.name.upper()}"
        if cells[2] != f"`{variable}`":
            problems.append(f"{field.name}: variable {variable}, the docs say {cells[2]}")
    stale = documented.keys() - {f.name for f in dataclasses.fields(HardenSettings)}
    problems += [f"{name}: a row, but no such setting" for name in sorted(stale)]
    assert not problems, "\n".join(problems)


def test_the_taxonomy_table_is_the_error_codes() -> None:
    rows = tables(ROOT / "docs/concepts.md", "| code | wire name | retriable |")
    expected = [
        [
            f"`{code.name}`",
            f"`{code.wire}`",
            "yes" if code.retriable else "no",
            "—" if code.default_retry_after is None else f"{code.default_retry_after:g} s",
            str(code.http_status),
            "yes" if code.is_client_error else "no",
        ]
        for code in ErrorCode
    ]
    assert rows == expected


def test_the_problem_types_table_is_the_error_codes() -> None:
    from buttress.asgi._problem import PROBLEM_BASE, problem_type

    rows = tables(ROOT / "docs/observability.md", "| code | type | status | answered by |")
    got = sorted((cells[0], cells[1], cells[2]) for cells in rows)
    expected = sorted(
        (
            f"`{code.wire}`",
            f"`{problem_type(code).removeprefix(PROBLEM_BASE)}`",
            str(code.http_status),
        )
        for code in ErrorCode
    )
    assert got == expected


def test_store_options_table_states_the_constructors_defaults() -> None:
    """docs/shared-state.md's `open_store` options table: each store's ``timeout``
    default (the first number of its cell) is its constructor's."""
    import inspect

    from buttress.stores._postgres import PostgresStore
    from buttress.stores._redis import RedisStore
    from buttress.stores._sqlite import SQLiteStore

    [row] = [
        r
        for r in tables(ROOT / "docs" / "shared-state.md", "| option of `open_store`")
        if r[0].startswith("`timeout`")
    ]
    for cell, store in zip(row[2:], (SQLiteStore, RedisStore, PostgresStore), strict=True):
        default = inspect.signature(store).parameters["timeout"].default
        assert float(cell.split()[0]) == default, (store.__name__, cell, default)
