"""Network and database clients, hand-written retry loops, and where servers bind.

Rules BTR004 (aiohttp, smtplib, ``socket.create_connection`` without a timeout), BTR005
(psycopg without ``connect_timeout``, asyncpg without ``timeout``/``command_timeout``),
BTR006 (SQLAlchemy ``create_engine`` without ``pool_timeout`` or ``pool_pre_ping``),
BTR008 (retry loops with no sleep or a constant one: a loop that leaves on success and
whose handler catches what an external call raises: connection, timeout, OS and HTTP
errors, ``Exception``; re-asking for input or re-trying a parse is not a retry), BTR408
(``host="0.0.0.0"`` in code, ``sock.bind(("0.0.0.0", port))`` and ``("", port)``),
and the program-wide facts BTR007 needs (is PostgreSQL used, is a ``statement_timeout``
set anywhere, where is the first connection made).

A call passing ``**kwargs`` is given the benefit of the doubt. SQLite engines are not
judged by BTR006 (no network, no server-side pool). A bind address read from the
environment (``os.environ.get("HOST", "0.0.0.0")``) is configuration, not flagged.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from buttress.audit._context import FileContext, const, has_star_kwargs, keyword, location
from buttress.report import Location

__all__ = ["DbFacts", "check_call", "check_loop", "on_module"]

_AIOHTTP_SESSIONS = frozenset({"aiohttp.ClientSession", "aiohttp.client.ClientSession"})
_AIOHTTP_REQUEST = frozenset({"aiohttp.request", "aiohttp.client.request"})
_SMTP = {"smtplib.SMTP": 3, "smtplib.SMTP_SSL": 5, "smtplib.LMTP": 3}  # timeout's position
_PSYCOPG = frozenset(
    {"psycopg.connect", "psycopg2.connect", "psycopg.Connection.connect",
     "psycopg.AsyncConnection.connect", "psycopg2.extras.connect"}
)  # fmt: skip
_ASYNCPG = frozenset({"asyncpg.connect", "asyncpg.create_pool", "asyncpg.pool.create_pool"})
_ENGINES = frozenset(
    {"sqlalchemy.create_engine", "sqlalchemy.engine.create_engine",
     "sqlalchemy.ext.asyncio.create_async_engine"}
)  # fmt: skip
_PG_MODULES = frozenset({"psycopg", "psycopg2", "asyncpg"})
_PG_SCHEMES = ("postgres://", "postgresql://", "postgresql+", "postgres+")
_SERVER_RUNS = frozenset({"uvicorn.run", "uvicorn.Config", "hypercorn.Config"})
_ANY_ADDRESS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - what the rule looks for


@dataclass(slots=True, kw_only=True)
class DbFacts:
    """Program-wide PostgreSQL facts for BTR007."""

    postgres: bool = False  # a module imports a PostgreSQL driver or names a postgres URL
    statement_timeout: bool = False
    first_connect: Location | None = None


def on_module(ctx: FileContext, facts: DbFacts) -> None:
    """Record what one module says about PostgreSQL and statement timeouts."""
    if ctx.module.roots & _PG_MODULES:
        facts.postgres = True
    text = ctx.module.source.text
    if "statement_timeout" not in text and "postgres" not in text:
        return  # nothing the node scan below could find (it is the costly part)
    docstrings = {
        id(node.value)
        for node in ctx.module.nodes
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ctx.module.nodes:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            text = node.value
            if "statement_timeout" in text:
                facts.statement_timeout = True
            elif text.startswith(_PG_SCHEMES):
                facts.postgres = True
        elif isinstance(node, ast.keyword) and node.arg == "statement_timeout":
            facts.statement_timeout = True


def _missing(call: ast.Call, name: str, position: int | None = None) -> str | None:
    """Why ``call`` has no usable ``name`` option, or None when it has one."""
    kw = keyword(call, name)
    if kw is not None:
        return f"{name}=None (waits forever)" if const(kw.value, None) else None
    if position is not None and len(call.args) > position:
        return None
    if has_star_kwargs(call):
        return None
    return f"no {name}"


def check_call(ctx: FileContext, call: ast.Call, facts: DbFacts) -> None:
    """BTR004, BTR005, BTR006, BTR408 on one call (and BTR007's first connection)."""
    qual = ctx.qual(call.func)
    if qual in _AIOHTTP_SESSIONS or qual in _AIOHTTP_REQUEST:
        problem = _missing(call, "timeout")
        if problem:
            ctx.emit("BTR004", call, f"{qual}() with {problem}: give it an aiohttp.ClientTimeout")
        return
    if qual in _SMTP:
        problem = _missing(call, "timeout", _SMTP[qual])
        if problem:
            ctx.emit("BTR004", call, f"{qual}() with {problem}: a stalled server hangs the caller")
        return
    if qual == "socket.create_connection":
        problem = _missing(call, "timeout", 1)
        if problem:
            ctx.emit("BTR004", call, f"socket.create_connection() with {problem}")
        return
    if qual in _PSYCOPG:
        _first_connect(ctx, call, facts)
        if not has_star_kwargs(call) and keyword(call, "connect_timeout") is None:
            conninfo = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "conninfo")]
            if not any("connect_timeout" in s for arg in conninfo for s in ctx.strings(arg)):
                ctx.emit("BTR005", call, f"{qual}() without connect_timeout")
        return
    if qual in _ASYNCPG:
        _first_connect(ctx, call, facts)
        if not has_star_kwargs(call) and not (
            keyword(call, "timeout") or keyword(call, "command_timeout")
        ):
            ctx.emit("BTR005", call, f"{qual}() without timeout or command_timeout")
        return
    if qual in _ENGINES:
        _engine(ctx, call, qual, facts)
        return
    _bind(ctx, call, qual)


def _first_connect(ctx: FileContext, call: ast.Call, facts: DbFacts) -> None:
    if facts.first_connect is None:
        facts.first_connect = location(ctx.rel, call)


def _engine(ctx: FileContext, call: ast.Call, qual: str, facts: DbFacts) -> None:
    url = call.args[0] if call.args else getattr(keyword(call, "url"), "value", None)
    urls = ctx.strings(url) if url is not None else []
    if any(u.startswith("sqlite") for u in urls):
        return
    if any(u.startswith(_PG_SCHEMES) for u in urls) or not urls:
        _first_connect(ctx, call, facts)
    if has_star_kwargs(call) or keyword(call, "poolclass") is not None:
        return
    missing = [n for n in ("pool_timeout", "pool_pre_ping") if keyword(call, n) is None]
    if missing:
        name = qual.rpartition(".")[2]
        ctx.emit("BTR006", call, f"{name}() without {' and '.join(missing)}")


def _bind(ctx: FileContext, call: ast.Call, qual: str) -> None:
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and func.attr == "bind"
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Tuple)
        and call.args[0].elts
    ):  # socket.bind((host, port)): "" is every interface too
        address = call.args[0].elts[0]
        if isinstance(address, ast.Constant) and address.value in (*_ANY_ADDRESS, ""):
            shown = repr(address.value)
            ctx.emit("BTR408", address, f"socket bound to {shown}: every network interface")
        return
    is_run = qual in _SERVER_RUNS or (
        isinstance(func, ast.Attribute) and func.attr in ("run", "run_app")
    )
    if not is_run:
        return
    host = keyword(call, "host")
    node = host.value if host is not None else None
    if node is None and isinstance(func, ast.Attribute) and func.attr == "run" and call.args:
        node = call.args[0]  # Flask: app.run(host, port)
    if node is None:
        return
    for found in ctx.resolve(node):
        value = found.node
        if isinstance(value, ast.Constant) and value.value in _ANY_ADDRESS:
            ctx.emit(
                "BTR408",
                node,
                f"{qual or 'run'}(host={value.value!r}) hardcodes binding every interface: "
                "bind through configuration",
            )
            return


# ---------------------------------------------------------------- retry loops


def _exits(stmts: list[ast.stmt]) -> bool:
    """True when ``stmts`` leave the loop on success (``return`` or ``break``)."""
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Return | ast.Break):
                return True
    return False


def _swallows(handler: ast.ExceptHandler) -> bool:
    """True when the handler lets the loop go round again (its body does not end in raise)."""
    return not (handler.body and isinstance(handler.body[-1], ast.Raise))


_TRANSIENT = re.compile(
    r"^(Exception|BaseException|OSError|IOError)$|Connection|Timeout|Transport|Network|HTTP|"
    r"Request|Operational|Unavailable|Socket|Throttl|RateLimit|Retry|Temporar|Transient|"
    r"^(socket|ssl|requests|httpx|aiohttp|urllib|urllib3|redis|psycopg|psycopg2|asyncpg|"
    r"grpc|botocore|boto3|smtplib|kafka|pika|sqlalchemy)\."
)


def _transient(ctx: FileContext, handler: ast.ExceptHandler) -> bool:
    """True when the handler catches what a failing external call raises (or anything)."""
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for node in types:
        qual = ctx.qual(node)
        if _TRANSIENT.search(qual) or _TRANSIENT.search(qual.rpartition(".")[2]):
            return True
    return False


def _is_range(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
    )


def check_loop(ctx: FileContext, loop: ast.For | ast.While) -> None:
    """BTR008: a loop that retries a failing call with no sleep, or a constant one."""
    if isinstance(loop, ast.For):
        if not _is_range(loop.iter):
            return
    elif not const(loop.test, True):
        return
    tries = [s for s in loop.body if isinstance(s, ast.Try)]
    retry = any(
        (_exits(t.body) or _exits(t.orelse))
        and any(_swallows(h) and _transient(ctx, h) for h in t.handlers)
        for t in tries
    )
    if not retry:
        return
    sleeps = [
        node
        for stmt in loop.body
        for node in ast.walk(stmt)
        if isinstance(node, ast.Call)
        and ctx.qual(node.func).rpartition(".")[2].lower().endswith("sleep")
    ]
    kind = "for ... in range()" if isinstance(loop, ast.For) else "while True"
    if not sleeps:
        ctx.emit("BTR008", loop, f"`{kind}` retry loop with no sleep between attempts")
        return
    if all(s.args and isinstance(s.args[0], ast.Constant) for s in sleeps):
        ctx.emit("BTR008", loop, f"`{kind}` retry loop sleeps a constant time: no backoff")
