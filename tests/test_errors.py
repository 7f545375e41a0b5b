"""The error taxonomy and classify(): our errors, foreign drivers (real ones), responses."""

from __future__ import annotations

import asyncio
import pickle
import re
import socket
import sqlite3

import httpx
import psycopg
import pytest
import redis
import requests

from buttress.errors import (
    BackendError,
    BulkheadFull,
    ButtressError,
    CircuitOpen,
    ConfigurationError,
    DeadlineExceeded,
    ErrorCode,
    RateLimited,
    Rejected,
    classify,
    parse_retry_after,
)


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_codes_know_retry_semantics_and_status() -> None:
    expected = {
        ErrorCode.UPSTREAM_TIMEOUT: (True, 504),
        ErrorCode.UPSTREAM_UNAVAILABLE: (True, 503),
        ErrorCode.RATE_LIMITED: (True, 429),
        ErrorCode.OVERLOADED: (True, 503),
        ErrorCode.CIRCUIT_OPEN: (True, 503),
        ErrorCode.DEADLINE_EXCEEDED: (False, 504),
        ErrorCode.VALIDATION_FAILED: (False, 422),
        ErrorCode.NOT_FOUND: (False, 404),
        ErrorCode.CONFLICT: (False, 409),
        ErrorCode.PAYLOAD_TOO_LARGE: (False, 413),
        ErrorCode.INTERNAL_ERROR: (False, 500),
    }
    for code, (retriable, status) in expected.items():
        assert (code.retriable, code.http_status) == (retriable, status), code
    assert ErrorCode.RATE_LIMITED.default_retry_after == 1.0
    assert str(ErrorCode.CIRCUIT_OPEN) == "circuit_open"
    assert len({c.wire for c in ErrorCode}) == len(ErrorCode)
    assert ErrorCode.NOT_FOUND.is_client_error
    assert not ErrorCode.RATE_LIMITED.is_client_error
    assert not ErrorCode.UPSTREAM_TIMEOUT.is_client_error


def test_hierarchy_matches_style_guide() -> None:
    assert issubclass(ConfigurationError, ButtressError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(BackendError, ButtressError)
    for cls in (CircuitOpen, BulkheadFull, RateLimited, DeadlineExceeded):
        assert issubclass(cls, Rejected)
    assert issubclass(DeadlineExceeded, TimeoutError)
    assert CircuitOpen().code is ErrorCode.CIRCUIT_OPEN
    assert BulkheadFull().code is ErrorCode.OVERLOADED
    assert RateLimited(retry_after=2.5).retry_after == 2.5
    assert DeadlineExceeded().code is ErrorCode.DEADLINE_EXCEEDED
    assert not DeadlineExceeded().retriable
    assert DeadlineExceeded(code=ErrorCode.UPSTREAM_TIMEOUT).retriable


def test_errors_pickle_with_their_code() -> None:
    err = CircuitOpen("open", retry_after=3.0, policy="db")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is CircuitOpen
    assert (str(copy), copy.code, copy.retry_after, copy.policy) == ("open", err.code, 3.0, "db")


def test_classify_buttress_errors_keep_code_and_retry_after() -> None:
    info = classify(RateLimited("slow down", retry_after=4.0))
    assert info is not None
    assert (info.code, info.retry_after, info.retriable) == (ErrorCode.RATE_LIMITED, 4.0, True)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TimeoutError(), ErrorCode.UPSTREAM_TIMEOUT),
        (ConnectionRefusedError(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (ConnectionResetError(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (OSError("disk"), ErrorCode.UPSTREAM_UNAVAILABLE),
        (ValueError("bug"), ErrorCode.INTERNAL_ERROR),
        (KeyError("bug"), ErrorCode.INTERNAL_ERROR),
        (httpx.ConnectTimeout("t"), ErrorCode.UPSTREAM_TIMEOUT),
        (httpx.ReadTimeout("t"), ErrorCode.UPSTREAM_TIMEOUT),
        (httpx.PoolTimeout("t"), ErrorCode.OVERLOADED),
        (httpx.ConnectError("c"), ErrorCode.UPSTREAM_UNAVAILABLE),
        (httpx.RemoteProtocolError("c"), ErrorCode.UPSTREAM_UNAVAILABLE),
        (httpx.UnsupportedProtocol("x"), ErrorCode.INTERNAL_ERROR),
        (requests.ConnectTimeout(), ErrorCode.UPSTREAM_TIMEOUT),
        (requests.ReadTimeout(), ErrorCode.UPSTREAM_TIMEOUT),
        (requests.ConnectionError(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (redis.exceptions.TimeoutError(), ErrorCode.UPSTREAM_TIMEOUT),
        (redis.exceptions.ConnectionError(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (redis.exceptions.BusyLoadingError(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (redis.exceptions.ResponseError("WRONGTYPE"), ErrorCode.INTERNAL_ERROR),
        (psycopg.errors.SerializationFailure(), ErrorCode.TRANSIENT_CONFLICT),
        (psycopg.errors.DeadlockDetected(), ErrorCode.TRANSIENT_CONFLICT),
        (psycopg.errors.QueryCanceled(), ErrorCode.UPSTREAM_TIMEOUT),
        (psycopg.errors.UniqueViolation(), ErrorCode.CONFLICT),
        (psycopg.errors.AdminShutdown(), ErrorCode.UPSTREAM_UNAVAILABLE),
        (psycopg.OperationalError("gone"), ErrorCode.UPSTREAM_UNAVAILABLE),
        (sqlite3.OperationalError("database is locked"), ErrorCode.TRANSIENT_CONFLICT),
        (sqlite3.OperationalError("no such table: x"), ErrorCode.INTERNAL_ERROR),
        (sqlite3.IntegrityError("UNIQUE"), ErrorCode.CONFLICT),
    ],
)
def test_classify_foreign_errors(error: BaseException, code: ErrorCode) -> None:
    info = classify(error)
    assert info is not None
    assert info.code is code


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)])
def test_cancellation_is_never_a_failure(error: BaseException) -> None:
    assert classify(error) is None


def test_real_connection_refused_from_each_driver() -> None:
    port = closed_port()
    with pytest.raises(httpx.ConnectError) as h:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    with pytest.raises(requests.ConnectionError) as r:
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError) as rd:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).ping()
    with pytest.raises(psycopg.OperationalError) as pg:
        psycopg.connect(f"postgresql://127.0.0.1:{port}/test", connect_timeout=2)
    for caught in (h, r, rd, pg):
        info = classify(caught.value)
        assert info is not None
        assert info.code is ErrorCode.UPSTREAM_UNAVAILABLE, caught.value
        assert info.retriable


def test_real_redis_timeout_is_upstream_timeout(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.05)
    try:
        with pytest.raises(redis.exceptions.TimeoutError) as caught:
            client.blpop(["buttress-test:never-pushed"], timeout=1)
    finally:
        client.close()
    info = classify(caught.value)
    assert info is not None
    assert info.code is ErrorCode.UPSTREAM_TIMEOUT


def test_real_postgres_statement_timeout_and_unique_violation(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '20ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(1)")
        info = classify(caught.value)
        assert info is not None
        assert info.code is ErrorCode.UPSTREAM_TIMEOUT
        conn.execute("SET statement_timeout = 0")
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            conn.execute("INSERT INTO t VALUES (1)")
        info = classify(dup.value)
        assert info is not None
        assert info.code is ErrorCode.CONFLICT
        assert not info.retriable


@pytest.mark.parametrize(
    ("status", "code", "retriable"),
    [
        (200, None, None),
        (304, None, None),
        (400, ErrorCode.BAD_REQUEST, False),
        (404, ErrorCode.NOT_FOUND, False),
        (408, ErrorCode.UPSTREAM_TIMEOUT, True),
        (413, ErrorCode.PAYLOAD_TOO_LARGE, False),
        (418, ErrorCode.BAD_REQUEST, False),
        (422, ErrorCode.VALIDATION_FAILED, False),
        (429, ErrorCode.RATE_LIMITED, True),
        (500, ErrorCode.UPSTREAM_ERROR, True),
        (501, ErrorCode.INTERNAL_ERROR, False),
        (502, ErrorCode.UPSTREAM_ERROR, True),
        (503, ErrorCode.UPSTREAM_UNAVAILABLE, True),
        (504, ErrorCode.UPSTREAM_TIMEOUT, True),
        (599, ErrorCode.UPSTREAM_ERROR, True),
    ],
)
def test_classify_responses(status: int, code: ErrorCode | None, retriable: bool | None) -> None:
    info = classify(httpx.Response(status))
    if code is None:
        assert info is None
        return
    assert info is not None
    assert (info.code, info.retriable, info.status) == (code, retriable, status)


def test_retry_after_delta_and_http_date_on_responses() -> None:
    info = classify(httpx.Response(429, headers={"Retry-After": "7"}))
    assert info is not None
    assert info.retry_after == 7.0
    resp = requests.models.Response()
    resp.status_code = 503
    resp.headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    info = classify(resp)
    assert info is not None
    assert info.retry_after == 0.0  # in the past: retry now
    assert info.code is ErrorCode.UPSTREAM_UNAVAILABLE


def test_ratelimit_field_gives_retry_after_when_exhausted() -> None:
    info = classify(httpx.Response(429, headers={"RateLimit": '"default";r=0;t=12'}))
    assert info is not None
    assert info.retry_after == 12.0
    info = classify(httpx.Response(429, headers={"RateLimit": "limit=10, remaining=0, reset=3"}))
    assert info is not None
    assert info.retry_after == 3.0
    info = classify(httpx.Response(429, headers={"RateLimit": '"default";r=4;t=12'}))
    assert info is not None
    assert info.retry_after is None


def test_http_status_errors_classify_by_their_response() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    response = httpx.Response(503, headers={"Retry-After": "2"}, request=request)
    err = httpx.HTTPStatusError("boom", request=request, response=response)
    info = classify(err)
    assert info is not None
    assert (info.code, info.retry_after) == (ErrorCode.UPSTREAM_UNAVAILABLE, 2.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (b"5", 5.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("99999999999999999999", 604800.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value: str | bytes | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1445412480.0) == expected


def test_unknown_objects_are_not_failures() -> None:
    assert classify(object()) is None
    assert classify("error") is None


def _imports(module: str) -> set[str]:
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_between_the_errors_and_the_classifier() -> None:
    assert "buttress.errors" not in _imports("buttress._classify")
    assert not {"buttress.errors", "buttress._classify"} & _imports("buttress._taxonomy")
    assert ButtressError.__module__ == ErrorCode.__module__ == "buttress.errors"


def test_a_rejection_built_by_its_policy_is_the_same_error() -> None:
    fast = CircuitOpen.by_policy("db", "open", 3.0)
    slow = CircuitOpen("open", retry_after=3.0, policy="db")
    for err in (fast, slow):
        assert type(err) is CircuitOpen
        assert (err.args, str(err), err.code, err.retry_after, err.policy) == (
            ("open",),
            "open",
            ErrorCode.CIRCUIT_OPEN,
            3.0,
            "db",
        )
        copy = pickle.loads(pickle.dumps(err))
        assert (copy.args, copy.code, copy.retry_after, copy.policy) == (
            err.args,
            err.code,
            err.retry_after,
            err.policy,
        )
    assert BulkheadFull.by_policy("b", "full").retry_after is None


def test_classify_remembers_exception_types_but_not_what_depends_on_the_instance() -> None:
    first, second = classify(ConnectionError("a")), classify(ConnectionError("b"))
    assert first is second  # one Classification per type, built once
    assert first is not None
    assert first.code is ErrorCode.UPSTREAM_UNAVAILABLE

    class Custom(TimeoutError):
        pass

    assert classify(Custom()) is classify(Custom())
    assert classify(Custom()).code is ErrorCode.UPSTREAM_TIMEOUT  # type: ignore[union-attr]
    # instance-dependent: a buttress error's own retry_after, sqlite3's message
    assert classify(RateLimited("x", retry_after=1.0)).retry_after == 1.0  # type: ignore[union-attr]
    assert classify(RateLimited("x", retry_after=2.0)).retry_after == 2.0  # type: ignore[union-attr]
    locked = classify(sqlite3.OperationalError("database is locked"))
    other = classify(sqlite3.OperationalError("no such table: t"))
    assert locked is not None
    assert other is not None
    assert (locked.code, other.code) == (ErrorCode.TRANSIENT_CONFLICT, ErrorCode.INTERNAL_ERROR)


# --------------------------------------------------------------------------- problem names

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


@pytest.mark.parametrize("code", list(ErrorCode))
def test_problem_type_and_code_agree(code: ErrorCode) -> None:
    from buttress.asgi._problem import PROBLEM_BASE, problem_body, problem_type

    body = problem_body(code, detail="d", request_id="r", extra={"retry_after": 1})
    assert body["code"] == code.wire
    assert body["type"] == problem_type(code) == PROBLEM_BASE + code.wire.replace("_", "-")
    assert all(_SNAKE.match(member) for member in body), list(body)
    assert _SNAKE.match(code.wire)


def test_the_problem_module_documents_every_code() -> None:
    from buttress.asgi import _problem

    doc = _problem.__doc__ or ""
    for code in ErrorCode:
        row = next((line for line in doc.splitlines() if line.startswith(code.wire + " ")), "")
        assert code.wire.replace("_", "-") in row, code
        assert str(code.http_status) in row, code
