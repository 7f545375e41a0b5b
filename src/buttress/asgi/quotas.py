"""Quotas that fit real plans: per-plan rates, variable cost, and who uses the most.

Give a `buttress.asgi.Limit` a `Plans` instead of one rate (the plan resolved per request:
from ``scope["state"]`` by default, `plan_from_header` behind a trusted gateway), or a
``cost=`` (`request_units` before the handler, `response_units`/`response_bytes` after it,
or your own `Cost`). `NoisyNeighbours` keeps the top keys of each policy by admitted and by
refused requests in bounded memory (``HardenSettings(rate_limit_top_keys=N)``). The guide:
docs/quotas.md.

Example::

    from buttress.asgi import Limit, RateLimitRule, harden
    from buttress.asgi.quotas import Plans

    daily = Limit("daily", Plans({"free": "10/day", "pro": "1000/day"}))
    app = harden(app, rate_limits=[RateLimitRule(daily)])
"""

from buttress.asgi._heavy_hitters import NoisyNeighbours, SpaceSaving, TopKey
from buttress.asgi._quotas import (
    Cost,
    Plans,
    plan_from_header,
    plan_from_state,
    request_units,
    response_bytes,
    response_units,
)

__all__ = [
    "Cost",
    "NoisyNeighbours",
    "Plans",
    "SpaceSaving",
    "TopKey",
    "plan_from_header",
    "plan_from_state",
    "request_units",
    "response_bytes",
    "response_units",
]
