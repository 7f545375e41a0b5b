"""External calls: timeouts, retries without backoff, TLS verification.

Rules BTR001, BTR002 (timeouts), BTR003 (retries without backoff), BTR403 (TLS).

requests has no default timeout, so every call without ``timeout=`` is flagged, on the
module functions and on ``Session`` objects however the module obtained them (assigned,
``with requests.Session() as s``, ``self.session = ...``, a parameter annotated
``requests.Session``). A session given an adapter whose class name says ``Timeout``
(``s.mount("https://", TimeoutHTTPAdapter(...))``) is taken as configured. httpx has a 5 s
default, so only ``timeout=None`` is flagged there. A call passing ``**kwargs`` is given
the benefit of the doubt.
"""

from __future__ import annotations

import ast

from buttress.audit._context import (
    HTTP_METHODS,
    FileContext,
    const,
    has_star_kwargs,
    keyword,
)
from buttress.audit._index import dotted

__all__ = ["check_call", "check_decorator", "collect_clients"]

_SESSION_CTORS = frozenset({"requests.Session", "requests.session", "requests.sessions.Session"})
_HTTPX_CLIENTS = frozenset({"httpx.Client", "httpx.AsyncClient"})
_REDIS = frozenset(
    {
        "redis.Redis", "redis.StrictRedis", "redis.client.Redis", "redis.client.StrictRedis",
        "redis.asyncio.Redis", "redis.asyncio.client.Redis", "redis.asyncio.StrictRedis",
        "redis.from_url", "redis.Redis.from_url", "redis.StrictRedis.from_url",
        "redis.asyncio.from_url", "redis.asyncio.Redis.from_url",
        "redis.cluster.RedisCluster", "redis.RedisCluster", "redis.asyncio.RedisCluster",
        "redis.ConnectionPool", "redis.ConnectionPool.from_url", "redis.BlockingConnectionPool",
        "redis.asyncio.ConnectionPool", "redis.asyncio.ConnectionPool.from_url",
    }
)  # fmt: skip
_RETRY = frozenset({"tenacity.retry", "tenacity.Retrying", "tenacity.AsyncRetrying"})
_URLLIB3_RETRY = frozenset(
    {"urllib3.Retry", "urllib3.util.Retry", "urllib3.util.retry.Retry",
     "requests.adapters.Retry", "requests.packages.urllib3.util.retry.Retry"}
)  # fmt: skip


def collect_clients(ctx: FileContext) -> None:
    """Find the names this module binds to requests sessions and httpx clients."""
    program, module = ctx.program, ctx.module
    if not module.roots & {"requests", "httpx"}:
        return  # names bound to sessions and clients come from these imports
    for node in module.nodes:
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.Assign):
            pairs = [(t, node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(node.target, node.value)]
        elif isinstance(node, ast.With | ast.AsyncWith):
            pairs = [(i.optional_vars, i.context_expr) for i in node.items if i.optional_vars]
        elif isinstance(node, ast.arg) and node.annotation is not None:
            qual = program.qualname(module, node.annotation)
            if qual in _SESSION_CTORS:
                ctx.sessions.add(node.arg)
            elif qual in _HTTPX_CLIENTS:
                ctx.httpx_clients.add(node.arg)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "mount"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Call)
            and "timeout" in (dotted(node.args[1].func) or "").lower()
        ):
            owner = dotted(node.func.value)
            if owner:
                ctx.configured_sessions.add(owner)
        for target, value in pairs:
            name = dotted(target)
            if name is None or not isinstance(value, ast.Call):
                continue
            qual = program.qualname(module, value.func)
            if qual in _SESSION_CTORS:
                ctx.sessions.add(name)
            elif qual in _HTTPX_CLIENTS:
                ctx.httpx_clients.add(name)


def _timeout_problem(call: ast.Call, *, required: bool) -> str | None:
    kw = keyword(call, "timeout")
    if kw is not None:
        return "timeout=None (waits forever)" if const(kw.value, None) else None
    if required and not has_star_kwargs(call):
        return "no timeout (requests waits forever by default)"
    return None


def check_call(ctx: FileContext, call: ast.Call) -> None:
    """BTR001, BTR002, BTR003 (urllib3 Retry), BTR403 on one call."""
    qual = ctx.qual(call.func)
    func = call.func
    _tls(ctx, call, qual)
    # requests module functions
    head, _, last = qual.rpartition(".")
    if head in ("requests", "requests.api") and last in HTTP_METHODS:
        problem = _timeout_problem(call, required=True)
        if problem:
            ctx.emit("BTR001", call, f"{qual}() with {problem}")
        return
    if qual == "urllib.request.urlopen":
        if keyword(call, "timeout") is None and len(call.args) < 3:
            ctx.emit("BTR001", call, "urllib.request.urlopen() with no timeout")
        elif const(getattr(keyword(call, "timeout"), "value", None), None):
            ctx.emit("BTR001", call, "urllib.request.urlopen() with timeout=None")
        return
    if head == "httpx" and last in (*HTTP_METHODS, "stream"):
        problem = _timeout_problem(call, required=False)
        if problem:
            ctx.emit("BTR001", call, f"{qual}() with {problem}")
        return
    if qual in _HTTPX_CLIENTS or qual == "httpx.Timeout":
        if const(getattr(keyword(call, "timeout"), "value", None), None) or (
            qual == "httpx.Timeout"
            and call.args
            and const(call.args[0], None)
            and not call.keywords
        ):
            ctx.emit("BTR001", call, f"{qual}() with timeout=None (waits forever)")
        return
    if isinstance(func, ast.Attribute) and func.attr in (*HTTP_METHODS, "stream"):
        owner = func.value
        name = dotted(owner)
        is_session = (name is not None and name in ctx.sessions) or (
            isinstance(owner, ast.Call) and ctx.qual(owner.func) in _SESSION_CTORS
        )
        if is_session and func.attr != "stream":
            if name in ctx.configured_sessions:
                return
            problem = _timeout_problem(call, required=True)
            if problem:
                ctx.emit("BTR001", call, f"requests session .{func.attr}() with {problem}")
            return
        is_httpx = (name is not None and name in ctx.httpx_clients) or (
            isinstance(owner, ast.Call) and ctx.qual(owner.func) in _HTTPX_CLIENTS
        )
        if is_httpx:
            problem = _timeout_problem(call, required=False)
            if problem:
                ctx.emit("BTR001", call, f"httpx client .{func.attr}() with {problem}")
            return
    if qual in _REDIS:
        _redis(ctx, call, qual)
        return
    if qual in _RETRY:
        _retry(ctx, call, qual)
        return
    if qual in _URLLIB3_RETRY:
        factor = keyword(call, "backoff_factor")
        if factor is None or const(factor.value, 0) or const(factor.value, 0.0):
            total = keyword(call, "total")
            if not (total is not None and (const(total.value, 0) or const(total.value, False))):
                ctx.emit("BTR003", call, f"{qual}() retries with no backoff (backoff_factor=0)")


def _redis(ctx: FileContext, call: ast.Call, qual: str) -> None:
    if has_star_kwargs(call) or keyword(call, "connection_pool") is not None:
        return
    kw = keyword(call, "socket_timeout")
    if kw is not None:
        if const(kw.value, None):
            ctx.emit("BTR002", call, f"{qual}() with socket_timeout=None (waits forever)")
        return
    if (
        qual.endswith("from_url")
        and call.args
        and any("socket_timeout" in s for s in ctx.strings(call.args[0]))
    ):
        return
    ctx.emit("BTR002", call, f"{qual}() without socket_timeout: a stalled server hangs callers")


def _retry(ctx: FileContext, call: ast.Call, qual: str) -> None:
    if has_star_kwargs(call):
        return
    missing = [name for name in ("wait", "stop") if keyword(call, name) is None]
    if missing:
        what = {
            ("wait", "stop"): "retries forever with no backoff",
            ("wait",): "retries with no backoff (no wait=)",
            ("stop",): "retries forever (no stop=)",
        }[tuple(missing)]
        ctx.emit("BTR003", call, f"{qual.rpartition('.')[2]}: {what}")


def check_decorator(ctx: FileContext, decorator: ast.expr) -> None:
    """BTR003 for a bare ``@retry`` (the call form is checked as a call)."""
    if isinstance(decorator, ast.Call):
        return
    if ctx.qual(decorator) == "tenacity.retry":
        ctx.emit("BTR003", decorator, "@retry: retries forever with no backoff")


def _tls(ctx: FileContext, call: ast.Call, qual: str) -> None:
    if qual in ("ssl._create_unverified_context", "ssl._create_stdlib_context"):
        ctx.emit("BTR403", call, f"{qual}() does not verify certificates")
        return
    verify = keyword(call, "verify")
    if verify is not None and const(verify.value, False):
        func = call.func
        owner = dotted(func.value) if isinstance(func, ast.Attribute) else None
        if qual.startswith(("requests.", "httpx.")) or (
            owner is not None and (owner in ctx.sessions or owner in ctx.httpx_clients)
        ):
            ctx.emit("BTR403", verify.value, f"{qual or 'call'}(verify=False)")
    ssl_kw = keyword(call, "ssl")
    if ssl_kw is not None and const(ssl_kw.value, False) and qual.startswith("aiohttp."):
        ctx.emit("BTR403", ssl_kw.value, f"{qual}(ssl=False)")
    cert = keyword(call, "cert_reqs")
    if cert is not None and (
        ctx.qual(cert.value) == "ssl.CERT_NONE" or const(cert.value, "CERT_NONE")
    ):
        ctx.emit("BTR403", cert.value, f"{qual}(cert_reqs=CERT_NONE)")


def check_tls_assign(ctx: FileContext, target: ast.expr, value: ast.expr) -> None:
    """BTR403 for ``session.verify = False``, ``ctx.check_hostname = False``, ``CERT_NONE``."""
    if not isinstance(target, ast.Attribute):
        return
    owner = dotted(target.value)
    if target.attr == "verify" and const(value, False) and owner in ctx.sessions:
        ctx.emit("BTR403", target, f"{owner}.verify = False")
    elif target.attr == "check_hostname" and const(value, False):
        ctx.emit("BTR403", target, f"{owner}.check_hostname = False")
    elif target.attr == "verify_mode" and ctx.qual(value) == "ssl.CERT_NONE":
        ctx.emit("BTR403", target, f"{owner}.verify_mode = ssl.CERT_NONE")
