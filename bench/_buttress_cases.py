"""The buttress side of the benchmarks: builders shared by the scripts and the harness plugin.

Outbound builders are zero-argument functions returning a zero-argument callable (sync) or
coroutine function (async) that returns 42, made by decorating the module-level target with
a `Pipeline`, the same way the peers decorate theirs.

Rate-limit builders follow the harness contract ``make(scenario, ctx) -> (decide, close)``:
"allow" uses a per-key limit of 1,000,000/hour (the caller cycles 1,000 keys), "deny"
leaves ``ctx.deny_key`` exhausted at 10/hour. The Redis builders use `RedisStore` with the
harness's server and its per-measurement ``ctx.prefix`` as the namespace; ``close`` deletes
every key under that namespace (``SCAN MATCH <namespace>:*``), the stored names being hashed.
"""

from __future__ import annotations

from buttress.resilience import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
)

PER_KEY_LIMIT = 1_000_000  # per hour, "allow" scenario
DENY_LIMIT = 10  # per hour, "deny" scenario
HOUR = 3600.0


def target() -> int:
    return 42


async def atarget() -> int:
    return 42


# ---------------------------------------------------------------- outbound pipelines
def full_pipeline() -> Pipeline:
    """The headline: total timeout, retry, breaker, bulkhead (library defaults otherwise)."""
    return Pipeline(Timeout(30.0), Retry(attempts=3), CircuitBreaker(), Bulkhead(max_concurrent=25))


def design_pipeline() -> Pipeline:
    """The DESIGN.md example: adds a RetryBudget and a per-attempt Timeout."""
    return Pipeline(
        Timeout(30.0),
        Retry(
            attempts=3,
            backoff=Backoff.exponential(base=0.2, cap=5.0, jitter="full"),
            budget=RetryBudget(ratio=0.2, min_per_second=10),
        ),
        CircuitBreaker(failure_rate=0.5, minimum_calls=20, window=30.0, break_duration=5.0),
        Timeout(10.0),
        Bulkhead(max_concurrent=25, max_queued=0),
    )


def retry_pipeline() -> Pipeline:
    return Pipeline(Retry(attempts=3))


def breaker_pipeline() -> Pipeline:
    return Pipeline(CircuitBreaker())


def b_full():
    return full_pipeline()(target)


def a_full():
    return full_pipeline()(atarget)


def b_design():
    return design_pipeline()(target)


def a_design():
    return design_pipeline()(atarget)


def b_retry():
    return retry_pipeline()(target)


def a_retry():
    return retry_pipeline()(atarget)


def b_breaker():
    return breaker_pipeline()(target)


def a_breaker():
    return breaker_pipeline()(atarget)


FULL_SYNC = "buttress Pipeline(Timeout, Retry, CircuitBreaker, Bulkhead)"
FULL_ASYNC = "buttress Pipeline(Timeout, Retry, CircuitBreaker, Bulkhead) async"
RETRY_SYNC = "buttress Pipeline(Retry(attempts=3))"
RETRY_ASYNC = "buttress Pipeline(Retry(attempts=3)) async"
BREAKER_SYNC = "buttress Pipeline(CircuitBreaker())"
BREAKER_ASYNC = "buttress Pipeline(CircuitBreaker()) async"
DESIGN_SYNC = "buttress DESIGN pipeline (+RetryBudget, attempt Timeout)"
DESIGN_ASYNC = "buttress DESIGN pipeline (+RetryBudget, attempt Timeout) async"

# (name, kind, build, note)
OUTBOUND = [
    (FULL_SYNC, "sync", b_full, "Timeout(30), Retry(3), CircuitBreaker(), Bulkhead(25)"),
    (RETRY_SYNC, "sync", b_retry, ""),
    (BREAKER_SYNC, "sync", b_breaker, ""),
    (DESIGN_SYNC, "sync", b_design, "DESIGN.md example"),
    (FULL_ASYNC, "async", a_full, "Timeout(30), Retry(3), CircuitBreaker(), Bulkhead(25)"),
    (RETRY_ASYNC, "async", a_retry, ""),
    (BREAKER_ASYNC, "async", a_breaker, ""),
    (DESIGN_ASYNC, "async", a_design, "DESIGN.md example"),
]


# ---------------------------------------------------------------- rate limiter
def _limiter(scenario: str) -> RateLimiter:
    limit = PER_KEY_LIMIT if scenario == "allow" else DENY_LIMIT
    return RateLimiter(limit, per=HOUR)  # burst = limit: up to `limit` at once, then limit/hour


def _exhaust(allow, key) -> None:
    for _ in range(DENY_LIMIT):
        assert allow(key), "pre-exhaust: expected admits"
    assert not allow(key), "pre-exhaust: expected a deny"


def m_allow(scenario, ctx):
    """`RateLimiter.allow(key)` behind a one-line decide(), the shape of the peers' rows."""
    lim = _limiter(scenario)
    allow = lim.allow
    if scenario == "deny":
        _exhaust(allow, ctx.deny_key)

    def decide(key):
        return allow(key)

    return decide, None


def m_allow_direct(scenario, ctx):
    """The bound method itself as decide(): what calling code pays, no adapter frame."""
    lim = _limiter(scenario)
    if scenario == "deny":
        _exhaust(lim.allow, ctx.deny_key)
    return lim.allow, None


def m_decide(scenario, ctx):
    """`RateLimiter.decide(key)`: the full answer for RateLimit headers."""
    lim = _limiter(scenario)
    full = lim.decide
    if scenario == "deny":
        _exhaust(lim.allow, ctx.deny_key)

    def decide(key):
        return full(key).allowed

    return decide, None


def ma_allow(scenario, ctx):
    """`RateLimiter.allow(key)` inside a coroutine (the limiter never awaits in memory)."""
    lim = _limiter(scenario)
    allow = lim.allow
    if scenario == "deny":
        _exhaust(allow, ctx.deny_key)

    async def decide(key):
        return allow(key)

    return decide, None


# ---------------------------------------------------------------- RedisStore
def _redis_store(ctx, local_denials):
    from buttress.stores import Rate, RateRequest  # noqa: PLC0415 - only when Redis is used
    from buttress.stores._redis import RedisStore  # noqa: PLC0415

    url = f"redis://{ctx.host}:{ctx.port}/{ctx.db}"
    store = RedisStore(url, namespace=ctx.prefix, local_denials=local_denials)
    return store, Rate, RateRequest


def _delete_namespace(ctx, namespace) -> None:
    """Delete every key the store wrote (its names are hashed under ``namespace``)."""
    import redis  # noqa: PLC0415

    raw = redis.Redis(host=ctx.host, port=ctx.port, db=ctx.db)
    try:
        names = list(raw.scan_iter(match=f"{namespace}:*", count=1000))
        for i in range(0, len(names), 1000):
            raw.unlink(*names[i : i + 1000])
    finally:
        raw.close()


def r_store(*, local_denials=True):
    """`RedisStore.acquire([RateRequest(key, rate)])[0].allowed`, one key per decision."""

    def make(scenario, ctx):
        store, rate_cls, request = _redis_store(ctx, local_denials)
        rate = rate_cls(PER_KEY_LIMIT if scenario == "allow" else DENY_LIMIT, HOUR)
        acquire = store.acquire
        namespace = ctx.prefix

        def decide(key):
            return acquire([request(key, rate)])[0].allowed

        if scenario == "deny":
            _exhaust(decide, ctx.deny_key)
        else:
            store.ping()  # connect outside the timing

        def close():
            store.close()
            _delete_namespace(ctx, namespace)

        return decide, close

    return make


def ra_store(*, local_denials=True):
    """`await RedisStore.aacquire([RateRequest(key, rate)])`, one key per decision."""

    async def make(scenario, ctx):
        store, rate_cls, request = _redis_store(ctx, local_denials)
        rate = rate_cls(PER_KEY_LIMIT if scenario == "allow" else DENY_LIMIT, HOUR)
        aacquire = store.aacquire
        namespace = ctx.prefix

        async def decide(key):
            return (await aacquire([request(key, rate)]))[0].allowed

        if scenario == "deny":
            for _ in range(DENY_LIMIT):
                assert await decide(ctx.deny_key), "pre-exhaust: expected admits"
            assert not await decide(ctx.deny_key), "pre-exhaust: expected a deny"
        else:
            await store.aping()

        async def close():
            await store.aclose()
            _delete_namespace(ctx, namespace)

        return decide, close

    return make


RS_SYNC = "buttress RedisStore.acquire (GCRA)"
RS_SYNC_REMOTE = "buttress RedisStore.acquire, local_denials=False"
RS_ASYNC = "buttress RedisStore.aacquire (GCRA)"
RS_ASYNC_REMOTE = "buttress RedisStore.aacquire, local_denials=False"

RL_SYNC = "buttress RateLimiter.allow (GCRA)"
RL_SYNC_DIRECT = "buttress RateLimiter.allow, bound method as decide"
RL_SYNC_DECIDE = "buttress RateLimiter.decide(key).allowed"
RL_ASYNC = "buttress RateLimiter.allow in a coroutine"

# (name, group, make, note)
RATELIMIT = [
    (RL_SYNC, "memory-sync", m_allow, "per key, 1,000 keys"),
    (RL_SYNC_DIRECT, "memory-sync", m_allow_direct, "no adapter frame; extra"),
    (RL_SYNC_DECIDE, "memory-sync", m_decide, "RateDecision for headers; extra"),
    (RL_ASYNC, "memory-async", ma_allow, "per key, 1,000 keys"),
    (RS_SYNC, "redis-sync", r_store(), "per key, 1,000 keys; deny answered locally"),
    (RS_SYNC_REMOTE, "redis-sync", r_store(local_denials=False), "every deny a round trip"),
    (RS_ASYNC, "redis-async", ra_store(), "per key, 1,000 keys; deny answered locally"),
    (RS_ASYNC_REMOTE, "redis-async", ra_store(local_denials=False), "every deny a round trip"),
]
