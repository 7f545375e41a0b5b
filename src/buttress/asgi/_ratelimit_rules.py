"""What a rate limit is: `Limit` (a named rate and a key) and `RateLimitRule` (where it applies).

Both are validated when built; `RateLimitMiddleware` (``_ratelimit.py``) decides them. A
limit's rate may depend on the request's plan (`buttress.asgi._quotas.Plans`) and its cost
on the request or the response (`buttress.asgi._quotas.Cost`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from buttress.asgi._quotas import Cost, Plans
from buttress.asgi.keys import KeyFunc
from buttress.errors import ConfigurationError
from buttress.stores import Rate

__all__ = ["Limit", "RateLimitRule"]

# Float slack when computing a policy's quota (as `RateLimitMiddleware` rounds its waits).
_SLACK = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_METHOD = re.compile(r"^[A-Z]{1,20}$")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}")


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """One named limit: a `Rate`, the key it counts against, and what a request costs.

    Args:
        name: the policy name in headers, problem documents, events and metrics
            (letters, digits, ``_.:-``; unique across the middleware's rules).
        rate: a `buttress.stores.Rate` or its string form (``"100/minute;burst=20"``), or
            `Plans` (a rate per plan: the policy is then named ``"<name>.<plan>"``).
        key: a key resolver (`buttress.asgi.keys`); default: the client address, trusted-
            proxy aware with the middleware's ``trusted_proxies``.
        cost: units one request spends (default 1; at most the burst), or a `Cost` read
            from the request (before the handler) or the response (charged after it).

    Example::

        Limit("burst", "20/second")
        Limit("daily", "10000/day", key=api_key())
        Limit("daily", Plans({"free": "10/day", "pro": "1000/day"}), key=tenant())
        Limit("storage", "10240/36500d", key=tenant(), cost=request_units(unit=1 << 20))
    """

    name: str
    rate: Rate
    key: KeyFunc | None
    cost: int
    plans: Plans | None = field(repr=False)
    """The rate per plan (``rate`` is then the default plan's), or None."""
    variable: Cost | None = field(repr=False)
    """How a request's cost is measured when it is not the fixed ``cost``, or None."""
    policy_item: str = field(repr=False, compare=False)
    """This limit as a ``RateLimit-Policy`` item, ``"name";q=<limit>;w=<seconds>`` (``w`` is
    whole seconds: a fractional period is scaled up to the next whole second)."""

    def __init__(
        self,
        name: str,
        rate: Rate | str | Plans,
        *,
        key: KeyFunc | None = None,
        cost: int | Cost = 1,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                f"Limit(name={name!r}): 1-64 letters, digits or '_.:-', starting with a "
                "letter or digit (it is sent in response headers)"
            )
        plans = rate if isinstance(rate, Plans) else None
        if plans is not None:
            rate = plans.rates[plans.default]
        if isinstance(rate, str):
            try:
                rate = Rate.parse(rate)
            except ConfigurationError as exc:
                raise ConfigurationError(f"Limit({name!r}, rate={rate!r}): {exc}") from exc
        if not isinstance(rate, Rate):
            raise ConfigurationError(
                f"Limit({name!r}, rate={rate!r}): must be a Rate or a string like '100/minute'"
            )
        if key is not None and not callable(key):
            raise ConfigurationError(f"Limit({name!r}, key={key!r}): must be callable")
        variable = cost if isinstance(cost, Cost) else None
        if variable is not None:  # measured per request: 0 checks "not overdrawn"
            cost = 0 if variable.before is None else 1
        burst = rate.burst if plans is None else min(r.burst for r in plans.rates.values())
        if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= burst:
            raise ConfigurationError(
                f"Limit({name!r}, cost={cost!r}): must be an integer in [1, {burst}] "
                "(the smallest burst), or a Cost; else no request could ever pass"
            )
        if variable is None and cost == 0:
            raise ConfigurationError(f"Limit({name!r}, cost=0): a request costs at least 1")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "plans", plans)
        object.__setattr__(self, "variable", variable)
        # GCRA admits the burst at once and refills it at the rate: as a quota, that is
        # "burst per the time the burst takes to refill". So q is the most a key can have
        # (what r counts down from, and X-RateLimit-Limit) and q/w is the rate.
        refill = rate.burst * rate.interval
        window = max(1, math.ceil(refill - _SLACK))
        quota = rate.burst
        if window != refill:  # whole seconds only: scale the quota to the rounded window
            quota = max(1, math.floor(rate.burst * window / refill + _SLACK))
            quota = min(quota, rate.burst) if refill >= 1 else quota
        object.__setattr__(self, "policy_item", f'"{name}";q={quota};w={window}')

    def for_plan(self, plan: str) -> Limit:
        """This limit as it applies to ``plan``: named ``"<name>.<plan>"``, the plan's rate.

        Example::

            Limit("daily", Plans({"free": "10/day", "pro": "1000/day"})).for_plan("pro")
            # Limit(name='daily.pro', rate=Rate(limit=1000, period=86400.0, ...), ...)
        """
        if self.plans is None or plan not in self.plans.rates:
            raise ConfigurationError(f"Limit({self.name!r}).for_plan({plan!r}): no such plan")
        cost: int | Cost = self.cost if self.variable is None else self.variable
        return Limit(f"{self.name}.{plan}", self.plans.rates[plan], key=self.key, cost=cost)


def _compile_path(path: str) -> Callable[[str], object]:
    """A predicate for one path pattern: exact, ``/prefix/*`` or a ``{param}`` template."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(
            f"RateLimitRule(path={path!r}): must start with '/' (exact, '/prefix/*' or a "
            "template like '/orders/{id}')"
        )
    prefix = path.endswith("/*")
    body = path[:-2] if prefix else path
    if "*" in body:
        raise ConfigurationError(f"RateLimitRule(path={path!r}): '*' only as a final '/*'")
    if "{" not in body and "}" not in body:
        if prefix:
            below = body + "/"
            return lambda p: p == body or p.startswith(below)
        return path.__eq__
    pattern = []
    at = 0
    for match in _PARAM.finditer(body):
        pattern.append(re.escape(body[at : match.start()]))
        convertor = (match.group(2) or "str").lower()
        pattern.append({"path": ".+", "int": "[0-9]+"}.get(convertor, "[^/]+"))
        at = match.end()
    rest = body[at:]
    if "{" in rest or "}" in rest or any("{" in p or "}" in p for p in pattern[::2]):
        raise ConfigurationError(
            f"RateLimitRule(path={path!r}): parameters look like '{{name}}' or '{{name:path}}'"
        )
    pattern.append(re.escape(rest))
    regex = "".join(pattern) + ("(?:/.*)?" if prefix else "")
    return re.compile(regex).fullmatch


@dataclass(frozen=True, slots=True, init=False)
class RateLimitRule:
    """Limits that apply to the requests matching ``path`` and ``methods``.

    Args:
        limits: one `Limit` or several; all are decided together (all or nothing).
        path: an exact path (``"/login"``), a prefix (``"/api/*"``: ``/api`` and below), a
            route template (``"/orders/{id}"``, ``"/files/{p:path}"``), or None for every
            path. The middleware runs before routing, so templates match the raw path.
        methods: the HTTP methods (default all); ``GET`` also covers ``HEAD``.

    Example::

        RateLimitRule([Limit("burst", "10/second"), Limit("daily", "1000/day")])
        RateLimitRule(Limit("orders", "5/minute", key=principal()), path="/orders",
                      methods=["POST"])
    """

    limits: tuple[Limit, ...]
    path: str | None
    methods: frozenset[str] | None
    matcher: Callable[[str], object] | None = field(repr=False, compare=False)

    def __init__(
        self,
        limits: Limit | Iterable[Limit],
        path: str | None = None,
        methods: Iterable[str] | None = None,
    ) -> None:
        found = (limits,) if isinstance(limits, Limit) else tuple(limits)
        if not found or not all(isinstance(limit, Limit) for limit in found):
            raise ConfigurationError(f"RateLimitRule(limits={limits!r}): one or more Limit objects")
        names = [limit.name for limit in found]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"RateLimitRule(limits=...): duplicate names in {names}")
        object.__setattr__(self, "limits", found)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "matcher", None if path is None else _compile_path(path))
        if methods is None:
            object.__setattr__(self, "methods", None)
        else:
            if isinstance(methods, str):
                methods = (methods,)
            upper = frozenset(str(m).upper() for m in methods)
            if not upper or not all(_METHOD.match(m) for m in upper):
                raise ConfigurationError(
                    f"RateLimitRule(methods={methods!r}): HTTP method names like 'GET', 'POST'"
                )
            if "GET" in upper:
                upper |= {"HEAD"}
            object.__setattr__(self, "methods", upper)
