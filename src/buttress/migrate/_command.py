"""The migration command: how it runs, and what Alembic's own options make of it.

`run_step` runs one command (an argv, never through a shell) against the scratch
database with a time limit, in its own process group (killed whole when the limit
passes), and keeps the end of its output. `migration_env` is the environment it runs
in: the scratch database's URL in the variable the command reads (``DATABASE_URL`` by
default), every libpq default (``PGHOST``, ``PGDATABASE``, ...) pointing at the scratch
database too, and ``lock_timeout`` / ``statement_timeout`` in ``PGOPTIONS``.

`AlembicCommand` recognises ``alembic ... upgrade TARGET`` (also ``python -m alembic``,
``poetry run alembic``): its offline SQL is ``upgrade START:TARGET --sql`` from the
scratch copy's current revision, and its way back ``downgrade START``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from buttress.backup import redact
from buttress.clock import SYSTEM_CLOCK, Clock

__all__ = ["AlembicCommand", "StepResult", "as_url", "migration_env", "run_step"]

_TAIL = 1500  # characters of a command's output kept for the report


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """One command run: its exit status (None when killed at the time limit) and output."""

    name: str  # "upgrade", "downgrade", "upgrade again"
    argv: tuple[str, ...]
    returncode: int | None
    seconds: float
    output: str  # the end of stderr (else stdout), credentials masked
    stdout: str = ""  # the whole of stdout, when asked for (Alembic's offline SQL)

    @property
    def ok(self) -> bool:
        """True when the command exited 0 within its time limit."""
        return self.returncode == 0

    @property
    def outcome(self) -> str:
        """``exit 0``, ``exit 1`` or ``killed after the time limit``."""
        if self.returncode is None:
            return "killed at the time limit"
        return f"exit {self.returncode}"

    @property
    def last_line(self) -> str:
        """The line of its output that says what went wrong (the last error line).

        Else its last line; SQLAlchemy's trailing ``(Background on this error ...)`` and
        ``[SQL: ...]`` lines are skipped.
        """
        lines = [
            line.strip()
            for line in self.output.splitlines()
            if line.strip() and not line.strip().startswith(("(Background on", "[SQL:"))
        ]
        for line in reversed(lines):
            if "Error" in line or "ERROR" in line or "error:" in line:
                return line
        return lines[-1] if lines else ""


def as_url(conninfo: str, *, scheme: str = "postgresql") -> str:
    """A ``key=value`` libpq string (or a URL) as ``scheme://user:password@host:port/db``.

    A socket directory as host goes in the query (``?host=/var/run/postgresql&port=5432``).

    Example::

        >>> as_url("host=127.0.0.1 port=5432 user=app dbname=x", scheme="postgresql+psycopg")
        'postgresql+psycopg://app@127.0.0.1:5432/x'
    """
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - the postgres extra

    params = conninfo_to_dict(conninfo)
    user = quote(str(params.get("user") or ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = str(params.get("host") or "")
    port = f":{params['port']}" if params.get("port") else ""
    db = quote(str(params.get("dbname") or ""), safe="")
    if host.startswith("/"):
        query = f"host={quote(host, safe='/')}" + (f"&port={params['port']}" if port else "")
        return f"{scheme}://{auth}/{db}?{query}"
    return f"{scheme}://{auth}{host}{port}/{db}"


def migration_env(
    scratch: str,
    *,
    env_var: str,
    scheme: str,
    lock_timeout: float,
    statement_timeout: float,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment a migration command runs in: everything points at ``scratch``.

    Example::

        env = migration_env(dsn, env_var="DATABASE_URL", scheme="postgresql",
                            lock_timeout=5, statement_timeout=300)
        env["PGOPTIONS"]   # '-c lock_timeout=5000 -c statement_timeout=300000'
    """
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - the postgres extra

    env = dict(os.environ if base is None else base)
    for name in ("PGSERVICE", "PGSERVICEFILE", "PGHOSTADDR", "PGPASSFILE"):
        env.pop(name, None)  # nothing may lead libpq anywhere else
    params = conninfo_to_dict(scratch)
    for key, name in (
        ("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
        ("dbname", "PGDATABASE"), ("password", "PGPASSWORD"),
    ):  # fmt: skip
        if params.get(key):
            env[name] = str(params[key])
        else:
            env.pop(name, None)
    options = (
        f"-c lock_timeout={round(lock_timeout * 1000)} "
        f"-c statement_timeout={round(statement_timeout * 1000)}"
    )
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {options}".strip()
    env[env_var] = as_url(scratch, scheme=scheme)
    return env


def run_step(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    timeout: float,
    secrets: Sequence[str] = (),
    clock: Clock = SYSTEM_CLOCK,
    keep_stdout: bool = False,
) -> StepResult:
    """Run ``argv`` once; the end of its output is kept with ``secrets`` masked.

    ``keep_stdout`` keeps the whole of stdout too (``StepResult.stdout``).
    """
    started = clock.now()
    try:
        proc = subprocess.Popen(  # noqa: S603 - the user's own migration command, no shell
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: killed whole at the time limit
        )
    except OSError as exc:
        return StepResult(
            name=name, argv=tuple(argv), returncode=127, seconds=0.0,
            output=f"cannot run {argv[0]}: {exc.strerror or exc}",
        )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        code = None
    except BaseException:  # Ctrl-C: the migration must not outlive the scratch database
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise
    seconds = clock.now() - started
    text = (err or out).decode(errors="replace").strip()
    if len(text) > _TAIL:
        text = "..." + text[-_TAIL:]
    return StepResult(
        name=name, argv=tuple(argv), returncode=code, seconds=seconds,
        output=redact(text, secrets),
        stdout=out.decode(errors="replace") if keep_stdout else "",
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AlembicCommand:
    """``alembic [options] upgrade TARGET``, taken apart to ask Alembic for more.

    Example::

        >>> cmd = AlembicCommand.parse(["alembic", "-c", "db.ini", "upgrade", "head"])
        >>> cmd.offline("3f2a")
        ['alembic', '-c', 'db.ini', 'upgrade', '3f2a:head', '--sql']
        >>> cmd.downgrade(None)
        ['alembic', '-c', 'db.ini', 'downgrade', 'base']
    """

    prefix: tuple[str, ...]  # everything before "upgrade"
    target: str

    @classmethod
    def parse(cls, argv: Sequence[str]) -> AlembicCommand | None:
        """The command when ``argv`` is an Alembic upgrade (not already ``--sql``), else None."""
        names = [os.path.basename(arg) for arg in argv]
        if "alembic" not in names or "--sql" in argv:
            return None
        start = names.index("alembic")
        try:
            upgrade = argv.index("upgrade", start + 1)
        except ValueError:
            return None
        rest = [arg for arg in argv[upgrade + 1 :] if not arg.startswith("-")]
        if not rest or ":" in rest[0]:
            return None
        return cls(prefix=tuple(argv[:upgrade]), target=rest[0])

    def offline(self, start: str | None) -> list[str]:
        """The command that prints the upgrade's SQL, from revision ``start`` (None: base)."""
        span = f"{start}:{self.target}" if start else self.target
        return [*self.prefix, "upgrade", span, "--sql"]

    def downgrade(self, start: str | None) -> list[str]:
        """The command that goes back to revision ``start`` (None: base)."""
        return [*self.prefix, "downgrade", start or "base"]
