"""harden(): context, errors, headers, CORS, body limits, deadlines; FastAPI, Starlette, bare ASGI."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress import RateLimited
from buttress.asgi import HardenSettings, current_request_id, harden
from buttress.asgi.context import client_address, parse_traceparent, trusted_networks
from buttress.asgi.security import OWASP_HEADERS, SECURITY_PROFILES
from buttress.errors import ConfigurationError
from buttress.resilience import remaining
from tests.conftest import assert_problem

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Order(BaseModel):
    sku: str
    quantity: int


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, Any]:
        return {"request_id": current_request_id(), "remaining": remaining()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimited("slow down", retry_after=7.0)

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=409, detail="order already paid")

    @app.get("/slow")
    async def slow() -> None:
        await asyncio.sleep(5)

    @app.post("/orders")
    async def create(order: Order) -> dict[str, Any]:
        return {"sku": order.sku}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        body = await request.body()
        return {"size": len(body)}

    return app


def starlette_app() -> Starlette:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"request_id": current_request_id(), "remaining": remaining()})

    async def boom(request: Request) -> None:
        raise RuntimeError("secret internals")

    async def slow(request: Request) -> None:
        await asyncio.sleep(5)

    async def upload(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/boom", boom),
            Route("/slow", slow),
            Route("/upload", upload, methods=["POST"]),
        ]
    )


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("secret internals")
    if path == "/slow":
        await asyncio.sleep(5)
    if path == "/upload":
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.dumps({"size": size}).encode()
    else:
        body = json.dumps({"request_id": current_request_id(), "remaining": remaining()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"server", b"bare/1.0")],
        }
    )
    await send({"type": "http.response.body", "body": body})


APPS = {"fastapi": fastapi_app, "starlette": starlette_app, "bare": lambda: bare_app}


def client_for(
    app: Any, settings: HardenSettings | None = None, client: tuple[str, int] = ("127.0.0.1", 5000)
) -> httpx.AsyncClient:
    hardened = harden(app, settings or HardenSettings(request_timeout=0.2, max_body_bytes=1024))
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture(params=list(APPS))
def app_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_unhandled_exception_is_problem_json_with_ids_and_headers(app_kind: str) -> None:
    async with client_for(APPS[app_kind]()) as client:
        response = await client.get("/boom", headers={"x-request-id": "req-123"})
    body = assert_problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "req-123"
    assert body["request_id"] == "req-123"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"].startswith("max-age=63072000")
    assert "traceresponse" in response.headers


async def test_request_id_is_bound_and_echoed(app_kind: str) -> None:
    async with client_for(APPS[app_kind]()) as client:
        given_id = await client.get("/ok", headers={"x-request-id": "abc-DEF_1.2"})
        fresh = await client.get("/ok", headers={"x-request-id": "bad id with spaces"})
        too_long = await client.get("/ok", headers={"x-request-id": "a" * 500})
    assert given_id.headers["x-request-id"] == "abc-DEF_1.2"
    assert given_id.json()["request_id"] == "abc-DEF_1.2"
    for response in (fresh, too_long):
        rid = response.headers["x-request-id"]
        assert len(rid) == 32
        assert set(rid) <= set(string.hexdigits)
        assert response.json()["request_id"] == rid


async def test_trace_context_continues_the_callers_trace() -> None:
    async with client_for(fastapi_app()) as client:
        response = await client.get("/ok", headers={"traceparent": TRACEPARENT})
        fresh = await client.get(
            "/ok",
            headers={"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        )
    trace_id, span, flags = parse_traceparent(response.headers["traceresponse"])  # type: ignore[misc]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span != "00f067aa0ba902b7"
    assert flags == 1
    assert parse_traceparent(fresh.headers["traceresponse"])[0] != "0" * 32  # type: ignore[index]


async def test_server_header_removed_and_app_headers_kept() -> None:
    async with client_for(bare_app) as client:
        response = await client.get("/ok")
    assert "server" not in response.headers
    assert response.headers["content-type"] == "application/json"
    # the default profile: OWASP's REST Security Cheat Sheet set
    assert (
        response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    )
    assert response.headers["cache-control"] == "no-store"
    assert "permissions-policy" not in response.headers


@pytest.mark.parametrize(
    ("value", "expected"),
    [("full", "full"), (True, "api"), ("api", "api"), (False, None)],
)
async def test_security_header_profiles(value: Any, expected: str | None) -> None:
    settings = HardenSettings(configure_logging=False, security_headers=value)
    async with client_for(bare_app, settings) as client:
        response = await client.get("/ok")
    wanted = {} if expected is None else SECURITY_PROFILES[expected]
    for name, header_value in wanted.items():
        assert response.headers[name] == header_value
    others = set(OWASP_HEADERS) - set(wanted)
    assert not others & set(response.headers)


def test_security_headers_setting_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="security_headers"):
        HardenSettings(security_headers="html")  # type: ignore[arg-type]
    assert HardenSettings.from_env({"BUTTRESS_SECURITY_HEADERS": "full"}).security_headers == "full"
    assert HardenSettings.from_env({"BUTTRESS_SECURITY_HEADERS": "off"}).security_headers is False
    assert HardenSettings.from_env({"BUTTRESS_SECURITY_HEADERS": "true"}).security_headers is True
    with pytest.raises(ConfigurationError, match="BUTTRESS_SECURITY_HEADERS"):
        HardenSettings.from_env({"BUTTRESS_SECURITY_HEADERS": "html"})


async def test_framework_errors_become_problem_json() -> None:
    async with client_for(fastapi_app()) as client:
        missing = await client.get("/nope")
        wrong_method = await client.delete("/ok")
        invalid = await client.post(
            "/orders", json={"sku": "x", "quantity": "many", "password": "hunter2"}
        )
        malformed = await client.post(
            "/orders", content=b'{"sku": ', headers={"content-type": "application/json"}
        )
        conflict = await client.get("/teapot")
        limited = await client.get("/limited")
    assert_problem(missing, 404, "not_found")
    assert_problem(wrong_method, 405, "method_not_allowed")
    body = assert_problem(invalid, 422, "validation_failed")
    assert body["errors"][0]["loc"] == ["body", "quantity"]
    assert "hunter2" not in invalid.text
    assert "many" not in invalid.text
    assert_problem(malformed, 422, "validation_failed")
    assert assert_problem(conflict, 409, "conflict")["detail"] == "order already paid"
    assert_problem(limited, 429, "rate_limited")
    assert limited.headers["retry-after"] == "7"


async def test_starlette_404_is_problem_json() -> None:
    async with client_for(starlette_app()) as client:
        assert_problem(await client.get("/nope"), 404, "not_found")


async def test_body_over_the_limit_by_content_length(app_kind: str) -> None:
    async with client_for(APPS[app_kind]()) as client:
        response = await client.post("/upload", content=b"x" * 2000)
        ok = await client.post("/upload", content=b"x" * 1000)
    assert_problem(response, 413, "payload_too_large")
    assert ok.json() == {"size": 1000}


async def test_chunked_body_over_the_limit_gets_413(app_kind: str) -> None:
    async def chunks():
        for _ in range(10):
            yield b"y" * 300

    async with client_for(APPS[app_kind]()) as client:
        response = await client.post("/upload", content=chunks())
    assert_problem(response, 413, "payload_too_large")
    assert "x-request-id" in response.headers


async def test_deadline_cancels_a_slow_handler(app_kind: str) -> None:
    async with client_for(APPS[app_kind]()) as client:
        started = asyncio.get_running_loop().time()
        response = await client.get("/slow")
        elapsed = asyncio.get_running_loop().time() - started
    assert_problem(response, 504, "deadline_exceeded")
    assert elapsed < 2.0


async def test_the_request_deadline_bounds_the_handlers_calls() -> None:
    async with client_for(fastapi_app(), HardenSettings(request_timeout=5.0)) as client:
        own = (await client.get("/ok")).json()["remaining"]
        asked = (await client.get("/ok", headers={"x-request-timeout": "0.5"})).json()["remaining"]
        ignored = (await client.get("/ok", headers={"x-request-timeout": "900"})).json()[
            "remaining"
        ]
    assert 4.0 < own <= 5.0
    assert 0 < asked <= 0.5
    assert 4.0 < ignored <= 5.0


async def test_cors_allow_list() -> None:
    settings = HardenSettings(
        cors_origins=("https://shop.example.com",),
        cors_credentials=True,
        cors_headers=("authorization",),
    )
    async with client_for(fastapi_app(), settings) as client:
        allowed = await client.get("/ok", headers={"origin": "https://shop.example.com"})
        other = await client.get("/ok", headers={"origin": "https://evil.example.net"})
        preflight = await client.options(
            "/ok",
            headers={
                "origin": "https://shop.example.com",
                "access-control-request-method": "GET",
                "access-control-request-headers": "Authorization",
            },
        )
        refused = await client.options(
            "/ok",
            headers={"origin": "https://evil.example.net", "access-control-request-method": "GET"},
        )
        error = await client.get("/boom", headers={"origin": "https://shop.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-headers"] == "authorization"
    assert_problem(refused, 403, "forbidden")
    assert error.headers["access-control-allow-origin"] == "https://shop.example.com"  # 500s too


def test_wildcard_with_credentials_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        HardenSettings(cors_origins=("*",), cors_credentials=True)


def test_settings_from_env_name_the_variable() -> None:
    s = HardenSettings.from_env(
        {
            "BUTTRESS_MAX_BODY_BYTES": "2048",
            "BUTTRESS_CORS_ORIGINS": "https://a.example, https://b.example",
            "BUTTRESS_SECURITY_HEADERS": "off",
            "BUTTRESS_REQUEST_TIMEOUT": "none",
        }
    )
    assert s.max_body_bytes == 2048
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.security_headers is False
    assert s.request_timeout is None
    with pytest.raises(ConfigurationError, match="BUTTRESS_MAX_BODY_BYTES='lots'"):
        HardenSettings.from_env({"BUTTRESS_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigurationError, match="BUTTRESS_SECURITY_HEADERS"):
        HardenSettings.from_env({"BUTTRESS_SECURITY_HEADERS": "maybe"})
    with pytest.raises(ConfigurationError, match="request_timeout"):
        HardenSettings.from_env({"BUTTRESS_REQUEST_TIMEOUT": "-3"})
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        HardenSettings.from_env({"BUTTRESS_TRUSTED_PROXIES": "10.0.0.0/33"})


def test_client_address_is_trusted_proxy_aware() -> None:
    nets = trusted_networks(["10.0.0.0/8", "192.168.0.0/16"])

    def scope(peer: str, xff: str | None) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1), "headers": headers}

    assert client_address(scope("10.0.0.5", "203.0.113.9, 192.168.1.1"), nets) == "203.0.113.9"
    assert (
        client_address(scope("10.0.0.5", "6.6.6.6, 203.0.113.9"), nets) == "203.0.113.9"
    )  # forged left entry ignored
    assert (
        client_address(scope("198.51.100.7", "203.0.113.9"), nets) == "198.51.100.7"
    )  # untrusted peer
    assert client_address(scope("10.0.0.5", "garbage"), nets) == "10.0.0.5"
    assert client_address(scope("10.0.0.5", "203.0.113.9"), ()) == "10.0.0.5"  # nobody trusted


header_values = st.one_of(
    st.text(min_size=0, max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.just(TRACEPARENT),
    st.from_regex(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?", fullmatch=True),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request_id=header_values, traceparent=header_values)
def test_fuzzed_ids_and_trace_headers_never_cause_a_500(request_id: str, traceparent: str) -> None:
    async def run() -> httpx.Response:
        hardened = harden(bare_app, HardenSettings())
        transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = [
                (b"x-request-id", request_id.encode("latin-1", "replace")),
                (b"traceparent", traceparent.encode("latin-1", "replace")),
            ]
            return await client.get("/ok", headers=headers)

    response = asyncio.run(run())
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    assert 0 < len(rid) <= 128
    assert parse_traceparent(response.headers["traceresponse"]) is not None


async def test_oversized_and_malformed_headers_never_500() -> None:
    async with client_for(fastapi_app()) as client:
        big = await client.get(
            "/ok",
            headers={
                "x-request-id": "x" * 10000,
                "traceparent": "f" * 5000,
                "x-request-timeout": "nan",
            },
        )
        neg = await client.get("/ok", headers={"x-request-timeout": "-1", "content-length": "0"})
    assert big.status_code == 200
    assert neg.status_code == 200


async def test_non_http_scopes_pass_through() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    hardened = harden(app, HardenSettings(configure_logging=False))
    await hardened({"type": "websocket", "path": "/ws", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["websocket"]


async def test_lifespan_passes_through_to_the_app() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    hardened = harden(app, HardenSettings(configure_logging=False))
    await hardened({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_layer_problems_carry_the_request_id_and_sheds_are_counted() -> None:
    from prometheus_client import CollectorRegistry

    gate = asyncio.Event()

    async def held(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await gate.wait()
        await bare_app(scope, receive, send)

    registry = CollectorRegistry()
    hardened = harden(
        held,
        HardenSettings(configure_logging=False, shed_max_in_flight=1, shed_adaptive=None),
        registry=registry,
    )
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = asyncio.ensure_future(client.get("/ok"))
        await asyncio.sleep(0.05)
        shed = await client.get("/ok", headers={"x-request-id": "shed-1"})
        gate.set()
        assert (await first).status_code == 200
        too_big = await client.post(
            "/upload", content=b"x" * (2 << 20), headers={"x-request-id": "big-1"}
        )
    assert assert_problem(shed, 503, "overloaded")["request_id"] == "shed-1"
    assert shed.headers["retry-after"] == "1"
    assert assert_problem(too_big, 413, "payload_too_large")["request_id"] == "big-1"
    assert (
        registry.get_sample_value("buttress_http_requests_shed_total", {"reason": "max_in_flight"})
        == 1.0
    )


def test_from_env_names_the_variable_for_range_errors() -> None:
    with pytest.raises(ConfigurationError, match="BUTTRESS_DRAIN_DELAY"):
        HardenSettings.from_env({"BUTTRESS_DRAIN_DELAY": "-1"})
    with pytest.raises(ConfigurationError, match="BUTTRESS_SHED_ADAPTIVE"):
        HardenSettings.from_env({"BUTTRESS_SHED_ADAPTIVE": "bogus"})
    with pytest.raises(ConfigurationError, match="BUTTRESS_SHED_MAX_IN_FLIGHT"):
        HardenSettings.from_env({"BUTTRESS_SHED_MAX_IN_FLIGHT": "0"})
