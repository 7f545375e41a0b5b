# ruff: noqa
"""Development settings: DEBUG = True is expected here."""

INSTALLED_APPS = ["django.contrib.auth"]
DEBUG = True
