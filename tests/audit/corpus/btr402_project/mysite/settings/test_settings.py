# ruff: noqa
"""Test settings (skipped as test code; DEBUG = True allowed anyway)."""

DEBUG = True
