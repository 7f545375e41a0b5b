"""`harden()` with shared state: rate limits, Idempotency-Key, and the store behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from buttress.asgi import HardenSettings, Limit, RateLimitRule, harden
from buttress.errors import ConfigurationError
from buttress.stores import MemoryStore

QUIET = {"configure_logging": False, "access_log": False, "metrics": False}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    app.calls += 1  # type: ignore[attr-defined]
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b'{"n": %d}' % app.calls})  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    app.calls = 0  # type: ignore[attr-defined]


def client(hardened: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=hardened), base_url="http://t")


async def test_global_rate_limits_from_settings() -> None:
    settings = HardenSettings(rate_limits=("burst=2/minute",), **QUIET)
    hardened = harden(app, settings)
    async with client(hardened) as http:
        ok = [await http.get("/x") for _ in range(2)]
        denied = await http.get("/x")
        health = await http.get("/health/live")
    assert [r.status_code for r in ok] == [201, 201]
    assert ok[0].headers["ratelimit-policy"] == '"burst";q=2;w=60'
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["policy"] == "burst"
    assert int(denied.headers["retry-after"]) == 30
    assert health.status_code == 200  # health is answered before any limit
    assert hardened.parts.rate_limits is not None


async def test_per_route_rules_and_required_idempotency(tmp_path: Path) -> None:
    settings = HardenSettings(
        idempotency_routes={"POST /orders": "required"},
        store_url=f"sqlite:///{tmp_path / 'state.db'}",
        **QUIET,
    )
    hardened = harden(
        app,
        settings,
        rate_limits=[RateLimitRule(Limit("orders", "10/minute"), path="/orders", methods=["POST"])],
    )
    async with client(hardened) as http:
        missing = await http.post("/orders", content=b"{}")
        first = await http.post("/orders", content=b"{}", headers={"idempotency-key": "k1"})
        again = await http.post("/orders", content=b"{}", headers={"idempotency-key": "k1"})
        other = await http.post("/orders", content=b"{1}", headers={"idempotency-key": "k1"})
        elsewhere = await http.post("/other", content=b"{}")  # optional there: runs
    assert missing.status_code == 400
    assert missing.headers["content-type"] == "application/problem+json"
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert other.status_code == 422
    assert elsewhere.status_code == 201
    assert app.calls == 2  # type: ignore[attr-defined]
    assert first.headers["ratelimit"].startswith('"orders";r=')
    assert "ratelimit" not in elsewhere.headers
    assert hardened.parts.store is not None
    assert hardened.parts.store.url.startswith("sqlite:")
    hardened.parts.store.close()


async def test_a_given_store_is_used_and_idempotency_can_be_off() -> None:
    store = MemoryStore()
    hardened = harden(app, HardenSettings(idempotency="off", **QUIET), store=store)
    assert hardened.parts.idempotency is None
    assert hardened.parts.rate_limits is None
    hardened = harden(app, HardenSettings(**QUIET), store=store)
    assert hardened.parts.store is store
    async with client(hardened) as http:
        a = await http.post("/p", headers={"idempotency-key": "same"})
        b = await http.post("/p", headers={"idempotency-key": "same"})
    assert b.headers["idempotent-replayed"] == "true"
    assert a.content == b.content


def test_settings_from_env() -> None:
    settings = HardenSettings.from_env(
        {
            "BUTTRESS_STORE_URL": "redis://127.0.0.1:6379/0",
            "BUTTRESS_RATE_LIMITS": "burst=20/second;burst=40, daily=10000/day",
            "BUTTRESS_RATE_LIMIT_KEY": "api_key",
            "BUTTRESS_RATE_LIMIT_FAIL_MODE": "closed",
            "BUTTRESS_IDEMPOTENCY_ROUTES": "POST /orders=required, /hooks/{x}=off",
            "BUTTRESS_IDEMPOTENCY_TTL": "3600",
        }
    )
    assert settings.store_url == "redis://127.0.0.1:6379/0"
    assert settings.rate_limits == ("burst=20/second;burst=40", "daily=10000/day")
    rule = settings.rate_limit_rule()
    assert rule is not None
    assert [limit.name for limit in rule.limits] == ["burst", "daily"]
    assert settings.rate_limit_fail_mode == "closed"
    assert settings.idempotency_routes == {"POST /orders": "required", "/hooks/{x}": "off"}
    assert settings.idempotency_ttl == 3600.0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BUTTRESS_STORE_URL": "mongodb://x"}, "BUTTRESS_STORE_URL"),
        ({"BUTTRESS_RATE_LIMITS": "20/second"}, "BUTTRESS_RATE_LIMITS"),
        ({"BUTTRESS_RATE_LIMITS": "x=20 per fortnight"}, "BUTTRESS_RATE_LIMITS"),
        ({"BUTTRESS_RATE_LIMIT_KEY": "cookie"}, "BUTTRESS_RATE_LIMIT_KEY"),
        ({"BUTTRESS_RATE_LIMIT_KEY": "jwt"}, "BUTTRESS_RATE_LIMIT_KEY"),
        ({"BUTTRESS_RATE_LIMIT_FAIL_MODE": "maybe"}, "BUTTRESS_RATE_LIMIT_FAIL_MODE"),
        ({"BUTTRESS_IDEMPOTENCY": "always"}, "BUTTRESS_IDEMPOTENCY"),
        ({"BUTTRESS_IDEMPOTENCY_ROUTES": "POST /orders"}, "BUTTRESS_IDEMPOTENCY_ROUTES"),
        ({"BUTTRESS_IDEMPOTENCY_TTL": "0"}, "BUTTRESS_IDEMPOTENCY_TTL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        HardenSettings.from_env(env)


async def test_a_replay_carries_its_own_request_id_not_the_first_ones() -> None:
    hardened = harden(app, HardenSettings(rate_limits=("burst=10/second",), **QUIET))
    headers = {"idempotency-key": "same"}
    async with client(hardened) as http:
        first = await http.post("/p", headers={**headers, "x-request-id": "first-request"})
        replay = await http.post("/p", headers={**headers, "x-request-id": "second-request"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers.get_list("x-request-id") == ["second-request"]
    assert len(replay.headers.get_list("ratelimit")) == 1
    assert len(replay.headers.get_list("x-content-type-options")) == 1
    assert replay.headers["ratelimit"] != first.headers["ratelimit"]  # its own decision


@pytest.mark.parametrize(
    ("rate", "item"),
    [
        ("2/minute", '"p";q=2;w=60'),  # burst = limit: the plain quota
        ("1000/day", '"p";q=1000;w=86400'),
        ("60/minute;burst=25", '"p";q=25;w=25'),  # q is the burst, w its refill time
        ("50/second;burst=100", '"p";q=100;w=2'),
        ("20/second;burst=10", '"p";q=20;w=1'),  # whole seconds: the rate per second
    ],
)
def test_policy_quota_never_below_what_remaining_counts(rate: str, item: str) -> None:
    assert Limit("p", rate).policy_item == item


async def test_refusals_are_counted_in_http_metrics() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    settings = HardenSettings(
        rate_limits=("burst=1/minute",), configure_logging=False, access_log=False
    )
    hardened = harden(app, settings, registry=registry)
    async with client(hardened) as http:
        await http.get("/x")
        await http.get("/x")
        metrics = (await http.get("/metrics")).text
    assert 'buttress_http_requests_limited_total{policy="burst"} 1.0' in metrics


async def test_per_route_body_limits_and_deadline_exemptions() -> None:
    settings = HardenSettings.from_env(
        {
            "BUTTRESS_MAX_BODY_BYTES": "10",
            "BUTTRESS_BODY_LIMIT_ROUTES": "/uploads=100",
            "BUTTRESS_DEADLINE_EXEMPT_PATHS": "/stream",
            "BUTTRESS_IDEMPOTENCY": "off",
            "BUTTRESS_CONFIGURE_LOGGING": "false",
            "BUTTRESS_ACCESS_LOG": "false",
            "BUTTRESS_METRICS": "false",
        }
    )
    assert settings.body_limit_routes == {"/uploads": 100}
    assert settings.deadline_exempt_paths == ("/stream",)
    hardened = harden(app, settings)
    async with client(hardened) as http:
        small = await http.post("/orders", content=b"x" * 50)
        upload = await http.post("/uploads/a", content=b"x" * 50)
        huge = await http.post("/uploads/a", content=b"x" * 150)
    assert [small.status_code, upload.status_code, huge.status_code] == [413, 201, 413]
    with pytest.raises(ConfigurationError, match="BUTTRESS_BODY_LIMIT_ROUTES"):
        HardenSettings.from_env({"BUTTRESS_BODY_LIMIT_ROUTES": "/uploads=lots"})
    with pytest.raises(ConfigurationError, match="body_limit_routes"):
        HardenSettings(body_limit_routes={"uploads": 5})


async def test_route_body_limits_match_whole_segments_and_apply_without_a_global_one() -> None:
    settings = HardenSettings(
        max_body_bytes=None,  # no limit elsewhere, but the route's still applies
        body_limit_routes={"/uploads/": 100},
        idempotency="off",
        configure_logging=False,
        access_log=False,
        metrics=False,
    )
    hardened = harden(app, settings)
    async with client(hardened) as http:
        answers = [
            (path, size, (await http.post(path, content=b"x" * size)).status_code)
            for path, size in [
                ("/uploads", 150),  # the prefix itself
                ("/uploads/a", 150),  # below it
                ("/uploads/a", 50),
                ("/uploadsX", 150),  # not below it: another path, no limit
                ("/orders", 5000),
            ]
        ]
    assert [status for _, _, status in answers] == [413, 413, 201, 201, 201], answers
