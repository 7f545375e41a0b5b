"""The request's context (id, trace, scope, client), and how it travels into its work.

Work the request starts elsewhere keeps it: threads (`with_context`), jobs and messages
(`context_carrier`, then `bound_context` in the worker), other services
(`propagate_context`).

Example::

    from buttress.asgi.context import context_carrier, current_request_id, propagate_context
    from buttress.http import async_client

    http = async_client(on_request=[propagate_context])   # traceparent + x-request-id

    async def handler(request):
        log.info("charging", request_id=current_request_id())
        await http.post(url, json=order)
        jobs.enqueue("send_receipt", order, context=context_carrier())
"""

from buttress.asgi._carrier import bound_context, context_carrier, with_context
from buttress.asgi._context import (
    TraceContext,
    client_address,
    current_request_id,
    current_scope,
    current_trace,
    parse_traceparent,
    propagate_context,
    trusted_networks,
)

__all__ = [
    "TraceContext",
    "bound_context",
    "client_address",
    "context_carrier",
    "current_request_id",
    "current_scope",
    "current_trace",
    "parse_traceparent",
    "propagate_context",
    "trusted_networks",
    "with_context",
]
