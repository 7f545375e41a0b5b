"""WSGI apps under `harden`: Flask, Django's ``WSGIHandler``, any ``(environ, start_response)``.

`asgi_app` is the one call `harden` makes first: an ASGI app passes through untouched; a
WSGI app (a callable whose signature is ``(environ, start_response)``, such as a
``flask.Flask`` or ``django.core.handlers.wsgi.WSGIHandler``) is wrapped in a2wsgi's
``WSGIMiddleware``, a maintained WSGI-to-ASGI adapter that runs each request in a thread
pool (10 threads). Without a2wsgi installed it refuses at once, with the extra to install.

What needs the event loop, and so an ASGI server (uvicorn, Hypercorn, Granian, gunicorn
with uvicorn workers; not gunicorn's sync workers or mod_wsgi): everything `harden` adds
runs in the ASGI layer, around the WSGI app. Request ids, trace context, security headers,
CORS, the access log, metrics, health endpoints, rate limits, load shedding, body limits,
idempotency and graceful shutdown all work as for an ASGI app. Two limits come with
threads:

* the request deadline answers the client 504 on time, but a thread cannot be cancelled:
  the WSGI handler runs on to its end, holding one of the pool's threads;
* the pool bounds concurrency: more requests than threads wait for one (set the size by
  wrapping the app yourself, ``harden(a2wsgi.WSGIMiddleware(app, workers=32))``; a Flask
  app inside still gets the error handlers below).

What the WSGI app gets: the request id through `buttress.asgi.current_request_id` (the
adapter copies the context into the thread, so logs written by the handler carry it too),
and the whole ASGI scope as ``environ["asgi.scope"]`` (``["state"]["request_id"]``,
``["state"]["trace"]``). Request headers arrive as usual (``HTTP_X_REQUEST_ID`` is the
client's, when it sent one).

Errors: an exception that escapes the WSGI app becomes buttress's problem+json 500. A
Flask app answers its own errors (404, 405, ``abort(...)``, and the 500 Flask makes of an
unhandled exception, after logging it) as problem+json too: `asgi_app` registers a handler
for werkzeug's ``HTTPException`` unless the app already has one (your handlers for a code,
``@app.errorhandler(404)``, still take precedence). Flask views also get their route
template into the metrics (``/orders/{order_id}``). Other WSGI frameworks' own HTML error
pages pass through as they are; for Django see `buttress.django`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from typing import Any

from buttress.asgi._context import current_request_id
from buttress.asgi._problem import (
    code_for_status,
    problem_body,
    problem_for_exception,
    retry_after_header,
)
from buttress.errors import ConfigurationError

__all__ = ["asgi_app"]

_WSGI_THREADS = 10  # a2wsgi's default pool


def asgi_app(app: Any) -> Any:
    """``app`` as an ASGI app: unchanged if it is one, else through a2wsgi (WSGI apps).

    Also teaches a Flask app (bare, or inside an a2wsgi ``WSGIMiddleware``) to answer its
    own errors as problem+json. `harden` calls it first; it is idempotent.

    Raises:
        ConfigurationError: ``app`` is a WSGI app and a2wsgi is not installed.

    Example::

        from flask import Flask
        from buttress.asgi import harden

        app = harden(Flask(__name__))    # uvicorn main:app --no-proxy-headers
    """
    inner = getattr(app, "app", None)
    if _is_a2wsgi(app) and inner is not None:
        _install_flask_handlers(inner)
        return app
    if not is_wsgi_app(app):
        return app
    try:
        a2wsgi = importlib.import_module("a2wsgi")  # the wsgi extra
    except ImportError:
        raise ConfigurationError(
            f"harden(app): {type(app).__name__} is a WSGI app; serving it needs a2wsgi: "
            "pip install 'buttress[wsgi]'"
        ) from None
    _install_flask_handlers(app)
    return a2wsgi.WSGIMiddleware(app, workers=_WSGI_THREADS)


def is_wsgi_app(app: Any) -> bool:
    """Whether ``app`` is called as ``app(environ, start_response)``: two positional parameters.

    ASGI apps (``async def app(scope, receive, send)``, or an object whose ``__call__`` is
    a coroutine function) are not; callables whose signature cannot be read are taken for
    ASGI apps, as before.
    """
    if not callable(app):
        return False
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)  # noqa: B004 - the instance's __call__, not callable()
    ):
        return False
    try:
        parameters = list(inspect.signature(app).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return False
    return sum(1 for p in parameters if p.kind in positional) == 2


def _is_a2wsgi(app: Any) -> bool:
    cls = type(app)
    return cls.__name__ == "WSGIMiddleware" and cls.__module__.startswith("a2wsgi")


class _Route:
    """A Flask rule as `scope["route"]`: the metrics and access log read ``path_format``."""

    __slots__ = ("path_format",)

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


def _flask_template(rule: str) -> str:
    """``/orders/<int:order_id>`` as ``/orders/{order_id}`` (the ASGI frameworks' spelling)."""
    out, rest = [], rule
    while "<" in rest and ">" in rest:
        head, _, tail = rest.partition("<")
        name, _, rest = tail.partition(">")
        out.append(f"{head}{{{name.rpartition(':')[2]}}}")
    out.append(rest)
    return "".join(out)


def _install_flask_handlers(app: Any) -> bool:
    """Register problem+json error handlers and the route-template hook on a Flask app."""
    flask = sys.modules.get("flask")
    if flask is None or not isinstance(app, flask.Flask):
        return False
    werkzeug = importlib.import_module("werkzeug.exceptions")  # Flask's own dependency
    HTTPException, InternalServerError = werkzeug.HTTPException, werkzeug.InternalServerError  # noqa: N806

    handlers = app.error_handler_spec[None][None]
    if HTTPException in handlers:
        return False  # the app answers its own errors (or this ran already)

    def on_http_exception(exc: Any) -> Any:
        if exc.response is not None:  # abort(response): the app's own answer
            return exc.response
        status = exc.code or 500
        retry_after: float | None = None
        original = getattr(exc, "original_exception", None)
        if isinstance(exc, InternalServerError) and original is not None:
            code, retry_after, detail = problem_for_exception(original)
            status = code.http_status
        else:
            code = code_for_status(status)
            detail = exc.description if exc.description != type(exc).description else None
        body = problem_body(code, status=status, detail=detail, request_id=current_request_id())
        response = app.response_class(
            json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            status=status,
            mimetype="application/problem+json",
        )
        for name, value in exc.get_headers():  # Allow, WWW-Authenticate, Retry-After
            if name.lower() != "content-type":
                response.headers[name] = value
        response.headers["Cache-Control"] = "no-store"
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after_header(retry_after).decode()
        return response

    routes: dict[str, _Route] = {}

    def name_route() -> None:
        request = flask.request
        rule = request.url_rule
        scope = request.environ.get("asgi.scope")
        if rule is None or not isinstance(scope, dict):
            return
        route = routes.get(rule.rule)
        if route is None:
            route = routes.setdefault(rule.rule, _Route(_flask_template(rule.rule)))
        scope["route"] = route

    app.register_error_handler(HTTPException, on_http_exception)
    app.before_request(name_route)
    return True
