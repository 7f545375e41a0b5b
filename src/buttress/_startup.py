"""A configuration error while a server loads the app: one line, then the whole server stops.

Anywhere else (a test, a script, a REPL, an app factory called by hand) a
`ConfigurationError` from `harden`, `HardenSettings(...)` or `HardenSettings.from_env` (or
a `SettingsWarning` that a warnings filter made an error) is an ordinary exception. While
a server is importing the application, the same error would print a 50-line traceback
per worker, and ``uvicorn --workers N`` would restart the workers forever. So, when the
call stack shows that a server is loading the app (uvicorn's ``Config.load``/``load_app``,
gunicorn's ``Worker.load_wsgi``/``Application.wsgi``), `configuration_boundary` turns the
error into:

1. one line on stderr, ``buttress: configuration error: <message>; the server stops``
   (the message names the setting and, for ``BUTTRESS_*``, the variable); no traceback;
2. under ``uvicorn --workers N`` (the worker's parent is uvicorn's supervisor: the worker
   runs under ``uvicorn._subprocess.subprocess_started`` with ``workers > 1`` and no
   ``--reload``), the supervisor is stopped: SIGTERM first, so that it stops every other
   worker the graceful way (uvicorn's ``terminate_all``); once it has sent this worker its
   own SIGTERM and half a second more (the others have theirs), SIGKILL, because a
   supervisor that stops on SIGTERM exits 0 and a service that cannot start must exit
   non-zero (137 in a shell);
   the signals go only to the process that is both ``os.getppid()`` and
   ``multiprocessing.parent_process()``;
3. ``SystemExit(3)``: exit code 3 is both uvicorn's ``STARTUP_FAILURE`` and gunicorn's
   ``WORKER_BOOT_ERROR``, so a single-process uvicorn exits 3, and gunicorn's arbiter halts
   the whole server with "Worker failed to boot" and exit code 3. Under ``--reload`` the
   reloader keeps watching for the fix, as it does for any other error.

The boundary acts once, at the outermost buttress call (``harden`` calls ``from_env``,
which builds ``HardenSettings``): the inner ones re-raise, so the message the user sees is
the most complete one. `require_modules` turns a missing optional dependency into a
`ConfigurationError` that names the extra to install.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final, ParamSpec, TypeVar

from buttress.errors import ConfigurationError

__all__ = [
    "STARTUP_FAILURE",
    "SettingsWarning",
    "configuration_boundary",
    "require_modules",
    "server_loading",
]

STARTUP_FAILURE: Final = 3
"""The exit code of a process stopped by a configuration error (uvicorn's and gunicorn's)."""


class SettingsWarning(UserWarning):
    """A ``BUTTRESS_*`` variable that no setting reads: most likely a typo.

    Shown on stderr at start-up (under uvicorn and gunicorn too). Make it fatal with a
    warnings filter before the app is built,
    ``warnings.filterwarnings("error", category=buttress.asgi.SettingsWarning)`` (``-W``
    cannot name it: the interpreter reads ``-W`` before it can import buttress): raised
    while a server loads the app, it then stops the server like a `ConfigurationError`.
    """


_P = ParamSpec("_P")
_R = TypeVar("_R")

_depth = threading.local()
# (module, function) of the frames that load an application inside a server
_LOADERS: Final = {
    "uvicorn.config": frozenset({"load", "load_app"}),
    "gunicorn.workers.base": frozenset({"load_wsgi"}),
    "gunicorn.app.base": frozenset({"wsgi"}),
}
_TERM_WAIT: Final = 5.0  # seconds for uvicorn's supervisor to answer SIGTERM (it polls at 2 Hz)
_SIGNAL_ALL: Final = 0.5  # seconds for it to send SIGTERM to every worker


def configuration_boundary(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate an entry point whose `ConfigurationError` stops a starting server.

    See the module docstring: outside a server's app loading (and inside an outer
    boundary) the error propagates unchanged.

    Example::

        @configuration_boundary
        def harden(app, settings=None): ...
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _boundary():
            return func(*args, **kwargs)

    return wrapper


@contextmanager
def _boundary() -> Iterator[None]:
    depth = getattr(_depth, "value", 0)
    _depth.value = depth + 1
    try:
        yield
    except (ConfigurationError, SettingsWarning) as exc:
        if depth == 0 and (loader := server_loading()) is not None:
            _stop(exc, loader)
        raise
    finally:
        _depth.value = depth


def server_loading(frame: FrameType | None = None) -> str | None:
    """``"uvicorn"`` or ``"gunicorn"`` when that server is loading the app now, else None."""
    if frame is None:
        here = inspect.currentframe()
        frame = here.f_back if here is not None else None
    while frame is not None:
        names = _LOADERS.get(frame.f_globals.get("__name__", ""))
        if names is not None and frame.f_code.co_name in names:
            return str(frame.f_globals["__name__"]).partition(".")[0]
        frame = frame.f_back
    return None


def _uvicorn_supervisor() -> int | None:
    """The pid of the ``uvicorn --workers N`` supervisor whose worker this is, else None."""
    here = inspect.currentframe()
    frame: FrameType | None = here.f_back if here is not None else None
    while frame is not None:
        if (
            frame.f_globals.get("__name__") == "uvicorn._subprocess"
            and frame.f_code.co_name == "subprocess_started"
        ):
            config = frame.f_locals.get("config")
            if getattr(config, "workers", 1) > 1 and not getattr(config, "reload", False):
                parent = multiprocessing.parent_process()
                if parent is not None and parent.pid == os.getppid():
                    return parent.pid
            return None
        frame = frame.f_back
    return None


def _stop(exc: ConfigurationError | SettingsWarning, server: str) -> None:
    supervisor = _uvicorn_supervisor() if server == "uvicorn" else None
    # buttress: ignore[BTR501] the one line a server prints before logging exists
    print(f"buttress: configuration error: {exc}; the server stops", file=sys.stderr, flush=True)
    if supervisor is not None:
        _stop_supervisor(supervisor)
    raise SystemExit(STARTUP_FAILURE) from None


def _stop_supervisor(pid: int) -> None:
    """SIGTERM (it stops the other workers), then SIGKILL once it has (a non-zero exit)."""
    terminated = threading.Event()
    # signal handlers can only be set in the main thread (where uvicorn loads the app);
    # elsewhere, wait the whole delay instead of returning at the supervisor's SIGTERM
    handled = threading.current_thread() is threading.main_thread()
    previous: Any = signal.signal(signal.SIGTERM, lambda *_: terminated.set()) if handled else None
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _TERM_WAIT
        while not terminated.is_set() and time.monotonic() < deadline:
            if os.getppid() != pid:
                return  # it is gone (another worker ended it)
            time.sleep(0.02)
        # our SIGTERM may be the first of its terminate_all loop: let it signal the others
        time.sleep(_SIGNAL_ALL)
        if os.getppid() == pid:  # still our parent: the pid cannot have been reused
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # the supervisor is gone already
        pass
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def require_modules(feature: str, modules: tuple[str, ...], extra: str) -> None:
    """Raise `ConfigurationError` naming the extra to install if a module cannot be imported.

    Example::

        require_modules("harden()", ("structlog",), "asgi")
        # ConfigurationError: harden() needs structlog, which is not installed:
        # pip install 'buttress[asgi]'
    """
    import importlib  # noqa: PLC0415 - only at start-up

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"{feature} needs {name}, which is not installed: pip install 'buttress[{extra}]'"
            ) from exc
