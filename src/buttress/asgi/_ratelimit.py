"""Inbound rate limits and quotas: `RateLimitMiddleware`, `RateLimitRule`, `Limit`.

Each request is matched (method first, then path) against the rules; every limit of every
matching rule resolves its key (`buttress.asgi.keys`), and all of them are decided in
*one* store call, all or nothing: a request refused by the daily quota does not spend the
per-second burst. The store runs GCRA, so ``Retry-After`` is exact (rounded up to whole
seconds, a client that obeys it is admitted).

Responses carry the IETF fields of draft-ietf-httpapi-ratelimit-headers-11 (May 2026), a
List of Items each::

    RateLimit-Policy: "burst";q=20;w=1, "daily";q=1000;w=86400
    RateLimit: "burst";r=19;t=1, "daily";r=999;t=87

``q`` is the policy's limit per window ``w`` (whole seconds); ``r`` is what the key can
spend right now (up to the burst) and ``t`` the seconds until it is full again. A 429
lists, in ``RateLimit``, only the violated policies, with ``r`` and ``t`` equal to the wait
(the draft's section 6: ``Retry-After`` must not end before a listed window), and answers
problem+json of type ``rate-limited`` naming the policy (``policy``, the draft's
violated policies as ``violated_policies``) and ``retry_after``. Legacy
``X-RateLimit-Limit/Remaining/Reset`` (delta seconds) describe the tightest policy, on
request.

When the shared store fails (`BackendError`, a timeout, anything), or while the circuit
breaker around it is open, requests are decided by a local in-memory store with the same
rules (``fail_mode="open"``, the default) or refused with 503 problem+json
(``fail_mode="closed"``); never a 500. The breaker's half-open probe returns to the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress._expiry import ENTRY_BYTES, ExpiryTable
from buttress.asgi._context import ADDRESS_HEADERS
from buttress.asgi._heavy_hitters import NoisyNeighbours
from buttress.asgi._problem import send_problem
from buttress.asgi._quotas import AfterCost, acharge, charge
from buttress.asgi._ratelimit_rules import Limit, RateLimitRule
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope, Send
from buttress.asgi.keys import ROUTE_TEMPLATE_KEY, KeyFunc, client_ip
from buttress.errors import BackendError, CircuitOpen, ConfigurationError, ErrorCode
from buttress.resilience import CircuitBreaker
from buttress.stores import MemoryStore, Rate, RateDecision, RateLimitStore, RateRequest
from buttress.telemetry import (
    Hook,
    QuotaWarningEvent,
    RateLimitedEvent,
    RateLimitFallbackEvent,
    emit,
)

__all__ = ["Limit", "RateLimitMiddleware", "RateLimitRule"]

_log = logging.getLogger("buttress")

# Float slack when rounding waits up to whole seconds: the stores admit a request up to a
# microsecond early, so 2.0000001 s of wait is "2 s", not 3.
_SLACK = 1e-6
_MAX_KEY = 200  # longer keys are stored as a digest (huge or unicode header values)
_WARNED_MAX = 10_000


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - _SLACK))


# one limit that applies to one request: the limit, the key, the rule's path (a tuple: this
# is built per request and limit on the hot path)
_Applied = tuple[Limit, str, "str | None"]
_REQUESTS_KEPT = 4096  # per limit: the store requests of the keys seen last
_OWED_MAX = 10_000  # keys whose after-charges wait for the shared store to answer again


class _Spec:
    """One limit, prepared: its resolver, stored-key prefix, warning level, header parts.

    A limit with `Plans` has one spec per plan too (``by_plan``, named ``"<name>.<plan>"``,
    each counting on its own keys); ``special`` marks the limits decided off the common
    path (a plan to resolve, or a cost to measure).
    """

    __slots__ = (
        "after",
        "before",
        "by_found",
        "by_plan",
        "count_admitted",
        "count_refused",
        "limit",
        "name",
        "plans",
        "policy",
        "prefix",
        "requests",
        "resolver",
        "special",
        "warn_at",
    )

    def __init__(self, limit: Limit, resolver: KeyFunc, warn_ratio: float | None) -> None:
        self.limit = limit
        self.resolver = resolver
        self.plans = limit.plans
        self.by_plan: dict[str, _Spec] = {}
        # `NoisyNeighbours` counters of this policy's decisions (None: not tracked)
        self.count_admitted: Callable[[str], None] | None = None
        self.count_refused: Callable[[str], None] | None = None
        variable = limit.variable
        self.before = None if variable is None else variable.before
        self.after: AfterCost | None = None if variable is None else variable.after
        self.special = self.plans is not None or variable is not None
        # a resolver that can read the headers the runner scanned already (client_ip)
        self.by_found: Callable[[Scope, dict[bytes, list[bytes]]], str | None] | None = getattr(
            resolver, "from_found", None
        )
        self.prefix = f"rl:{limit.name}:"
        # the ``remaining`` at or below which a key has used ``warn_ratio`` of the policy
        self.warn_at = -1.0 if warn_ratio is None else limit.rate.burst * (1.0 - warn_ratio) + 1e-9
        self.name = limit.name.encode("ascii")
        self.policy = limit.policy_item.encode("ascii")
        # key -> its RateRequest, bounded (cleared when full): one object per client, not
        # one per request
        self.requests: dict[str, RateRequest] = {}


class RateLimitMiddleware(Stage):
    """Rate limits and quotas for any ASGI application (pure ASGI).

    Args:
        app: the ASGI application.
        rules: `RateLimitRule` objects (a bare `Limit` is a rule for every request).
        store: a `buttress.stores.RateLimitStore` or a store URL (default: an in-process
            `MemoryStore`; a shared store makes the limits hold across processes).
        fail_mode: when the store fails, ``"open"`` decides with a local in-memory store
            (same rules, per process) and ``"closed"`` answers 503 problem+json.
        headers: ``"ietf"`` sends ``RateLimit-Policy`` and ``RateLimit``; None sends neither.
        legacy_headers: also send ``X-RateLimit-Limit/Remaining/Reset`` (tightest policy).
        warn_ratio: emit a `QuotaWarningEvent` once when a key has used this share of a
            policy (default 0.8; None disables).
        key_secret: HMAC secret for the key hashes in events (default:
            ``$BUTTRESS_KEY_SECRET``, else random per process, so hashes then only
            correlate within one process's lifetime).
        exempt_paths: paths never limited, each with everything below it (``/health``
            covers ``/health/ready``).
        trusted_proxies: proxy CIDRs for limits without an explicit ``key``.
        breaker: the `CircuitBreaker` around store calls (default: opens after 3
            consecutive failures or half of 10+ calls failing in 10 s, probes after 5 s).
        store_timeout: seconds a store call may take before it counts as failed (default
            1; not applied to an in-process store, which cannot hang).
        clock: time source of the default stores and breaker (tests pass a FakeClock).
        name: the name of this middleware in fallback events and metrics.
        hooks: event hooks besides the global ones.
        on_limited: called with the policy name for every request refused with 429 (what
            `harden` uses to count ``buttress_http_requests_limited_total``).
        top_keys: a `NoisyNeighbours` that counts every decision per policy and key (the
            heaviest keys, admitted and refused, in bounded memory), or None.
        audit_breaches: write a ``ratelimit.breach`` business audit event
            (`buttress.auditlog`) the first time a key is refused by a policy in its window.

    Example::

        app = RateLimitMiddleware(app, [
            RateLimitRule([Limit("burst", "20/second"), Limit("daily", "10000/day")]),
            RateLimitRule(Limit("login", "5/minute"), path="/login", methods=["POST"]),
        ], store="redis://127.0.0.1:6379/0", trusted_proxies=["10.0.0.0/8"])
    """

    def __init__(
        self,
        app: ASGIApp,
        rules: Iterable[RateLimitRule | Limit],
        *,
        store: RateLimitStore | str | None = None,
        fail_mode: Literal["open", "closed"] = "open",
        headers: Literal["ietf"] | None = "ietf",
        legacy_headers: bool = False,
        warn_ratio: float | None = 0.8,
        key_secret: bytes | str | None = None,
        exempt_paths: Iterable[str] = ("/health", "/metrics"),
        trusted_proxies: Iterable[str] = (),
        breaker: CircuitBreaker | None = None,
        store_timeout: float | None = 1.0,
        clock: Clock | None = None,
        name: str = "ratelimit",
        hooks: Iterable[Hook] = (),
        on_limited: Callable[[str], None] | None = None,
        top_keys: NoisyNeighbours | None = None,
        audit_breaches: bool = True,
    ) -> None:
        owner = "RateLimitMiddleware"
        self.app = app
        built = []
        for rule in rules:
            if isinstance(rule, Limit):
                rule = RateLimitRule(rule)  # noqa: PLW2901 - shorthand for a global rule
            if not isinstance(rule, RateLimitRule):
                raise ConfigurationError(f"{owner}(rules=...): {rule!r} is not a RateLimitRule")
            built.append(rule)
        if not built:
            raise ConfigurationError(f"{owner}(rules=[]): give at least one RateLimitRule")
        names = [limit.name for rule in built for limit in rule.limits]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(
                f"{owner}(rules=...): duplicate limit names {duplicates}; each policy needs "
                "its own name (headers, events and the stored state are keyed by it)"
            )
        self.rules: tuple[RateLimitRule, ...] = tuple(built)
        if fail_mode not in ("open", "closed"):
            raise ConfigurationError(f"{owner}(fail_mode={fail_mode!r}): 'open' or 'closed'")
        self.fail_mode = fail_mode
        if headers not in ("ietf", None):
            raise ConfigurationError(f"{owner}(headers={headers!r}): 'ietf' or None")
        self.ietf = headers == "ietf"
        self.legacy = bool(legacy_headers)
        if warn_ratio is not None and (
            isinstance(warn_ratio, bool)
            or not isinstance(warn_ratio, int | float)
            or not 0 < warn_ratio < 1
        ):
            raise ConfigurationError(
                f"{owner}(warn_ratio={warn_ratio!r}): a share in (0, 1), or None"
            )
        self.warn_ratio = warn_ratio
        if store_timeout is not None and (
            isinstance(store_timeout, bool)
            or not isinstance(store_timeout, int | float)
            or not 0 < store_timeout <= 60
        ):
            raise ConfigurationError(
                f"{owner}(store_timeout={store_timeout!r}): seconds in (0, 60], or None"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{owner}(name={name!r}): a non-empty string")
        self.name = name
        self.hooks = tuple(hooks)
        self.on_limited = on_limited
        self.clock = clock or SYSTEM_CLOCK
        self.key_secret = _key_secret(key_secret)

        if store is None:
            store = MemoryStore(clock=self.clock)
        elif isinstance(store, str):
            from buttress.stores import open_store  # noqa: PLC0415 - drivers load lazily

            store = open_store(store)
        if not isinstance(store, RateLimitStore):
            raise ConfigurationError(
                f"{owner}(store={store!r}): needs acquire() and aacquire() "
                "(a buttress.stores RateLimitStore)"
            )
        self.store = store
        self.local = store if isinstance(store, MemoryStore) else MemoryStore(clock=self.clock)
        # an in-process store cannot fail or hang: no breaker, no timeout on the hot path
        self.direct = isinstance(store, MemoryStore)
        self.store_timeout = None if self.direct else store_timeout
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"{owner}(breaker={breaker!r}): a CircuitBreaker")
        self.breaker = breaker or CircuitBreaker(
            failure_rate=0.5,
            minimum_calls=10,
            window=10.0,
            consecutive_failures=3,
            break_duration=5.0,
            name=f"{name}-store",
            clock=self.clock,
        )
        self.engaged = False  # deciding without the shared store right now

        default_key = client_ip(trusted_proxies)
        self._specs: dict[str, _Spec] = {}
        for rule in built:
            for limit in rule.limits:
                spec = self._specs[limit.name] = _Spec(limit, limit.key or default_key, warn_ratio)
                for plan in () if limit.plans is None else limit.plans.rates:
                    derived = limit.for_plan(plan)
                    if derived.name in names:
                        raise ConfigurationError(
                            f"{owner}(rules=...): the policy {derived.name!r} of plan {plan!r} "
                            "is also the name of a limit; rename one"
                        )
                    spec.by_plan[plan] = self._specs[derived.name] = _Spec(
                        derived, spec.resolver, warn_ratio
                    )
        if top_keys is not None and not isinstance(top_keys, NoisyNeighbours):
            raise ConfigurationError(f"{owner}(top_keys={top_keys!r}): a NoisyNeighbours")
        self.top_keys = top_keys
        if top_keys is not None:  # counters bound once: one call per decision
            for spec in self._specs.values():
                if spec.plans is None:  # a limit with plans counts under its plans' names
                    spec.count_admitted = top_keys.counter(spec.limit.name, True)
                    spec.count_refused = top_keys.counter(spec.limit.name, False)
        self.audit_breaches = bool(audit_breaches)
        # limits charged when the response ends; their in-flight charges (async stores)
        self._charged = any(spec.after is not None for spec in self._specs.values())
        self._charging: set[asyncio.Task[None]] = set()
        # stored key -> (rate, units) of after-charges the shared store missed (it failed):
        # counted by the local store meanwhile, paid to the shared one before it decides
        # for that key again (and all of them once it answers again)
        self._owed: dict[str, tuple[Rate, int]] = {}
        self.owed_lost = 0  # after-charges forgotten because _OWED_MAX keys already owed
        # rules per method; methods no rule names fall back to the rules for every method
        every = tuple(r for r in built if r.methods is None)
        listed = {m for r in built if r.methods is not None for m in r.methods}
        self._by_method: dict[str, tuple[RateLimitRule, ...]] = {
            m: tuple(r for r in built if r.methods is None or m in r.methods) for m in listed
        }
        self._other = every
        exempt = tuple(exempt_paths)
        for path in exempt:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"{owner}(exempt_paths=...): {path!r} must start with /")
        self._exempt = frozenset(p.rstrip("/") or "/" for p in exempt)
        self._exempt_below = tuple((p.rstrip("/") or "") + "/" for p in exempt)
        # policy:key-hash -> until when its warning is not repeated (bounded, expiring)
        self._warned: ExpiryTable[str, float] = ExpiryTable(
            _WARNED_MAX, _WARNED_MAX * 256, expiry=float, size=_marker_size
        )
        self._failed_resolvers: set[str] = set()

    # ------------------------------------------------------------ helpers
    def key_hash(self, key: str) -> str:
        """The hash events carry for ``key`` (HMAC-SHA256 with ``key_secret``, 64 bits).

        Example::

            middleware.key_hash("ip:203.0.113.9")   # find this client in audit logs
        """
        digest = hmac.new(self.key_secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:16]

    def _resolve(
        self,
        scope: Scope,
        rules: Sequence[RateLimitRule],
        found: dict[bytes, list[bytes]] | None = None,
        known: dict[str, str] | None = None,
    ) -> tuple[list[_Applied], list[RateRequest], _Special | None]:
        """The limits that apply to this request with their keys, and the store requests.

        ``found``: the request headers the runner scanned (lets `client_ip` keys skip a scan).
        ``known``: limit name -> plan, for plans an earlier pass had to await. The third
        item is None unless a limit has plans or a measured cost (see `_Special`).
        """
        applied: list[_Applied] = []
        requests: list[RateRequest] = []
        special: _Special | None = None
        path = scope["path"]
        specs = self._specs
        for rule in rules:
            matcher = rule.matcher
            if matcher is not None:
                if not matcher(path):
                    continue
                scope[ROUTE_TEMPLATE_KEY] = rule.path
            last: KeyFunc | None = None  # limits of a rule often share a resolver (burst+daily)
            resolved: str | None = None
            for limit in rule.limits:
                spec = specs[limit.name]
                resolver = spec.resolver
                try:
                    if resolver is last:
                        key = resolved
                    elif found is not None and spec.by_found is not None:
                        key = spec.by_found(scope, found)
                    else:
                        key = resolver(scope)
                    last, resolved = resolver, key
                except Exception:  # buttress: ignore[BTR303] logged once by _resolver_failed
                    self._resolver_failed(limit.name)
                    key = None
                if key is None:
                    continue
                if type(key) is not str:
                    key = str(key)
                if spec.special:
                    if special is None:
                        special = _Special()
                    got = self._special(scope, spec, key, special, known)
                    if got is not None:
                        applied.append((got[0], key, rule.path))
                        requests.append(got[1])
                    continue
                applied.append((limit, key, rule.path))
                kept = spec.requests
                request = kept.get(key)
                if request is None:
                    request = RateRequest(spec.prefix + _stored(key), limit.rate, limit.cost)
                    if len(kept) >= _REQUESTS_KEPT:
                        kept.clear()
                    kept[key] = request
                requests.append(request)
        return applied, requests, special

    def _resolver_failed(self, name: str) -> None:
        """Log a key resolver's failure, once per limit (the limit is skipped: no key)."""
        if name not in self._failed_resolvers:
            self._failed_resolvers.add(name)
            _log.exception(
                "rate limit %r: key resolver failed; the limit is skipped for requests "
                "where it fails",
                name,
            )

    def _special(
        self,
        scope: Scope,
        spec: _Spec,
        key: str,
        special: _Special,
        known: dict[str, str] | None,
    ) -> tuple[Limit, RateRequest] | None:
        """A limit with plans or a measured cost: the limit as it applies, and its request.

        None when the plan must be awaited first (then ``special.pending`` says which).
        """
        name = spec.limit.name
        plans = spec.plans
        if plans is not None:
            plan = None if known is None else known.get(name)
            if plan is None:
                answer = plans.plan(scope, key)
                if not isinstance(answer, str):
                    special.pending.append((name, answer))
                    return None
                plan = answer
            spec = spec.by_plan[plan]
        limit = spec.limit
        if spec.before is None and spec.after is None:  # plans alone: the kept requests
            request = spec.requests.get(key)
            if request is None:
                request = RateRequest(spec.prefix + _stored(key), limit.rate, limit.cost)
                if len(spec.requests) >= _REQUESTS_KEPT:
                    spec.requests.clear()
                spec.requests[key] = request
            return limit, request
        stored = spec.prefix + _stored(key)
        cost = 0
        if spec.before is not None:
            try:
                cost = int(spec.before(scope))
            except Exception:
                cost = 1
                if name not in self._failed_resolvers:
                    self._failed_resolvers.add(name)
                    _log.exception("rate limit %r: its cost function failed; counting 1", name)
            if cost > limit.rate.burst and special.too_costly is None:
                special.too_costly = (limit, cost)
            cost = max(cost, 0)
        if spec.after is not None:
            special.charges.append((spec.after, stored, limit.rate))
        return limit, RateRequest(stored, limit.rate, cost)

    # ------------------------------------------------------------ the stage
    def stage_hooks(self) -> Hooks:
        """Arrive: decided (429 when refused); start: the RateLimit fields.

        With costs charged after the response: start also keeps the response headers, and
        finish charges the cost.
        """
        if self._charged:
            return Hooks(
                arrive=self.arrive,
                start=self._start_charged,
                finish=self.finish,
                reads=ADDRESS_HEADERS,
                fields=("ratelimit_headers", "ratelimit_charges", "ratelimit_response"),
            )
        return Hooks(
            arrive=self.arrive,
            start=self.start,
            reads=ADDRESS_HEADERS,
            fields=("ratelimit_headers",),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Decide the limits that apply, in one store call; refuse with 429, or pass on."""
        ex.ratelimit_headers = None
        if self._charged:
            ex.ratelimit_charges = ex.ratelimit_response = None
        scope = ex.scope
        rules = self._by_method.get(scope["method"], self._other)
        path = scope["path"]
        if not rules or path in self._exempt or path.startswith(self._exempt_below):
            return None
        applied, requests, special = self._resolve(scope, rules, ex.found)
        if special is not None:
            if special.pending:
                return self._plans_then(ex, rules, special)
            if special.too_costly is not None:
                return self._too_costly(ex.scope, ex.send, *special.too_costly)
            if special.charges:
                ex.ratelimit_charges = special.charges
        if not applied:
            return None
        if self.direct:  # in process: decided here, no I/O (and no coroutine)
            return self._decided(ex, applied, self.store.acquire(requests))
        return self._decide_then(ex, applied, requests)

    async def _plans_then(self, ex: Any, rules: Sequence[RateLimitRule], special: _Special) -> bool:
        """Await the plans that are not cached, then decide as `arrive` does."""
        known = {name: await answer for name, answer in special.pending}
        applied, requests, again = self._resolve(ex.scope, rules, ex.found, known)
        if again is not None:
            if again.too_costly is not None:
                return await self._too_costly(ex.scope, ex.send, *again.too_costly)
            if again.charges:
                ex.ratelimit_charges = again.charges
        if not applied:
            return False
        return await self._decide_then(ex, applied, requests)

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """The ``RateLimit-Policy`` and ``RateLimit`` fields (and the legacy ones)."""
        extra = ex.ratelimit_headers
        if extra:
            headers.extend(extra)

    def _start_charged(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        if ex.ratelimit_charges:
            ex.ratelimit_response = list(headers)  # what the handler said (a cost header)
        extra = ex.ratelimit_headers
        if extra:
            headers.extend(extra)

    def finish(self, ex: Any) -> None:
        """Charge the costs measured on the response (see `buttress.asgi._quotas.Cost`)."""
        charges = ex.ratelimit_charges
        if not charges:
            return
        ex.ratelimit_charges = None
        headers = ex.ratelimit_response or []
        for after, key, rate in charges:
            try:
                cost = int(after(ex.status, headers, ex.size))
            except Exception:
                _log.exception("rate limit: a response cost function failed; nothing charged")
                continue
            if cost == 0:
                continue
            if self.direct:
                charge(self.store, key, rate, cost)
                continue
            task = asyncio.get_running_loop().create_task(self._acharge(key, rate, cost))
            self._charging.add(task)
            task.add_done_callback(self._charging.discard)

    async def _acharge(self, key: str, rate: Rate, cost: int) -> None:
        try:
            async with asyncio.timeout(self.store_timeout or 60.0):
                await acharge(self.store, key, rate, cost)
        except Exception as exc:  # the store is down: count it here, as decisions are
            self._engage("store error", exc)
            charge(self.local, key, rate, cost)
            # and owe it to the shared store, or the key would be fresh there once it
            # answers again (an ambiguous failure may then count it twice: never zero)
            self._owe(key, rate, cost)

    def _owe(self, key: str, rate: Rate, cost: int) -> None:
        """Remember an after-charge the shared store missed (bounded: ``_OWED_MAX`` keys)."""
        owed = self._owed
        debt = owed.get(key)
        if debt is not None:
            owed[key] = (rate, debt[1] + cost)
        elif len(owed) < _OWED_MAX:
            owed[key] = (rate, cost)
        else:
            self.owed_lost += 1
            if self.owed_lost == 1 or self.owed_lost % 1000 == 0:
                _log.warning(
                    "rate limit: %d keys already owe charges to the store that failed; "
                    "%d charges only counted locally",
                    _OWED_MAX,
                    self.owed_lost,
                )

    async def _pay(self, keys: Iterable[str]) -> None:
        """Send the owed after-charges of ``keys`` to the shared store (kept if it fails)."""
        owed = self._owed
        for key in keys:
            debt = owed.pop(key, None)
            if debt is None:
                continue
            try:
                await acharge(self.store, key, debt[0], debt[1])
            except BaseException:
                self._owe(key, *debt)
                raise

    async def _pay_all(self) -> None:
        """The store answers again: pay every owed after-charge, off the request path."""
        try:
            async with asyncio.timeout(self.store_timeout or 60.0):
                await self._pay(tuple(self._owed))
        except Exception as exc:  # down again: what is left waits for the next recovery
            self._engage("store error", exc)

    async def settle(self) -> None:
        """Wait for the charges still on their way to the store (tests, shutdown).

        Example::

            await middleware.settle()
        """
        while self._charging:
            await asyncio.gather(*tuple(self._charging), return_exceptions=True)

    async def _too_costly(self, scope: Scope, send: Send, limit: Limit, cost: int) -> bool:
        await send_problem(
            send,
            ErrorCode.PAYLOAD_TOO_LARGE,
            detail=(
                f"this request costs {cost} units of {limit.name!r}, more than its burst of "
                f"{limit.rate.burst}: it can never be admitted; split it"
            ),
            extra={"policy": limit.name, "cost": cost, "limit": limit.rate.burst},
            head=scope["method"] == "HEAD",
        )
        return True

    async def _decide_then(
        self, ex: Any, applied: list[_Applied], requests: list[RateRequest]
    ) -> bool:
        decisions = await self._decide(requests)
        if decisions is None:  # fail-closed and the store is unavailable
            await self._unavailable(ex.scope, ex.send)
            return True
        answer = self._decided(ex, applied, decisions)
        return False if answer is None else await answer

    def _decided(
        self, ex: Any, applied: list[_Applied], decisions: list[RateDecision]
    ) -> Awaitable[bool] | None:
        """The answer to a refusal, or None with the response fields kept for ``start``."""
        specs = self._specs
        if len(applied) == 1 and self.ietf and not self.legacy:  # the common case
            d = decisions[0]
            if not d.allowed:
                return self._refuse(ex.scope, ex.send, applied, decisions)
            spec = specs[applied[0][0].name]
            count = spec.count_admitted
            if count is not None:
                count(applied[0][1])
            if d.remaining <= spec.warn_at:
                self._check_warnings(ex.scope, applied, decisions)
            ex.ratelimit_headers = [
                (b"ratelimit-policy", spec.policy),
                (
                    b"ratelimit",
                    b'"%s";r=%d;t=%d' % (spec.name, d.remaining, math.ceil(d.reset_after - _SLACK)),
                ),
            ]
            return None
        # one pass: refused?, the RateLimit items, and whether a key reached warn_ratio
        items = []
        warn = False
        for (limit, _, _), d in zip(applied, decisions, strict=True):
            if not d.allowed:
                return self._refuse(ex.scope, ex.send, applied, decisions)
            remaining = d.remaining
            items.append(f'"{limit.name}";r={remaining};t={math.ceil(d.reset_after - _SLACK)}')
            if remaining <= specs[limit.name].warn_at:
                warn = True
        if warn:
            self._check_warnings(ex.scope, applied, decisions)
        if self.top_keys is not None:
            for limit, key, _ in applied:
                count = specs[limit.name].count_admitted
                if count is not None:
                    count(key)
        if self.legacy or not self.ietf:
            ex.ratelimit_headers = self._headers(applied, decisions, None, items)
        else:  # the common case, inline
            ex.ratelimit_headers = [
                (b"ratelimit-policy", ", ".join([a[0].policy_item for a in applied]).encode()),
                (b"ratelimit", ", ".join(items).encode()),
            ]
        return None

    # ------------------------------------------------------------ deciding
    async def _decide(self, requests: list[RateRequest]) -> list[RateDecision] | None:
        """The store's decisions; the local store's (or None, fail-closed) when it fails."""
        if self.direct:
            return await self.store.aacquire(requests)
        breaker = self.breaker
        try:
            permit = breaker.acquire()
        except CircuitOpen:
            self._engage("circuit open", None)
            return self._fallback(requests)
        clock = self.clock
        start = clock.now()
        try:
            # the owed after-charges of these keys are paid first (no extra coroutine
            # on the common path, where nothing is owed)
            if self.store_timeout is None:
                if self._owed:
                    await self._pay([request.key for request in requests])
                decisions = await self.store.aacquire(requests)
            else:
                async with asyncio.timeout(self.store_timeout):
                    if self._owed:
                        await self._pay([request.key for request in requests])
                    decisions = await self.store.aacquire(requests)
            if not isinstance(decisions, list) or len(decisions) != len(requests):
                raise BackendError(
                    f"rate-limit store answered {len(decisions)} decisions for "
                    f"{len(requests)} limits"
                )
        except Exception as exc:  # BackendError, TimeoutError, a store bug: never a 500
            breaker.on_failure(permit, clock.now() - start)
            self._engage("timeout" if _timed_out(exc) else "store error", exc)
            return self._fallback(requests)
        except BaseException:
            breaker.release(permit)
            raise
        breaker.on_success(permit, clock.now() - start)
        if self.engaged:
            self.engaged = False
            if self._owed:
                task = asyncio.get_running_loop().create_task(self._pay_all())
                self._charging.add(task)
                task.add_done_callback(self._charging.discard)
            emit(
                RateLimitFallbackEvent(
                    policy=self.name, engaged=False, mode=self.fail_mode, reason="store recovered"
                ),
                self.hooks,
            )
        return decisions

    def _engage(self, reason: str, error: BaseException | None) -> None:
        if not self.engaged:
            self.engaged = True
            emit(
                RateLimitFallbackEvent(
                    policy=self.name, engaged=True, mode=self.fail_mode, reason=reason, error=error
                ),
                self.hooks,
            )

    def _fallback(self, requests: list[RateRequest]) -> list[RateDecision] | None:
        if self.fail_mode == "closed":
            return None
        return self.local.acquire(requests)

    # ------------------------------------------------------------ answering
    def _headers(
        self,
        applied: list[_Applied],
        decisions: list[RateDecision],
        violated: list[int] | None,
        items: list[str],
    ) -> list[tuple[bytes, bytes]]:
        """Response fields: ``items`` are the RateLimit items (built by the caller)."""
        out: list[tuple[bytes, bytes]] = []
        shown = range(len(applied)) if violated is None else violated
        if self.ietf:
            policy = ", ".join(limit.policy_item for limit, _, _ in applied)
            out.append((b"ratelimit-policy", policy.encode("ascii")))
            out.append((b"ratelimit", ", ".join(items).encode("ascii")))
        if self.legacy:
            if violated is None:
                # the tightest policy: fewest left, then the longest to refill
                i = min(shown, key=lambda j: (decisions[j].remaining, -decisions[j].reset_after))
                reset = _ceil(decisions[i].reset_after)
            else:
                i = max(shown, key=lambda j: decisions[j].retry_after)
                reset = max(1, _ceil(decisions[i].retry_after))
            d = decisions[i]
            out.append((b"x-ratelimit-limit", str(d.limit).encode("ascii")))
            out.append((b"x-ratelimit-remaining", str(d.remaining).encode("ascii")))
            out.append((b"x-ratelimit-reset", str(reset).encode("ascii")))
        return out

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        applied: list[_Applied],
        decisions: list[RateDecision],
    ) -> bool:
        violated = [i for i, d in enumerate(decisions) if not d.allowed and d.retry_after > 0]
        if not violated:  # a store that did not say which: every refusing limit, 1 s
            violated = [i for i, d in enumerate(decisions) if not d.allowed]
        wait = max(1, *(_ceil(decisions[i].retry_after) for i in violated))
        worst = max(violated, key=lambda i: decisions[i].retry_after)
        items = [
            f'"{applied[i][0].name}";r={decisions[i].remaining};'
            f"t={max(1, _ceil(decisions[i].retry_after))}"
            for i in violated
        ]
        name = applied[worst][0].name
        method = scope["method"]
        for i in violated:
            limit, key, path = applied[i]
            if self.on_limited is not None:
                self.on_limited(limit.name)
            count = self._specs[limit.name].count_refused
            if count is not None:
                count(key)
            if self.audit_breaches:
                self._audit_breach(limit, key, path or scope["path"], method, decisions[i])
            emit(
                RateLimitedEvent(
                    policy=limit.name,
                    route=path or scope["path"],
                    method=method,
                    key_hash=self.key_hash(key),
                    retry_after=max(1, _ceil(decisions[i].retry_after)),
                ),
                self.hooks,
            )
        await send_problem(
            send,
            ErrorCode.RATE_LIMITED,
            detail=f"rate limit {name!r} exceeded; retry after {wait} s",
            retry_after=wait,
            headers=self._headers(applied, decisions, violated, items),
            extra={
                "policy": name,
                "violated_policies": [applied[i][0].name for i in violated],
                "retry_after": wait,
            },
            head=method == "HEAD",
        )
        return True

    def _audit_breach(
        self, limit: Limit, key: str, route: str, method: str, decision: RateDecision
    ) -> None:
        """A ``ratelimit.breach`` audit event, once per key and policy until it may pass."""
        now = self.clock.now()
        marker = f"breach:{limit.name}:{key}"
        until = self._warned.get(marker)
        if until is not None and until > now:
            return  # still refused since the last event: one event per breach
        self._warned.put(marker, now + max(1.0, decision.retry_after), now)
        from buttress.auditlog import audit_event  # noqa: PLC0415 - only on a breach

        audit_event(
            "ratelimit.breach",
            subject=key,
            policy=limit.name,
            route=route,
            method=method,
            retry_after=max(1, _ceil(decision.retry_after)),
        )

    async def _unavailable(self, scope: Scope, send: Send) -> None:
        snapshot = self.breaker.snapshot()
        wait = snapshot.open_remaining if snapshot.open_remaining > 0 else 1.0
        await send_problem(
            send,
            ErrorCode.BACKEND_ERROR,
            detail="rate limits cannot be checked right now; try again shortly",
            retry_after=wait,
            head=scope["method"] == "HEAD",
        )

    def _check_warnings(
        self, scope: Scope, applied: list[_Applied], decisions: list[RateDecision]
    ) -> None:
        """Warn once when a key's use of a policy crosses ``warn_ratio``."""
        specs = self._specs
        for (limit, key, path), d in zip(applied, decisions, strict=True):
            threshold = specs[limit.name].warn_at
            if d.remaining > threshold:
                continue
            before = min(d.limit, d.remaining + limit.cost)
            if before <= threshold:
                continue  # already below: it crossed on an earlier request
            key_hash = self.key_hash(key)
            marker = f"{limit.name}:{key_hash}"
            now = self.clock.now()
            warned = self._warned
            until = warned.get(marker)
            if until is not None and until > now:
                continue  # hovering at the threshold: once per window
            # remembered while there is room; a full table only forgets the de-duplication
            warned.put(marker, now + limit.rate.period, now)
            emit(
                QuotaWarningEvent(
                    policy=limit.name,
                    route=path or scope["path"],
                    key_hash=key_hash,
                    used_ratio=round(1.0 - d.remaining / d.limit, 4),
                    remaining=d.remaining,
                    limit=d.limit,
                ),
                self.hooks,
            )


class _Special:
    """What a request's special limits need beyond the store call (see `_resolve`)."""

    __slots__ = ("charges", "pending", "too_costly")

    def __init__(self) -> None:
        self.pending: list[tuple[str, Awaitable[str]]] = []
        self.charges: list[tuple[AfterCost, str, Rate]] = []
        self.too_costly: tuple[Limit, int] | None = None


def _timed_out(exc: BaseException) -> bool:
    """Whether a store failure was a timeout: ours, or the driver's (``__cause__``)."""
    cause: BaseException | None = exc
    for _ in range(3):  # the BackendError, the driver's error, what it wrapped
        if cause is None:
            return False
        if isinstance(cause, TimeoutError) or type(cause).__name__ in _TIMEOUTS:
            return True
        cause = cause.__cause__
    return False


# drivers' timeouts that are not builtin TimeoutErrors (redis-py; psycopg's
# statement_timeout and pool checkout)
_TIMEOUTS = frozenset({"TimeoutError", "QueryCanceled", "PoolTimeout"})


def _stored(key: str) -> str:
    """The key as stored: itself, or a digest of a huge or hostile value."""
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
    return "#" + digest.hexdigest()


def _marker_size(marker: str, until: float) -> int:
    return len(marker) + ENTRY_BYTES


def _key_secret(value: bytes | str | None) -> bytes:
    if value is None:
        env = os.environ.get("BUTTRESS_KEY_SECRET")
        if not env:
            return secrets.token_bytes(32)
        value = env
        where = "BUTTRESS_KEY_SECRET"
    else:
        where = "RateLimitMiddleware(key_secret=...)"
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(raw, bytes) or len(raw) < 16:
        raise ConfigurationError(f"{where}: at least 16 bytes of secret")
    return raw
