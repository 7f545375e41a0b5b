# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S112.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
for _ in []:
    try:
        pass
    except Exception:  # expect: BTR302
        continue

    try:
        pass
    except:  # expect: BTR301
        continue

    try:
        pass
    except (Exception,):  # expect: BTR302
        continue

    try:
        pass
    except (Exception, ValueError):  # expect: BTR302
        continue

    try:
        pass
    except ValueError:
        continue

    try:
        pass
    except (ValueError,):
        continue
