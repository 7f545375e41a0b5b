# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S106.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
def func(pos, password):
    pass


string = "Hello World"

# OK
func("s3cr3t")
func(1, password=string)
func(1, password="")  # peer-only: B106 (empty)
func(pos="s3cr3t", password=string)

# Error
func(1, password="s3cr3t")  # expect: BTR405
