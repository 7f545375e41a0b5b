# Vendored from https://github.com/PyCQA/bandit examples/try_except_pass.py at 92080542688902ad1eb6af74cf16939fad767d29.
# Copyright (c) the bandit developers, Apache License 2.0 (see LICENSE-bandit).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
# bad
try:
    a = 1
except:  # expect: BTR301
    pass


# bad
try:
    a = 1
except Exception:  # expect: BTR302
    pass


# bad
try:
    a = 1
except ZeroDivisionError:
    pass
except:  # expect: BTR301
    a = 2


# good
try:
    a = 1
except:  # expect: BTR301
    a = 2


# silly, but ok
try:
    a = 1
except:  # expect: BTR301
    pass
    a = 2
