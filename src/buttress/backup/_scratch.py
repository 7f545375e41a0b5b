"""Scratch databases: created for one restore, always dropped, never anything else.

`scratch_database` creates a database with a fresh random name on the server of an admin
DSN (``CREATE DATABASE`` fails when the name exists, so it can never adopt a database it
did not create), yields its DSN and drops it ``WITH (FORCE)`` on the way out, whatever
happened: an exception, Ctrl-C (``KeyboardInterrupt``) or ``SIGTERM`` (turned into
``SystemExit`` while the database exists, when called from the main thread; a signal that
arrives while the database is being created or dropped waits until that is done, and a
second one does not cut the clean-up short: `signal_guard`). Only a
``SIGKILL`` can leave one behind; every name starts with ``buttress_scratch_`` so such a
leftover is easy to find (``SELECT datname FROM pg_database WHERE datname LIKE
'buttress_scratch_%'``).

A name carries the Unix time it was created at
(``buttress_scratch_<label>_<unix seconds>_<random>``), so a leftover's age is known
without any catalog the server may not let you read: ``buttress backup scratch list`` and
``buttress backup scratch drop --older-than 1h`` (`buttress.backup._leftovers`) find and
drop them, and never touch a name without the prefix.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from buttress.backup._errors import BackupError, redact
from buttress.backup._pgtools import password_of, with_dbname
from buttress.backup._time import SYSTEM_WALL_CLOCK, WallClock

__all__ = ["SCRATCH_PREFIX", "SignalGuard", "scratch_database", "scratch_name", "signal_guard"]

SCRATCH_PREFIX = "buttress_scratch_"
_LABEL = re.compile(r"[a-z0-9_]{1,20}")
_CONNECT_TIMEOUT = 10  # seconds, for the admin connections


def _connect(dsn: str, *, step: str) -> Any:
    import psycopg  # noqa: PLC0415 - the backup extra

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise BackupError(
            f"cannot connect to the PostgreSQL server: {redact(str(exc), [password_of(dsn)])}",
            step=step,
        ) from None


def scratch_name(label: str, now: float) -> str:
    """A new scratch database name for ``label``, created at Unix time ``now``.

    Example::

        >>> scratch_name("verify", 1_765_000_000.0)[:38]
        'buttress_scratch_verify_1765000000_'
    """
    if not _LABEL.fullmatch(label):
        raise BackupError(
            f"scratch_database(label={label!r}): use 1-20 lowercase letters, digits or '_'",
            step="scratch",
        )
    return f"{SCRATCH_PREFIX}{label}_{int(now):010d}_{secrets.token_hex(6)}"


@contextlib.contextmanager
def scratch_database(
    admin_dsn: str, *, label: str = "verify", clock: WallClock = SYSTEM_WALL_CLOCK
) -> Iterator[str]:
    """Create a new database ``buttress_scratch_<label>_<time>_<random>``, yield its DSN, drop it.

    The user of ``admin_dsn`` needs ``CREATEDB``. A name that exists is refused (never
    reused, never dropped); the database is dropped ``WITH (FORCE)`` on exit, also on
    ``KeyboardInterrupt`` and ``SIGTERM``.

    Example::

        with scratch_database("postgresql://postgres@127.0.0.1/postgres") as dsn:
            seconds = pg_restore_into(Path("orders.dump"), dsn, jobs=2)
    """
    name = scratch_name(label, clock.now())
    import psycopg  # noqa: PLC0415 - the backup extra
    from psycopg import sql  # noqa: PLC0415

    secret = [password_of(admin_dsn)]
    with signal_guard() as guard:  # held while creating and dropping: neither half-done
        with _connect(admin_dsn, step="scratch") as conn:
            taken = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if taken:  # 48 random bits: only a deliberate collision gets here
                raise BackupError(f"database {name} exists already: refusing it", step="scratch")
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
                )
            except psycopg.Error as exc:
                raise BackupError(
                    f"cannot create the scratch database {name}: {redact(str(exc), secret)} "
                    "(the user needs CREATEDB)",
                    step="scratch",
                ) from None
        try:
            with guard.raising():
                yield with_dbname(admin_dsn, name)
        finally:
            _drop(admin_dsn, name)


def _drop(admin_dsn: str, name: str) -> None:
    """Drop the scratch database ``name`` (a fresh connection; a second try after 1 s)."""
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    if not name.startswith(SCRATCH_PREFIX):  # pragma: no cover - names are built above
        raise BackupError(f"refusing to drop {name}: not a scratch database", step="scratch")
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    last: BaseException | None = None
    for attempt in range(2):  # buttress: ignore[BTR008] one second try of a DROP, no policy
        try:
            with _connect(admin_dsn, step="scratch") as conn:
                conn.execute(statement)
            return
        except (psycopg.Error, BackupError) as exc:
            last = exc
            if attempt == 0:
                time.sleep(1.0)
    raise BackupError(
        f"could not drop the scratch database {name} ({redact(str(last), [password_of(admin_dsn)])}"
        f"): drop it by hand with DROP DATABASE {name} WITH (FORCE)",
        step="scratch",
    )


class SignalGuard:
    """What SIGTERM and SIGINT do inside `signal_guard`: held, or raised once.

    Held (the default): a signal is recorded and acted on when the guard ends, so the
    step it arrived in (creating or dropping a scratch database) completes. Raising
    (`raising`): the first SIGTERM raises ``SystemExit(143)`` and the first SIGINT
    ``KeyboardInterrupt``; any later one is ignored, so the clean-up they start (killing
    ``pg_dump``, removing a partial backup, dropping the database) is not cut short by a
    second Ctrl-C or a supervisor that signals twice.
    """

    def __init__(self) -> None:
        self.held: list[int] = []
        self.fired = False
        self._raising = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler."""
        if self.fired:
            return
        if not self._raising:
            self.held.append(signum)
            return
        self.fire(signum)

    def fire(self, signum: int) -> None:
        """Raise what ``signum`` means, once."""
        self.fired = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """While inside, a signal raises at once (one held before is raised on entry)."""
        if self.held and not self.fired:
            self.fire(self.held[0])
        self._raising = True
        try:
            yield
        finally:
            self._raising = False


@contextlib.contextmanager
def signal_guard() -> Iterator[SignalGuard]:
    """SIGTERM and SIGINT routed to a `SignalGuard` while inside (main thread only).

    Only a default disposition is replaced (SIGTERM's ``SIG_DFL``, Python's SIGINT
    handler): an application that handles them itself keeps its handlers. A signal held
    when the guard ends is raised then.
    """
    names = (signal.SIGTERM, signal.SIGINT)
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    main = threading.current_thread() is threading.main_thread()
    guard = SignalGuard()
    previous = {}
    if main:
        for signum in names:
            if signal.getsignal(signum) == defaults[signum]:
                previous[signum] = signal.signal(signum, guard.handle)
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if guard.held and not guard.fired:
        guard.fire(guard.held[0])
