"""CORS refusals that say why, headers a browser can read, FastAPI's docs under the CSP."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from buttress.asgi import HardenSettings, harden
from buttress.asgi._headers import DOCS_CSP, CORSMiddleware, framework_docs_paths
from buttress.asgi.security import API_HEADERS
from buttress.errors import ConfigurationError

API_CSP = API_HEADERS["content-security-policy"]
SHOP = "https://shop.example.com"


def fastapi_app(**kwargs: Any) -> FastAPI:
    app = FastAPI(**kwargs)

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def client(app: Any, settings: HardenSettings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=harden(app, settings), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def cors_settings(**kwargs: Any) -> HardenSettings:
    return HardenSettings(
        cors_origins=(SHOP,), cors_headers=("authorization",), configure_logging=False, **kwargs
    )


# ------------------------------------------------------------------ CORS
async def preflight(
    http: httpx.AsyncClient, origin: str, method: str, headers: str | None = None
) -> httpx.Response:
    asked = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        asked["access-control-request-headers"] = headers
    return await http.options("/ok", headers=asked)


async def test_a_refused_preflight_names_what_it_refused() -> None:
    async with client(fastapi_app(), cors_settings()) as http:
        header = await preflight(http, SHOP, "GET", "Authorization, X-Debug")
        method = await preflight(http, SHOP, "PUT")
        several = await preflight(http, SHOP, "DELETE", "x-a, x-b")
        origin = await preflight(http, "https://evil.example.net", "PUT", "x-debug")
        allowed = await preflight(http, SHOP, "POST", "authorization")
    details = [r.json()["detail"] for r in (header, method, several, origin)]
    assert {r.status_code for r in (header, method, several, origin)} == {403}
    assert header.headers["content-type"] == "application/problem+json"
    assert details == [
        "CORS preflight refused: header 'x-debug' is not allowed (allowed: authorization)",
        "CORS preflight refused: method 'PUT' is not allowed (allowed: GET, HEAD, POST)",
        "CORS preflight refused: method 'DELETE' is not allowed (allowed: GET, HEAD, POST); "
        "headers 'x-a', 'x-b' are not allowed (allowed: authorization)",
        # an origin that is not allowed learns what it did wrong, not the configuration
        "CORS preflight refused: origin 'https://evil.example.net' is not allowed; method "
        "'PUT' is not allowed; header 'x-debug' is not allowed",
    ]
    assert allowed.status_code == 204


async def test_a_refusal_detail_stays_short_whatever_the_client_sends() -> None:
    async with client(fastapi_app(), cors_settings()) as http:
        refused = await preflight(http, SHOP, "GET", ", ".join(f"x-{i}" for i in range(300)))
        long_origin = await preflight(http, "https://" + "a" * 5000 + ".example", "GET")
    assert refused.json()["detail"].endswith(
        "'x-4' and 295 more are not allowed (allowed: authorization)"
    )
    assert len(long_origin.json()["detail"]) < 200


@pytest.mark.parametrize("legacy", [False, True])
async def test_the_browser_may_read_buttress_headers(legacy: bool) -> None:
    settings = cors_settings(
        request_id_header="x-correlation-id",
        cors_expose_headers=("x-total-count", "RETRY-AFTER"),
        rate_limits=("burst=1/minute",),
        rate_limit_legacy_headers=legacy,
    )
    async with client(fastapi_app(), settings) as http:
        first = await http.get("/ok", headers={"origin": SHOP})
        limited = await http.get("/ok", headers={"origin": SHOP})
    exposed = [h.strip() for h in first.headers["access-control-expose-headers"].split(",")]
    expected = ["x-correlation-id", "RateLimit", "RateLimit-Policy", "Retry-After"]
    expected += ["Idempotent-Replayed"]
    if legacy:
        expected += ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
    assert exposed == [*expected, "x-total-count"]  # each once, whatever its case
    # every header the browser needs to read is sent, and exposed
    assert limited.status_code == 429
    sent = {h.lower() for h in (*first.headers, *limited.headers)}
    assert {h.lower() for h in exposed} - sent <= {"idempotent-replayed", "x-total-count"}
    assert (
        limited.headers["access-control-expose-headers"]
        == first.headers["access-control-expose-headers"]
    )


def test_a_bad_exposed_header_name_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match=r"expose_headers=\['x total'\]"):
        harden(fastapi_app(), cors_settings(cors_expose_headers=("x total",)))
    with pytest.raises(ConfigurationError, match="not a header name"):
        CORSMiddleware(fastapi_app(), allow_origins=[SHOP], expose_headers=["a\r\nb"])


# ------------------------------------------------------------------ FastAPI's docs and the CSP
class Resources(HTMLParser):
    """What a page loads: (directive, url) per resource; 'inline' for inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.loads.append(("script-src", a["src"] or ""))
            else:
                self._in_script_without_src = True
        elif tag == "link":
            rel = (a.get("rel") or "").lower()
            directive = "style-src" if rel == "stylesheet" else "img-src"
            self.loads.append((directive, a.get("href") or ""))
        elif tag == "img":
            self.loads.append(("img-src", a.get("src") or ""))

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.loads.append(("script-src", "inline"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def allowed_by(policy: str, directive: str, url: str) -> bool:
    """Whether ``policy`` lets a page on http://testserver load ``url`` for ``directive``."""
    directives = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}
    sources = directives.get(directive, directives.get("default-src", []))
    if url == "inline":
        return "'unsafe-inline'" in sources
    parts = urlsplit(url)
    if not parts.netloc or parts.netloc == "testserver":
        return "'self'" in sources
    return f"{parts.scheme}://{parts.netloc}" in sources


@pytest.mark.parametrize("profile", ["api", "full"])
async def test_fastapi_docs_pages_load_under_the_default_csp(profile: str) -> None:
    settings = HardenSettings(security_headers=profile, configure_logging=False)
    async with client(fastapi_app(), settings) as http:
        pages = {p: await http.get(p) for p in ("/docs", "/redoc", "/docs/oauth2-redirect")}
        others = [await http.get(p) for p in ("/ok", "/openapi.json", "/docsx", "/docs/x")]
    for path, page in pages.items():
        assert page.status_code == 200, path
        policy = page.headers["content-security-policy"]
        assert policy == DOCS_CSP
        assert "cross-origin-embedder-policy" not in page.headers  # CDN scripts may load
        assert page.headers["x-frame-options"] == "deny"  # the rest of the set is kept
        parser = Resources()
        parser.feed(page.text)
        assert parser.loads, path
        blocked = [load for load in parser.loads if not allowed_by(policy, *load)]
        assert blocked == [], path
    assert "'self'" in DOCS_CSP.split("connect-src")[1].split(";")[0]  # fetches /openapi.json
    assert "blob:" in DOCS_CSP.split("worker-src")[1].split(";")[0]  # ReDoc's search worker
    for other in others:  # exactly those paths: the API keeps its policy
        assert other.headers["content-security-policy"] != DOCS_CSP
        if profile == "api":
            assert other.headers["content-security-policy"] == API_CSP
        else:
            assert other.headers["cross-origin-embedder-policy"] == "require-corp"


async def test_docs_paths_come_from_the_app() -> None:
    app = fastapi_app(docs_url="/api/docs", redoc_url=None)
    assert framework_docs_paths(app) == ("/api/docs", "/docs/oauth2-redirect")
    assert framework_docs_paths(fastapi_app(docs_url=None)) == ("/redoc",)
    assert framework_docs_paths(Starlette()) == ()
    async with client(app, HardenSettings(configure_logging=False)) as http:
        moved = await http.get("/api/docs")
        gone = await http.get("/redoc")
    assert moved.headers["content-security-policy"] == DOCS_CSP
    assert gone.status_code == 404
    assert gone.headers["content-security-policy"] == API_CSP


async def test_csp_routes_for_the_docs_path_wins() -> None:
    settings = HardenSettings(csp_routes={"/docs": None}, configure_logging=False)
    async with client(fastapi_app(), settings) as http:
        docs = await http.get("/docs")
        redoc = await http.get("/redoc")
    assert "content-security-policy" not in docs.headers
    assert redoc.headers["content-security-policy"] == DOCS_CSP
