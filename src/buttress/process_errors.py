"""Process-level errors as one structured log line each, not a raw traceback or nothing.

Three kinds of failure escape every request handler and middleware:

* an exception that ends a thread (`threading.excepthook`): ``thread_exception``;
* an exception in an asyncio task nobody awaited, reported when the task is collected
  (the event loop's exception handler): ``task_exception``, and ``event_loop_error`` for
  the loop's other complaints;
* an exception that ends the program (`sys.excepthook`), at start-up typically:
  ``uncaught_exception``, at level critical.

`install` routes them to the standard ``logging`` module, logger ``buttress.process``,
with ``exc_info`` attached: buttress's JSON format (`buttress.asgi.configure_logging`)
renders the traceback bounded, inside the one line, and Sentry's logging integration
(and any other handler) sees the exception. A hook someone else installed before is
still called after the line (Python's default ones, which print the traceback, are
not); ``KeyboardInterrupt`` keeps Python's own handling.

Example::

    from buttress import process_errors

    uninstall = process_errors.install()   # at start-up; again in the loop for asyncio
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["LOGGER_NAME", "install"]

LOGGER_NAME = "buttress.process"
_log = logging.getLogger(LOGGER_NAME)
_MAX_FIELD = 200  # characters of a name or message in the line

_lock = threading.Lock()
_installed: list[_Installation] = []


def _short(value: object) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= _MAX_FIELD else f"{text[:_MAX_FIELD]}..."


def _line(name: str, exc: BaseException | None, **fields: object) -> tuple[str, dict[str, Any]]:
    """``(message, extra)`` of one line: ``name key=value ...`` and the fields as data."""
    data = {k: _short(v) for k, v in fields.items() if v is not None}
    if exc is not None:
        data["error"] = type(exc).__qualname__
    detail = " ".join(f"{k}={v}" for k, v in data.items())
    return f"{name} {detail}".strip(), {"buttress": {"event": name, **data}}


class _Installation:
    """The hooks installed, and what they replaced (restored by `uninstall`)."""

    def __init__(self) -> None:
        self.previous_thread = threading.excepthook
        self.previous_sys = sys.excepthook
        self.loops: list[tuple[asyncio.AbstractEventLoop, Any]] = []
        threading.excepthook = self.thread_hook
        sys.excepthook = self.sys_hook

    def ensure(self) -> None:
        """Hook again where something replaced ours since (chaining to it from then on)."""
        if threading.excepthook != self.thread_hook:
            self.previous_thread = threading.excepthook
            threading.excepthook = self.thread_hook
        if sys.excepthook != self.sys_hook:
            self.previous_sys = sys.excepthook
            sys.excepthook = self.sys_hook

    def thread_hook(self, args: threading.ExceptHookArgs) -> None:
        """`threading.excepthook`: one error line (a thread's ``SystemExit`` is silent)."""
        if args.exc_type is SystemExit:
            return
        exc = args.exc_value
        thread = args.thread
        message, extra = _line(
            "thread_exception", exc, thread=thread.name if thread is not None else None
        )
        _log.error(message, exc_info=_exc_info(args.exc_type, exc, args.exc_traceback), extra=extra)
        previous = self.previous_thread
        if previous is not threading.__excepthook__:
            previous(args)

    def sys_hook(
        self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        """`sys.excepthook`: one critical line (``KeyboardInterrupt``: Python's own way)."""
        previous = self.previous_sys
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, exc, tb)
            return
        message, extra = _line("uncaught_exception", exc)
        _log.critical(message, exc_info=(kind, exc, tb), extra=extra)
        if previous is not sys.__excepthook__:
            previous(kind, exc, tb)

    def loop_hook(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: one error line per report."""
        exc = context.get("exception")
        task = context.get("task") or context.get("future")
        reason = context.get("message")
        if isinstance(task, asyncio.Task):
            coro = task.get_coro()
            message, extra = _line(
                "task_exception" if exc is not None else "event_loop_error",
                exc if isinstance(exc, BaseException) else None,
                task=task.get_name(),
                coro=getattr(coro, "__qualname__", None),
                reason=reason,
            )
        else:
            message, extra = _line(
                "event_loop_error", exc if isinstance(exc, BaseException) else None, reason=reason
            )
        exc_info = (
            _exc_info(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
        )
        _log.error(message, exc_info=exc_info, extra=extra)
        for known, previous in self.loops:
            if known is loop and previous is not None:
                previous(loop, context)
                break

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if any(known is loop for known, _ in self.loops):
            return
        self.loops = [(known, prev) for known, prev in self.loops if not known.is_closed()]
        self.loops.append((loop, loop.get_exception_handler()))
        loop.set_exception_handler(self.loop_hook)

    def uninstall(self) -> None:
        """Put back what was there, where our hook is still in place."""
        with _lock:
            if threading.excepthook == self.thread_hook:
                threading.excepthook = self.previous_thread
            if sys.excepthook == self.sys_hook:
                sys.excepthook = self.previous_sys
            for loop, previous in self.loops:
                if not loop.is_closed() and loop.get_exception_handler() == self.loop_hook:
                    loop.set_exception_handler(previous)
            self.loops = []
            if _installed and _installed[0] is self:
                _installed.clear()


def _exc_info(
    kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if kind is None or exc is None:
        return None
    return kind, exc, tb


def install(loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], None]:
    """Log uncaught exceptions of threads, unawaited tasks and the program as one line each.

    Installs `threading.excepthook` and `sys.excepthook` once per process, and the
    exception handler of ``loop`` (default: the running loop, if any). Calling it again is
    safe: the hooks stay installed once (and are put back, chaining to the newcomer, where
    another library replaced them since); call it inside each event loop you want covered
    (at lifespan startup: `buttress.asgi.harden` does). Returns a function that restores
    the previous hooks (where nobody replaced ours since).

    Example::

        uninstall = install()
        threading.Thread(target=lambda: 1 / 0).start()
        # {"exception":"Traceback ...ZeroDivisionError...","event":"thread_exception
        #  thread=Thread-1 (<lambda>) error=ZeroDivisionError","logger":"buttress.process",...}
        uninstall()
    """
    with _lock:
        if not _installed:
            _installed.append(_Installation())
        installation = _installed[0]
        installation.ensure()
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is not None:
            installation.watch_loop(loop)
    return installation.uninstall
