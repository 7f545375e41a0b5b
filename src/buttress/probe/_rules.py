"""The probe's rules: ids ``PRB###``, a category and a priority like the audit's."""

from __future__ import annotations

from buttress.report import Priority, Rule

__all__ = ["GROUPS", "RULES", "rule"]

_DOCS = "https://github.com/buttress-dev/buttress/blob/main/docs/probe.md"


def _r(rid: str, title: str, category: str, priority: Priority, fix: str) -> Rule:
    return Rule(
        id=rid,
        title=title,
        category=category,
        priority=priority,
        fix=fix,
        docs=f"{_DOCS}#{rid.lower()}",
    )


P0, P1, P2 = Priority.P0, Priority.P1, Priority.P2

RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        _r("PRB001", "Liveness endpoint answers", "health", P0,
           "serve GET /health/live (200 while the process can serve), e.g. harden(app)"),
        _r("PRB002", "Readiness endpoint answers", "health", P0,
           "serve GET /health/ready (503 while a critical dependency is down)"),
        _r("PRB003", "Health answers are application/health+json", "health", P2,
           'answer {"status": "pass"|"warn"|"fail", ...} as application/health+json'),
        _r("PRB004", "Health endpoints answer fast", "health", P1,
           "keep health checks cheap and bounded (under 500 ms); cache slow dependency checks"),
        _r("PRB010", "Unknown path gets a 4xx problem+json", "errors", P1,
           "answer every error as application/problem+json (RFC 9457)"),
        _r("PRB011", "Wrong method gets 405 problem+json", "errors", P1,
           "answer 405 with Allow, as application/problem+json"),
        _r("PRB012", "Malformed JSON gets a 4xx problem+json", "errors", P1,
           "validate bodies and answer 400/422 as application/problem+json"),
        _r("PRB013", "Oversized body gets 413 problem+json", "errors", P1,
           "limit request bodies (e.g. 1 MiB) and answer 413 as application/problem+json"),
        _r("PRB014", "Errors leak no 5xx, stack trace or debug page", "errors", P0,
           "turn debug off and map every exception to problem+json without internals"),
        _r("PRB015", "Error answers carry a request id", "errors", P1,
           "set X-Request-ID on every answer (and log it) so a report can be traced"),
        _r("PRB020", "X-Content-Type-Options: nosniff", "security", P1,
           "send X-Content-Type-Options: nosniff on every answer"),
        _r("PRB021", "Framing is denied (CSP frame-ancestors or X-Frame-Options)", "security",
           P1, "send Content-Security-Policy: frame-ancestors 'none' (or X-Frame-Options: DENY)"),
        _r("PRB022", "Strict-Transport-Security", "security", P1,
           "send Strict-Transport-Security: max-age=63072000; includeSubDomains over https"),
        _r("PRB023", "Referrer-Policy or Cache-Control for API answers", "security", P2,
           "send Cache-Control: no-store on API answers (or a Referrer-Policy)"),
        _r("PRB024", "No fingerprinting headers", "security", P2,
           "drop X-Powered-By and version numbers from Server (uvicorn --no-server-header)"),
        _r("PRB025", "CORS does not reflect an arbitrary origin with credentials", "security",
           P0, "allow a fixed list of origins; never echo Origin with credentials"),
        _r("PRB026", "X-Forwarded-For does not change the rate-limit budget", "security", P0,
           "trust forwarding headers only from known proxies (uvicorn --no-proxy-headers)"),
        _r("PRB030", "A burst gets 429 before any 5xx", "rate-limits", P1,
           "rate-limit per client (e.g. harden(app, rate_limits=...)) and answer 429"),
        _r("PRB031", "429 answers carry Retry-After and RateLimit fields", "rate-limits", P1,
           "send Retry-After and RateLimit/RateLimit-Policy with every 429"),
        _r("PRB050", "The same Idempotency-Key twice replays the first answer", "idempotency",
           P0, "store each keyed write's answer and replay it to retries (IdempotencyMiddleware)"),
        _r("PRB051", "The same key with another body gets 422 problem+json", "idempotency",
           P1, "bind a key to its request's fingerprint; refuse another body with 422"),
        _r("PRB052", "A retry after a client timeout creates no second resource",
           "idempotency", P1,
           "answer 409 while the first request runs, then replay it; never run it twice"),
        _r("PRB040", "/metrics exposes request counts and duration histograms", "metrics",
           P1, "export a request counter and a duration histogram in Prometheus text"),
        _r("PRB041", "/metrics is not open to the world", "metrics", P1,
           "serve /metrics to loopback or with a bearer token only"),
        _r("PRB060", "Latency under load within the thresholds", "load", P1,
           "find the slow part (traces, the duration histogram); add capacity or shed load"),
        _r("PRB061", "Errors under load within the thresholds", "load", P0,
           "a 5xx or a reset under load: bound concurrency (shedding answers 503 + "
           "Retry-After), time out dependencies, size pools"),
        _r("PRB062", "Throughput under load within the thresholds", "load", P2,
           "raise the workers or the pool sizes, or lower the rps threshold to what is needed"),
        _r("PRB070", "SIGTERM under load loses no request", "shutdown", P0,
           "drain on SIGTERM: serve for a delay, finish in-flight requests, then exit "
           "(harden(app): GracefulShutdown)"),
        _r("PRB071", "Readiness turns 503 soon after SIGTERM", "shutdown", P1,
           "answer 503 on the readiness path from the signal on (HealthMiddleware.mark_draining)"),
        _r("PRB072", "The process exits in bounded time after SIGTERM", "shutdown", P1,
           "bound the drain (drain delay + grace + close timeout) below the orchestrator's "
           "termination grace period"),
        _r("PRB080", "Readiness turns 503 while a dependency is down", "faults", P0,
           "check critical dependencies in readiness (RedisCheck, PostgresCheck), "
           "time-bounded and cached"),
        _r("PRB081", "Liveness stays 200 while a dependency is down", "faults", P0,
           "keep dependencies out of liveness: one database blip must not restart every replica"),
        _r("PRB082", "Readiness and liveness recover with the dependency", "faults", P1,
           "reconnect on the next use (pools with pre-ping) and keep the readiness cache short"),
        _r("PRB090", "The thresholds hold during the deploy watch", "deploy", P0,
           "roll back, then find what the release changed (the thresholds' evidence)"),
        _r("PRB091", "The rollback command runs when a threshold breaks", "deploy", P0,
           "give --on-fail a command that exits 0 after rolling back"),
        _r("PRB095", "Both environments pass the same checks", "parity", P1,
           "make the environments' configuration the same (or the differences deliberate)"),
        _r("PRB096", "The same requests get the same status codes", "parity", P1,
           "deploy the same routes and error handling to both environments"),
        _r("PRB097", "The same headers on both sides", "parity", P2,
           "apply the same security, CORS and rate-limit settings in both environments"),
        _r("PRB098", "The same health answer shape", "parity", P2,
           "check the same components in both environments' health answers"),
        _r("PRB099", "Comparable latency", "parity", P2,
           "look for what differs: sizing, a cold cache, a dependency in another region"),
    )
}  # fmt: skip

#: The rules of each mode: the checks always run; the others when their options are given.
GROUPS: dict[str, tuple[str, ...]] = {
    "checks": tuple(r for r in RULES if r < "PRB060"),
    "load": ("PRB060", "PRB061", "PRB062"),
    "shutdown": ("PRB070", "PRB071", "PRB072"),
    "fault": ("PRB080", "PRB081", "PRB082"),
    "watch": ("PRB090", "PRB091"),
    "compare": ("PRB095", "PRB096", "PRB097", "PRB098", "PRB099"),
}


def rule(rid: str) -> Rule:
    """The rule ``rid``."""
    return RULES[rid]
