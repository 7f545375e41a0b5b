"""The web apps of the program and what is missing from them (absence rules).

While each module is walked, `WebFacts` records the apps (FastAPI, Starlette, Flask,
Quart constructors, at module level or inside factory functions), routers and blueprints
(and which app includes them), routes with their methods (decorators,
``add_api_route``/``add_url_rule``, Starlette ``Route``/``Mount``), middleware, shutdown
hooks, ``harden(app)`` calls (directly, through imports or on a factory's result), and
program-wide signals (signal handlers, ``timeout_graceful_shutdown``, gunicorn's
``graceful_timeout``, ``MAX_CONTENT_LENGTH``, idempotency keys, metrics exporters).

`absence_findings` then judges each app: no health endpoint (BTR601), no body size
limit (BTR407), no /metrics (BTR503), write routes without idempotency (BTR101), no
graceful shutdown (BTR602, ASGI apps only: WSGI servers drain on SIGTERM themselves).
Each finding is located at the app's constructor. An app passed to ``harden()`` has all
five. Routes the index cannot tie to an app (an unresolved receiver, a router never
included) count for every app: absence findings err towards silence.

Apps and routers are keyed by their constructor's position (`Key`: file, line, column),
never by ``id(node)``: the same constructor is met in the walk of its own file and,
through the index, from other files, and a parallel run walks files in other processes;
`WebFacts.merge` joins the facts of several walks in order.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from buttress.audit._check_clients import DbFacts
from buttress.audit._config import AuditConfig
from buttress.audit._context import FileContext, const, keyword, location
from buttress.audit._index import ModuleIndex, Program, dotted
from buttress.audit._rules import RULES
from buttress.report import Finding

__all__ = ["App", "Key", "WebFacts", "absence_findings", "is_route_decorator", "key"]

#: Where a constructor call is written: (file, line, column, end line, end column).
Key = tuple[str, int, int, int, int]


def key(rel: str, node: ast.AST) -> Key:
    """The `Key` of ``node`` in the file ``rel``."""
    return (
        rel,
        getattr(node, "lineno", 0),
        getattr(node, "col_offset", 0),
        getattr(node, "end_lineno", 0) or 0,
        getattr(node, "end_col_offset", 0) or 0,
    )


APP_CTORS = {
    "fastapi.FastAPI": "fastapi",
    "fastapi.applications.FastAPI": "fastapi",
    "starlette.applications.Starlette": "starlette",
    "flask.Flask": "flask",
    "flask.app.Flask": "flask",
    "quart.Quart": "quart",
    "aiohttp.web.Application": "aiohttp",
    "aiohttp.web_app.Application": "aiohttp",
}
#: Frameworks that limit request bodies by default (Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
#: aiohttp's client_max_size) and drain on SIGTERM themselves (WSGI servers, run_app).
_BUILT_IN_LIMITS = frozenset({"django", "aiohttp"})
_DJANGO_PATHS = frozenset(
    {"django.urls.path", "django.urls.re_path", "django.conf.urls.url", "django.urls.conf.path",
     "django.urls.conf.re_path"}
)  # fmt: skip
_AIOHTTP_ROUTES = frozenset({"get", "post", "put", "patch", "delete", "head", "view", "route"})
_HTTP_NAMES = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
# auth on a route: Depends(get_current_user), @login_required, permission_classes, mixins
_AUTH = re.compile(
    r"(current_user|current_active_user|superuser|get_user|authenticat|authoriz|auth_required|login_required|jwt_required|"
    r"token_required|permission|require_user|requires_auth|verify_token|api_key|is_admin|"
    r"admin_required|roles_required|principal|oauth2|bearer|security|user_required)",
    re.IGNORECASE,
)
_AUTH_MIXINS = re.compile(r"(LoginRequired|PermissionRequired|UserPassesTest|Authenticated)")
_OPEN_PERMISSIONS = frozenset({"AllowAny"})
_DJANGO_WRITE_VIEWS = re.compile(r"(Create|Update|Delete|Form|Edit)View$|ViewSet$")
ROUTER_CTORS = frozenset(
    {"fastapi.APIRouter", "fastapi.routing.APIRouter", "flask.Blueprint",
     "flask.blueprints.Blueprint", "starlette.routing.Router", "quart.Blueprint"}
)  # fmt: skip
HARDEN = frozenset({"buttress.asgi.harden", "buttress.harden", "buttress.asgi._harden.harden"})
_ROUTE_ATTRS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "trace", "route", "api_route",
     "websocket"}
)  # fmt: skip
_WRITE = frozenset({"POST", "PUT", "PATCH"})
_PUBLIC_WRITE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RATE_LIMIT_LIBS = frozenset(
    {"slowapi", "flask_limiter", "fastapi_limiter", "starlette_limiter", "ratelimit",
     "asgi_ratelimit", "ratelimiter", "django_ratelimit"}
)  # fmt: skip
_HARDEN_SETTINGS = frozenset(
    {"buttress.HardenSettings", "buttress.asgi.HardenSettings", "buttress.settings.HardenSettings"}
)  # fmt: skip
_HEALTH = re.compile(
    r"(^|/)(health|healthz|healthcheck|health-check|livez|readyz|liveness|readiness|live|"
    r"ready|alive|ping|heartbeat|status)(/|$|\.)",
    re.IGNORECASE,
)
_BODY_LIMIT = re.compile(
    r"(body|content|request|upload|payload).*(size|limit|length|max)|max.*(body|content|upload)"
    r"|limit.*(body|upload|request)",
    re.IGNORECASE,
)
_HEALTH_LIBS = frozenset({"fastapi_health", "healthcheck", "flask_healthz", "health_check"})
_METRICS_LIBS = frozenset(
    {"prometheus_fastapi_instrumentator", "prometheus_flask_exporter", "starlette_exporter",
     "starlette_prometheus", "aioprometheus", "prometheus_async"}
)  # fmt: skip
_METRICS_CALLS = frozenset(
    {"prometheus_client.start_http_server", "prometheus_client.make_asgi_app",
     "prometheus_client.make_wsgi_app", "prometheus_client.generate_latest",
     "prometheus_client.start_wsgi_server"}
)  # fmt: skip
_IDEMPOTENCY = re.compile(r"idempot", re.IGNORECASE)
_IDEMPOTENCY_KEY = re.compile(r"^idempotency[-_ ]key$", re.IGNORECASE)  # the header's name


@dataclass(slots=True, kw_only=True)
class App:
    """One web app constructor in the program."""

    kind: str
    node: ast.expr  # the constructor call (Django: the root urlpatterns list)
    rel: str  # the file it is written in
    hardened: bool = False
    rate_limited: bool = False  # harden(app, rate_limits=[...])
    shutdown: bool = False
    body_limit: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One route: its path, methods and owner (an app or router constructor, or None)."""

    path: str
    methods: frozenset[str]
    owner: Key | None
    public: bool = True  # no authentication dependency, decorator or permission seen


@dataclass(slots=True, kw_only=True)
class WebFacts:
    """What the walk learned about the program's web apps."""

    apps: dict[Key, App] = field(default_factory=dict)
    routers: set[Key] = field(default_factory=set)
    includes: list[tuple[Key, Key]] = field(default_factory=list)  # (app or router, router)
    routes: list[Route] = field(default_factory=list)
    middleware: list[tuple[Key | None, str]] = field(default_factory=list)
    signals: bool = False  # a SIGTERM handler, or a graceful-shutdown timeout
    max_content_length: bool = False
    idempotency: bool = False
    metrics: bool = False
    rate_limit: bool = False  # a rate limiter somewhere in the program
    db: DbFacts = field(default_factory=DbFacts)
    urlconfs: list[tuple[str, str, ast.expr]] = field(default_factory=list)  # Django
    root_urlconf: set[str] = field(default_factory=set)  # ROOT_URLCONF values

    def merge(self, other: WebFacts) -> None:
        """Add the facts of a later walk (``other``: the files after this one's).

        Merging the walks of consecutive shards in order gives the facts of one walk over
        all of them (apps keep the order they were first seen in).
        """
        for where, app in other.apps.items():
            mine = self.apps.setdefault(where, app)
            if mine is not app:
                mine.hardened |= app.hardened
                mine.rate_limited |= app.rate_limited
                mine.shutdown |= app.shutdown
                mine.body_limit |= app.body_limit
        self.routers |= other.routers
        self.includes += other.includes
        self.routes += other.routes
        self.middleware += other.middleware
        self.signals |= other.signals
        self.max_content_length |= other.max_content_length
        self.idempotency |= other.idempotency
        self.metrics |= other.metrics
        self.rate_limit |= other.rate_limit
        self.db.postgres |= other.db.postgres
        self.db.statement_timeout |= other.db.statement_timeout
        if self.db.first_connect is None:
            self.db.first_connect = other.db.first_connect
        self.urlconfs += other.urlconfs
        self.root_urlconf |= other.root_urlconf

    # ---------------------------------------------------------------- resolution

    def owners(self, ctx: FileContext, node: ast.expr, depth: int = 0) -> set[Key]:
        """The apps and routers ``node`` may be (ids of their constructor calls)."""
        found: set[Key] = set()
        if depth > 4:
            return found
        for resolved in ctx.program.resolve(ctx.module, node, ctx.scope()):
            value = resolved.node
            if not isinstance(value, ast.Call):
                continue
            qual = ctx.program.qualname(resolved.module, value.func)
            if qual in APP_CTORS:
                found.add(self.app(value, resolved.module, qual))
            elif qual in ROUTER_CTORS:
                where = key(resolved.module.source.rel, value)
                self.routers.add(where)
                found.add(where)
            else:
                function = ctx.program.function_def(resolved.module, value.func)
                if function is not None:
                    found |= self.apps_in(ctx.program, *function)
                elif value.args and depth < 4:
                    inner = FileContext(
                        program=ctx.program, module=resolved.module, config=ctx.config
                    )
                    found |= self.owners(inner, value.args[0], depth + 1)
        return found

    def _owners_or_any(self, ctx: FileContext, node: ast.expr) -> set[Key | None]:
        """`owners`, or ``{None}`` (every app) when the receiver cannot be resolved."""
        found: set[Key | None] = set(self.owners(ctx, node))
        return found or {None}

    def app(self, node: ast.Call, module: ModuleIndex, qual: str) -> Key:
        """The `Key` of an app's constructor call (the `App` registered on first sight)."""
        where = key(module.source.rel, node)
        if where not in self.apps:
            app = App(kind=APP_CTORS[qual], node=node, rel=module.source.rel)
            for name in ("lifespan", "on_shutdown"):
                kw = keyword(node, name)
                if kw is not None and not const(kw.value, None):
                    app.shutdown = True
            self.apps[where] = app
        return where

    def apps_in(
        self,
        program: Program,
        function: ast.FunctionDef | ast.AsyncFunctionDef,
        module: ModuleIndex,
    ) -> set[Key]:
        """The apps a factory function constructs."""
        found: set[Key] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                qual = program.qualname(module, node.func)
                if qual in APP_CTORS:
                    found.add(self.app(node, module, qual))
        return found

    # ---------------------------------------------------------------- recording

    def on_function(self, ctx: FileContext, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """Route and event decorators."""
        for decorator in func.decorator_list:
            if not isinstance(decorator, ast.Call) or not isinstance(decorator.func, ast.Attribute):
                continue
            attr = decorator.func.attr
            if attr == "on_event" and decorator.args and const(decorator.args[0], "shutdown"):
                for owner in self.owners(ctx, decorator.func.value):
                    if owner in self.apps:
                        self.apps[owner].shutdown = True
                continue
            if attr not in _ROUTE_ATTRS:
                continue
            path = _path(decorator)
            if path is None:
                continue
            methods = _methods(decorator, attr)
            owners = self._owners_or_any(ctx, decorator.func.value)
            public = not _authenticated(func, decorator)
            for maybe in owners:
                self.routes.append(Route(path=path, methods=methods, owner=maybe, public=public))
            if _IDEMPOTENCY.search(" ".join(a.arg for a in func.args.args + func.args.kwonlyargs)):
                self.idempotency = True

    def on_call(self, ctx: FileContext, call: ast.Call) -> None:
        """Routes, mounts, includes, middleware, harden() and the program-wide signals."""
        qual = ctx.qual(call.func)
        func = call.func
        if qual in APP_CTORS:
            self.app(call, ctx.module, qual)
            return
        if qual in HARDEN and call.args:
            limits = keyword(call, "rate_limits")
            limited = limits is not None and not (
                isinstance(limits.value, ast.List | ast.Tuple) and not limits.value.elts
            )
            for owner in self.owners(ctx, call.args[0]):
                if owner in self.apps:
                    self.apps[owner].hardened = True
                    self.apps[owner].rate_limited |= limited
            return
        if (qual in _HARDEN_SETTINGS or qual.endswith(".HardenSettings")) and keyword(
            call, "rate_limits"
        ) is not None:
            self.rate_limit = True
        if qual in ("starlette.routing.Route", "starlette.routing.Mount", "starlette.routing.Host"):
            path = _path(call)
            if path is not None:
                methods = _methods(call, "route") if qual.endswith("Route") else frozenset()
                self.routes.append(Route(path=path, methods=methods, owner=None))
            return
        if qual in _DJANGO_PATHS:
            self._django_path(ctx, call)
            return
        if qual.startswith("aiohttp.web.") and qual.rpartition(".")[2] in _AIOHTTP_ROUTES:
            self._aiohttp_route(ctx, call, qual.rpartition(".")[2], None)
            return
        if qual in ("starlette.middleware.Middleware", "fastapi.middleware.Middleware"):
            if call.args:
                self.middleware.append((None, ctx.qual(call.args[0])))
            return
        if qual == "signal.signal" and call.args:
            if ctx.qual(call.args[0]) in ("signal.SIGTERM", "signal.SIGINT"):
                self.signals = True
            return
        if qual in _METRICS_CALLS:
            self.metrics = True
        if keyword(call, "timeout_graceful_shutdown") is not None:
            self.signals = True
        if keyword(call, "MAX_CONTENT_LENGTH") is not None:
            self.max_content_length = True
        if not isinstance(func, ast.Attribute):
            return
        attr = func.attr
        if attr == "add_signal_handler":
            self.signals = True
        elif attr.startswith("add_") and attr[4:] in _HTTP_NAMES | {"view"} and call.args:
            receiver = func.value  # aiohttp: app.router.add_post(path, handler)
            if isinstance(receiver, ast.Attribute) and receiver.attr == "router":
                receiver = receiver.value
            for maybe in self._owners_or_any(ctx, receiver):
                self._aiohttp_route(ctx, call, attr[4:], maybe)
        elif (
            attr == "add_route"
            and len(call.args) >= 2
            and isinstance(call.args[0], ast.Constant)
            and str(call.args[0].value).lower() in _HTTP_NAMES | {"*"}
        ):  # aiohttp: app.router.add_route("POST", path, handler)
            where = call.args[1]
            if isinstance(where, ast.Constant) and isinstance(where.value, str):
                verb = str(call.args[0].value).upper()
                verbs = frozenset(_PUBLIC_WRITE | {"GET"}) if verb == "*" else frozenset({verb})
                self.routes.append(Route(path=where.value, methods=verbs, owner=None))
        elif (
            attr in ("append", "extend")
            and isinstance(func.value, ast.Attribute)
            and (func.value.attr in ("on_shutdown", "on_cleanup", "cleanup_ctx"))
        ):  # aiohttp: app.on_shutdown.append(close)
            for owner in self.owners(ctx, func.value.value):
                if owner in self.apps:
                    self.apps[owner].shutdown = True
        elif attr in ("add_api_route", "add_route", "add_url_rule", "mount", "add_websocket_route"):
            path = _path(call)
            if path is None:
                return
            methods = frozenset() if attr == "mount" else _methods(call, "route")
            for maybe in self._owners_or_any(ctx, func.value):
                self.routes.append(Route(path=path, methods=methods, owner=maybe))
        elif attr in ("include_router", "register_blueprint") and call.args:
            routers = self.owners(ctx, call.args[0])
            for owner in self.owners(ctx, func.value):
                for router in routers:
                    self.includes.append((owner, router))
        elif attr == "add_middleware" and call.args:
            name = ctx.qual(call.args[0])
            for maybe in self._owners_or_any(ctx, func.value):
                self.middleware.append((maybe, name))
        elif attr == "add_event_handler" and call.args and const(call.args[0], "shutdown"):
            for owner in self.owners(ctx, func.value):
                if owner in self.apps:
                    self.apps[owner].shutdown = True

    def _django_path(self, ctx: FileContext, call: ast.Call) -> None:
        """``path("orders/", views.create)`` / ``re_path(...)``: a route with its view's methods."""
        if len(call.args) < 2:
            return
        route, view = call.args[0], call.args[1]
        if not (isinstance(route, ast.Constant) and isinstance(route.value, str)):
            return
        if isinstance(view, ast.Call) and ctx.qual(view.func) in (
            "django.urls.include",
            "django.conf.urls.include",
        ):
            return  # the included urlconf's own paths are recorded where they are written
        methods, public = _view_facts(ctx, view)
        path = "/" + route.value.lstrip("^").rstrip("$")
        self.routes.append(Route(path=path, methods=methods, owner=None, public=public))

    def _aiohttp_route(
        self, ctx: FileContext, call: ast.Call, method: str, owner: Key | None
    ) -> None:
        """``web.post(path, handler)``, ``router.add_post(...)``, ``web.view(path, View)``."""
        args = call.args
        if method == "route":  # web.route("POST", path, handler)
            if len(args) < 2 or not isinstance(args[0], ast.Constant):
                return
            method, args = str(args[0].value).lower(), args[1:]
        path = args[0] if args else None
        if not (isinstance(path, ast.Constant) and isinstance(path.value, str)):
            return
        if method == "view" and len(args) > 1:
            methods, public = _view_facts(ctx, args[1])
        else:
            methods, public = frozenset({method.upper()}), True
            if len(args) > 1:
                public = _view_facts(ctx, args[1])[1]
        self.routes.append(Route(path=path.value, methods=methods, owner=owner, public=public))

    def on_assign(self, ctx: FileContext, target: ast.expr, value: ast.expr) -> None:
        """Record what assignments say about the apps.

        ``MAX_CONTENT_LENGTH``, ``graceful_timeout``, ``app.wsgi_app = M(app.wsgi_app)``,
        ``app.router.lifespan_context = ...``, Django's ``urlpatterns`` and ``ROOT_URLCONF``.
        """
        name = dotted(target) or ""
        if name == "urlpatterns" and not ctx.scopes:
            self.urlconfs.append((ctx.module.name, ctx.rel, value))
        elif name == "ROOT_URLCONF" and isinstance(value, ast.Constant):
            self.root_urlconf.add(str(value.value))
        if (
            isinstance(target, ast.Subscript) and const(target.slice, "MAX_CONTENT_LENGTH")
        ) or name.rpartition(".")[2] in ("MAX_CONTENT_LENGTH", "max_content_length"):
            self.max_content_length = True
        elif name == "graceful_timeout" and not ctx.scopes:
            self.signals = True
        elif name.endswith(".router.lifespan_context"):
            base = (
                target.value.value
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                else None
            )
            if base is not None:
                for owner in self.owners(ctx, base):
                    if owner in self.apps:
                        self.apps[owner].shutdown = True
        elif name.endswith(".wsgi_app") and isinstance(value, ast.Call):
            middleware = ctx.qual(value.func)
            if isinstance(target, ast.Attribute):
                for owner in self.owners(ctx, target.value):
                    self.middleware.append((owner, middleware))

    def on_module(self, module: ModuleIndex) -> None:
        """Program-wide markers visible from imports and string constants."""
        if module.roots & _METRICS_LIBS:
            self.metrics = True
        if module.roots & _RATE_LIMIT_LIBS or any(
            target.startswith("buttress.")
            and target.rpartition(".")[2] in ("RateLimitRule", "Limit", "RateLimit")
            for target in module.aliases.values()
        ):
            self.rate_limit = True
        if any(_IDEMPOTENCY.search(name) for name in module.imported | module.aliases.keys()):
            self.idempotency = True
        lowered = module.source.text.lower()
        if "idempot" not in lowered and "graceful" not in lowered:
            return  # nothing the node scan below could find (it is the costly part)
        for node in module.nodes:
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if _IDEMPOTENCY_KEY.search(text):
                    self.idempotency = True
                elif "--timeout-graceful-shutdown" in text or "--graceful-timeout" in text:
                    self.signals = True
            elif isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ) and _IDEMPOTENCY.search(node.name):
                self.idempotency = True


def is_route_decorator(decorator: ast.expr) -> bool:
    """``@x.get("/path")``, ``@x.route("/path", methods=[...])`` and the like."""
    return (
        isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr in _ROUTE_ATTRS
        and _path(decorator) is not None
    )


def _authenticated(
    func: ast.FunctionDef | ast.AsyncFunctionDef, route: ast.Call | None = None
) -> bool:
    """True when a handler requires a user.

    A decorator (``@login_required``, ``@jwt_required()``, ``@permission_required(...)``),
    a parameter whose default is ``Depends(get_current_user)`` / ``Security(...)``, or
    ``dependencies=[Depends(auth)]`` on the route decorator.
    """
    for decorator in func.decorator_list:
        if decorator is route:
            continue
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _AUTH.search(dotted(target) or ""):
            return True
    defaults = [*func.args.defaults, *(d for d in func.args.kw_defaults if d is not None)]
    annotations = [a.annotation for a in (*func.args.args, *func.args.kwonlyargs) if a.annotation]
    for annotation in annotations:  # an alias: ``current_user: CurrentUser`` (FastAPI docs)
        name = (dotted(annotation) or "").rpartition(".")[2]
        if _AUTH.search(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)):
            return True
    if route is not None:
        dependencies = keyword(route, "dependencies")
        if dependencies is not None:
            defaults.append(dependencies.value)
    for node in (*defaults, *annotations):
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.Call)
                and (dotted(inner.func) or "").rpartition(".")[2] in ("Depends", "Security")
                and (
                    (dotted(inner.func) or "").endswith("Security")
                    or any(_AUTH.search(dotted(a) or "") for a in inner.args)
                )
            ):
                return True
    return False


def _view_facts(ctx: FileContext, view: ast.expr) -> tuple[frozenset[str], bool]:
    """The methods a Django/aiohttp view answers, and whether it is public."""
    target = view.func.value if (
        isinstance(view, ast.Call)
        and isinstance(view.func, ast.Attribute)
        and view.func.attr == "as_view"
    ) else view  # fmt: skip
    found = ctx.program.class_def(ctx.module, target)
    if found is not None:
        klass = found[0]
        methods = {
            stmt.name.upper()
            for stmt in klass.body
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name in _HTTP_NAMES
        }
        bases = [dotted(b) or "" for b in klass.bases]
        if any(_DJANGO_WRITE_VIEWS.search(b) for b in bases):
            methods |= {"POST"} if not any(b.endswith("ViewSet") for b in bases) else _PUBLIC_WRITE
        public = not any(_AUTH_MIXINS.search(b) for b in bases)
        for stmt in klass.body:
            if (
                isinstance(stmt, ast.Assign)
                and any(dotted(t) == "permission_classes" for t in stmt.targets)
                and isinstance(stmt.value, ast.List | ast.Tuple)
            ):
                names = {(dotted(e) or "").rpartition(".")[2] for e in stmt.value.elts}
                public = not names or names <= _OPEN_PERMISSIONS
        return frozenset(methods or {"GET"}), public
    function = ctx.program.function_def(ctx.module, view)
    if function is None:
        name = (dotted(view) or "").rpartition(".")[2]
        return frozenset({"GET"}), not _AUTH.search(name)
    func = function[0]
    verbs: set[str] = set()
    for decorator in func.decorator_list:
        name = dotted(decorator.func if isinstance(decorator, ast.Call) else decorator) or ""
        last = name.rpartition(".")[2]
        if last == "require_POST":
            verbs.add("POST")
        elif last in ("require_http_methods", "api_view") and isinstance(decorator, ast.Call):
            for arg in decorator.args[:1]:
                if isinstance(arg, ast.List | ast.Tuple):
                    verbs |= {str(e.value).upper() for e in arg.elts if isinstance(e, ast.Constant)}
    if not verbs:  # a function view answers every method: the ones it tests for
        verbs = {
            node.value
            for node in ast.walk(func)
            if isinstance(node, ast.Constant) and node.value in _PUBLIC_WRITE
        }
        verbs.add("GET")
    return frozenset(verbs), not _authenticated(func)


def _path(call: ast.Call) -> str | None:
    node = call.args[0] if call.args else None
    for name in ("path", "rule"):
        kw = keyword(call, name)
        if kw is not None:
            node = kw.value
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _methods(call: ast.Call, attr: str) -> frozenset[str]:
    if attr not in ("route", "api_route"):
        return frozenset({attr.upper()})
    kw = keyword(call, "methods")
    if kw is None or not isinstance(kw.value, ast.List | ast.Tuple | ast.Set):
        return frozenset({"GET"})
    return frozenset(
        e.value.upper()
        for e in kw.value.elts
        if isinstance(e, ast.Constant) and isinstance(e.value, str)
    )


def _django_app(facts: WebFacts) -> None:
    """The Django project's root urlconf as an app (``ROOT_URLCONF``, else the shallowest)."""
    if not facts.urlconfs or any(app.kind == "django" for app in facts.apps.values()):
        return
    chosen = [c for c in facts.urlconfs if c[0] in facts.root_urlconf] or sorted(
        facts.urlconfs, key=lambda c: (c[1].count("/"), c[1])
    )
    _, rel, node = chosen[0]
    facts.apps[key(rel, node)] = App(kind="django", node=node, rel=rel)


def _routes_of(facts: WebFacts, app_id: Key) -> list[Route]:
    if len(facts.apps) == 1:
        return list(facts.routes)
    reach = {app_id}
    changed = True
    while changed:
        changed = False
        for owner, router in facts.includes:
            if owner in reach and router not in reach:
                reach.add(router)
                changed = True
    included = {router for _, router in facts.includes}
    return [
        r
        for r in facts.routes
        if r.owner is None
        or r.owner in reach
        or (r.owner in facts.routers and r.owner not in included)
        or (r.owner not in facts.apps and r.owner not in facts.routers)
    ]


def _shown(writes: list[str]) -> str:
    return ", ".join(writes[:3]) + (f" and {len(writes) - 3} more" if len(writes) > 3 else "")


def absence_findings(facts: WebFacts, program: Program, config: AuditConfig) -> list[Finding]:
    """The absence findings of every app (see the module docstring)."""
    findings: list[Finding] = []
    _django_app(facts)
    for app_id, app in facts.apps.items():
        routes = _routes_of(facts, app_id)
        paths = [r.path for r in routes]
        middleware = [name for owner, name in facts.middleware if owner in (None, app_id)]
        if isinstance(app.node, ast.Call):
            label = f"{app.kind} app `{dotted(app.node.func) or app.kind}()`"
        else:
            label = f"django urlconf `{app.rel}`"

        def emit(rule_id: str, message: str, app: App = app) -> None:
            if not config.enabled(rule_id):
                return
            rule = RULES[rule_id]
            findings.append(
                Finding(
                    rule_id=rule_id,
                    category=rule.category,
                    priority=config.severity.get(rule_id, rule.priority),
                    message=message,
                    location=location(app.rel, app.node),
                    fix=rule.fix,
                    docs=rule.docs,
                )
            )

        writes = sorted(
            {f"{m} {r.path}" for r in routes if r.public for m in r.methods & _PUBLIC_WRITE}
        )
        limited = (
            app.rate_limited
            or facts.rate_limit
            or any(
                "limit" in m.rpartition(".")[2].lower() and "rate" in m.lower() for m in middleware
            )
        )
        if writes and not limited:
            emit("BTR102", f"{label}: write routes without a rate limit ({_shown(writes)})")
        if app.hardened:
            continue
        health = sorted({p for p in paths if _HEALTH.search(p)})
        health_lib = program.imports_any(tuple(_HEALTH_LIBS))
        if not health and not health_lib:
            emit("BTR601", f"{label} has no health endpoint (/livez, /readyz, /health...)")
        elif len(health) == 1 and not health_lib:
            emit(
                "BTR604",
                f"{label} serves one health endpoint ({health[0]}) for both liveness and readiness",
            )
        limited = app.body_limit or any(
            _BODY_LIMIT.search(m.rpartition(".")[2]) for m in middleware
        )
        if app.kind in ("flask", "quart"):
            limited = limited or facts.max_content_length
        limited = limited or app.kind in _BUILT_IN_LIMITS
        if not limited:
            emit("BTR407", f"{label} accepts request bodies of any size")
        if not facts.metrics and not any("metrics" in p for p in paths):
            emit("BTR503", f"{label} exposes no /metrics")
        writes = sorted({f"{m} {r.path}" for r in routes for m in r.methods & _WRITE})
        if writes and not facts.idempotency and not any(_IDEMPOTENCY.search(m) for m in middleware):
            emit("BTR101", f"{label}: write routes without an idempotency key ({_shown(writes)})")
        if app.kind in ("fastapi", "starlette", "quart") and not (app.shutdown or facts.signals):
            emit("BTR602", f"{label} has no shutdown hook (lifespan, on_shutdown, SIGTERM handler)")
    db = facts.db
    if (
        db.postgres
        and not db.statement_timeout
        and db.first_connect is not None
        and config.enabled("BTR007")
    ):
        rule = RULES["BTR007"]
        findings.append(
            Finding(
                rule_id="BTR007",
                category=rule.category,
                priority=config.severity.get("BTR007", rule.priority),
                message="PostgreSQL is used and no statement_timeout is set anywhere: a runaway "
                "query holds its connection forever",
                location=db.first_connect,
                fix=rule.fix,
                docs=rule.docs,
            )
        )
    return findings
