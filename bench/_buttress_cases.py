"""The buttress side of the benchmarks: builders shared by the scripts and the harness plugin.

Outbound builders are zero-argument functions returning a zero-argument callable (sync) or
coroutine function (async) that returns 42, made by decorating the module-level target with
a `Pipeline`, the same way the peers decorate theirs.

Rate-limit builders follow the harness contract ``make(scenario, ctx) -> (decide, close)``:
"allow" uses a per-key limit of 1,000,000/hour (the caller cycles 1,000 keys), "deny"
leaves ``ctx.deny_key`` exhausted at 10/hour. The Redis builders use `RedisStore` with the
harness's server and its per-measurement ``ctx.prefix`` as the namespace; ``close`` deletes
every key under that namespace (``SCAN MATCH <namespace>:*``), the stored names being hashed.

Failure-path builders (`FAILURE`, `REJECTION`) follow the outbound contract too: the built
callable returns 42. A failure-path target fails twice with a `ConnectionError`
(retriable), then succeeds; retries skip their sleeps (``buttress.testing.instant_retries``,
switched on by the script). A rejection case calls through an open breaker and returns 42
from the ``except`` clause, the same wrapper for every library.
"""

from __future__ import annotations

from buttress.errors import CircuitOpen
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


def design_pipeline(breaker: CircuitBreaker | None = None) -> Pipeline:
    """The README "Sixty seconds" (and DESIGN.md) pipeline: what users copy."""
    return Pipeline(
        Timeout(30.0),
        Retry(
            attempts=3,
            backoff=Backoff.exponential(base=0.2, cap=5.0),
            budget=RetryBudget(ratio=0.2, min_per_second=10),
        ),
        breaker
        or CircuitBreaker(failure_rate=0.5, minimum_calls=20, window=30.0, break_duration=5.0),
        Timeout(10.0),
        Bulkhead(max_concurrent=25),
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
DESIGN_SYNC = "buttress README pipeline (Timeout, Retry+budget, CircuitBreaker, Timeout, Bulkhead)"
DESIGN_ASYNC = "buttress README pipeline async"

# (name, kind, build, note)
OUTBOUND = [
    (FULL_SYNC, "sync", b_full, "Timeout(30), Retry(3), CircuitBreaker(), Bulkhead(25)"),
    (RETRY_SYNC, "sync", b_retry, ""),
    (BREAKER_SYNC, "sync", b_breaker, ""),
    (DESIGN_SYNC, "sync", b_design, "README Sixty seconds / DESIGN.md"),
    (FULL_ASYNC, "async", a_full, "Timeout(30), Retry(3), CircuitBreaker(), Bulkhead(25)"),
    (RETRY_ASYNC, "async", a_retry, ""),
    (BREAKER_ASYNC, "async", a_breaker, ""),
    (DESIGN_ASYNC, "async", a_design, "README Sixty seconds / DESIGN.md"),
]


# ---------------------------------------------------------------- failure path
def fail_twice():
    """A function that fails twice with a `ConnectionError` (retriable), then returns 42."""
    n = 0

    def flaky() -> int:
        nonlocal n
        n += 1
        if n % 3:
            raise ConnectionError("connection refused")
        return 42

    return flaky


def afail_twice():
    """`fail_twice` as a coroutine function."""
    n = 0

    async def flaky() -> int:
        nonlocal n
        n += 1
        if n % 3:
            raise ConnectionError("connection refused")
        return 42

    return flaky


def fail_retry_pipeline() -> Pipeline:
    """Retry alone, like pyresilience's: no budget (every call would spend two retries)."""
    return Pipeline(Retry(attempts=3, budget=None))


def fail_breaker_pipeline() -> Pipeline:
    """Retry with a budget that never runs dry around a breaker that never trips.

    A call that fails twice in three would, rightly, exhaust the default budget and open a
    default breaker; these settings keep both on the path without changing the outcome.
    """
    return Pipeline(
        Retry(attempts=3, budget=RetryBudget(ratio=1.0, min_per_second=1e9)),
        CircuitBreaker(failure_rate=1.0),
    )


def _acalling(pipe: Pipeline):
    flaky = afail_twice()
    acall = pipe.acall

    async def call():
        return await acall(flaky)

    return call


def b_fail_retry():
    return fail_retry_pipeline()(fail_twice())


def a_fail_retry():
    return _acalling(fail_retry_pipeline())


def b_fail_breaker():
    return fail_breaker_pipeline()(fail_twice())


def a_fail_breaker():
    return _acalling(fail_breaker_pipeline())


FAIL_RETRY_SYNC = "buttress Pipeline(Retry(attempts=3, budget=None)), fails twice"
FAIL_RETRY_ASYNC = "buttress Pipeline(Retry(attempts=3, budget=None)), fails twice async"
FAIL_BREAKER_SYNC = "buttress Pipeline(Retry(3, budget), CircuitBreaker()), fails twice"
FAIL_BREAKER_ASYNC = "buttress Pipeline(Retry(3, budget), CircuitBreaker()), fails twice async"

# (name, kind, build, note): the call fails twice, then succeeds (sleeps skipped)
FAILURE = [
    (FAIL_RETRY_SYNC, "sync", b_fail_retry, "instant_retries()"),
    (FAIL_BREAKER_SYNC, "sync", b_fail_breaker, "instant_retries(); never trips, never runs dry"),
    (FAIL_RETRY_ASYNC, "async", a_fail_retry, "instant_retries()"),
    (FAIL_BREAKER_ASYNC, "async", a_fail_breaker, "instant_retries(); never trips, never runs dry"),
]


# ---------------------------------------------------------------- open breaker
def _open_breaker() -> CircuitBreaker:
    breaker = CircuitBreaker()
    breaker.force_open(1e9)  # open for the whole run
    return breaker


def _rejected(pipe: Pipeline):
    call_through = pipe.call

    def call():
        try:
            return call_through(target)
        except CircuitOpen:
            return 42

    return call


def _arejected(pipe: Pipeline):
    acall = pipe.acall

    async def call():
        try:
            return await acall(atarget)
        except CircuitOpen:
            return 42

    return call


def b_open_breaker():
    return _rejected(Pipeline(_open_breaker()))


def a_open_breaker():
    return _arejected(Pipeline(_open_breaker()))


def b_open_design():
    return _rejected(design_pipeline(_open_breaker()))


def a_open_design():
    return _arejected(design_pipeline(_open_breaker()))


OPEN_SYNC = "buttress Pipeline(CircuitBreaker()) open, rejects"
OPEN_ASYNC = "buttress Pipeline(CircuitBreaker()) open, rejects async"
OPEN_DESIGN_SYNC = "buttress README pipeline, breaker open, rejects"
OPEN_DESIGN_ASYNC = "buttress README pipeline, breaker open, rejects async"

# (name, kind, build, note): the breaker is open; the call is rejected and caught
REJECTION = [
    (OPEN_SYNC, "sync", b_open_breaker, "except CircuitOpen"),
    (OPEN_DESIGN_SYNC, "sync", b_open_design, "except CircuitOpen"),
    (OPEN_ASYNC, "async", a_open_breaker, "except CircuitOpen"),
    (OPEN_DESIGN_ASYNC, "async", a_open_design, "except CircuitOpen"),
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
