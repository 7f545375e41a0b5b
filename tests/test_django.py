"""buttress.django: a real, minimal Django project (settings in process, this module as its
URLconf) served by ``harden(get_asgi_application())``: its errors as problem+json, its
logs at buttress's level, its routes in the metrics."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import django
import httpx
import pytest
from django.conf import settings

from buttress.django import logging_config

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="buttress-tests-only",  # noqa: S106
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[
            "buttress.django.ProblemDetailsMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        CSRF_FAILURE_VIEW="buttress.django.csrf_failure",
        LOGGING=logging_config(),
        USE_TZ=True,
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.exceptions import PermissionDenied  # noqa: E402
from django.http import (  # noqa: E402
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
)
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from buttress import RateLimited  # noqa: E402
from buttress.asgi import HardenSettings, current_request_id, harden  # noqa: E402
from buttress.asgi import _logging as buttress_logging  # noqa: E402
from buttress.django import (  # noqa: E402, F401 - Django looks the handlers up here
    handler400,
    handler403,
    handler404,
    handler500,
)
from tests.conftest import assert_problem  # noqa: E402


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    if order_id == 0:
        raise Http404("order 0 does not exist")
    return JsonResponse({"id": order_id, "request_id": current_request_id()})


async def async_order(request: HttpRequest, order_id: int) -> HttpResponse:
    if order_id == 0:
        raise Http404("order 0 does not exist")
    return JsonResponse({"id": order_id, "request_id": current_request_id()})


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals: password=hunter2")


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("staff only")


def busy(request: HttpRequest) -> HttpResponse:
    raise RateLimited("the pricing quota is spent", retry_after=7.0)


def bad(request: HttpRequest) -> HttpResponse:
    return HttpResponseBadRequest("no sku given")


def form(request: HttpRequest) -> HttpResponse:
    return HttpResponse("posted")


@method_decorator(csrf_exempt, name="dispatch")
class OnlyGet(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("got")


urlpatterns = [
    path("orders/<int:order_id>", order),
    path("async/orders/<int:order_id>", async_order),
    path("boom", boom),
    path("forbidden", forbidden),
    path("busy", busy),
    path("bad", bad),
    path("form", form),
    path("only-get", OnlyGet.as_view()),
]


def client_for(**kwargs: Any) -> httpx.AsyncClient:
    hardened = harden(get_asgi_application(), HardenSettings(configure_logging=False), **kwargs)
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_django_answers_its_errors_as_problem_json() -> None:
    registry = CollectorRegistry()
    async with client_for(registry=registry) as client:
        ok = await client.get("/orders/7", headers={"x-request-id": "req-django-1"})
        aok = await client.get("/async/orders/8", headers={"x-request-id": "req-django-2"})
        no_route = await client.get("/no/such/route")
        missing = await client.get("/orders/0")
        amissing = await client.get("/async/orders/0")
        denied = await client.get("/forbidden")
        boom = await client.get("/boom")
        rate = await client.get("/busy")
        not_allowed = await client.post("/only-get")
        bad = await client.get("/bad")
        csrf = await client.post("/form", data={"a": "1"})
        bad_host = await client.get("/orders/7", headers={"host": "evil.example"})
    assert ok.json() == {"id": 7, "request_id": "req-django-1"}
    assert ok.headers["x-request-id"] == "req-django-1"
    assert aok.json() == {"id": 8, "request_id": "req-django-2"}
    for name in ("strict-transport-security", "x-content-type-options", "x-frame-options"):
        assert name in ok.headers
        assert name in boom.headers
    assert "detail" not in assert_problem(no_route, 404, "not_found")  # no resolver report
    assert assert_problem(missing, 404, "not_found")["detail"] == "order 0 does not exist"
    assert assert_problem(amissing, 404, "not_found")["detail"] == "order 0 does not exist"
    assert assert_problem(denied, 403, "forbidden")["detail"] == "staff only"
    assert_problem(boom, 500, "internal_error")
    assert "secret" not in boom.text
    assert "hunter2" not in boom.text
    assert_problem(rate, 429, "rate_limited")
    assert rate.headers["retry-after"] == "7"
    assert_problem(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "GET, HEAD, OPTIONS"
    assert assert_problem(bad, 400, "bad_request")["detail"] == "no sku given"
    assert assert_problem(csrf, 403, "forbidden")["detail"].startswith("CSRF verification failed")
    body = assert_problem(bad_host, 400, "bad_request")
    assert "evil" not in json.dumps(body)  # Django's reason is not shown
    text = generate_latest(registry).decode()
    assert 'route="/orders/{order_id}"' in text
    assert 'route="/async/orders/{order_id}"' in text


async def test_the_handlers_alone_without_the_middleware() -> None:
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        async with client_for() as client:
            no_route = await client.get("/no/such/route")
            boom = await client.get("/boom")
            not_allowed = await client.post("/only-get")
    assert_problem(no_route, 404, "not_found")
    assert_problem(boom, 500, "internal_error")
    assert (not_allowed.status_code, not_allowed.content) == (405, b"")  # the middleware's job


async def test_debug_pages_are_left_to_django() -> None:
    with override_settings(DEBUG=True):
        async with client_for() as client:
            bad = await client.get("/bad")
    assert bad.status_code == 400
    assert bad.text == "no sku given"


@contextlib.contextmanager
def buttress_logs(level: str) -> Iterator[io.StringIO]:
    """buttress's JSON logging at ``level`` into a buffer, as harden() configures it."""
    import structlog

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    sink, as_json = buttress_logging._access_sink, buttress_logging._access_json
    buttress_logging.configure_logging(json=True, stream=stream, level=level)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, root_level
        buttress_logging._access_sink, buttress_logging._access_json = sink, as_json


def django_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if str(line.get("logger", "")).startswith("django")]


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
async def test_log_level_reaches_django_request(level: str) -> None:
    with buttress_logs(level) as stream:
        async with client_for() as client:
            await client.get("/no/such/route")
            boom = await client.get("/boom", headers={"x-request-id": "req-boom"})
    lines = django_lines(stream)
    events = [str(line["event"]) for line in lines]
    assert ("Not Found: /no/such/route" in events) == (level == "WARNING")
    errors = [line for line in lines if line["event"] == "Internal Server Error: /boom"]
    assert len(errors) == 1, events  # logged once, by Django, through buttress
    assert errors[0]["level"] == "error"
    assert errors[0]["logger"] == "django.request"
    assert errors[0]["request_id"] == "req-boom" == boom.headers["x-request-id"]
    assert "RuntimeError" in errors[0]["exception"]


def test_logging_config_hands_the_django_loggers_over() -> None:
    config = logging_config()
    assert config["disable_existing_loggers"] is False
    django_logger = logging.getLogger("django")
    assert django_logger.handlers == []  # applied by django.setup() from LOGGING
    assert django_logger.level == logging.NOTSET
    assert django_logger.propagate
    assert logging_config() is not config  # a fresh dict to extend


async def test_djangos_wsgi_handler_is_served_through_a2wsgi() -> None:
    from django.core.wsgi import get_wsgi_application

    registry = CollectorRegistry()
    hardened = harden(
        get_wsgi_application(), HardenSettings(configure_logging=False), registry=registry
    )
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ok = await client.get("/orders/7", headers={"x-request-id": "req-wsgi"})
        missing = await client.get("/orders/0")
        boom = await client.get("/boom")
    assert ok.json() == {"id": 7, "request_id": "req-wsgi"}
    assert assert_problem(missing, 404, "not_found")["detail"] == "order 0 does not exist"
    assert_problem(boom, 500, "internal_error")
    assert 'route="/orders/{order_id}"' in generate_latest(registry).decode()
