"""Graceful shutdown: drain on SIGTERM, let in-flight requests finish, close resources in order.

The ASGI lifespan ``shutdown`` event arrives only after the server has closed every
connection: far too late to tell a load balancer to stop sending traffic. `GracefulShutdown`
therefore hooks the termination signals itself, and runs this sequence:

1. **Signal** (SIGTERM or SIGINT). `GracefulShutdown.draining` turns true inside the
   signal handler and the ``on_drain`` callbacks run there too (``HealthMiddleware.
   mark_draining`` is one), so readiness answers 503 from the very next probe. Responses
   carry ``Connection: close`` from then on, so keep-alive clients reconnect and their
   load balancer picks another replica.
2. **Drain delay** (``drain_delay``, default 5 s). Requests are still served normally while
   kube-proxy, ingress controllers and load balancers notice that the replica is leaving.
3. **Hand-off**. The signal goes on to the handler that was installed before ours (uvicorn's
   ``Server.handle_exit``): the server stops accepting, closes idle connections and waits
   for the busy ones.
4. **Grace** (``grace``, default 25 s, counted from the hand-off). In-flight requests
   finish. Those still running when it runs out are cancelled, so that the server stops
   waiting for them; one that had not started its response gets a 503 problem+json. One
   still running a second later (it swallowed the cancellation) would keep the server
   waiting for ever: the close sequence below then runs at once, and the process exits
   with status 128 + the signal's number.
5. **Close** (``close_timeout``, default 10 s, a hard limit for all of it). The wrapped
   app's own lifespan shutdown runs, then the close hooks (`GracefulShutdown.add_close_hook`)
   in reverse order of registration. Each gets at most ``hook_timeout`` (default half of
   ``close_timeout``): a hook that fails is logged, one that hangs is abandoned at its
   limit, and neither stops the others.

A second signal at any point exits at once (status 128 + the signal's number: 130 for
SIGINT, 143 for SIGTERM), skipping whatever is left.

How each server (uvicorn, ``uvicorn --workers N``, gunicorn with uvicorn workers, others)
hands its signals over, and the Kubernetes settings that fit these delays
(``terminationGracePeriodSeconds`` >= ``drain_delay`` + ``grace`` + ``close_timeout`` plus a
margin; a ``preStop`` sleep *or* ``drain_delay``, not both): docs/asgi.md, "Graceful
shutdown". With any other server, a previous handler of ``SIG_DFL`` is restored after the
drain delay and the signal raised again (the default action, delayed); off the main thread
(a server run in a thread, tests) no signal can be hooked: call `GracefulShutdown.trigger`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import Any, NoReturn, TypeVar

from buttress._clock import SYSTEM_CLOCK, Clock, current_task
from buttress.asgi._lifespan import (
    CloseHook,
    InnerLifespan,
    hook_name,
    run_close_hook,
    stop_app,
    wait_within,
)
from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Receive, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = ["GracefulShutdown"]

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
HookT = TypeVar("HookT", bound=Callable[[], object])

_log = logging.getLogger("buttress.asgi.shutdown")

_MAX_SECONDS = 3600.0
_AFTER_CANCEL = 1.0  # seconds cancelled requests get to answer their 503
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
_PASS_BODY = b'{"status":"pass"}'
_FAIL_BODY = b'{"status":"fail","output":"draining"}'
_CLOSE = (b"connection", b"close")
_HTTP1 = frozenset({"1.0", "1.1"})  # HTTP/2 and 3 have no connection header (GOAWAY)


def _hard_exit(status: int) -> NoReturn:
    """Leave the process now: no cleanup, no waiting for threads (tests replace it)."""
    os._exit(status)  # pragma: no cover - replaced in unit tests, exercised in a subprocess


def _seconds(name: str, value: object, *, allow_zero: bool, most: float = _MAX_SECONDS) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
        or value > most
    ):
        low = "[0" if allow_zero else "(0"
        raise ConfigurationError(f"GracefulShutdown({name}={value!r}): seconds in {low}, {most:g}]")
    return float(value)


def _signals(values: Iterable[object]) -> tuple[signal.Signals, ...]:
    result: list[signal.Signals] = []
    for value in values:
        try:
            sig = signal.Signals(value)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"GracefulShutdown(signals=...{value!r}...): not a signal of this platform"
            ) from None
        if sig in _UNCATCHABLE:
            raise ConfigurationError(
                f"GracefulShutdown(signals=...{sig.name}...): this signal cannot be caught"
            )
        if sig not in result:
            result.append(sig)
    return tuple(result)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover - not a signal of this platform
        return str(signum)


async def _answer_abandoned(scope: Scope, send: Send) -> None:
    """Answer a request cancelled at the end of the grace: 503 if it had not answered yet."""
    try:
        await send_problem(
            send,
            ErrorCode.OVERLOADED,
            status=503,
            detail="The server shut down before the request finished.",
            retry_after=ErrorCode.OVERLOADED.default_retry_after,
            headers=[_CLOSE],
            head=scope["method"] == "HEAD",
        )
    except Exception:  # the response had started: ASGI servers refuse a second start (and
        # then close the connection); knowing it without asking would cost a send wrapper on
        # every request, for the rare request still running when the grace runs out
        _log.debug("request cancelled after its response started", exc_info=True)


class GracefulShutdown(Stage):
    """Drain on SIGTERM/SIGINT, finish in-flight requests, then close resources in order.

    A pure ASGI middleware: it takes over the ``lifespan`` scope (passing startup and
    shutdown through to the wrapped app, which may have a lifespan of its own or none),
    hooks the signals at startup, and counts the HTTP and WebSocket requests in flight.
    See the module documentation for the sequence, the servers and the Kubernetes recipe.

    Args:
        app: the ASGI application.
        drain_delay: seconds requests are still served after the signal, readiness 503.
        grace: seconds in-flight requests get after the hand-off to the server; then they
            are cancelled.
        close_timeout: hard limit, in seconds, for the app's lifespan shutdown and every
            close hook together.
        hook_timeout: limit for one close hook (default: half of ``close_timeout``, so one
            hanging hook leaves time for the others).
        signals: the signals that start the drain (a second one exits at once).
        ready_path: answer this path itself (200 ``{"status":"pass"}``, 503 once draining,
            ``application/health+json``); ``None`` leaves readiness to the health
            middleware (wire `on_drain` or `draining` to it).
        close_connections: send ``Connection: close`` on HTTP/1 responses while draining.
        clock: the time source for the delays and limits.

    Example::

        from buttress.asgi.middleware import GracefulShutdown, HealthMiddleware

        health = HealthMiddleware(app)
        app = shutdown = GracefulShutdown(health, drain_delay=5, grace=25)
        shutdown.on_drain.append(health.mark_draining)
        shutdown.add_close_hook(pool.close)          # sync: runs in a worker thread
        shutdown.add_close_hook(http_client.aclose)  # async: runs on the event loop
        # uvicorn main:app --no-proxy-headers   (SIGTERM: 503 on /health/ready at once,
        # stop 5 s later)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        drain_delay: float = 5.0,
        grace: float = 25.0,
        close_timeout: float = 10.0,
        hook_timeout: float | None = None,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        ready_path: str | None = None,
        close_connections: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.drain_delay = _seconds("drain_delay", drain_delay, allow_zero=True)
        self.grace = _seconds("grace", grace, allow_zero=True)
        self.close_timeout = _seconds("close_timeout", close_timeout, allow_zero=False)
        self.hook_timeout = (
            self.close_timeout / 2
            if hook_timeout is None
            else _seconds("hook_timeout", hook_timeout, allow_zero=False, most=self.close_timeout)
        )
        self.signals = _signals(signals)
        if ready_path is not None and (not isinstance(ready_path, str) or ready_path[:1] != "/"):
            raise ConfigurationError(
                f"GracefulShutdown(ready_path={ready_path!r}): a path starting with '/', or None"
            )
        if not isinstance(clock, Clock):
            raise ConfigurationError(f"GracefulShutdown(clock={clock!r}): not a buttress Clock")
        self.app = app
        self.ready_path = ready_path
        self.close_connections = bool(close_connections)
        self.clock = clock
        self.on_drain: list[Callable[[], object]] = []
        """Called, without arguments, in the signal handler when the drain begins.

        Keep them tiny (set a flag): they run between two bytecodes of the main thread."""
        self.on_startup: list[Callable[[], object]] = []
        """Called, without arguments, on the event loop at lifespan startup (before the app's).

        For what needs the server's running loop (a loop exception handler); one that
        fails is logged and does not stop the startup."""
        self._hooks: list[CloseHook] = []
        self._requests: set[asyncio.Task[Any]] = set()  # the tasks serving requests
        self._abandoned: set[asyncio.Task[Any]] = set()  # cancelled when the grace ran out
        self._idle: list[asyncio.Future[None]] = []
        self._abandoned_hooks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, SignalHandler] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._inner: InnerLifespan | None = None
        self._closing: asyncio.Task[str | None] | None = None
        self._draining = False
        self._stopping = False
        self._signalled: int | None = None
        self._grace_deadline: float | None = None
        self._ready_answers = {
            (draining, close): self._ready_headers(draining, close)
            for draining in (False, True)
            for close in (False, True)
        }

    # ------------------------------------------------------------------ public state
    @property
    def draining(self) -> bool:
        """True from the signal (or the server's own shutdown) on: readiness is 503.

        Example::

            async def ready(request):   # a readiness route of your own
                return Response(status_code=503 if shutdown.draining else 200)
        """
        return self._draining

    @property
    def in_flight(self) -> int:
        """HTTP and WebSocket requests being served now."""
        return len(self._requests)

    def add_close_hook(
        self, hook: HookT, *, name: str | None = None, in_thread: bool = True
    ) -> HookT:
        """Register ``hook`` to run at shutdown, after the app's own lifespan shutdown.

        Hooks run in reverse order of registration (last opened, first closed), each
        within ``hook_timeout``, all within ``close_timeout``. An async hook (or a sync one
        returning an awaitable) runs on the event loop and is cancelled at its limit. A
        sync hook runs in a daemon thread, so that a hanging one can be abandoned; pass
        ``in_thread=False`` for objects tied to the loop's thread (an ``sqlite3``
        connection), which then cannot be abandoned. Returns ``hook`` (usable as a
        decorator).

        Example::

            shutdown.add_close_hook(engine.dispose)
            shutdown.add_close_hook(redis.aclose, name="redis")

            @shutdown.add_close_hook
            async def flush_metrics() -> None: ...
        """
        if not callable(hook):
            raise ConfigurationError(f"GracefulShutdown.add_close_hook({hook!r}): not callable")
        self._hooks.append(CloseHook(hook, name or hook_name(hook), in_thread))
        return hook

    def trigger(self, signum: int = signal.SIGTERM) -> None:
        """Start the shutdown as if ``signum`` had arrived (from any thread).

        For servers whose signals cannot be hooked (run in a thread) and for tests; a
        second call exits at once, like a second signal.

        Example::

            shutdown.trigger()   # readiness 503 now; hand-off after drain_delay
        """
        self.handle_signal(signum, None)

    # ------------------------------------------------------------------ signals
    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler `GracefulShutdown` installs (safe to call directly)."""
        if self._signalled is not None:
            self._exit_now(signum)
            return
        self._signalled = signum
        self._begin_draining()
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None or loop.is_closed():
            self._hand_off(signum)  # not serving (yet): nothing to drain
            return
        loop.call_soon_threadsafe(self._start_drain, signum)

    def _exit_now(self, signum: int) -> None:
        status = 128 + signum
        try:
            _log.critical(
                "%s again during graceful shutdown: exiting at once (status %d), "
                "%d request(s) in flight",
                _signal_name(signum),
                status,
                len(self._requests),
            )
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        finally:
            _hard_exit(status)

    def _begin_draining(self) -> None:
        if self._draining:
            return
        self._draining = True
        for callback in list(self.on_drain):
            try:
                callback()
            except Exception:
                _log.exception("on_drain callback %s failed", hook_name(callback))

    def _start_drain(self, signum: int) -> None:
        if self._stopping:  # the server is stopping already: nothing to wait for
            self._hand_off(signum)
            return
        _log.warning(
            "%s: draining; readiness answers 503, requests served for %.1f s more, "
            "then up to %.1f s for those in flight",
            _signal_name(signum),
            self.drain_delay,
            self.grace,
        )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(signum))

    async def _drain(self, signum: int) -> None:
        await self._sleep(self.drain_delay)
        self._grace_deadline = self.clock.now() + self.grace
        _log.info(
            "drain delay over: handing %s to the server (it stops accepting); "
            "%d request(s) in flight",
            _signal_name(signum),
            len(self._requests),
        )
        self._hand_off(signum)
        await self._finish_in_flight(self._grace_deadline)
        inner = self._inner
        if self._requests and not self._stopping and inner is not None:
            # they ignored their cancellation: the server would wait for them for ever
            # (uvicorn waits for every connection before the lifespan shutdown)
            status = 128 + signum
            _log.critical(
                "%d request(s) still running after their cancellation: closing now, "
                "then exiting (status %d) without waiting for them",
                len(self._requests),
                status,
            )
            await self._close(inner)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            _hard_exit(status)

    def _hand_off(self, signum: int) -> None:
        if signum not in self._previous:
            _log.debug("%s was not hooked: nothing to hand it to", _signal_name(signum))
            return
        previous = self._previous[signum]
        if callable(previous):
            try:
                previous(signum, None)
            except Exception:  # KeyboardInterrupt (SIGINT's default) goes on: it is the point
                _log.exception("the %s handler buttress handed off to failed", _signal_name(signum))
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        else:
            _log.warning(
                "%s had a handler installed outside Python: the server must be stopped "
                "by whoever owns it",
                _signal_name(signum),
            )

    def _install(self) -> None:
        if not self.signals:
            return
        if threading.current_thread() is not threading.main_thread():
            _log.warning(
                "lifespan startup is not on the main thread: %s not hooked; "
                "call GracefulShutdown.trigger() to start the drain",
                ", ".join(s.name for s in self.signals),
            )
            return
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue  # the process was told to ignore it: respect that
            signal.signal(sig, self.handle_signal)
            self._previous[sig] = previous

    def _uninstall(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self.handle_signal:
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    # ------------------------------------------------------------------ waiting
    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await wait_within(self.clock, asyncio.get_running_loop().create_future(), seconds)

    async def _until_idle(self, limit: float) -> bool:
        if not self._requests:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        return await wait_within(self.clock, waiter, limit)

    def _wake_idle(self) -> None:
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _finish_in_flight(self, deadline: float) -> None:
        if self._requests:
            remaining = deadline - self.clock.now()
            _log.info(
                "waiting up to %.1f s for %d request(s) in flight",
                max(remaining, 0.0),
                len(self._requests),
            )
            if await self._until_idle(remaining):
                return
        if not self._requests:
            return
        fresh = [task for task in self._requests if task not in self._abandoned]
        if fresh:
            _log.error(
                "grace period (%.1f s) over: cancelling %d request(s) still in flight",
                self.grace,
                len(fresh),
            )
            for task in fresh:
                self._abandoned.add(task)
                task.cancel("buttress: graceful shutdown's grace period is over")
        await self._until_idle(_AFTER_CANCEL)

    # ------------------------------------------------------------------ the stage
    def stage_hooks(self) -> Hooks:
        """Arrive: counted in flight (or the ready path answered); finish: out of flight.

        Fail: a request cut at the end of the grace answers 503. Lifespan: the drain.
        """
        return Hooks(
            arrive=self.arrive,
            start=self.start if self.close_connections else None,
            fail=self.fail,
            finish=self.finish,
            other=self.other,
            fields=("shutdown_task", "shutdown_close"),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Answer the ready path; count the request's task in flight."""
        scope = ex.scope
        ex.shutdown_task = None
        if scope["path"] == self.ready_path and scope["method"] in ("GET", "HEAD"):
            return self._answer_ready(scope, ex.send)
        try:
            task = current_task()
        except RuntimeError:  # pragma: no cover - not running on asyncio
            task = None
        if task is not None:
            ex.shutdown_task = task
            self._requests.add(task)
        # draining when it arrived: HTTP/1 responses close the connection
        ex.shutdown_close = self._draining and scope.get("http_version", "1.1") in _HTTP1
        return None

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """``Connection: close`` on a response to a request that arrived while draining."""
        if ex.shutdown_close:
            headers.append(_CLOSE)

    def fail(self, ex: Any, exc: BaseException) -> Awaitable[bool] | None:
        """A request cancelled at the end of the grace: 503 if it had not answered yet."""
        task = ex.shutdown_task
        if (
            task is None
            or not isinstance(exc, asyncio.CancelledError)
            or task not in self._abandoned
            or task.uncancel() > 0
        ):
            return None
        return self._abandon(ex.scope, ex.send)

    async def _abandon(self, scope: Scope, send: Send) -> bool:
        await _answer_abandoned(scope, send)
        return True

    def finish(self, ex: Any) -> None:
        """The request is no longer in flight (wake the drain when it was the last)."""
        task = ex.shutdown_task
        if task is None:
            return
        requests = self._requests
        requests.discard(task)
        if self._abandoned:
            self._abandoned.discard(task)
        if not requests and self._idle:
            self._wake_idle()

    async def other(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Lifespan: the drain and the close hooks around ``app``'s; WebSockets: in flight."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send, app)
            return
        if kind != "websocket":
            await app(scope, receive, send)
            return
        try:
            task = asyncio.current_task()
        except RuntimeError:  # pragma: no cover - not running on asyncio
            task = None
        if task is None:  # pragma: no cover - not running on asyncio
            await app(scope, receive, send)
            return
        requests = self._requests
        requests.add(task)
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if task not in self._abandoned or task.uncancel() > 0:
                raise
        finally:
            requests.discard(task)
            if self._abandoned:
                self._abandoned.discard(task)
            if not requests and self._idle:
                self._wake_idle()

    def _ready_headers(self, draining: bool, close: bool) -> tuple[int, list[Any], bytes]:
        body = _FAIL_BODY if draining else _PASS_BODY
        headers = [
            (b"content-type", b"application/health+json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        if close:
            headers.append(_CLOSE)
        return (503 if draining else 200), headers, body

    async def _answer_ready(self, scope: Scope, send: Send) -> bool:
        draining = self._draining
        close = (
            draining
            and self.close_connections
            and scope.get("http_version", "1.1") in {"1.0", "1.1"}
        )
        status, headers, body = self._ready_answers[draining, close]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        return True

    def _reset(self) -> None:
        self._draining = False
        self._stopping = False
        self._signalled = None
        self._grace_deadline = None
        self._previous = {}
        self._drain_task = None
        self._closing = None

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - server bug
            return
        self._reset()
        self._loop = asyncio.get_running_loop()
        self._install()
        for callback in list(self.on_startup):
            try:
                callback()
            except Exception:
                _log.exception("on_startup callback %s failed", hook_name(callback))
        try:
            inner = self._inner = InnerLifespan(app, scope)
            answer = await inner.exchange({"type": "lifespan.startup"})
            if answer is None:
                inner.supported = False
                error = inner.error()
                _log.info(
                    "the wrapped app does not support the lifespan protocol (%s); "
                    "continuing without it",
                    type(error).__name__ if error is not None else "it returned",
                )
            elif answer["type"] == "lifespan.startup.failed":
                self._uninstall()
                await send(dict(answer))
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown: the server has closed its connections
            failed = await self._stop(inner)
        finally:
            self._uninstall()
        if failed is not None:
            await send({"type": "lifespan.shutdown.failed", "message": failed})
        else:
            await send({"type": "lifespan.shutdown.complete"})

    async def _stop(self, inner: InnerLifespan) -> str | None:
        """In-flight requests (within the grace), the app's shutdown, then the hooks."""
        self._stopping = True
        self._begin_draining()
        drain = self._drain_task
        if drain is not None and not drain.done() and self._grace_deadline is None:
            drain.cancel()  # the server stops before the drain delay is over
        deadline = self._grace_deadline
        await self._finish_in_flight(
            self.clock.now() + self.grace if deadline is None else deadline
        )
        failed = await self._close(inner)
        if drain is not None and not drain.done():
            drain.cancel()
        return failed

    def _close(self, inner: InnerLifespan) -> asyncio.Future[str | None]:
        """The app's shutdown then the hooks, once (the drain or the server may ask first)."""
        closing = self._closing
        if closing is None:
            closing = self._closing = asyncio.get_running_loop().create_task(
                self._close_once(inner)
            )
        return asyncio.shield(closing)

    async def _close_once(self, inner: InnerLifespan) -> str | None:
        close_deadline = self.clock.now() + self.close_timeout
        failed = await stop_app(
            self.clock, inner, min(self.hook_timeout, close_deadline - self.clock.now())
        )
        for hook in reversed(self._hooks):
            remaining = close_deadline - self.clock.now()
            if remaining <= 0:
                _log.error(
                    "close hook %s skipped: the %.1f s close limit is used up",
                    hook.name,
                    self.close_timeout,
                )
                continue
            await run_close_hook(
                self.clock, hook, min(self.hook_timeout, remaining), self._abandoned_hooks
            )
        return failed

    def __repr__(self) -> str:
        return (
            f"GracefulShutdown(drain_delay={self.drain_delay:g}, grace={self.grace:g}, "
            f"close_timeout={self.close_timeout:g}, hooks={len(self._hooks)}, "
            f"draining={self._draining}, in_flight={len(self._requests)})"
        )
