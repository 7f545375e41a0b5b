# ruff: noqa
"""BTR602: no graceful shutdown (a Starlette app with everything else)."""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route


class ContentSizeLimitMiddleware: ...


def health(request): ...


def metrics_app(scope): ...


app = Starlette(  # expect: BTR602
    routes=[Route("/healthz", health), Mount("/metrics", metrics_app)],
    middleware=[Middleware(ContentSizeLimitMiddleware)],
)
