# ruff: noqa
"""BTR005: PostgreSQL connections without a timeout."""

import asyncpg
import psycopg
import psycopg2

DSN = "postgresql://app@db/app?connect_timeout=5"
PLAIN = "postgresql://app@db/app"


def bad() -> None:
    psycopg.connect(PLAIN)  # expect: BTR005
    psycopg2.connect(host="db", dbname="app")  # expect: BTR005


async def bad_async() -> None:
    await asyncpg.connect(PLAIN)  # expect: BTR005
    await asyncpg.create_pool(PLAIN, min_size=1)  # expect: BTR005


async def good(**options: object) -> None:
    psycopg.connect(DSN)
    psycopg.connect("host=db dbname=app connect_timeout=3")
    psycopg2.connect(host="db", connect_timeout=5)
    psycopg.connect(**options)
    await asyncpg.connect(PLAIN, timeout=5)
    await asyncpg.create_pool(PLAIN, command_timeout=30)
