"""Quotas that fit real plans: `Plans` (a rate per plan) and `Cost` (what a request spends).

A `buttress.asgi.Limit` may take a `Plans` instead of one rate: the plan of each request
is resolved (from the principal, the tenant, a trusted header...) and the plan's rate
applies, under the policy name ``"<limit>.<plan>"`` in ``RateLimit-Policy``. Each plan
counts on its own keys: GCRA stores time owed, not units, so a count cannot carry over
from one rate to another (a tenant that upgrades starts the new plan's quota). Resolving
a plan may be slow (a database lookup): answers are cached per key, bounded in entries and
expiring after ``ttl`` seconds. A resolver that raises, or does not answer within
``timeout`` seconds, never fails nor holds the request: the last plan it gave for that key
while it is still in the cache (an expired answer is better than a downgrade during a
database blip), else the default plan, applies; the failure is logged, never cached.

A `Cost` says what one request spends when it is not a fixed number: ``before`` reads it
from the request (``Content-Length`` for uploads), ``after`` from the response (rows
exported, tokens generated, bytes freed: a negative cost is a refund). An after-cost is
charged when the response ends, through `buttress._gcra.charge_request`: a request is
admitted only while its key is not overdrawn, so a key served one request at a time is
never more than one request's cost beyond its limit (``k`` requests in flight at once: at
most their ``k`` costs), and it is refused until it is back under it. A charge the shared
store fails to take is counted by the local fallback store and *owed* to the shared one
(`buttress.asgi.RateLimitMiddleware`): paid before its next decision for that key, and
all at once when it answers again, so an outage between the decision and the charge does
not leave the key fresh (an ambiguous failure may count a charge twice, never zero times).

Example::

    Limit("daily", Plans({"free": "10/day", "pro": "1000/day"}, resolve=plan_of_tenant))
    Limit("upload", "1024/day", key=tenant(), cost=request_units("content-length", 1 << 20))
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress._gcra import Rate, RateDecision, RateRequest, charge_request
from buttress.asgi._types import Scope
from buttress.errors import ConfigurationError
from buttress.stores import RateLimitStore

__all__ = [
    "Cost",
    "PlanResolver",
    "Plans",
    "acharge",
    "charge",
    "plan_from_header",
    "plan_from_state",
    "request_units",
    "response_bytes",
    "response_units",
]

_log = logging.getLogger("buttress")

#: ``resolve(scope, key)``: the plan name of a request (None: the default plan), or an
#: awaitable of it. ``key`` is the limit's key for this request (``"tenant:acme"``).
PlanResolver = Callable[[Scope, str], "str | Awaitable[str | None] | None"]
#: ``after(status, headers, body_bytes)``: what the response cost (negative: a refund).
AfterCost = Callable[[int, list[tuple[bytes, bytes]], int], int]
_PLAN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
_CHARGE_ATTEMPTS = 3  # a charge that finds the key overdrawn retries with the overdraft


# ----------------------------------------------------------------------------- plans
class Plans:
    """A rate per plan, and how to find the plan of a request.

    Args:
        rates: plan name -> `Rate` or its string form (``{"free": "10/day"}``).
        resolve: ``resolve(scope, key) -> plan name | None`` (sync or async); default
            `plan_from_state` (``scope["state"]["plan"]``, set by your authentication).
        default: the plan of a request whose plan is None or unknown (default: the first).
        ttl: seconds an answer of ``resolve`` is kept per key (0: not cached).
        max_entries: keys cached at most (the oldest are forgotten first).
        timeout: seconds an async ``resolve`` may take (default 1; None: unbounded). The
            rate limits run before the request deadline, so a lookup that hangs would
            hold the request: past this, or when ``resolve`` raises, the key's last known
            plan (an expired cache entry), else the default plan, applies.
        clock: time source of the cache (tests pass a FakeClock).

    Example::

        async def plan_of(scope, key):          # key: "tenant:acme"
            return await db.fetchval("SELECT plan FROM tenants WHERE id = $1", key[7:])

        Plans({"free": "10/day", "pro": "1000/day"}, resolve=plan_of, ttl=60)
    """

    __slots__ = (
        "_cache",
        "clock",
        "default",
        "failures",
        "max_entries",
        "rates",
        "resolve",
        "timeout",
        "ttl",
    )

    def __init__(
        self,
        rates: Mapping[str, Rate | str],
        *,
        resolve: PlanResolver | None = None,
        default: str | None = None,
        ttl: float = 60.0,
        max_entries: int = 10_000,
        timeout: float | None = 1.0,
        clock: Clock | None = None,
    ) -> None:
        import re  # noqa: PLC0415 - configuration time only

        owner = "Plans"
        if not isinstance(rates, Mapping) or not rates:
            raise ConfigurationError(f"{owner}(rates={rates!r}): a mapping of plan -> rate")
        parsed: dict[str, Rate] = {}
        for plan, rate in rates.items():
            if not isinstance(plan, str) or not re.fullmatch(_PLAN, plan):
                raise ConfigurationError(
                    f"{owner}(rates=...): plan name {plan!r} must be 1-32 letters, digits, "
                    "'_' or '-' (it is sent in RateLimit-Policy)"
                )
            try:
                parsed[plan] = rate if isinstance(rate, Rate) else Rate.parse(rate)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{owner}(rates={{{plan!r}: ...}}): {exc}") from exc
        self.rates: dict[str, Rate] = parsed
        if default is None:
            default = next(iter(parsed))
        if default not in parsed:
            raise ConfigurationError(
                f"{owner}(default={default!r}): not one of the plans {sorted(parsed)}"
            )
        self.default = default
        if resolve is not None and not callable(resolve):
            raise ConfigurationError(f"{owner}(resolve={resolve!r}): must be callable")
        self.resolve: PlanResolver = resolve or plan_from_state()
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl < math.inf:
            raise ConfigurationError(f"{owner}(ttl={ttl!r}): seconds >= 0 (0: no cache)")
        self.ttl = float(ttl)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"{owner}(max_entries={max_entries!r}): an integer >= 1")
        self.max_entries = max_entries
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            raise ConfigurationError(
                f"{owner}(timeout={timeout!r}): seconds > 0 a resolver may take, or None"
            )
        self.timeout = None if timeout is None else float(timeout)
        self.failures = 0  # resolver calls that raised or timed out
        self.clock = clock or SYSTEM_CLOCK
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __repr__(self) -> str:
        rates = ", ".join(f"{plan}={rate}" for plan, rate in self.rates.items())
        return f"Plans({rates}, default={self.default!r}, ttl={self.ttl:g})"

    def plan(self, scope: Scope, key: str) -> str | Awaitable[str]:
        """The plan of this request: a name when known now, else an awaitable of it.

        Never raises: a resolver that fails gives the key's last known plan, else the
        default (see the class doc).
        """
        cache = self._cache
        if self.ttl > 0:
            entry = cache.get(key)
            if entry is not None and entry[1] > self.clock.now():
                return entry[0]
        try:
            answer = self.resolve(scope, key)
        except Exception as exc:  # a plan lookup that fails must not fail the request
            return self._failed(key, exc)
        if inspect.isawaitable(answer):
            return self._await(answer, key)
        return self._known(answer, key)

    async def _await(self, answer: Awaitable[str | None], key: str) -> str:
        try:
            if self.timeout is None:
                got = await answer
            else:
                async with asyncio.timeout(self.timeout):
                    got = await answer
        except Exception as exc:  # raised, or TimeoutError: the request goes on
            return self._failed(key, exc)
        return self._known(got, key)

    def _failed(self, key: str, exc: Exception) -> str:
        """The plan of a key whose resolver failed: its last known one, else the default."""
        self.failures += 1
        entry = self._cache.get(key)
        plan = entry[0] if entry is not None else self.default
        if self.failures == 1 or self.failures % 1000 == 0:
            why = (
                f"did not answer within {self.timeout:g} s"
                if isinstance(exc, TimeoutError) and self.timeout is not None
                else f"failed ({type(exc).__name__}: {exc})"
            )
            _log.warning(
                "rate-limit plan resolver %s; using the key's last known plan, else %r "
                "(%d failures so far)",
                why,
                self.default,
                self.failures,
            )
        return plan

    def _known(self, answer: object, key: str) -> str:
        plan = answer if isinstance(answer, str) and answer in self.rates else self.default
        if answer is not None and plan != answer:
            _log.warning(
                "rate-limit plan %r is not one of %s; using %r", answer, list(self.rates), plan
            )
        if self.ttl > 0:
            cache = self._cache
            cache[key] = (plan, self.clock.now() + self.ttl)
            cache.move_to_end(key)
            while len(cache) > self.max_entries:
                cache.popitem(last=False)
        return plan

    def forget(self, key: str | None = None) -> None:
        """Drop the cached plan of ``key`` (after an upgrade), or of every key.

        Example::

            plans.forget("tenant:acme")     # the next request resolves its plan again
        """
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    def __len__(self) -> int:
        return len(self._cache)


def plan_from_state(name: str = "plan") -> PlanResolver:
    """The plan an upstream middleware stored in ``scope["state"][name]``.

    Example::

        Plans({"free": "10/day", "pro": "1000/day"}, resolve=plan_from_state("plan"))
    """

    def resolve(scope: Scope, key: str) -> str | None:
        state = scope.get("state")
        value = state.get(name) if isinstance(state, Mapping) else None
        return value if isinstance(value, str) else None

    resolve.__qualname__ = f"plan_from_state({name!r})"
    return resolve


def plan_from_header(name: str) -> PlanResolver:
    """The plan named by a request header that a trusted gateway sets (demos, tests).

    Never trust a header a client can send itself: it would choose its own plan. Cache
    such a resolver with ``ttl=0`` (the answer is not a property of the key).

    Example::

        Plans({"free": "10/day", "pro": "1000/day"}, resolve=plan_from_header("x-plan"), ttl=0)
    """
    wanted = name.lower().encode("latin-1")

    def resolve(scope: Scope, key: str) -> str | None:
        for header, value in scope["headers"]:
            if header == wanted:
                return bytes(value).decode("latin-1").strip()
        return None

    resolve.__qualname__ = f"plan_from_header({name!r})"
    return resolve


def check_plan_source(source: str) -> PlanResolver:
    """The resolver a ``rate_limit_plan`` setting names: ``state:NAME`` or ``header:NAME``.

    Example::

        check_plan_source("header:x-plan")    # plan_from_header('x-plan')
    """
    kind, _, name = str(source).partition(":")
    if kind == "state" and name.isidentifier():
        return plan_from_state(name)
    if kind == "header" and name and all(c.isalnum() or c == "-" for c in name):
        return plan_from_header(name)
    raise ConfigurationError(
        f"HardenSettings(rate_limit_plan={source!r}): 'state:NAME' (scope['state'][NAME], "
        "set by your authentication) or 'header:NAME' (a header a trusted gateway sets)"
    )


def plan_rates(text: str, source: str = "state:plan") -> str | Plans:
    """A ``rate_limits`` value: a rate, or a plan map ``free:10/day|pro:1000/day``.

    The first plan is the default (requests whose plan is unknown). ``source`` says where
    the plan comes from (see `check_plan_source`); plans read from the request are not
    cached (reading them again costs less than a cache).

    Example::

        plan_rates("free:10/day|pro:1000/day;burst=100", "header:x-plan")
        # Plans(free=10/86400s, pro=1000/86400s;burst=100, default='free', ttl=0)
    """
    text = text.strip()
    if ":" not in text:
        return text
    rates: dict[str, str] = {}
    for item in text.split("|"):
        plan, sep, rate = item.partition(":")
        if not sep or not plan.strip() or plan.strip() in rates:
            raise ConfigurationError(
                f"plan map {text!r}: 'plan:rate' items separated by '|' with distinct plans, "
                "such as 'free:10/day|pro:1000/day'"
            )
        rates[plan.strip()] = rate.strip()
    return Plans(rates, resolve=check_plan_source(source), ttl=0)


# ----------------------------------------------------------------------------- cost
@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    """What one request spends, when it is not a fixed number of units.

    Args:
        before: ``before(scope) -> units``, known from the request (its headers); the
            request is refused (429) when the key cannot afford it, and answered 413 when
            it costs more than the policy's burst (it could never pass).
        after: ``after(status, headers, body_bytes) -> units``, known from the response,
            charged when the response ends; may be negative (a refund). The request is
            admitted only while its key is not overdrawn.

    Use the helpers: `request_units`, `response_units`, `response_bytes`.

    Example::

        Cost(before=request_units("content-length", unit=1024).before)
    """

    before: Callable[[Scope], int] | None = None
    after: AfterCost | None = field(default=None)

    def __post_init__(self) -> None:
        if self.before is None and self.after is None:
            raise ConfigurationError("Cost(): give before=, after=, or both")
        for name in ("before", "after"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigurationError(f"Cost({name}={value!r}): must be callable")


def _units(raw: bytes | None, unit: int, missing: int) -> int:
    """A header's non-negative integer in units of ``unit`` (rounded up), else ``missing``."""
    text = b"" if raw is None else raw.strip()
    if not text.isdigit() or len(text) > 18:
        return missing
    return -(-int(text) // unit)


def _check_unit(owner: str, unit: int, missing: int) -> None:
    if isinstance(unit, bool) or not isinstance(unit, int) or unit < 1:
        raise ConfigurationError(f"{owner}(unit={unit!r}): an integer >= 1 (bytes per unit)")
    if isinstance(missing, bool) or not isinstance(missing, int) or missing < 0:
        raise ConfigurationError(f"{owner}(missing={missing!r}): an integer >= 0")


def request_units(header: str = "content-length", unit: int = 1, *, missing: int = 1) -> Cost:
    """A cost read from a request header, in units of ``unit`` (rounded up).

    Args:
        header: the request header (default ``content-length``: bytes uploaded).
        unit: what one unit is worth (1024: KiB); the value is divided, rounded up.
        missing: the cost when the header is absent or not a number (default 1). A
            streamed upload has no ``Content-Length``: bound it with the body limit.

    Example::

        Limit("upload", "1048576/day", key=tenant(), cost=request_units(unit=1024))  # KiB
    """
    _check_unit("request_units", unit, missing)
    wanted = header.lower().encode("latin-1")

    def before(scope: Scope) -> int:
        for name, value in scope["headers"]:
            if name == wanted:
                return _units(bytes(value), unit, missing)
        return missing

    before.__qualname__ = f"request_units({header!r}, {unit})"
    return Cost(before=before)


def response_units(header: str, unit: int = 1, *, missing: int = 0, refund: bool = False) -> Cost:
    """A cost the handler reports in a response header, charged when the response ends.

    Args:
        header: the response header the handler sets (``x-rows-exported``).
        unit: what one unit is worth; the value is divided, rounded up.
        missing: the cost when the header is absent (default 0).
        refund: the value is given back instead (``x-bytes-freed`` on a delete).

    Example::

        Limit("export-rows", "100000/day", key=tenant(), cost=response_units("x-rows"))
    """
    _check_unit("response_units", unit, missing)
    wanted = header.lower().encode("latin-1")
    sign = -1 if refund else 1

    def after(status: int, headers: list[tuple[bytes, bytes]], body_bytes: int) -> int:
        for name, value in headers:
            if name.lower() == wanted:
                return sign * _units(value, unit, missing)
        return sign * missing

    after.__qualname__ = f"response_units({header!r}, {unit})"
    return Cost(after=after)


def response_bytes(unit: int = 1, *, statuses: tuple[int, int] = (200, 299)) -> Cost:
    """The response body's size in units of ``unit``, for responses in ``statuses``.

    Example::

        Limit("egress", "1024/hour", key=api_key(), cost=response_bytes(unit=1 << 20))  # MiB
    """
    _check_unit("response_bytes", unit, 0)
    low, high = statuses

    def after(status: int, headers: list[tuple[bytes, bytes]], body_bytes: int) -> int:
        return -(-body_bytes // unit) if low <= status <= high else 0

    after.__qualname__ = f"response_bytes({unit})"
    return Cost(after=after)


# ----------------------------------------------------------------------------- charging
def _charging(
    key: str, rate: Rate, cost: int
) -> Generator[RateRequest, RateDecision, RateDecision]:
    """The charge as a command: yields the store requests, receives their decisions.

    A charge that finds the key overdrawn (others' charges landed first) is retried with
    ``slack`` covering the overdraft the refusal reported, at most three times.
    """
    slack = 0
    decision = yield charge_request(key, rate, cost)
    for _ in range(_CHARGE_ATTEMPTS - 1):
        if decision.allowed:
            return decision
        slack += math.ceil(decision.retry_after / rate.interval) + 1
        decision = yield charge_request(key, rate, cost, slack)
    if not decision.allowed:
        _log.warning(
            "rate-limit charge of %d units to a key could not land in %d attempts; it is lost",
            cost,
            _CHARGE_ATTEMPTS,
        )
    return decision


def charge(store: RateLimitStore, key: str, rate: Rate, cost: int) -> RateDecision:
    """Count ``cost`` units against ``key`` now, even over its limit (see `charge_request`).

    Returns the decision of the charge that landed (``allowed`` False only when three
    attempts met a key that other charges kept pushing: then the cost is lost, and logged).

    Example::

        charge(store, "rl:export:tenant:acme", Rate(100_000, 86400.0), 2_500)
    """
    steps = _charging(key, rate, cost)
    request = next(steps)
    while True:
        try:
            request = steps.send(store.acquire([request])[0])
        except StopIteration as done:
            result: RateDecision = done.value
            return result


async def acharge(store: RateLimitStore, key: str, rate: Rate, cost: int) -> RateDecision:
    """Async `charge`."""
    steps = _charging(key, rate, cost)
    request = next(steps)
    while True:
        decisions = await store.aacquire([request])
        try:
            request = steps.send(decisions[0])
        except StopIteration as done:
            result: RateDecision = done.value
            return result
