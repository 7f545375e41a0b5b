# ruff: noqa
"""Alembic's environment (its presence marks versions/ as Alembic revisions)."""
