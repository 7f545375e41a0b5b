# Vendored from https://github.com/PyCQA/bandit examples/binding.py at 92080542688902ad1eb6af74cf16939fad767d29.
# Copyright (c) the bandit developers, Apache License 2.0 (see LICENSE-bandit).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
import socket

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(('0.0.0.0', 31137))  # expect: BTR408
s.bind(('192.168.0.1', 8080))
