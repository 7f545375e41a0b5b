"""Whole-program facts for Django and aiohttp route tables, and authentication on routes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from buttress.audit import AuditConfig, audit

ABSENCE = frozenset({"BTR101", "BTR102", "BTR407", "BTR503", "BTR601", "BTR602", "BTR604"})


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def absent(root: Path) -> dict[str, tuple[str, int, str]]:
    report = audit(root, AuditConfig(select=ABSENCE))
    out = {}
    for f in report.findings:
        assert f.rule_id not in out, f"one finding per rule and app: {f}"
        out[f.rule_id] = (f.location.path, f.location.line, f.message)
    return out


DJANGO = {
    "mysite/settings.py": """
        ROOT_URLCONF = "mysite.urls"
        INSTALLED_APPS = ["shop"]
    """,
    "mysite/urls.py": """
        from django.urls import include, path

        from shop import views

        urlpatterns = [
            path("orders/", views.create_order),
            path("items/", views.ItemCreate.as_view()),
            path("account/", views.AccountView.as_view()),
            path("about/", views.about),
            path("shop/", include("shop.urls")),
        ]
    """,
    "shop/urls.py": """
        from django.urls import re_path

        from shop import views

        urlpatterns = [re_path(r"^refunds/$", views.refund)]
    """,
    "shop/views.py": """
        from django.contrib.auth.decorators import login_required
        from django.contrib.auth.mixins import LoginRequiredMixin
        from django.views import View
        from django.views.decorators.http import require_POST
        from django.views.generic import CreateView


        @require_POST
        def create_order(request):
            return None


        class ItemCreate(CreateView):
            fields = ["name"]


        class AccountView(LoginRequiredMixin, View):
            def post(self, request):
                return None


        def about(request):
            return None


        @login_required
        def refund(request):
            if request.method == "POST":
                return None
            return None
    """,
}


def test_django_urlconf_is_the_app(tmp_path: Path) -> None:
    found = absent(tree(tmp_path, DJANGO))
    # the root urlconf (ROOT_URLCONF), not shop/urls.py, carries the absence findings
    assert found["BTR601"][:2] == ("mysite/urls.py", 5)
    # public writes only: the login-required view and mixin are not public
    assert found["BTR102"][2].endswith("(POST /items/, POST /orders/)")
    # every write needs idempotency, authenticated or not; the 4th: re_path in shop/urls.py
    assert found["BTR101"][2].endswith("(POST /account/, POST /items/, POST /orders/ and 1 more)")
    # Django limits bodies (DATA_UPLOAD_MAX_MEMORY_SIZE) and WSGI servers drain on SIGTERM
    assert "BTR407" not in found
    assert "BTR602" not in found


def test_django_with_health_and_rate_limit_passes(tmp_path: Path) -> None:
    files = dict(DJANGO)
    files["mysite/urls.py"] = files["mysite/urls.py"].replace(
        'path("about/", views.about),',
        'path("about/", views.about), path("livez", views.about), path("readyz", views.about),',
    )
    files["shop/limits.py"] = "from django_ratelimit.decorators import ratelimit\n"
    found = absent(tree(tmp_path, files))
    assert {"BTR601", "BTR604", "BTR102"} & found.keys() == set()


def test_aiohttp_route_tables(tmp_path: Path) -> None:
    found = absent(
        tree(
            tmp_path,
            {
                "svc/app.py": """
                    from aiohttp import web

                    routes = web.RouteTableDef()


                    @routes.post("/orders")
                    async def create(request):
                        return web.json_response({})


                    async def update(request):
                        return web.json_response({})


                    class Items(web.View):
                        async def delete(self):
                            return web.Response()


                    app = web.Application()
                    app.add_routes(routes)
                    app.add_routes([web.view("/items", Items)])
                    app.router.add_put("/items/{id}", update)
                    app.router.add_route("PATCH", "/items/{id}/name", update)
                """
            },
        )
    )
    assert found["BTR601"][:2] == ("svc/app.py", 20)
    assert found["BTR102"][2].endswith(
        "(DELETE /items, PATCH /items/{id}/name, POST /orders and 1 more)"
    )
    assert "BTR407" not in found  # client_max_size: 1 MiB by default
    assert "BTR602" not in found  # run_app drains and runs on_cleanup on SIGTERM


def test_authenticated_routes_are_not_public_writes(tmp_path: Path) -> None:
    found = absent(
        tree(
            tmp_path,
            {
                "api.py": """
                    from fastapi import Depends, FastAPI, Security
                    from flask import Flask
                    from flask_login import login_required

                    from auth import get_current_user, oauth2_scheme

                    app = FastAPI()


                    @app.post("/orders")
                    def create(user=Depends(get_current_user)):
                        return {}


                    @app.put("/orders/{id}", dependencies=[Depends(get_current_user)])
                    def replace(id: int):
                        return {}


                    @app.patch("/orders/{id}")
                    def edit(id: int, token: str = Security(oauth2_scheme)):
                        return {}


                    @app.post("/signup")
                    def signup(db=Depends(get_db)):
                        return {}
                """
            },
        )
    )
    assert found["BTR102"][2].endswith("write routes without a rate limit (POST /signup)")
    # idempotency is about retries, not about who calls: every write counts
    assert "POST /orders" in found["BTR101"][2]


def test_flask_login_required(tmp_path: Path) -> None:
    found = absent(
        tree(
            tmp_path,
            {
                "app.py": """
                    from flask import Flask
                    from flask_login import login_required

                    app = Flask(__name__)


                    @app.route("/orders", methods=["POST"])
                    @login_required
                    def create():
                        return {}
                """
            },
        )
    )
    assert "BTR102" not in found
    assert "BTR101" in found
