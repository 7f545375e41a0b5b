# ruff: noqa
"""BTR707 passes: readiness reports the age of the last verified backup."""

import psycopg

from buttress.asgi.health import BackupCheck

conn = psycopg.connect("postgresql://db/app", connect_timeout=5)
checks = [BackupCheck(max_age=86400)]
