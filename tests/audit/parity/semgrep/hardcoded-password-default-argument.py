# Vendored from https://github.com/semgrep/semgrep-rules python/lang/security/audit/hardcoded-password-default-argument.py at 157ae4706d7f54aa33647332f234dd68f30da195.
# Copyright (c) Semgrep, Inc., LGPL 2.1 with the Commons Clause (see LICENSE-semgrep-rules).
# Unchanged below this header: semgrep's own test file, with its ruleid and ok annotations.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
# ok:hardcoded-password-default-argument
password = "this-is-probably-a-test"

def say_something(something):
    print(something)

# ok:hardcoded-password-default-argument
say_something(password)

# ok:hardcoded-password-default-argument
def say_something_else(something_else="something else"):
    print(something_else)

# ruleid:hardcoded-password-default-argument
def whoops(password="this-could-be-bad"):
    print(password)

# ok:hardcoded-password-default-argument
def ok(password=None):
    print(password)

# ok:hardcoded-password-default-argument
def ok(password=""):
    print(password)
