"""Inbound hardening for any ASGI application (pure ASGI, no BaseHTTPMiddleware).

Work in progress: the pieces land one by one, then ``harden(app, settings)`` composes them
as the outermost layer.
"""

from buttress.asgi._problem import problem_body, send_problem

__all__ = ["problem_body", "send_problem"]
