# ruff: noqa
"""BTR406: passwords hashed with fast hashes."""

import hashlib


def positives(password: str, user) -> None:
    hashlib.md5(password.encode()).hexdigest()  # expect: BTR406
    hashlib.sha256(user.password.encode("utf-8"))  # expect: BTR406
    hashlib.new("sha1", password.encode())  # expect: BTR406


def negatives(password: str, salt: bytes, data: bytes) -> None:
    hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 600_000)
    hashlib.sha256(data).hexdigest()
