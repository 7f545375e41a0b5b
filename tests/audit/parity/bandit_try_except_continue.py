# Vendored from https://github.com/PyCQA/bandit examples/try_except_continue.py at 92080542688902ad1eb6af74cf16939fad767d29.
# Copyright (c) the bandit developers, Apache License 2.0 (see LICENSE-bandit).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
# bad
for i in {0,1}:
    try:
        a = i
    except:  # expect: BTR301
        continue


# bad
while keep_trying:
    try:
        a = 1
    except Exception:  # expect: BTR302
        continue


# bad
for i in {0,2}:
    try:
        a = i
    except ZeroDivisionError:
        continue
    except:  # expect: BTR301
        a = 2


# good
while keep_trying:
    try:
        a = 1
    except:  # expect: BTR301
        a = 2
