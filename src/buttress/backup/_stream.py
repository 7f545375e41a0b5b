"""Streaming copies: hash (and optionally encrypt) while copying, never a dump in memory.

`copy_stream` copies a readable binary stream into a file in 1 MiB chunks, hashing the
bytes written; with age recipients it encrypts on the way (pyrage, the Python binding of
rage, a maintained implementation of the age format: X25519 recipients, 64 KiB authenticated
chunks, so it streams and a flipped or truncated byte fails decryption). Only public keys
are needed to encrypt; the secret key (`load_identities`) is needed only to verify or
restore, and is never logged or written anywhere by buttress.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from buttress.backup._errors import BackupError

__all__ = [
    "Copied",
    "copy_stream",
    "decrypt_file",
    "load_identities",
    "parse_recipients",
    "sha256_file",
]

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Copied:
    """What `copy_stream` wrote: bytes stored, their SHA-256, the plaintext's SHA-256."""

    size: int
    sha256: str
    plain_sha256: str


class _HashingReader:
    """A reader that hashes what passes through (pyrage calls ``read(n)``)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


class _HashingWriter:
    """A writer that hashes and counts what it writes."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def parse_recipients(values: Sequence[str]) -> list[Any]:
    """Age recipients (``age1...`` public keys) from ``values``; `BackupError` when invalid."""
    if not values:
        return []
    x25519 = _pyrage().x25519
    recipients = []
    for value in values:
        try:
            recipients.append(x25519.Recipient.from_str(value.strip()))
        except Exception:
            raise BackupError(
                f"{value.strip()[:12]}...: not an age recipient (age1... public key)",
                step="encrypt",
            ) from None
    return recipients


def load_identities(path: Path) -> list[Any]:
    """The age identities (``AGE-SECRET-KEY-1...`` lines) in the file at ``path``."""
    x25519 = _pyrage().x25519
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BackupError(
            f"{path}: cannot read the identity file ({exc.strerror})", step="decrypt"
        ) from None
    identities = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(text))
        except Exception:
            raise BackupError(f"{path}:{number}: not an age identity", step="decrypt") from None
    if not identities:
        raise BackupError(f"{path}: no AGE-SECRET-KEY-1... line", step="decrypt")
    return identities


def _pyrage() -> Any:
    try:
        import pyrage  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        raise BackupError(
            "encryption needs pyrage: pip install pyrage (the Python binding of rage)",
            step="encrypt",
        ) from None
    return pyrage


def copy_stream(source: IO[bytes], target: Path, recipients: Sequence[Any] = ()) -> Copied:
    """Copy ``source`` to a new file ``target`` (age-encrypted to ``recipients`` if any)."""
    with open(target, "xb") as raw:
        writer = _HashingWriter(raw)
        if recipients:
            reader = _HashingReader(source)
            try:
                _pyrage().encrypt_io(reader, writer, list(recipients))
            except BackupError:
                raise
            except Exception as exc:
                raise BackupError(
                    f"encryption failed: {type(exc).__name__}", step="encrypt"
                ) from None
            plain = reader.digest.hexdigest()
        else:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
            plain = writer.digest.hexdigest()
        writer.flush()
    return Copied(size=writer.size, sha256=writer.digest.hexdigest(), plain_sha256=plain)


def decrypt_file(source: Path, target: Path, identities: Sequence[Any]) -> Copied:
    """Decrypt the age file ``source`` into a new file ``target``, hashing both sides.

    One pass: the result holds the size and SHA-256 of ``source`` (compare them with the
    manifest's ``size``/``sha256``) and the SHA-256 of what was written (``plain_sha256``).

    Example::

        copied = decrypt_file(stored, work / "orders.dump", load_identities(key_file))
        assert copied.sha256 == manifest.sha256
    """
    pyrage = _pyrage()
    try:
        with open(source, "rb") as inp, open(target, "xb") as out:
            reader = _HashingReader(inp)
            writer = _HashingWriter(out)
            pyrage.decrypt_io(reader, writer, list(identities))
    except Exception as exc:
        raise BackupError(
            f"cannot decrypt {source.name}: wrong identity, or the file is damaged "
            f"({type(exc).__name__})",
            step="decrypt",
        ) from None
    return Copied(
        size=reader.size, sha256=reader.digest.hexdigest(), plain_sha256=writer.digest.hexdigest()
    )


def sha256_file(path: Path) -> tuple[int, str]:
    """``(size, hex SHA-256)`` of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as inp:
        while chunk := inp.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
