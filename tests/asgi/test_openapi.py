"""harden() puts buttress's own answers in a FastAPI app's OpenAPI document, truthfully."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI, Header
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette

from buttress.asgi import HardenedApp, HardenSettings, harden
from buttress.asgi._openapi import PROBLEM_SCHEMA, document_answers

PROBLEM = "application/problem+json"


class Order(BaseModel):
    sku: str
    quantity: int


def shop() -> FastAPI:
    app = FastAPI(title="shop", version="1")

    @app.post("/orders", status_code=201)
    async def create_order(order: Order) -> dict[str, Any]:
        return {"id": 1, "sku": order.sku, "quantity": order.quantity}

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    @app.put("/carts/{cart_id}")
    async def put_cart(
        cart_id: int, order: Order, idempotency_key: str = Header(max_length=64)
    ) -> dict[str, int]:
        return {"id": cart_id}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


SETTINGS = HardenSettings(
    configure_logging=False,
    access_log=False,
    rate_limits=("burst=3/minute",),
    idempotency_routes={"POST /orders": "required"},
    deadline_exempt_paths=("/ping",),
)


@pytest.fixture
def hardened() -> Iterator[HardenedApp]:
    app = harden(shop(), SETTINGS, registry=CollectorRegistry())
    yield app
    if app.parts.metrics is not None:
        app.parts.metrics.close()


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 9))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def fetch_document(app: Any) -> dict[str, Any]:
    async with client(app) as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


async def test_the_document_is_valid_openapi(hardened: HardenedApp) -> None:
    document = await fetch_document(hardened)
    try:
        from openapi_spec_validator import validate
    except ImportError:  # not installed: the structure is checked below anyway
        assert document["openapi"].startswith("3.")
    else:
        validate(document)
    schemas = document["components"]["schemas"]
    assert schemas["ProblemDetails"] == PROBLEM_SCHEMA
    assert schemas["ValidationProblem"]["allOf"] == [
        {"$ref": "#/components/schemas/ProblemDetails"}
    ]


async def test_every_operation_documents_what_buttress_answers(hardened: HardenedApp) -> None:
    paths = (await fetch_document(hardened))["paths"]
    create = paths["/orders"]["post"]
    get = paths["/orders/{order_id}"]["get"]
    ping = paths["/ping"]["get"]

    def statuses(operation: dict[str, Any]) -> set[str]:
        return {s for s, r in operation["responses"].items() if PROBLEM in r.get("content", {})}

    # keyed, limited, bodied, under the deadline
    assert statuses(create) == {"400", "409", "413", "422", "429", "503", "504"}
    # path parameter: 404; no key, no body: no 409, no 413; FastAPI's 422 is problem+json
    assert statuses(get) == {"400", "404", "422", "429", "503", "504"}
    # exempt from the deadline
    assert statuses(ping) == {"400", "429", "503"}
    for operation in (create, get, ping):
        for status, response in operation["responses"].items():
            assert "x-request-id" in response["headers"], status
            assert {"RateLimit", "RateLimit-Policy"} <= set(response["headers"]), status
            content = response.get("content", {})
            if status.startswith(("4", "5")):
                assert set(content) == {PROBLEM}, (status, content)  # never application/json
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]
    assert "Idempotent-Replayed" not in get["responses"]["200"]["headers"]
    [key] = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert (key["in"], key["required"]) == ("header", True)
    assert not [p for p in get.get("parameters", []) if p["name"] == "Idempotency-Key"]
    # an operation declaring the header itself keeps its own (no duplicate)
    cart = paths["/carts/{cart_id}"]["put"]
    names = [p["name"].lower() for p in cart["parameters"] if p["in"] == "header"]
    assert names.count("idempotency-key") == 1


async def test_served_answers_match_the_documented_content_type(hardened: HardenedApp) -> None:
    document = await fetch_document(hardened)  # 1 of the 3 requests a minute
    get = document["paths"]["/orders/{order_id}"]["get"]["responses"]
    async with client(hardened) as c:
        invalid = await c.get("/orders/not-a-number")
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] in get["422"]["content"]
        assert invalid.json()["errors"]
        await c.get("/orders/1")
        limited = await c.get("/orders/1")
    assert limited.status_code == 429
    assert limited.headers["content-type"] in get["429"]["content"]
    for header in get["429"]["headers"]:
        assert header.lower() in limited.headers, header
    body = limited.json()
    assert body["type"].endswith("/rate-limited")
    assert body["code"] == "rate_limited"
    assert body["violated_policies"] == ["burst"]
    required = PROBLEM_SCHEMA["required"]
    for answer in (invalid.json(), body):
        assert set(required) <= set(answer)
        assert set(answer) <= set(PROBLEM_SCHEMA["properties"])  # nothing undocumented


async def test_the_document_is_completed_once_and_wrapping_is_idempotent() -> None:
    app = shop()
    settings = HardenSettings(configure_logging=False, access_log=False, metrics=False)
    harden(app, settings)
    hardened = harden(app, settings)  # twice: one wrapper
    first = await fetch_document(hardened)
    second = await fetch_document(hardened)
    assert first == second
    responses = first["paths"]["/ping"]["get"]["responses"]
    assert len(responses["200"]["headers"]) == 1  # x-request-id, added once
    assert document_answers(app, settings, hardened.parts) is True


def test_apps_without_openapi_are_left_alone() -> None:
    assert document_answers(Starlette(), SETTINGS, None) is False


def test_only_the_answers_the_settings_allow() -> None:
    app = shop()
    quiet = HardenSettings(
        configure_logging=False,
        access_log=False,
        metrics=False,
        idempotency="off",
        max_body_bytes=None,
        request_timeout=None,
        shedding=False,
        graceful_shutdown=False,
    )
    hardened = harden(app, quiet)
    operation = app.openapi()["paths"]["/orders"]["post"]
    problems = {s for s, r in operation["responses"].items() if PROBLEM in r.get("content", {})}
    assert problems == {"422"}  # FastAPI's own, served as problem+json
    assert set(operation["responses"]["201"]["headers"]) == {"x-request-id"}
    assert hardened.parts.rate_limits is None


def test_schemathesis_finds_the_hardened_app_true_to_its_document() -> None:
    """Bounded property test, in process: every answer conforms to the document."""
    app = harden(
        shop(),
        HardenSettings(
            configure_logging=False,
            access_log=False,
            rate_limits=("burst=40/second",),  # some 429s in a run, documented ones
            idempotency_routes={"POST /orders": "required"},
        ),
        registry=CollectorRegistry(),
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = 0
    try:
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(
                max_examples=15,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                if case.headers and "Idempotency-Key" in case.headers:
                    # a key names one operation: the same key with another body is a
                    # documented 422 (key_reused), which schemathesis's positive-data
                    # check would count as valid data refused
                    case.headers["Idempotency-Key"] = uuid.uuid4().hex
                case.call_and_validate()

            check()
            seen += 1
    finally:
        if app.parts.metrics is not None:
            app.parts.metrics.close()
    assert seen == 4


def test_document_is_json_serialisable(hardened: HardenedApp) -> None:
    app = hardened.stages[-1]
    while not hasattr(app, "openapi"):
        app = app.app
    json.dumps(app.openapi())
