# ruff: noqa
"""BTR007 passes: the connection sets a statement_timeout."""

import psycopg


def connect():
    return psycopg.connect(
        "postgresql://app@db/app", connect_timeout=5, options="-c statement_timeout=5000"
    )
