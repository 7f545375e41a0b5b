"""The request's context: its id, its W3C trace context and the client's address.

Example::

    from buttress.asgi.context import current_request_id, propagate_context

    async def handler(request):
        log.info("charging", request_id=current_request_id())
        await http.post(url, headers=propagate_context())  # traceparent + x-request-id
"""

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
    "client_address",
    "current_request_id",
    "current_scope",
    "current_trace",
    "parse_traceparent",
    "propagate_context",
    "trusted_networks",
]
