"""Key resolvers for rate limits: what a request is counted against.

Each is a callable ``(scope) -> str | None``; None means the limit does not apply to the
request (no API key sent, say). Any plain callable of the scope works too.

Example::

    from buttress.asgi import Limit, RateLimitRule, keys

    RateLimitRule([
        Limit("per-key", "100/minute", key=keys.api_key()),
        Limit("per-org", "10000/day", key=keys.tenant("x-org-id")),
    ])
"""

from buttress.asgi._keys import (
    KeyFunc,
    api_key,
    client_ip,
    header,
    jwt_subject,
    principal,
    route,
    tenant,
)

__all__ = [
    "KeyFunc",
    "api_key",
    "client_ip",
    "header",
    "jwt_subject",
    "principal",
    "route",
    "tenant",
]
