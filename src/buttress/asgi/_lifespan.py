"""The end of a server's life: the wrapped app's lifespan, close hooks, bounded waits.

`GracefulShutdown` owns the ``lifespan`` scope. It drives the wrapped app's own lifespan
through `InnerLifespan`, and at shutdown runs the app's shutdown (`stop_app`) and then each
`CloseHook` (`run_close_hook`), each bounded by `wait_within` on the injected clock: a hook
that fails is logged, one that hangs is abandoned at its limit, neither stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from buttress._clock import Clock
from buttress.asgi._types import ASGIApp, Message, Scope

__all__ = [
    "CloseHook",
    "InnerLifespan",
    "hook_name",
    "run_close_hook",
    "stop_app",
    "wait_within",
]

_log = logging.getLogger("buttress.asgi.shutdown")


def hook_name(hook: Callable[..., object]) -> str:
    """A callable's qualified name, for log lines."""
    name = getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None)
    return str(name) if name else repr(hook)


def _is_async(hook: Callable[..., object]) -> bool:
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - instances with an async __call__
    )


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _in_daemon_thread(hook: Callable[[], object], name: str) -> asyncio.Future[Any]:
    """Run a sync hook in a daemon thread: if it hangs, the process can still exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            result = hook()
        except BaseException as exc:
            outcome: tuple[object, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop closed while the hook ran
            loop.call_soon_threadsafe(_settle, future, *outcome)

    threading.Thread(target=target, name=f"buttress-close:{name}", daemon=True).start()
    return future


class CloseHook:
    """A resource's close function: async on the loop, sync in a daemon thread (or not)."""

    __slots__ = ("fn", "in_thread", "name")

    def __init__(self, fn: Callable[[], object], name: str, in_thread: bool) -> None:
        self.fn = fn
        self.name = name
        self.in_thread = in_thread

    async def run(self) -> None:
        """Call it; await what it returns when that is awaitable (``lambda: c.aclose()``)."""
        if _is_async(self.fn) or not self.in_thread:
            result = self.fn()
        else:
            result = await _in_daemon_thread(self.fn, self.name)
        if inspect.isawaitable(result):
            await result


async def wait_within(clock: Clock, future: asyncio.Future[Any], limit: float) -> bool:
    """Wait for ``future`` at most ``limit`` seconds on ``clock``; True if it is done."""
    if future.done():
        return True
    alarm: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ring() -> None:
        if not alarm.done():
            alarm.set_result(None)

    timer = clock.call_later(max(limit, 0.0), ring)
    try:
        await asyncio.wait((future, alarm), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        alarm.cancel()
    return future.done()


class InnerLifespan:
    """Drives the wrapped app's own lifespan protocol from inside ours."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        loop = asyncio.get_running_loop()
        # buttress: ignore[BTR202] two messages at most, by the lifespan protocol
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._reply: asyncio.Future[Message | None] | None = None
        self.supported = True
        self.task = loop.create_task(self._run(app, scope))
        self.task.add_done_callback(self._ended)

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self._inbox.get, self._send)

    async def _send(self, message: Message) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(message)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here, reported by whoever asked (error())
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(None)

    def exchange(self, message: Message) -> asyncio.Future[Message | None]:
        """Send ``message``; the future holds the app's answer, or None if it ended first."""
        self._reply = asyncio.get_running_loop().create_future()
        if self.task.done():
            self._reply.set_result(None)
        else:
            self._inbox.put_nowait(message)
        return self._reply

    def error(self) -> BaseException | None:
        """The exception the app's lifespan ended with, if it did."""
        if not self.task.done() or self.task.cancelled():
            return None
        return self.task.exception()


async def stop_app(clock: Clock, inner: InnerLifespan, limit: float) -> str | None:
    """The wrapped app's lifespan shutdown within ``limit``; its failure message, if any."""
    if not inner.supported or inner.task.done():
        return None
    reply = inner.exchange({"type": "lifespan.shutdown"})
    if not await wait_within(clock, reply, limit):
        _log.error("the app's lifespan shutdown did not finish within %.1f s; abandoned", limit)
        inner.task.cancel()
        return None
    answer = reply.result()
    if answer is None:
        error = inner.error()
        if error is not None:
            _log.error("the app's lifespan shutdown failed", exc_info=error)
        return None
    if answer["type"] == "lifespan.shutdown.failed":
        message = str(answer.get("message", ""))
        _log.error("the app's lifespan shutdown failed: %s", message)
        return message
    return None


async def run_close_hook(
    clock: Clock, hook: CloseHook, limit: float, abandoned: set[asyncio.Task[None]]
) -> None:
    """Run ``hook`` within ``limit``: log its failure; past the limit, cancel and abandon it.

    An abandoned hook's task is kept in ``abandoned`` until it ends (a strong reference).
    """
    started = clock.now()
    task = asyncio.get_running_loop().create_task(hook.run())
    if not await wait_within(clock, task, limit):
        task.cancel()
        abandoned.add(task)
        task.add_done_callback(abandoned.discard)
        _log.error("close hook %s did not finish within %.1f s; abandoned", hook.name, limit)
        return
    if task.cancelled():
        _log.error("close hook %s was cancelled", hook.name)
    elif (error := task.exception()) is not None:
        _log.error("close hook %s failed", hook.name, exc_info=error)
    else:
        _log.debug("close hook %s done in %.3f s", hook.name, clock.now() - started)
