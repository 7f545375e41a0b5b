"""HardenSettings: misspelled variables, tuple settings, code plus environment, pydantic-settings."""

from __future__ import annotations

import re
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from buttress.asgi import HardenSettings, harden
from buttress.asgi._settings import SettingsWarning
from buttress.asgi._settings_env import unknown_variables
from buttress.errors import ConfigurationError

SRC = Path(__file__).resolve().parents[2] / "src"
FIELDS = [f.name for f in fields(HardenSettings)]

# one valid item per tuple setting: a new tuple setting fails test_samples_cover_every_tuple
SAMPLES = {
    "trusted_proxies": "10.0.0.0/8",
    "cors_origins": "https://a.example",
    "cors_methods": "PUT",
    "cors_headers": "authorization",
    "cors_expose_headers": "x-total-count",
    "deadline_exempt_paths": "/stream",
    "rate_limits": "burst=20/second",
    "health_live_paths": "/ping",
    "health_ready_paths": "/api/ready",
    "health_report_paths": "/health/detailed",
    "health_startup_paths": "/startupz",
    "chaos_faults": "latency 1% 1ms",
}


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def no_warnings(environ: dict[str, str]) -> HardenSettings:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = HardenSettings.from_env(environ)
    assert [str(w.message) for w in caught] == []
    return settings


# ------------------------------------------------------------------ misspelled variables
def test_a_misspelled_variable_warns_naming_the_closest_one() -> None:
    with pytest.warns(SettingsWarning) as caught:
        settings = HardenSettings.from_env({"BUTTRESS_REQUEST_TIMOUT": "5"})
    assert settings.request_timeout == 30.0  # ignored, and said so
    (warning,) = caught
    assert str(warning.message) == (
        "BUTTRESS_REQUEST_TIMOUT is not a buttress setting and is ignored; did you mean "
        "BUTTRESS_REQUEST_TIMEOUT?"
    )
    assert warning.filename == __file__  # points at the caller's line, not at buttress


def test_harden_warns_at_the_line_that_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUTTRESS_CORS_ORIGIN", "https://a.example")
    monkeypatch.setenv("BUTTRESS_CONFIGURE_LOGGING", "false")
    with pytest.warns(SettingsWarning, match="did you mean BUTTRESS_CORS_ORIGINS") as caught:
        harden(ok_app)
    assert caught[0].filename == __file__


def test_a_name_like_no_setting_warns_without_a_guess() -> None:
    with pytest.warns(SettingsWarning) as caught:
        HardenSettings.from_env({"BUTTRESS_ZQX": "1"})
    assert str(caught[0].message) == "BUTTRESS_ZQX is not a buttress setting and is ignored"


def test_variables_buttress_reads_elsewhere_are_not_misspelled() -> None:
    no_warnings(
        {
            "BUTTRESS_STORE_URL": "memory://",
            "BUTTRESS_STORE_NAMESPACE": "app1",
            "BUTTRESS_KEY_SECRET": "k" * 32,
            "BUTTRESS_DEMO_DB": "/tmp/demo.db",
            "BUTTRESS_TEST_REDIS_URL": "redis://127.0.0.1:6379/3",
            "BUTTRESS_TEST_ANYTHING": "x",
            "BUTTRESS_MAX_BODY_BYTES": "2048",
            "OTHER_REQUEST_TIMOUT": "5",  # not ours
        }
    )


def test_every_variable_named_in_the_source_is_known() -> None:
    named = set()
    for path in SRC.rglob("*.py"):
        named |= set(re.findall(r"\bBUTTRESS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert len(named) > 5
    named.discard("BUTTRESS_REQUEST_TIMOUT")  # the docstrings' example of a typo
    unknown = unknown_variables(dict.fromkeys(named, "1"), FIELDS)
    assert unknown == [], "add the variable to buttress.asgi._settings_env.OTHER_VARIABLES"


# ------------------------------------------------------------------ tuple settings
def test_samples_cover_every_tuple_setting() -> None:
    tuples = {f.name for f in fields(HardenSettings) if str(f.type).startswith("tuple[")}
    assert set(SAMPLES) == tuples


@pytest.mark.parametrize("name", sorted(SAMPLES))
async def test_one_string_is_a_one_item_tuple(name: str) -> None:
    item = SAMPLES[name]
    settings = HardenSettings(**{name: item})
    assert getattr(settings, name) == (item,)
    assert getattr(HardenSettings(**{name: [item]}), name) == (item,)  # a list too
    # and harden() takes it
    hardened = harden(ok_app, HardenSettings(**{name: item}, configure_logging=False))
    transport = httpx.ASGITransport(app=hardened)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_string_with_commas_or_a_non_string_is_refused_clearly(name: str) -> None:
    item = SAMPLES[name]
    with pytest.raises(ConfigurationError) as refused:
        HardenSettings(**{name: f"{item}, {item}"})
    assert str(refused.value) == (
        f"HardenSettings({name}={item + ', ' + item!r}): one string is one item; for "
        f"several, give a tuple: {name}={(item, item)!r}"
    )
    with pytest.raises(ConfigurationError, match=rf"HardenSettings\({name}=.*a tuple of strings"):
        HardenSettings(**{name: (item, 7)})
    with pytest.raises(ConfigurationError, match=rf"HardenSettings\({name}=7\)"):
        HardenSettings(**{name: 7})


def test_a_mapping_setting_refuses_a_string() -> None:
    with pytest.raises(ConfigurationError, match=r"HardenSettings\(csp_routes='/docs'\)"):
        HardenSettings(csp_routes="/docs")  # type: ignore[arg-type]


# ------------------------------------------------------------------ code plus environment
def test_from_env_over_a_base_overrides_only_what_is_set() -> None:
    base = HardenSettings(cors_origins=("https://shop.example",), max_body_bytes=4096)
    settings = HardenSettings.from_env(
        {"BUTTRESS_MAX_BODY_BYTES": "8192", "BUTTRESS_SECURITY_HEADERS": "full"}, base=base
    )
    assert settings.cors_origins == ("https://shop.example",)
    assert settings.max_body_bytes == 8192
    assert settings.security_headers == "full"
    assert HardenSettings.from_env({}, base=base) == base


def test_from_env_over_a_base_names_the_variable_that_broke_it() -> None:
    base = HardenSettings(cors_credentials=True)
    with pytest.raises(ConfigurationError, match=r"\(set by BUTTRESS_CORS_ORIGINS\)$"):
        HardenSettings.from_env({"BUTTRESS_CORS_ORIGINS": "*"}, base=base)


def test_csp_routes_from_the_environment() -> None:
    settings = no_warnings(
        {"BUTTRESS_CSP_ROUTES": "/docs=none, /app=default-src 'self'; script-src 'sha256-ab+c='"}
    )
    assert settings.csp_routes == {
        "/docs": None,
        "/app": "default-src 'self'; script-src 'sha256-ab+c='",
    }
    assert no_warnings({"BUTTRESS_CSP_ROUTES": '{"/x": "default-src \'none\'"}'}).csp_routes == {
        "/x": "default-src 'none'"
    }
    with pytest.raises(ConfigurationError, match=r"BUTTRESS_CSP_ROUTES='docs=none'.*PREFIX=POLICY"):
        HardenSettings.from_env({"BUTTRESS_CSP_ROUTES": "docs=none"})
    with pytest.raises(ConfigurationError, match=r"csp_routes=\{'/a': 'x\\ny'\}"):
        HardenSettings(csp_routes={"/a": "x\ny"})


async def test_csp_routes_variable_reaches_the_responses() -> None:
    settings = no_warnings({"BUTTRESS_CSP_ROUTES": "/app=default-src 'self'"})
    transport = httpx.ASGITransport(app=harden(ok_app, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        app_page = await client.get("/app/index.html")
        api = await client.get("/orders")
    assert app_page.headers["content-security-policy"] == "default-src 'self'"
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_lists_from_the_environment_also_as_json() -> None:
    settings = no_warnings({"BUTTRESS_CORS_ORIGINS": '["https://a.example", "https://b.example"]'})
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ConfigurationError, match="BUTTRESS_CORS_ORIGINS=.*JSON array of strings"):
        HardenSettings.from_env({"BUTTRESS_CORS_ORIGINS": "[1, 2]"})


# ------------------------------------------------------------------ pydantic-settings
class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="APP_", env_nested_delimiter="__", nested_model_default_partial_update=True
    )
    harden: HardenSettings = HardenSettings(request_timeout=5.0)
    name: str = "shop"


def test_pydantic_settings_field_with_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APP_HARDEN__CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("APP_HARDEN__MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("APP_HARDEN__SECURITY_HEADERS", "off")
    monkeypatch.setenv("APP_HARDEN__BODY_LIMIT_ROUTES", "/uploads=52428800")
    monkeypatch.setenv("APP_HARDEN__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    settings = AppSettings().harden
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.max_body_bytes == 2048
    assert settings.security_headers is False
    assert settings.body_limit_routes == {"/uploads": 52428800}
    assert settings.request_timeout == 5.0  # the default in code, kept


def test_pydantic_settings_defaults_json_and_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AppSettings().harden == HardenSettings(request_timeout=5.0)
    monkeypatch.setenv(
        "APP_HARDEN", '{"cors_origins": ["https://a.example"], "log_level": "DEBUG"}'
    )
    loaded = AppSettings()
    assert loaded.harden.cors_origins == ("https://a.example",)
    assert loaded.harden.log_level == "DEBUG"
    dumped = loaded.model_dump()
    assert dumped["harden"]["cors_origins"] == ("https://a.example",)
    again = AppSettings.model_validate_json(loaded.model_dump_json())
    assert again.harden == loaded.harden
    assert AppSettings.model_json_schema()["properties"]["harden"]["type"] == "object"


def test_pydantic_settings_errors_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_HARDEN__MAX_BODY_BYTES", "-1")
    with pytest.raises(pydantic.ValidationError, match=r"HardenSettings\(max_body_bytes=-1\)"):
        AppSettings()
    monkeypatch.delenv("APP_HARDEN__MAX_BODY_BYTES")
    with pytest.raises(pydantic.ValidationError, match="did you mean 'max_body_bytes'"):
        AppSettings(harden={"max_body_byte": 10})
    with pytest.raises(pydantic.ValidationError, match="a HardenSettings or a mapping"):
        AppSettings(harden=42)
