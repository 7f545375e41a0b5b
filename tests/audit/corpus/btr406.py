# ruff: noqa
"""BTR406: passwords hashed with fast hashes."""

import hashlib

from cryptography.hazmat.primitives import hashes


def positives(password: str, user, text: str) -> None:
    hashlib.md5(password.encode()).hexdigest()  # expect: BTR406
    hashlib.sha256(user.password.encode("utf-8"))  # expect: BTR406
    hashlib.new("sha1", password.encode())  # expect: BTR406
    digest = hashlib.md5(text.encode()).hexdigest()
    user.set_password(digest)  # expect: BTR406
    h = hashes.Hash(hashes.SHA1())
    h.update(text.encode())
    user.setPassword(h.finalize())  # expect: BTR406


def negatives(password: str, salt: bytes, data: bytes, user, text: str) -> None:
    hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 600_000)
    hashlib.sha256(data).hexdigest()
    user.set_password(text)  # the framework's setter hashes it (Django: PBKDF2)
    user.set_checksum(hashlib.md5(data).hexdigest())  # not a password
