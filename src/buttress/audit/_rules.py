"""The catalogue of ``buttress audit`` rules: id, category, priority, fix hint, docs anchor.

Ids are grouped by category: BTR0xx external calls, BTR1xx write operations, BTR2xx
resources, BTR3xx error handling, BTR4xx input and security configuration, BTR5xx
observability, BTR6xx health and lifecycle, BTR7xx supply chain and delivery,
BTR9xx the audit itself (not scored).

``APPLIES`` says when a rule's check is applicable (else the scorecard shows ``?`` rather
than a free pass): when a module of the audited tree imports one of the listed modules,
``"*"`` for any Python code, ``"app"`` when the tree defines a web app
(``"asgi-app"``: a FastAPI or Starlette one), ``"file:..."`` when the tree has such a
non-Python file (``container``: a Dockerfile or compose file; ``requirements``;
``workflow``: a GitHub Actions workflow; ``migration``: Alembic revisions; ``database``:
code that uses a database driver or ORM, or migrations).
"""

from __future__ import annotations

from buttress.report import Priority, Rule

__all__ = ["APPLIES", "CATEGORIES", "DOCS", "RULES", "rule"]

DOCS = "https://github.com/buttress-dev/buttress/blob/main/docs/audit.md"

#: The categories in the order reports list them.
CATEGORIES = (
    "external-calls",
    "write-operations",
    "resources",
    "error-handling",
    "input-security",
    "observability",
    "health-lifecycle",
    "supply-chain",
)

_P0, _P1, _P2 = Priority.P0, Priority.P1, Priority.P2

_TABLE: list[tuple[str, str, str, Priority, str]] = [
    # id, category, title, priority, fix
    (
        "BTR001",
        "external-calls",
        "HTTP call without a timeout",
        _P0,
        "pass timeout= (requests: a (connect, read) tuple such as timeout=(3.05, 27); httpx: "
        "never timeout=None), or call through buttress.http which always sets one",
    ),
    (
        "BTR002",
        "external-calls",
        "Redis client without socket_timeout",
        _P0,
        "pass socket_timeout= and socket_connect_timeout= (seconds) to the client or from_url()",
    ),
    (
        "BTR003",
        "external-calls",
        "retry without backoff or stop",
        _P1,
        "give tenacity a wait (wait_exponential_jitter()) and a stop (stop_after_attempt(3)), "
        "or use buttress Retry(attempts=3) which backs off with jitter",
    ),
    (
        "BTR004",
        "external-calls",
        "network client without a timeout",
        _P0,
        "aiohttp: ClientSession(timeout=aiohttp.ClientTimeout(total=10)); smtplib.SMTP(host, "
        "timeout=10); socket.create_connection(addr, timeout=5)",
    ),
    (
        "BTR005",
        "external-calls",
        "database connection without a timeout",
        _P0,
        "psycopg: connect(..., connect_timeout=5) (or ?connect_timeout=5 in the URL); asyncpg: "
        "connect(..., timeout=5, command_timeout=30)",
    ),
    (
        "BTR006",
        "external-calls",
        "SQLAlchemy engine without pool_timeout or pool_pre_ping",
        _P1,
        "create_engine(url, pool_timeout=10, pool_pre_ping=True) so a drained pool fails fast "
        "and dead connections are replaced",
    ),
    (
        "BTR007",
        "external-calls",
        "no statement_timeout for PostgreSQL",
        _P1,
        "set a server-side statement_timeout (options='-c statement_timeout=5000', asyncpg "
        "server_settings={'statement_timeout': '5000'}, or ALTER ROLE ... SET statement_timeout)",
    ),
    (
        "BTR008",
        "external-calls",
        "retry loop without backoff",
        _P1,
        "sleep with exponential backoff and jitter between attempts (time.sleep(min(30, "
        "2 ** attempt) * random.random())), or use tenacity / buttress Retry",
    ),
    (
        "BTR101",
        "write-operations",
        "write routes without an idempotency mechanism",
        _P0,
        "accept an Idempotency-Key on POST/PUT/PATCH and replay the first response "
        "(harden(app) does it), or make the write naturally idempotent",
    ),
    (
        "BTR102",
        "write-operations",
        "write routes without a rate limit",
        _P1,
        "rate-limit public writes: harden(app, rate_limits=[RateLimitRule(...)]), slowapi's "
        "@limiter.limit('10/minute'), or flask-limiter",
    ),
    (
        "BTR201",
        "resources",
        "unbounded cache",
        _P1,
        "bound it: functools.lru_cache(maxsize=1024), or a TTL cache",
    ),
    (
        "BTR202",
        "resources",
        "unbounded queue",
        _P1,
        "give the queue a maxsize so producers wait (backpressure) instead of growing memory",
    ),
    (
        "BTR301",
        "error-handling",
        "bare except",
        _P0,
        "catch the exceptions you expect (except ValueError:), or except Exception: and log "
        "with logger.exception(...)",
    ),
    (
        "BTR302",
        "error-handling",
        "exception silently swallowed",
        _P0,
        "log it (logger.exception(...)) or re-raise; if ignoring is right, say why with "
        "contextlib.suppress(SpecificError)",
    ),
    (
        "BTR303",
        "error-handling",
        "broad except that neither logs nor re-raises",
        _P1,
        "log the exception with logger.exception(...) (or report it) before falling back, or "
        "re-raise",
    ),
    (
        "BTR401",
        "input-security",
        "CORS allows every origin",
        _P0,
        "list the origins that may call the API (allow_origins=['https://app.example.com'])",
    ),
    (
        "BTR402",
        "input-security",
        "debug or auto-reload enabled in an entry point",
        _P0,
        "take debug/reload from the environment and leave them off in production",
    ),
    (
        "BTR403",
        "input-security",
        "TLS certificate verification disabled",
        _P0,
        "remove verify=False; trust a private CA with verify='/path/ca.pem'",
    ),
    (
        "BTR404",
        "input-security",
        "SQL built from strings",
        _P0,
        "pass values as query parameters: execute('... WHERE id = %s', (user_id,))",
    ),
    (
        "BTR405",
        "input-security",
        "hardcoded secret",
        _P0,
        "read it from the environment or a secret store (os.environ['API_KEY']) and rotate "
        "the leaked value",
    ),
    (
        "BTR406",
        "input-security",
        "password hashed with a fast hash",
        _P0,
        "use a password KDF: argon2-cffi, bcrypt, or hashlib.scrypt/pbkdf2_hmac with a salt",
    ),
    (
        "BTR407",
        "input-security",
        "no request body size limit",
        _P0,
        "limit request bodies (harden(app) does; Flask: MAX_CONTENT_LENGTH; or a body-size "
        "middleware)",
    ),
    (
        "BTR408",
        "input-security",
        "server bound to 0.0.0.0 in code",
        _P2,
        "take the bind address from configuration (host=os.environ.get('HOST', '127.0.0.1')); "
        "containers set HOST=0.0.0.0 in their environment",
    ),
    (
        "BTR501",
        "observability",
        "print in service code",
        _P1,
        "log with logging or structlog (logger.info('order created', extra={...}))",
    ),
    (
        "BTR502",
        "observability",
        "f-string log message",
        _P2,
        "log a constant message with fields: logger.info('order %s created', order_id) or "
        "structlog's logger.info('order created', order_id=order_id)",
    ),
    (
        "BTR503",
        "observability",
        "no /metrics endpoint",
        _P1,
        "expose Prometheus metrics (harden(app) serves /metrics; or prometheus_client's "
        "make_asgi_app mounted at /metrics)",
    ),
    (
        "BTR601",
        "health-lifecycle",
        "no health endpoint",
        _P0,
        "serve liveness and readiness endpoints (harden(app): /health/live and /health/ready)",
    ),
    (
        "BTR602",
        "health-lifecycle",
        "no graceful shutdown",
        _P1,
        "close clients and drain work on shutdown: a lifespan context manager (or "
        "harden(app), which drains in-flight requests on SIGTERM)",
    ),
    (
        "BTR603",
        "health-lifecycle",
        "container without a HEALTHCHECK",
        _P2,
        "add HEALTHCHECK CMD to the Dockerfile (or healthcheck: to the compose service) "
        "probing the liveness endpoint",
    ),
    (
        "BTR604",
        "health-lifecycle",
        "liveness and readiness not separate",
        _P1,
        "serve a liveness endpoint that checks only the process and a readiness endpoint that "
        "checks dependencies (harden(app): /health/live and /health/ready)",
    ),
    (
        "BTR701",
        "supply-chain",
        "dependency not pinned",
        _P2,
        "pin application dependencies exactly (package==1.2.3), ideally compiled with hashes "
        "(pip-compile --generate-hashes, uv pip compile)",
    ),
    (
        "BTR702",
        "supply-chain",
        "no lock file",
        _P2,
        "commit a lock file (uv.lock, poetry.lock, pdm.lock, or requirements with --hash=)",
    ),
    (
        "BTR703",
        "supply-chain",
        "CI runs no tests or swallows failures",
        _P2,
        "run the test suite in CI and let it fail the build (no '|| true', no "
        "continue-on-error: true on test steps)",
    ),
    (
        "BTR704",
        "supply-chain",
        "no dependency vulnerability scan",
        _P2,
        "scan dependencies in CI (pip-audit, safety, osv-scanner) or enable Dependabot "
        "(.github/dependabot.yml)",
    ),
    (
        "BTR705",
        "supply-chain",
        "migration without a downgrade",
        _P1,
        "write downgrade() so a bad release can be rolled back (alembic revision "
        "--autogenerate writes one; check it with buttress migrate rehearse)",
    ),
    (
        "BTR706",
        "supply-chain",
        "more than one Alembic head",
        _P0,
        "merge the branches: alembic merge heads -m 'merge' (then alembic heads shows one)",
    ),
    (
        "BTR707",
        "supply-chain",
        "no database backup job or backup verification",
        _P1,
        "schedule backups and prove they restore: buttress backup run / buttress backup "
        "verify (or pg_dump) in a CI schedule, a cron job or a Kubernetes CronJob",
    ),
    (
        "BTR900",
        "audit",
        "suppression without a reason",
        _P2,
        "say why after the bracket: # buttress: ignore[BTR001] streaming endpoint, no timeout",
    ),
]

RULES: dict[str, Rule] = {
    rid: Rule(
        id=rid,
        title=title,
        category=category,
        priority=priority,
        fix=fix,
        docs=f"{DOCS}#{rid.lower()}",
        scored=category != "audit",
    )
    for rid, category, title, priority, fix in _TABLE
}

_HTTP = ("requests", "httpx", "urllib", "urllib3", "aiohttp")
_WEB = ("fastapi", "starlette", "flask", "django", "uvicorn", "quart")

APPLIES: dict[str, tuple[str, ...]] = {
    "BTR001": _HTTP,
    "BTR002": ("redis",),
    "BTR003": ("tenacity",),
    "BTR004": ("aiohttp", "smtplib", "socket"),
    "BTR005": ("psycopg", "psycopg2", "asyncpg"),
    "BTR006": ("sqlalchemy",),
    "BTR007": ("psycopg", "psycopg2", "asyncpg"),
    "BTR008": ("*",),
    "BTR101": ("app",),
    "BTR102": ("app",),
    "BTR201": ("functools",),
    "BTR202": ("asyncio", "queue", "multiprocessing"),
    "BTR301": ("*",),
    "BTR302": ("*",),
    "BTR303": ("*",),
    "BTR401": ("app", "flask_cors", "corsheaders", "starlette", "fastapi"),
    "BTR402": _WEB,
    "BTR403": (*_HTTP, "ssl"),
    "BTR404": (
        "sqlite3",
        "psycopg",
        "psycopg2",
        "pymysql",
        "MySQLdb",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "django",
    ),
    "BTR405": ("*",),
    "BTR406": ("hashlib",),
    "BTR407": ("app",),
    "BTR408": _WEB,
    "BTR501": ("*",),
    "BTR502": ("logging", "structlog", "loguru"),
    "BTR503": ("app",),
    "BTR601": ("app",),
    "BTR602": ("asgi-app",),
    "BTR603": ("file:container",),
    "BTR604": ("app",),
    "BTR701": ("file:requirements",),
    "BTR702": ("file:requirements",),
    "BTR703": ("file:workflow",),
    "BTR704": ("file:workflow",),
    "BTR705": ("file:migration",),
    "BTR706": ("file:migration",),
    "BTR707": ("file:database",),
    "BTR900": ("*",),
}


def rule(rule_id: str) -> Rule:
    """The rule with this id (KeyError when there is none)."""
    return RULES[rule_id]
