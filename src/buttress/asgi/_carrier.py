"""The request's id and trace context, carried into the work the request starts.

Inside a request, `current_request_id` and `current_trace` are context variables: an
``asyncio`` task the request creates sees them (tasks copy the context), and so does
``asyncio.to_thread``. Three other places lose them, and these functions carry them:

* a thread pool (``loop.run_in_executor``, ``ThreadPoolExecutor.submit``): wrap the
  function with `with_context`, which runs it in a copy of the caller's context;
* a background job or a message (Celery, a queue, an outbox row): put `context_carrier()`
  (a dict of strings: ``traceparent`` and ``x-request-id``) in its payload or headers, and
  run the job inside ``with bound_context(carrier):`` so that its logs name the request
  and its outbound calls continue the trace (a new span whose parent is the request's);
* another service: `propagate_context` (outbound HTTP) sends the same two headers.

Example::

    from buttress.asgi.context import bound_context, context_carrier

    async def create_order(request):
        queue.put({"order": 42, "context": context_carrier()})

    def worker(job):
        with bound_context(job["context"]):
            log.info("charging")      # request_id and trace_id of the request that asked
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from random import getrandbits
from typing import ParamSpec, TypeVar

from buttress.asgi._context import (
    _REQUEST_ID,
    _TRACE,
    TraceContext,
    outbound_trace_headers,
    parse_traceparent,
)

__all__ = ["bound_context", "context_carrier", "with_context"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_MAX_REQUEST_ID = 200  # a carrier's request id longer than this is not bound


def context_carrier() -> dict[str, str]:
    """The current request's ``traceparent`` and ``x-request-id`` (empty outside a request).

    Example::

        job = {"order": 42, "context": context_carrier()}
        # {"order": 42, "context": {"traceparent": "00-4bf9...-01", "x-request-id": "..."}}
    """
    return dict(outbound_trace_headers())


@contextmanager
def bound_context(carrier: Mapping[str, str] | None) -> Iterator[TraceContext | None]:
    """Bind a carrier's request id and trace context while the block runs; yield the trace.

    The trace continues with a new span of this work (the carrier's span as its parent),
    so the work's logs and outbound calls name the request's trace. A missing or invalid
    ``traceparent`` binds no trace (the block runs outside any trace, as before); a missing
    or unreasonable request id binds none. What was bound before is restored afterwards,
    in this thread or task only.

    Example::

        with bound_context({"traceparent": tp, "x-request-id": "req-7"}) as trace:
            assert current_request_id() == "req-7" and trace.parent_id == tp[36:52]
    """
    carrier = carrier or {}
    trace: TraceContext | None = None
    traceparent = carrier.get("traceparent")
    parsed = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
    if parsed is not None:
        span = (getrandbits(64) | 1).to_bytes(8, "big").hex()  # never all zeros
        trace = TraceContext(parsed[0], span, parsed[1], parsed[2])
    request_id = carrier.get("x-request-id")
    if not isinstance(request_id, str) or not (
        0 < len(request_id) <= _MAX_REQUEST_ID and request_id.isascii() and request_id.isprintable()
    ):
        request_id = None
    id_token = _REQUEST_ID.set(request_id)
    trace_token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(trace_token)
        _REQUEST_ID.reset(id_token)


def with_context(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn``, to run in a copy of the caller's context (request id, trace, deadline).

    For thread pools, which do not copy the context (``asyncio.to_thread`` does). The
    context is the one when `with_context` was called; each run gets its own copy of it,
    so the wrapped function may run in several threads at once.

    Example::

        await loop.run_in_executor(pool, with_context(render_invoice), order_id)
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return context.copy().run(fn, *args, **kwargs)  # one copy per run: runs may overlap

    return run
