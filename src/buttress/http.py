"""Outbound HTTP with safe defaults: httpx clients with timeouts, limits and a pipeline.

`client()` and `async_client()` return ordinary `httpx.Client` / `httpx.AsyncClient`
objects configured from the production checklist:

* timeouts: connect 5 s, read 30 s, write 10 s, pool 5 s (`DEFAULT_TIMEOUT`);
* limits: 100 connections, 20 kept alive (`DEFAULT_LIMITS`);
* a `ResilientTransport` that sends every request through a `buttress.Pipeline`: by
  default, per origin, `Retry` (3 attempts, exponential backoff with full jitter,
  ``Retry-After`` honoured, a `RetryBudget`) around a `CircuitBreaker`
  (see `default_pipeline`);
* retries only for idempotent methods or requests that carry an ``Idempotency-Key``
  (optionally generated for POST and PATCH, once per logical request);
* the `buttress.deadline` in force bounds every request: each timeout shrinks to the
  time left, a request whose deadline has passed is refused without being sent, and a
  server that trickles its answer (each byte in time, the whole too late) is cut off at
  the deadline with ``httpx.ReadTimeout`` (in asyncio exactly, headers and body; in
  threads the body at its first chunk past the deadline).

Every default can be overridden by keyword; other httpx options (``base_url``,
``headers``, ``auth``...) pass through. httpx exceptions keep their type
(`buttress.errors.classify` maps them); when retries run out the last exception is
re-raised with a note, and the last response is returned as it is.

Needs the ``http`` extra: ``pip install 'buttress[http]'``.

Example::

    from buttress import deadline
    from buttress.http import client

    with client(base_url="https://inventory.internal") as inventory:
        with deadline(2.0):
            stock = inventory.get("/stock/42").json()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import ssl
import sys
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeAlias

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by a test that hides httpx
    raise ImportError(
        "buttress.http needs httpx, which is not installed: pip install 'buttress[http]'"
    ) from exc

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError, DeadlineExceeded, ErrorCode, classify
from buttress.otel import current_traceparent
from buttress.resilience import (
    Backoff,
    CircuitBreaker,
    Hedge,
    Pipeline,
    Retry,
    RetryBudget,
    current_deadline,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "PipelineFactory",
    "RequestHook",
    "ResilientTransport",
    "async_client",
    "client",
    "default_pipeline",
    "is_failure_response",
    "is_retriable_response",
]

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0)
"""Connect 5 s, read 30 s, write 10 s, pool 5 s: no call can hang forever.

Example::

    client(timeout=httpx.Timeout(DEFAULT_TIMEOUT, read=60.0))   # a slow report endpoint
"""

DEFAULT_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""100 connections in all, 20 kept alive: bounded sockets, warm connections reused.

Example::

    client(limits=httpx.Limits(max_connections=10, max_keepalive_connections=5))
"""

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods that are safe to send twice (RFC 9110, section 9.2.2), hence to retry.

Example::

    assert "PUT" in IDEMPOTENT_METHODS and "POST" not in IDEMPOTENT_METHODS
"""

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
"""The header that makes a POST or PATCH retriable (IETF httpapi draft, Stripe).

Example::

    http.post("/charges", json=order, headers={IDEMPOTENCY_HEADER: order_id})
"""

RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
"""Response statuses that are retried (``Retry-After`` honoured), when the request may be.

Example::

    assert 503 in RETRY_STATUSES and 501 not in RETRY_STATUSES
"""

_KEYED_METHODS: Final = frozenset({"POST", "PATCH"})
_PHASES: Final = ("connect", "read", "write", "pool")
_MAX_ORIGINS: Final = 1024

RequestHook: TypeAlias = Callable[[httpx.Request], object]
"""A callable run on every request before it is sent (the place to add a request id
or trace context); it may edit the request's headers in place.

Example::

    def add_request_id(request: httpx.Request) -> None:
        request.headers.setdefault("X-Request-Id", current_request_id())

    client(on_request=[add_request_id])
"""

PipelineFactory: TypeAlias = Callable[[str], Pipeline]
"""Builds the pipeline of one origin (``"https://api.example.com"``), once, on first use.

Example::

    client(pipeline=lambda origin: Pipeline(Retry(attempts=2), CircuitBreaker(name=origin)))
"""


def is_retriable_response(response: httpx.Response) -> bool:
    """Whether ``response`` should be retried: its status is in `RETRY_STATUSES`.

    Used as ``Retry(retry_on_result=...)``; the response's ``Retry-After`` (seconds or an
    HTTP date) is then honoured by `Retry` through `buttress.errors.classify`.

    Example::

        >>> is_retriable_response(httpx.Response(503)), is_retriable_response(httpx.Response(404))
        (True, False)
    """
    return response.status_code in RETRY_STATUSES


def is_failure_response(response: httpx.Response) -> bool:
    """Whether ``response`` says the dependency is unwell (for a breaker's failure count).

    5xx, 408 and 429 count; other 4xx are the caller's fault and do not (the same rule as
    `buttress.resilience.default_is_failure` applies to exceptions).

    Example::

        >>> is_failure_response(httpx.Response(502)), is_failure_response(httpx.Response(422))
        (True, False)
    """
    info = classify(response)
    return info is not None and not info.code.is_client_error


def default_pipeline(origin: str = "", *, clock: Clock = SYSTEM_CLOCK) -> Pipeline:
    """The pipeline a client builds for each origin it talks to, unless told otherwise.

    ``Pipeline(Retry(...), CircuitBreaker(...))``, retry outermost so that every attempt
    is seen by the breaker:

    * `Retry`: 3 attempts, ``Backoff.exponential(base=0.2, cap=5.0)`` with full jitter, a
      `RetryBudget` (retries <= 20 % of requests + 10/s) so a fleet cannot amplify an
      outage; retries retriable errors (connect errors, timeouts...) and the statuses in
      `RETRY_STATUSES`, honouring ``Retry-After`` (up to 60 s); never retries a rejection
      by the breaker itself (failing fast is the point of an open circuit).
    * `CircuitBreaker`: opens when half the calls of the last 30 s failed (judged from 20
      calls on, so a few errors on a quiet origin are not an outage), or after 5
      failures in a row (so a low-traffic origin still trips). It stays open 5 s, then
      lets one probe through; each re-open doubles the break up to 60 s, so an origin
      that stays down is probed less and less, but its recovery is noticed within a
      minute. Failures are what `buttress.resilience.default_is_failure` says for
      exceptions and `is_failure_response` for responses (5xx, 408, 429); a 404 is not
      the dependency's fault, nor is a request refused because the caller's own
      `buttress.deadline` had passed.

    One pipeline per origin: a failing host must not open the circuit of the others.

    Args:
        origin: ``scheme://host[:port]``; names the breaker (``"http https://a.example"``)
            in `CircuitOpen` messages and the `buttress.resilience.registry`.
        clock: time source for the retry, budget and breaker.

    Example::

        pipe = default_pipeline("https://api.example.com")
        client(pipeline=pipe)      # one pipeline shared by every origin instead
    """
    return Pipeline(
        Retry(
            attempts=3,
            backoff=Backoff.exponential(base=0.2, cap=5.0),
            budget=RetryBudget(clock=clock),
            retry_on_result=is_retriable_response,
            clock=clock,
        ),
        CircuitBreaker(
            failure_rate=0.5,
            minimum_calls=20,
            window=30.0,
            consecutive_failures=5,
            break_duration=5.0,
            break_multiplier=2.0,
            max_break_duration=60.0,
            half_open_probes=1,
            is_failure_result=is_failure_response,
            name=f"http {origin}" if origin else None,
            clock=clock,
        ),
        name=f"http {origin}" if origin else "http",
    )


def _without_retries(pipeline: Pipeline) -> Pipeline:
    """The same policies (same breaker state) minus those that send a request again."""
    kept = [p for p in pipeline.policies if not isinstance(p, Retry | Hedge)]
    if len(kept) == len(pipeline.policies):
        return pipeline
    name = f"{pipeline.name}:no-retry" if pipeline.name else None
    return Pipeline(*kept, name=name, hooks=pipeline.hooks)


class _Pipelines:
    """The pipeline pair (with and without retries) for each origin."""

    __slots__ = ("_factory", "_fixed", "_lock", "_table")

    def __init__(self, pipeline: Pipeline | PipelineFactory | None, clock: Clock) -> None:
        self._lock = threading.Lock()
        self._table: dict[str, tuple[Pipeline, Pipeline]] = {}
        self._fixed: tuple[Pipeline, Pipeline] | None = None
        self._factory: PipelineFactory | None = None
        if isinstance(pipeline, Pipeline):
            self._fixed = (pipeline, _without_retries(pipeline))
        elif pipeline is default_pipeline:
            self._factory = functools.partial(default_pipeline, clock=clock)
        elif callable(pipeline):
            self._factory = pipeline
        elif pipeline is not None:
            raise ConfigurationError(
                f"client(pipeline={pipeline!r}): must be a Pipeline, a callable "
                "origin -> Pipeline, or None"
            )

    @property
    def enabled(self) -> bool:
        return self._fixed is not None or self._factory is not None

    def get(self, url: httpx.URL, retries: bool) -> Pipeline:
        pair = self._fixed
        if pair is None:
            origin = _origin(url)
            pair = self._table.get(origin)
            if pair is None:
                pair = self._create(origin)
        return pair[0] if retries else pair[1]

    def _create(self, origin: str) -> tuple[Pipeline, Pipeline]:
        factory = self._factory
        if factory is None:  # pragma: no cover - get() is only called when enabled
            raise RuntimeError("no pipeline factory")
        with self._lock:
            pair = self._table.get(origin)
            if pair is None:
                built = factory(origin)
                if not isinstance(built, Pipeline):
                    raise ConfigurationError(
                        f"client(pipeline={factory!r}): returned {built!r} for "
                        f"{origin!r}, not a Pipeline"
                    )
                pair = (built, _without_retries(built))
                if len(self._table) >= _MAX_ORIGINS:  # a crawler: forget the oldest origin
                    del self._table[next(iter(self._table))]
                self._table[origin] = pair
            return pair


class _Exchange:
    """One logical request: its own timeouts and the responses its attempts received.

    A response is released (closed, so that its connection goes back to the pool) when
    the next attempt starts, and when the request ends unless it is the one returned.
    A list rather than one slot: a `Hedge` may run attempts side by side.
    """

    __slots__ = ("responses", "timeouts")

    def __init__(self, request: httpx.Request) -> None:
        found = request.extensions.get("timeout")
        self.timeouts: Mapping[str, float | None] = found if isinstance(found, Mapping) else {}
        self.responses: list[httpx.Response] = []

    def _stale(self, keep: httpx.Response | None) -> list[httpx.Response]:
        stale = [r for r in self.responses if r is not keep]
        self.responses.clear()
        return stale

    def release(self, keep: httpx.Response | None = None) -> None:
        for response in self._stale(keep):
            with contextlib.suppress(Exception):  # a dropped connection is fine here
                response.close()

    async def arelease(self, keep: httpx.Response | None = None) -> None:
        for response in self._stale(keep):
            with contextlib.suppress(Exception):
                await response.aclose()


def _fit_deadline(
    request: httpx.Request, timeouts: Mapping[str, float | None], clock: Clock
) -> None:
    """Shrink each timeout to the deadline in force; refuse when it has passed."""
    at = current_deadline()
    if at is None:
        return
    left = at - clock.now()
    if left <= 0:
        raise DeadlineExceeded(
            f"the deadline passed before {request.method} {_origin(request.url)} could be sent",
            code=ErrorCode.DEADLINE_EXCEEDED,
        )
    fitted: dict[str, float] = {}
    for phase in _PHASES:
        own = timeouts.get(phase)
        fitted[phase] = left if own is None else min(own, left)
    request.extensions = {**request.extensions, "timeout": fitted}


def _name_attempt(request: httpx.Request) -> None:
    """A propagated ``traceparent`` names this attempt's span when OpenTelemetry traces."""
    if "opentelemetry.trace" in sys.modules and "traceparent" in request.headers:
        header = current_traceparent()
        if header is not None:
            request.headers["traceparent"] = header


def _in_asyncio() -> bool:
    """Whether an asyncio task runs this (httpx may also run under trio, through anyio)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


def _late(request: httpx.Request, when: str) -> httpx.ReadTimeout:
    """The error of a response that did not arrive in full by the deadline in force."""
    return httpx.ReadTimeout(
        f"the deadline passed {when} from {request.method} {_origin(request.url)}",
        request=request,
    )


class _DeadlineBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that is read by the deadline, or not at all.

    Each read of the body already has a timeout that fits the deadline, but a server
    that trickles a byte at a time answers every read in time: this stops the body at the
    deadline (in asyncio, exactly; in threads, at the first chunk after it).
    """

    __slots__ = ("_at", "_clock", "_inner", "_request")

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        request: httpx.Request,
        at: float,
        clock: Clock,
    ) -> None:
        self._inner = inner
        self._request = request
        self._at = at
        self._clock = clock

    def __iter__(self) -> Iterator[bytes]:
        inner = self._inner
        if not isinstance(inner, httpx.SyncByteStream):  # pragma: no cover - httpx checks
            raise TypeError("an async response body read with a sync client")
        for chunk in inner:
            if self._clock.now() >= self._at:
                raise _late(self._request, "while the response body came")
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner = self._inner
        if not isinstance(inner, httpx.AsyncByteStream):  # pragma: no cover - httpx checks
            raise TypeError("a sync response body read with an async client")
        chunks = aiter(inner)
        bounded = _in_asyncio()
        while True:
            left = self._at - self._clock.now()
            if left <= 0:
                raise _late(self._request, "while the response body came")
            if not bounded:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                yield chunk
                continue
            bound = asyncio.timeout(left)
            try:
                async with bound:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                if not bound.expired():
                    raise
                raise _late(self._request, "while the response body came") from exc
            yield chunk

    def close(self) -> None:
        if isinstance(self._inner, httpx.SyncByteStream):
            self._inner.close()

    async def aclose(self) -> None:
        if isinstance(self._inner, httpx.AsyncByteStream):
            await self._inner.aclose()


def _bound_body(request: httpx.Request, response: httpx.Response, clock: Clock) -> None:
    """Make ``response``'s body end by the deadline in force, if there is one."""
    at = current_deadline()
    if at is not None and not isinstance(response.stream, httpx.ByteStream):
        response.stream = _DeadlineBody(response.stream, request, at, clock)


def _origin(url: httpx.URL) -> str:
    """``scheme://host[:port]``: the unit of breakers, and safe to log (no path, no query)."""
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again (bytes, JSON, forms; not a generator)."""
    return isinstance(request.stream, httpx.ByteStream)


class ResilientTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An httpx transport that sends each request through a resilience `Pipeline`.

    It wraps the real transport (``httpx.HTTPTransport`` or ``httpx.AsyncHTTPTransport``;
    one object serves both, like ``httpx.MockTransport``). For each request it:

    1. runs the ``on_request`` hooks (once per logical request);
    2. adds an ``Idempotency-Key`` to a POST or PATCH that has none, when
       ``idempotency_keys`` is on (one key, reused by every attempt);
    3. refuses the request with `DeadlineExceeded` if the `buttress.deadline` in force
       has passed;
    4. sends it through the pipeline of its origin: the full pipeline when the request
       may be sent twice (an idempotent method or an ``Idempotency-Key``, and a
       replayable body), else the same policies without `Retry` and `Hedge` (the breaker
       still sees it);
    5. on every attempt, shrinks the request's timeouts to the time left before the
       deadline, and closes the previous attempt's response first so that its
       connection goes back to the pool;
    6. ends at the deadline a response that has not come in full by then: in asyncio
       the wait for the headers and every read of the body; in threads (where a read
       cannot be interrupted) the body at its first chunk past the deadline. It raises
       ``httpx.ReadTimeout``, like a read timeout shrunk to the deadline.

    When retries run out the last response is returned unchanged, or the last exception
    re-raised with its own type (and a note from `Retry`).

    Args:
        inner: the transport that does the I/O.
        pipeline: a `Pipeline` shared by every origin, a callable ``origin -> Pipeline``
            (called once per origin), or None for no pipeline. Default:
            `default_pipeline`, per origin.
        idempotency_keys: generate an ``Idempotency-Key`` (a UUID4) for POST and PATCH
            requests that have none, making them retriable (default False: the server
            must support the header).
        on_request: hooks run on every request before it is sent.
        clock: time source for deadlines and the default pipeline.

    Example::

        transport = ResilientTransport(httpx.HTTPTransport(limits=DEFAULT_LIMITS))
        httpx.Client(transport=transport, timeout=DEFAULT_TIMEOUT)
    """

    def __init__(
        self,
        inner: httpx.BaseTransport | httpx.AsyncBaseTransport,
        *,
        pipeline: Pipeline | PipelineFactory | None = default_pipeline,
        idempotency_keys: bool = False,
        on_request: Sequence[RequestHook] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(inner, httpx.BaseTransport | httpx.AsyncBaseTransport):
            raise ConfigurationError(
                f"ResilientTransport(inner={inner!r}): must be an httpx transport"
            )
        for hook in on_request:
            if not callable(hook):
                raise ConfigurationError(
                    f"ResilientTransport(on_request=[{hook!r}]): every hook must be callable"
                )
        self.inner = inner
        self._sync = inner if isinstance(inner, httpx.BaseTransport) else None
        self._async = inner if isinstance(inner, httpx.AsyncBaseTransport) else None
        self.idempotency_keys = bool(idempotency_keys)
        self.on_request: tuple[RequestHook, ...] = tuple(on_request)
        self.clock = clock
        self._pipelines = _Pipelines(pipeline, clock)

    def __repr__(self) -> str:
        return f"ResilientTransport({self.inner!r})"

    # ------------------------------------------------------------ shared steps
    def _prepare(self, request: httpx.Request) -> tuple[Pipeline | None, _Exchange]:
        """Hooks, idempotency key, deadline check, pipeline choice: no I/O."""
        for hook in self.on_request:
            hook(request)
        keyed = IDEMPOTENCY_HEADER in request.headers
        if not keyed and self.idempotency_keys and request.method in _KEYED_METHODS:
            request.headers[IDEMPOTENCY_HEADER] = str(uuid.uuid4())
            keyed = True
        exchange = _Exchange(request)
        _fit_deadline(request, exchange.timeouts, self.clock)  # refuse before the breaker
        if not self._pipelines.enabled:
            return None, exchange
        retries = (request.method in IDEMPOTENT_METHODS or keyed) and _replayable(request)
        return self._pipelines.get(request.url, retries), exchange

    # ------------------------------------------------------------ threads
    def _attempt(
        self, inner: httpx.BaseTransport, request: httpx.Request, exchange: _Exchange
    ) -> httpx.Response:
        exchange.release()  # the previous attempt's response is not wanted: free its connection
        _fit_deadline(request, exchange.timeouts, self.clock)
        _name_attempt(request)
        response = inner.handle_request(request)
        _bound_body(request, response, self.clock)
        exchange.responses.append(response)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline (httpx calls this for `httpx.Client`)."""
        inner = self._sync
        if inner is None:
            raise TypeError(f"{self.inner!r} is an async transport: use async_client()")
        pipeline, exchange = self._prepare(request)
        if pipeline is None:
            return self._attempt(inner, request, exchange)
        try:
            response = pipeline.call(self._attempt, inner, request, exchange)
        except BaseException:
            exchange.release()
            raise
        exchange.release(keep=response)
        return response

    # ------------------------------------------------------------ asyncio
    async def _aattempt(
        self, inner: httpx.AsyncBaseTransport, request: httpx.Request, exchange: _Exchange
    ) -> httpx.Response:
        await exchange.arelease()
        _fit_deadline(request, exchange.timeouts, self.clock)
        _name_attempt(request)
        at = current_deadline()
        if at is None or not _in_asyncio():
            response = await inner.handle_async_request(request)
        else:  # each phase's timeout fits the deadline; this bounds their sum and trickles
            bound = asyncio.timeout(max(0.0, at - self.clock.now()))
            try:
                async with bound:
                    response = await inner.handle_async_request(request)
            except TimeoutError as exc:
                if not bound.expired():
                    raise
                raise _late(request, "before the response headers came") from exc
        _bound_body(request, response, self.clock)
        exchange.responses.append(response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline (httpx calls this for `httpx.AsyncClient`)."""
        inner = self._async
        if inner is None:
            raise TypeError(f"{self.inner!r} is a sync transport: use client()")
        pipeline, exchange = self._prepare(request)
        if pipeline is None:
            return await self._aattempt(inner, request, exchange)
        try:
            response = await pipeline.acall(self._aattempt, inner, request, exchange)
        except BaseException:
            await exchange.arelease()
            raise
        await exchange.arelease(keep=response)
        return response

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the inner transport (its connection pool)."""
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close the inner transport (its connection pool)."""
        if self._async is not None:
            await self._async.aclose()

    def __enter__(self) -> ResilientTransport:
        if self._sync is not None:
            self._sync.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._sync is not None:
            self._sync.__exit__(exc_type, exc_value, traceback)

    async def __aenter__(self) -> ResilientTransport:
        if self._async is not None:
            await self._async.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._async is not None:
            await self._async.__aexit__(exc_type, exc_value, traceback)


# ---------------------------------------------------------------- client factories
_ProxyTypes: TypeAlias = httpx.URL | str | httpx.Proxy
_CertTypes: TypeAlias = str | tuple[str, str] | tuple[str, str, str]
_TimeoutTypes: TypeAlias = httpx.Timeout | float | None


def _environment_proxies() -> dict[str, str | None]:
    """``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY`` as httpx mount patterns.

    httpx reads these only when it builds its own transport; buttress always passes one,
    so it reads them itself, with httpx's rules.
    """
    found = urllib.request.getproxies()
    patterns: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            patterns[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for raw in found.get("no", "").split(","):
        host = raw.strip()
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            patterns[host] = None
            continue
        try:
            address = ipaddress.ip_address(host.split("/")[0])
        except ValueError:
            address = None
        if address is not None and address.version == 6:
            patterns[f"all://[{host}]"] = None
        elif address is not None or host.lower() == "localhost":
            patterns[f"all://{host}"] = None
        else:
            patterns[f"all://*{host}"] = None
    return patterns


def _transports(
    io_class: type[httpx.HTTPTransport] | type[httpx.AsyncHTTPTransport],
    options: dict[str, Any],
    *,
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None,
    proxy: _ProxyTypes | None,
    mounts: Mapping[str, httpx.BaseTransport | httpx.AsyncBaseTransport | None] | None,
    trust_env: bool,
    wrap: Callable[[httpx.BaseTransport | httpx.AsyncBaseTransport], ResilientTransport],
) -> dict[str, Any]:
    """The client keywords for the wrapped main transport and mounts.

    ``io_class(**options, proxy=...)`` builds the transports that do the I/O; environment
    proxies come first, then the caller's mounts, every one wrapped by ``wrap``.
    """
    if transport is not None and proxy is not None:
        raise ConfigurationError(
            "client(transport=..., proxy=...): pass one; a custom transport handles proxies"
        )

    def make(via: _ProxyTypes | None) -> httpx.BaseTransport | httpx.AsyncBaseTransport:
        return io_class(**options, trust_env=trust_env, proxy=via)

    main = wrap(transport if transport is not None else make(proxy))
    wrapped: dict[str, ResilientTransport | None] = {}
    if transport is None and proxy is None and trust_env:
        for pattern, url in _environment_proxies().items():
            wrapped[pattern] = None if url is None else wrap(make(url))
    for pattern, mounted in (mounts or {}).items():
        wrapped[pattern] = None if mounted is None else wrap(mounted)
    return {"transport": main, "mounts": dict(wrapped) or None, "trust_env": trust_env}


def _wrapper(
    pipeline: Pipeline | PipelineFactory | None,
    idempotency_keys: bool,
    on_request: Sequence[RequestHook],
    clock: Clock,
) -> Callable[[httpx.BaseTransport | httpx.AsyncBaseTransport], ResilientTransport]:
    def wrap(inner: httpx.BaseTransport | httpx.AsyncBaseTransport) -> ResilientTransport:
        return ResilientTransport(
            inner,
            pipeline=pipeline,
            idempotency_keys=idempotency_keys,
            on_request=on_request,
            clock=clock,
        )

    return wrap


def client(
    *,
    timeout: _TimeoutTypes = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
    pipeline: Pipeline | PipelineFactory | None = default_pipeline,
    idempotency_keys: bool = False,
    on_request: Sequence[RequestHook] = (),
    transport: httpx.BaseTransport | None = None,
    clock: Clock = SYSTEM_CLOCK,
    verify: ssl.SSLContext | str | bool = True,
    cert: _CertTypes | None = None,
    http1: bool = True,
    http2: bool = False,
    proxy: _ProxyTypes | None = None,
    mounts: Mapping[str, httpx.BaseTransport | None] | None = None,
    trust_env: bool = True,
    **kwargs: Any,
) -> httpx.Client:
    """An `httpx.Client` with the checklist timeouts and limits and a resilience pipeline.

    Args:
        timeout: default `DEFAULT_TIMEOUT` (connect 5, read 30, write 10, pool 5 s).
        limits: default `DEFAULT_LIMITS` (100 connections, 20 keep-alive); used for the
            connection pool buttress builds (not for a ``transport`` you pass).
        pipeline: a `Pipeline` for every origin, a callable ``origin -> Pipeline``, or
            None to send requests as they are. Default: `default_pipeline` per origin.
        idempotency_keys: generate an ``Idempotency-Key`` for POST and PATCH requests
            without one, so that they are retried too (default False).
        on_request: hooks run on every request before it is sent (request ids, trace
            context).
        transport: the transport that does the I/O (default: ``httpx.HTTPTransport``
            with ``limits``, ``verify``, ``cert``, ``http1``, ``http2``, ``proxy``); it is
            wrapped in a `ResilientTransport`, like every transport in ``mounts``.
        clock: time source for deadlines and the default pipeline (tests pass a
            `buttress.testing.FakeClock`).
        verify: TLS verification, as in httpx.
        cert: client certificate, as in httpx.
        http1: enable HTTP/1.1, as in httpx.
        http2: enable HTTP/2 (needs ``httpx[http2]``), as in httpx.
        proxy: a proxy URL for every request, as in httpx.
        mounts: transports by URL pattern, as in httpx.
        trust_env: read proxies, ``.netrc`` and SSL variables from the environment.
        **kwargs: any other `httpx.Client` option (``base_url``, ``headers``, ``auth``,
            ``follow_redirects``, ``event_hooks``...).

    Example::

        from buttress.http import client

        with client(base_url="https://api.example.com", headers={"User-Agent": "shop/1"}) as api:
            api.get("/orders/7")                                   # retried on 503
            api.post("/orders", json=order, headers={"Idempotency-Key": key})   # retried too
    """
    io = _transports(
        httpx.HTTPTransport,
        {"verify": verify, "cert": cert, "http1": http1, "http2": http2, "limits": limits},
        transport=transport,
        proxy=proxy,
        mounts=mounts,
        trust_env=trust_env,
        wrap=_wrapper(pipeline, idempotency_keys, on_request, clock),
    )
    return httpx.Client(timeout=timeout, **io, **kwargs)


def async_client(
    *,
    timeout: _TimeoutTypes = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
    pipeline: Pipeline | PipelineFactory | None = default_pipeline,
    idempotency_keys: bool = False,
    on_request: Sequence[RequestHook] = (),
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = SYSTEM_CLOCK,
    verify: ssl.SSLContext | str | bool = True,
    cert: _CertTypes | None = None,
    http1: bool = True,
    http2: bool = False,
    proxy: _ProxyTypes | None = None,
    mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = None,
    trust_env: bool = True,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` with the checklist timeouts and limits and a pipeline.

    The same options as `client`; ``transport`` and ``mounts`` take async transports
    (default: ``httpx.AsyncHTTPTransport``), and the pipeline runs with
    `Pipeline.acall`.

    Args:
        timeout: default `DEFAULT_TIMEOUT` (connect 5, read 30, write 10, pool 5 s).
        limits: default `DEFAULT_LIMITS` (100 connections, 20 keep-alive).
        pipeline: a `Pipeline`, a callable ``origin -> Pipeline``, or None.
        idempotency_keys: generate an ``Idempotency-Key`` for POST and PATCH.
        on_request: hooks run on every request before it is sent.
        transport: the async transport that does the I/O.
        clock: time source for deadlines and the default pipeline.
        verify: TLS verification, as in httpx.
        cert: client certificate, as in httpx.
        http1: enable HTTP/1.1, as in httpx.
        http2: enable HTTP/2, as in httpx.
        proxy: a proxy URL for every request, as in httpx.
        mounts: async transports by URL pattern, as in httpx.
        trust_env: read proxies, ``.netrc`` and SSL variables from the environment.
        **kwargs: any other `httpx.AsyncClient` option.

    Example::

        from buttress.http import async_client

        async with async_client(base_url="https://api.example.com") as api:
            response = await api.get("/orders/7")
    """
    io = _transports(
        httpx.AsyncHTTPTransport,
        {"verify": verify, "cert": cert, "http1": http1, "http2": http2, "limits": limits},
        transport=transport,
        proxy=proxy,
        mounts=mounts,
        trust_env=trust_env,
        wrap=_wrapper(pipeline, idempotency_keys, on_request, clock),
    )
    return httpx.AsyncClient(timeout=timeout, **io, **kwargs)
