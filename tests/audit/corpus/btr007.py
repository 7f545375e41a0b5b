# ruff: noqa
"""BTR007: PostgreSQL used, no statement_timeout anywhere (located at the first connection)."""

import psycopg


def connect():
    return psycopg.connect("postgresql://app@db/app", connect_timeout=5)  # expect: BTR007
