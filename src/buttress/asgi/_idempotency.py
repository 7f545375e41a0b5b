r"""`IdempotencyMiddleware`: the ``Idempotency-Key`` header, exactly once, as pure ASGI.

The IETF httpapi Idempotency-Key draft with Stripe's semantics. A client sends a unique
key with an unsafe request (``Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"``,
or the bare form Stripe accepts); if the connection drops it retries with the same key,
and the handler runs once: the retry gets the first response again, with
``Idempotent-Replayed: true``.

Defaults and why:

* POST and PATCH use keys (``optional``: a request without one passes straight through);
  any route can be ``required``, ``optional`` or ``off``, and a route written with a
  method (``"PUT /items/{id}"``) enables keys for that method too.
* Stored responses are kept **24 hours** (``ttl``), Stripe's window: long enough for any
  client's retries, short enough to bound the store.
* The in-flight lock is a **60 s lease** renewed every 20 s while the handler runs, so a
  crashed worker's key is retryable a minute later, never wedged.
* Request and response bodies up to **1 MiB** are buffered; a keyed request above that is
  refused with 413, a response above that (or streamed) is sent but not stored. A keyed
  response without ``Content-Length`` has its headers held until its first body chunk
  says whether it is streamed.

Keys: printable ASCII (space included), 1 to 255 characters, as an RFC 8941 string
(``"abc"``, with ``\"`` and ``\\`` escapes) or bare (``abc``). A key is scoped per
principal, method and route template; within that scope it is bound to the request's
*fingerprint*, SHA-256 over method, path, query string, content type and body.

What a request carrying a key gets (problem+json for every refusal):

=========================================  ===============================================
the first request with the key             the handler runs; its response is stored
a duplicate while the first runs           409, retriable, ``Retry-After: 1``
a duplicate after it completed             the stored response, ``Idempotent-Replayed: true``
the same key with another request          422: use a new key for a new request
a duplicate after a 5xx, 408, 425 or 429   the handler runs again (nothing to replay;
                                           ``store_server_errors=True`` replays 5xx)
a duplicate after the handler raised       the handler runs again (the key was released)
before it began to answer
a duplicate after the handler began to     409, not retriable (``original_status``): what
answer and then failed, or ran past        it did is unknown, so it never runs again
``abandon_after`` with nobody waiting      under this key (``Idempotent-Stored: unknown``)
a duplicate of a streamed or oversized     409, not retriable: the first request completed
response (sent with                        (its status is in ``original_status``) but its
``Idempotent-Stored: false``)              response was not kept; it will not run twice,
                                           so the client must use a new key
a missing key on a ``required`` route, or  400
a malformed key anywhere
the idempotency store is down              503 with ``Retry-After`` (the handler never runs
                                           unprotected unless ``fail_open=True``)
=========================================  ===============================================

The client's wait and the handler's work are separate: the request deadline, a server that
cancels the request of a client that left, or any other cancellation ends the *wait* (the
client gets the deadline's 504, or nothing), never a handler that has started. That
handler runs on, shielded, for at most ``abandon_after`` seconds with its lease renewed,
and its response is recorded: the retry gets 409 while it runs and the replay afterwards.
A cancellation that comes before the handler starts leaves the key free. A stored
response is sent only once it is recorded, whole: a client never gets its headers and
then an early end of the connection. The exact guarantees and their limits (a worker
killed outright, a store outage longer than the lease) are in docs/shared-state.md.

Replays carry the stored status, headers and body byte for byte, minus hop-by-hop
headers, ``Set-Cookie`` and ``Date`` (which are never stored). The principal defaults to
``scope["state"]["principal"]``, else a hash of the ``Authorization`` header (so two API
clients never share a key), else ``anonymous``; apps whose sessions live in cookies should
pass ``principal=``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._idempotency_run import (
    Background,
    BodyReplay,
    KeyedRun,
    RunPolicy,
    refuse,
)
from buttress.asgi._logging import _state_principal
from buttress.asgi._problem import send_problem
from buttress.asgi._types import ASGIApp, Receive, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode
from buttress.stores._base import IdempotencyStore
from buttress.stores._memory import MemoryStore

__all__ = ["IdempotencyMiddleware", "IdempotencyMode", "parse_idempotency_key"]

_log = logging.getLogger("buttress.asgi.idempotency")

IdempotencyMode = Literal["required", "optional", "off"]
_MODES = ("required", "optional", "off")

MAX_KEY_LENGTH = 255

_BARE_KEY = re.compile(rb"[\x20-\x7e]+")
_QUOTED_KEY = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE = re.compile(rb'\\(["\\])')
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
_METHOD = re.compile(r"[A-Z]+")


def parse_idempotency_key(raw: bytes) -> tuple[str | None, str]:
    """Parse an ``Idempotency-Key`` header value: ``(key, "")`` or ``(None, why)``.

    Accepts the draft's structured-field string (``"abc"``) and Stripe's bare form
    (``abc``); the key must be printable ASCII, 1 to 255 characters once unquoted.

    Example::

        >>> parse_idempotency_key(b'"order-42"')
        ('order-42', '')
        >>> parse_idempotency_key(b"")[1]
        'the Idempotency-Key header is empty'
    """
    value = raw.strip(b" \t")
    if not value:
        return None, "the Idempotency-Key header is empty"
    if len(value) > 2 * MAX_KEY_LENGTH + 2:  # even fully escaped, too long: skip the regex
        return None, f"the Idempotency-Key is longer than {MAX_KEY_LENGTH} characters"
    if value[:1] == b'"':
        match = _QUOTED_KEY.fullmatch(value)
        if match is None:
            return None, (
                "the Idempotency-Key is not a valid quoted string (printable ASCII between "
                'double quotes, with \\" and \\\\ escapes)'
            )
        value = _ESCAPE.sub(rb"\1", match.group(1))
        if not value:
            return None, "the Idempotency-Key is empty"
    elif _BARE_KEY.fullmatch(value) is None:
        return None, "the Idempotency-Key must be printable ASCII"
    if len(value) > MAX_KEY_LENGTH:
        return None, f"the Idempotency-Key is longer than {MAX_KEY_LENGTH} characters"
    return value.decode("ascii"), ""


@dataclass(frozen=True, slots=True)
class _Route:
    method: str  # "" when the entry applies to every configured method
    template: str
    mode: IdempotencyMode
    regex: re.Pattern[str] | None  # None: an exact path


def _compile_route(spec: str, given: str) -> _Route:
    where = f"IdempotencyMiddleware(routes[{spec!r}]={given!r})"
    if given not in _MODES:
        raise ConfigurationError(f"{where}: the mode must be required, optional or off")
    mode = cast("IdempotencyMode", given)
    parts = spec.split()
    method, path = ("", parts[0]) if len(parts) == 1 else (parts[0].upper(), parts[-1])
    if len(parts) not in (1, 2) or not path.startswith("/") or not _METHOD.fullmatch(method or "X"):
        raise ConfigurationError(
            f"{where}: expected '/path' or 'METHOD /path', with {{name}} or {{name:path}} "
            "parameters, e.g. 'POST /orders/{id}'"
        )
    if not _PARAM.search(path):
        return _Route(method, path, mode, None)
    pattern, at = [], 0
    for match in _PARAM.finditer(path):
        pattern.append(re.escape(path[at : match.start()]))
        pattern.append(".*" if match.group(2) == "path" else "[^/]+")
        at = match.end()
    pattern.append(re.escape(path[at:]))
    return _Route(method, path, mode, re.compile("".join(pattern)))


def _default_principal(scope: Scope) -> str | None:
    principal = _state_principal(scope)
    if principal is not None:
        return principal
    for name, value in scope["headers"]:
        if name == b"authorization":
            return "authorization:" + hashlib.sha256(value).hexdigest()[:32]
    return None


class IdempotencyMiddleware:
    """Run each unsafe request once per ``Idempotency-Key``; replay the response to retries.

    See the module documentation for what every duplicate gets.

    Args:
        app: the ASGI application.
        store: an `IdempotencyStore` shared by every worker that serves the routes
            (default: a `MemoryStore`, this process only; use SQLite, Redis or PostgreSQL
            with more than one worker).
        routes: mode per route: ``"/orders"``, ``"POST /orders/{id}"`` or
            ``"/files/{rest:path}"`` -> ``"required"``, ``"optional"`` or ``"off"``. An
            exact path wins over a pattern, a method-qualified entry over a plain one,
            then the first pattern given; a plain entry applies to ``methods`` only.
        default: the mode of ``methods`` on unlisted routes (default ``"optional"``).
        methods: the methods that use keys unless a route says otherwise.
        ttl: seconds a completed response is replayed (default 24 h).
        lease: seconds a crashed worker holds a key (default 60; renewed every third).
        max_request_body: largest keyed request body buffered (413 above; default 1 MiB).
        max_response_body: largest response stored (default 1 MiB).
        store_server_errors: replay 5xx responses like Stripe does, instead of letting the
            retry run again (default False).
        principal: ``scope -> str | None``, who the key belongs to (default: the state's
            principal, else a hash of ``Authorization``, else ``anonymous``).
        header: the request header (default ``idempotency-key``).
        fail_open: when the store is down, run the handler unprotected instead of 503.
        abandon_after: seconds a handler that has started keeps running after its client
            stopped waiting (the request deadline, a disconnect the server turns into a
            cancellation); its response is recorded for the retry. Past this the handler
            is cancelled and the key marked abandoned: never run again (default 60).
        clock: time source for the lease renewal (tests pass a `FakeClock`).

    Example::

        app = IdempotencyMiddleware(
            app,
            store=open_store("redis://cache:6379/0"),
            routes={"POST /payments": "required", "/webhooks/{name}": "off"},
        )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | None = None,
        routes: Mapping[str, IdempotencyMode] | None = None,
        default: IdempotencyMode = "optional",
        methods: Iterable[str] = ("POST", "PATCH"),
        ttl: float = 86400.0,
        lease: float = 60.0,
        max_request_body: int = 1 << 20,
        max_response_body: int = 1 << 20,
        store_server_errors: bool = False,
        principal: Callable[[Scope], str | None] | None = None,
        header: str = "idempotency-key",
        fail_open: bool = False,
        abandon_after: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        name = "IdempotencyMiddleware"
        if default not in _MODES:
            raise ConfigurationError(f"{name}(default={default!r}): required, optional or off")
        for option, value in (("ttl", ttl), ("lease", lease), ("abandon_after", abandon_after)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name}({option}={value!r}): must be seconds > 0")
            if not 0 < value < math.inf:
                raise ConfigurationError(f"{name}({option}={value!r}): must be seconds > 0")
        if lease > ttl:
            raise ConfigurationError(f"{name}(lease={lease!r}): must not exceed ttl={ttl!r}")
        for option, size in (
            ("max_request_body", max_request_body),
            ("max_response_body", max_response_body),
        ):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ConfigurationError(f"{name}({option}={size!r}): must be bytes >= 0")
        methods = tuple(m.upper() for m in methods)
        if not all(_METHOD.fullmatch(m) for m in methods):
            raise ConfigurationError(f"{name}(methods={methods!r}): HTTP method names")
        if not header or not re.fullmatch(r"[A-Za-z0-9-]+", header):
            raise ConfigurationError(f"{name}(header={header!r}): a header name")
        self.app = app
        self.clock = clock or SYSTEM_CLOCK
        self.store: IdempotencyStore = store if store is not None else MemoryStore(clock=clock)
        self.default: IdempotencyMode = default
        self.methods = frozenset(methods)
        self.ttl = float(ttl)
        self.lease = float(lease)
        self.max_request_body = max_request_body
        self.max_response_body = max_response_body
        self.store_server_errors = store_server_errors
        self.principal = principal or _default_principal
        self.header = header.lower().encode("ascii")
        self.fail_open = fail_open
        self.abandon_after = float(abandon_after)
        self._run = RunPolicy(
            app=app,
            store=self.store,
            clock=self.clock,
            lease=self.lease,
            ttl=self.ttl,
            abandon_after=self.abandon_after,
            max_response_body=max_response_body,
            store_server_errors=store_server_errors,
            fail_open=fail_open,
            background=Background(),
        )
        compiled = [_compile_route(spec, mode) for spec, mode in (routes or {}).items()]
        self._exact = {(r.method, r.template): r for r in reversed(compiled) if r.regex is None}
        # method-qualified patterns first, then in the order given (sorted is stable)
        self._patterns = sorted((r for r in compiled if r.regex), key=lambda r: not r.method)
        self._all_methods = self.methods | {r.method for r in compiled if r.method}
        # when no route can require a key, a request without one needs no route lookup
        self._may_require = default == "required" or any(r.mode == "required" for r in compiled)

    def mode_for(self, method: str, path: str) -> tuple[IdempotencyMode, str]:
        """The mode of a request and the route template its keys are scoped to.

        Example::

            mw.mode_for("POST", "/orders/7")    # ('required', '/orders/{id}')
        """
        plain = method in self.methods
        route = self._exact.get((method, path))
        if route is None and plain:
            route = self._exact.get(("", path))
        if route is None:
            for candidate in self._patterns:
                if (candidate.method == method or (plain and not candidate.method)) and (
                    candidate.regex is not None and candidate.regex.fullmatch(path)
                ):
                    route = candidate
                    break
        if route is None:
            return (self.default if plain else "off"), path
        return route.mode, route.template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self._all_methods:
            await self.app(scope, receive, send)
            return
        wanted = self.header
        raw: bytes | None = None
        count = 0
        for name, value in scope["headers"]:
            if name == wanted:
                raw = value
                count += 1
        if raw is None and not self._may_require:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        mode, template = self.mode_for(method, scope["path"])
        if mode == "off" or (raw is None and mode == "optional"):
            await self.app(scope, receive, send)
            return
        if raw is None:
            await refuse(
                send,
                ErrorCode.BAD_REQUEST,
                "key_missing",
                f"{method} {template} requires an Idempotency-Key header",
            )
            return
        if count > 1:
            await refuse(
                send, ErrorCode.BAD_REQUEST, "key_malformed", "send one Idempotency-Key header"
            )
            return
        key, why = parse_idempotency_key(raw)
        if key is None:
            await refuse(send, ErrorCode.BAD_REQUEST, "key_malformed", why)
            return
        await self._keyed(scope, receive, send, key, template)

    async def _keyed(
        self, scope: Scope, receive: Receive, send: Send, key: str, template: str
    ) -> None:
        content_type = b""
        for name, value in scope["headers"]:  # request header names are lower case (ASGI)
            if name == b"content-type":
                content_type = value
            elif (
                name == b"content-length" and value.isdigit() and int(value) > self.max_request_body
            ):
                await self._too_large(send)
                return
        chunks = []
        size = 0
        while True:  # read the whole body before taking the key: no lock waits on a client
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone and nothing ran
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_body:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method: str = scope["method"]
        path: bytes = scope["path"].encode("utf-8", "surrogateescape")
        query: bytes = scope.get("query_string", b"")
        # length-prefixed, so no two requests share the bytes hashed
        digest = hashlib.sha256(
            b"%d:%s %d:%s %d:%s %d:%s\n"
            % (
                len(method),
                method.encode(),
                len(path),
                path,
                len(query),
                query,
                len(content_type),
                content_type,
            )
        )
        digest.update(body)
        fingerprint = digest.hexdigest()
        principal = self.principal(scope) or "anonymous"
        # the stores hash it (`buttress.stores.store_key`): never kept in clear outside memory
        scoped = f"{len(principal)}:{principal} {method} {len(template)}:{template} {key}"
        run = KeyedRun(self._run, scoped, fingerprint, send)
        # The key's whole life runs in its own task: a deadline, a disconnect or a server
        # that cancels this request stops the *waiting* here, never the work itself.
        work = asyncio.get_running_loop().create_task(run.work(scope, body, receive))
        try:
            fail_open = await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                await run.detach(work)
            raise
        if fail_open:
            await self.app(scope, BodyReplay(body, receive), send)

    async def adrain(self) -> None:
        """Wait for the handlers still running after their clients stopped waiting.

        `harden` runs it at shutdown, before the store closes, so that their responses
        are recorded. Each is bounded by ``abandon_after``.
        """
        await self._run.background.adrain()

    async def _too_large(self, send: Send) -> None:
        await send_problem(
            send,
            ErrorCode.PAYLOAD_TOO_LARGE,
            detail=f"a request with an Idempotency-Key may carry at most "
            f"{self.max_request_body} bytes",
            headers=[(b"connection", b"close")],
            extra={"idempotency_error": "body_too_large"},
        )

    def releases(self, status: int) -> bool:
        """Whether a response with ``status`` frees the key (the retry runs again)."""
        return self._run.releases(status)
