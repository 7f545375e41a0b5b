# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S107.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
def ok(first, default="default"):
    pass


def default(first, password="default"):  # expect: BTR405
    pass


def ok_posonly(first, /, pos, default="posonly"):
    pass


def default_posonly(first, /, pos, password="posonly"):  # expect: BTR405
    pass


def ok_kwonly(first, *, default="kwonly"):
    pass


def default_kwonly(first, *, password="kwonly"):  # expect: BTR405
    pass


def ok_all(first, /, pos, default="posonly", *, kwonly="kwonly"):
    pass


def default_all(first, /, pos, secret="posonly", *, password="kwonly"):  # expect: BTR405
    pass


def ok_empty(first, password=""):  # peer-only: B107 (empty)
    pass
