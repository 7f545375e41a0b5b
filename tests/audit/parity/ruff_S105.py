# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S105.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
d = {}

# OK
safe = "s3cr3t"
password = True
password = safe
password = ""  # peer-only: B105 (empty)
password is True
password == 1
d["safe"] = "s3cr3t"

# Errors
password = "s3cr3t"  # expect: BTR405
_pass = "s3cr3t"  # expect: BTR405
passwd = "s3cr3t"  # expect: BTR405
pwd = "s3cr3t"  # expect: BTR405
secret = "s3cr3t"  # peer-only: B105,S105 (short-token)
token = "s3cr3t"  # peer-only: B105,S105 (short-token)
secrete = "s3cr3t"  # peer-only: B105,S105 (not-a-secret-name)
safe = password = "s3cr3t"  # expect: BTR405
password = safe = "s3cr3t"  # expect: BTR405
PASSWORD = "s3cr3t"  # expect: BTR405
PassWord = "s3cr3t"  # expect: BTR405
password: str = "s3cr3t"  # expect: BTR405
password: Final = "s3cr3t"  # expect: BTR405

d["password"] = "s3cr3t"  # expect: BTR405
d["pass"] = "s3cr3t"  # expect: BTR405
d["passwd"] = "s3cr3t"  # expect: BTR405
d["pwd"] = "s3cr3t"  # expect: BTR405
d["secret"] = "s3cr3t"  # peer-only: B105,S105 (short-token)
d["token"] = "s3cr3t"  # peer-only: B105,S105 (short-token)
d["secrete"] = "s3cr3t"  # peer-only: B105,S105 (not-a-secret-name)
safe = d["password"] = "s3cr3t"  # expect: BTR405
d["password"] = safe = "s3cr3t"  # expect: BTR405


class MyClass:
    password = "s3cr3t"  # expect: BTR405
    safe = password


MyClass.password = "s3cr3t"  # expect: BTR405
MyClass._pass = "s3cr3t"  # expect: BTR405
MyClass.passwd = "s3cr3t"  # expect: BTR405
MyClass.pwd = "s3cr3t"  # expect: BTR405
MyClass.secret = "s3cr3t"  # peer-only: B105,S105 (short-token)
MyClass.token = "s3cr3t"  # peer-only: B105,S105 (short-token)
MyClass.secrete = "s3cr3t"  # peer-only: B105,S105 (not-a-secret-name)

password == "s3cr3t"  # expect: BTR405
_pass == "s3cr3t"  # expect: BTR405
passwd == "s3cr3t"  # expect: BTR405
pwd == "s3cr3t"  # expect: BTR405
secret == "s3cr3t"  # peer-only: B105,S105 (short-token)
token == "s3cr3t"  # peer-only: B105,S105 (short-token)
secrete == "s3cr3t"  # peer-only: B105,S105 (not-a-secret-name)
password == safe == "s3cr3t"  # expect: BTR405

if token == "1\n2":  # peer-only: B105,S105 (control-char)
    pass

if token == "3\t4":  # peer-only: B105,S105 (control-char)
    pass

if token == "5\r6":  # peer-only: B105,S105 (control-char)
    pass


# These should not be flagged
passed_msg = "You have passed!"
compassion = "Please don't match!"
impassable = "You shall not pass!"
passwords = ""
PASSWORDS = ""
passphrases = ""
PassPhrases = ""
tokens = ""
secrets = ""
