# ruff: noqa  # expect: BTR707
"""BTR707: PostgreSQL is used and nothing backs it up (no workflow, cron job or check)."""

import psycopg

conn = psycopg.connect("postgresql://db/app", connect_timeout=5)
