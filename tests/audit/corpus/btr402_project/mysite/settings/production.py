# ruff: noqa
"""A Django settings module: DEBUG = True here is a finding."""

INSTALLED_APPS = ["django.contrib.auth"]
DEBUG = True  # expect: BTR402
CORS_ALLOW_ALL_ORIGINS = True  # expect: BTR401
