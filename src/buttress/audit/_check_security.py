"""Input and security configuration: CORS, debug, SQL from strings, secrets, hashes.

Rules BTR401 (CORS), BTR402 (debug/reload), BTR404 (SQL built from strings), BTR405
(hardcoded secrets: assigned, passed, defaulted or compared with), BTR406 (fast password
hashes).

Values are followed through module constants and imports (``allow_origins=ORIGINS``
where another module says ``ORIGINS = ["*"]``), and settings-class defaults.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter

from buttress.audit._context import FileContext, const, keyword
from buttress.audit._index import dotted

__all__ = [
    "check_assign",
    "check_call",
    "check_compare",
    "check_dict",
    "check_function_defaults",
    "secret_reason",
]

_APP_CTORS = frozenset(
    {"fastapi.FastAPI", "starlette.applications.Starlette", "starlette.Starlette",
     "quart.Quart", "fastapi.applications.FastAPI"}
)  # fmt: skip
_WILDCARD_REGEX = frozenset({".*", "^.*$", ".+", "^.+$", "(.*)", "^(.*)$", "*"})


# ----------------------------------------------------------------- CORS (BTR401)


def _cors(ctx: FileContext, call: ast.Call, qual: str) -> None:
    target = call
    if qual.endswith(".add_middleware") or qual in (
        "starlette.middleware.Middleware",
        "fastapi.middleware.Middleware",
    ):
        if not call.args or not ctx.qual(call.args[0]).endswith("CORSMiddleware"):
            return
    elif not qual.endswith("CORSMiddleware"):
        if qual in ("flask_cors.CORS", "flask_cors.cross_origin"):
            _flask_cors(ctx, call, qual)
        elif qual.endswith("HardenSettings"):
            origins = keyword(call, "cors_origins")
            if origins is not None and "*" in ctx.strings(origins.value):
                ctx.emit("BTR401", origins.value, "HardenSettings(cors_origins=('*',))")
        return
    origins = keyword(target, "allow_origins")
    if origins is not None and "*" in ctx.strings(origins.value):
        where = (
            ""
            if isinstance(origins.value, ast.List | ast.Tuple)
            else (f" (through {ctx.text(origins.value)})")
        )
        ctx.emit("BTR401", origins.value, f"CORSMiddleware allow_origins=['*']{where}")
        return
    regex = keyword(target, "allow_origin_regex")
    if regex is not None and set(ctx.strings(regex.value)) & _WILDCARD_REGEX:
        ctx.emit("BTR401", regex.value, "CORSMiddleware allow_origin_regex matches any origin")


def _flask_cors(ctx: FileContext, call: ast.Call, qual: str) -> None:
    origins = keyword(call, "origins")
    resources = keyword(call, "resources")
    if origins is None and resources is None:
        name = qual.rpartition(".")[2]
        ctx.emit("BTR401", call, f"flask_cors {name}() without origins= allows every origin")
        return
    if origins is not None and "*" in ctx.strings(origins.value):
        ctx.emit("BTR401", origins.value, "flask_cors origins='*'")
        return
    if resources is not None:
        for found in ctx.resolve(resources.value):
            for node in ast.walk(found.node):
                if isinstance(node, ast.Dict) and any(
                    const(k, "origins") for k in node.keys if k is not None
                ):
                    for key, value in zip(node.keys, node.values, strict=True):
                        if const(key, "origins") and "*" in ctx.strings(value):
                            ctx.emit("BTR401", value, "flask_cors resources origins '*'")
                            return


# ----------------------------------------------------------------- debug (BTR402)

_EXEMPT_SETTINGS = frozenset({"test", "tests", "testing", "dev", "development", "local"})


def _is_settings_module(ctx: FileContext) -> bool:
    module = ctx.module
    parts = module.name.split(".")
    if any(t in _EXEMPT_SETTINGS for p in parts for t in re.split(r"[_\-]", p)):
        return False
    markers = {"INSTALLED_APPS", "ROOT_URLCONF", "MIDDLEWARE", "DATABASES"}
    return "settings" in module.name or bool(markers & module.assigns.keys())


def _debug_call(ctx: FileContext, call: ast.Call, qual: str) -> None:
    func = call.func
    if qual in {"uvicorn.run", "uvicorn.Config"}:
        for name in ("reload", "debug"):
            kw = keyword(call, name)
            if kw is not None and const(kw.value, True):
                ctx.emit("BTR402", kw.value, f"{qual}({name}=True) in an entry point")
        return
    if qual in _APP_CTORS or qual == "flask.Flask":
        kw = keyword(call, "debug")
        if kw is not None and const(kw.value, True):
            ctx.emit("BTR402", kw.value, f"{qual.rpartition('.')[2]}(debug=True)")
        return
    if isinstance(func, ast.Attribute) and func.attr == "run":
        kw = keyword(call, "debug")
        if kw is not None and const(kw.value, True):
            ctx.emit("BTR402", kw.value, f"{ctx.text(func)}(debug=True) in an entry point")
        return
    if (
        isinstance(func, ast.Attribute)
        and func.attr == "update"
        and (dotted(func.value) or "").endswith(".config")
    ):
        kw = keyword(call, "DEBUG")
        if kw is not None and const(kw.value, True):
            ctx.emit("BTR402", kw.value, "app.config.update(DEBUG=True)")


def _debug_assign(ctx: FileContext, target: ast.expr, value: ast.expr) -> None:
    if not const(value, True):
        return
    if isinstance(target, ast.Name) and target.id == "DEBUG" and not ctx.scopes:
        if _is_settings_module(ctx):
            ctx.emit("BTR402", target, "DEBUG = True in a settings module")
    elif isinstance(target, ast.Attribute) and target.attr == "debug":
        ctx.emit("BTR402", target, f"{ctx.text(target)} = True")
    elif (
        isinstance(target, ast.Subscript)
        and const(target.slice, "DEBUG")
        and (dotted(target.value) or "").endswith("config")
    ):
        ctx.emit("BTR402", target, "config['DEBUG'] = True")
    elif isinstance(target, ast.Name) and target.id in (
        "CORS_ALLOW_ALL_ORIGINS",
        "CORS_ORIGIN_ALLOW_ALL",
    ):
        ctx.emit("BTR401", target, f"{target.id} = True (django-cors-headers)")


# ----------------------------------------------------------------- SQL (BTR404)

_SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE|MERGE|REPLACE|PRAGMA|GRANT)\b"
    r"|\bWITH\s+\w+\s+AS\b",
    re.IGNORECASE,
)
# DB-API and SQLAlchemy, Django's Manager.raw, asyncpg (fetch*, cursor), pg8000's run
_EXECUTORS = frozenset(
    {"execute", "executemany", "executescript", "exec_driver_sql", "raw", "fetch", "fetchrow",
     "fetchval", "cursor", "run"}
)  # fmt: skip
_TEXT = frozenset(
    {"sqlalchemy.text", "sqlalchemy.sql.text", "sqlalchemy.sql.expression.text",
     "django.db.models.expressions.RawSQL", "django.db.models.RawSQL"}
)  # fmt: skip
_PLACEHOLDERS = frozenset({"?", "%s", ",", ", ", " , ", "(", ")", ""})


def _safe_value(node: ast.expr) -> bool:
    """True for interpolated values that cannot carry input.

    Constants, UPPER_CASE names, len(), and placeholder lists (``", ".join("?" * n)``).
    """
    if isinstance(node, ast.Constant):
        return True
    name = dotted(node)
    if name is not None:
        return name.rpartition(".")[2].isupper()
    if isinstance(node, ast.Call):
        func = dotted(node.func) or ""
        if func in ("len", "int", "float"):
            return True
        if isinstance(node.func, ast.Attribute) and node.func.attr == "join":
            strings = [
                n.value
                for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            names = [n for n in ast.walk(node) if isinstance(n, ast.Name)]
            return (
                bool(strings)
                and set(strings) <= _PLACEHOLDERS
                and all(n.id in ("len", "range") or _is_counter(n) for n in names)
            )
    if isinstance(node, ast.BinOp):
        return _safe_value(node.left) and _safe_value(node.right)
    return False


def _is_counter(node: ast.Name) -> bool:
    return False if node.id.isupper() else node.id in ("_", "i", "n", "ids", "values", "items")


def _sql_shape(node: ast.expr, *, sql: bool = True) -> str | None:
    """How ``node`` builds SQL from strings ("an f-string", "%", "+", ".format"), or None.

    ``sql=False``: the string is known to be SQL (a WHERE clause), keywords or not.
    """
    looks = _SQL.search if sql else (lambda text: True)
    if isinstance(node, ast.JoinedStr):
        text = "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
        dynamic = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        if dynamic and looks(text) and not all(_safe_value(v) for v in dynamic):
            return "an f-string"
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            values = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            if looks(node.left.value) and not all(_safe_value(v) for v in values):
                return "% formatting"
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts = _flatten_add(node)
        text = "".join(
            p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)
        )
        dynamic = [p for p in parts if not isinstance(p, ast.Constant)]
        if looks(text) and dynamic and not all(_safe_value(p) for p in dynamic):
            return "string concatenation"
        return None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and (
            (
                isinstance(node.func.value, ast.Constant)
                and isinstance(node.func.value.value, str)
                and looks(node.func.value.value)
            )
            # a template from elsewhere (``queries.BY_NAME.format(name)``): its text is
            # unknown, but what reaches an executor is SQL
            or isinstance(node.func.value, ast.Name | ast.Attribute)
        )
    ):
        values = [*node.args, *(k.value for k in node.keywords)]
        if values and not all(_safe_value(v) for v in values):
            return "str.format"
    return None


def _flatten_add(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [*_flatten_add(node.left), *_flatten_add(node.right)]
    return [node]


def _last_before(values: list[ast.expr], line: int) -> ast.expr | None:
    """The value assigned last before ``line`` (the first one when none is before it).

    A name reassigned in a loop or a branch may hold another value at run time, but the
    nearest assignment above is what a reader sees.
    """
    ordered = sorted(values, key=lambda v: getattr(v, "lineno", 0))
    before = [v for v in ordered if getattr(v, "lineno", 0) <= line]
    if before:
        return before[-1]
    return ordered[0] if ordered else None


def _sql(ctx: FileContext, call: ast.Call, qual: str) -> None:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "extra":  # Django QuerySet.extra
        where = keyword(call, "where")
        if where is not None and isinstance(where.value, ast.List | ast.Tuple):
            for item in where.value.elts:
                shape = _sql_shape(item, sql=False)
                if shape:
                    ctx.emit("BTR404", item, f"SQL built with {shape} passed to extra(where=)")
        return
    is_exec = isinstance(func, ast.Attribute) and func.attr in _EXECUTORS
    if not (is_exec or qual in _TEXT) or not call.args:
        return
    query = call.args[0]
    shape = _sql_shape(query)
    if shape is None and isinstance(query, ast.Name):
        bindings = ctx.scopes[-1] if ctx.scopes else ctx.module.assigns
        value = _last_before(bindings.get(query.id, []), call.lineno)
        shape = _sql_shape(value) if value is not None else None
        if shape:
            shape = f"{shape} (assigned to {query.id})"
    if shape:
        name = func.attr if isinstance(func, ast.Attribute) else qual
        ctx.emit("BTR404", query, f"SQL built with {shape} passed to {name}()")


# ----------------------------------------------------------------- secrets (BTR405)

_SECRET_WORDS = re.compile(
    r"(pass(word|wd|phrase)?|pwd|secret|api_?key|access_?key|private_?key|auth_?key|"
    r"signing_?key|encryption_?key|client_?secret|token|credentials?|bearer)",
    re.IGNORECASE,
)
_PASSWORD_WORDS = re.compile(r"(password|passwd|passphrase|pwd|^pass$|_pass$)", re.IGNORECASE)
# a passphrase: words and single spaces, no sentence punctuation (a message is no password)
_PASSPHRASE = re.compile(r"[^\s.!]+( [^\s.!]+){1,5}")
# values that stand for a password rather than being one (placeholders, sentinels)
_PLACEHOLDER_WORD = re.compile(
    r"[\W_]*(secret|password|passwd|pass|pwd|token|key|none|null|nil|empty|unset|"
    r"test|testing)[\W_]*",
    re.IGNORECASE,
)
_NOT_SECRET_SUFFIX = re.compile(
    r"(_|^)(type|types|url|uri|endpoint|path|file|filename|dir|name|names|env|var|field|"
    r"header|prefix|suffix|length|len|size|ttl|expiry|expires|expire|timeout|id|kind|"
    r"algorithm|algorithms|alg|format|pattern|regex|re|label|prompt|message|msg|min|max|"
    r"hint|help|description|param|parameter|key_name|location|scheme|mode|policy|class|"
    r"cls|model|count|limit|rule|rules|version|encoding|hash|reset|required|"
    r"placeholder|example|template|display|char|chars|characters|column|attr|attribute|"
    r"error|errors|invalid|missing|validator|regexp|title)$",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(
    r"(change.?me|example|placeholder|your[_\- ]|xxx|\*\*\*|<[^>]*>|\$\{|\{\{|%\(|"
    r"dummy|fake|sample|redacted|replace|todo|fixme|undefined|not.?set|"
    r"insecure-default)",
    re.IGNORECASE,
)
_KNOWN_TOKEN = re.compile(
    r"^(sk_live_|rk_live_|sk-[A-Za-z0-9]{20}|ghp_|gho_|ghs_|github_pat_|xox[abpr]-|AKIA|"
    r"AIza|-----BEGIN|glpat-|SG\.|shpat_|npm_)"
)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def secret_reason(name: str, value: str) -> str | None:
    """Why the literal ``value`` assigned to ``name`` looks like a real secret, or None.

    Example: ``secret_reason("token_type", "bearer")`` is None; so is
    ``secret_reason("api_key", "changeme")``; ``secret_reason("api_key",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc")`` says why it is one.
    """
    if _KNOWN_TOKEN.match(value):
        return "a known token format"
    short = name.rpartition(".")[2].strip("_")
    if not _SECRET_WORDS.search(short) or _NOT_SECRET_SUFFIX.search(short):
        return None
    if short.isupper() and short.startswith(("ENV_", "VAR_")):
        return None
    stripped = value.strip()
    password = bool(_PASSWORD_WORDS.search(short))
    if (
        not stripped
        or stripped != value
        or (any(ch.isspace() for ch in value) and not (password and _PASSPHRASE.fullmatch(value)))
        or _PLACEHOLDER.search(value)
        or _PLACEHOLDER_WORD.fullmatch(value)
        or re.fullmatch(r"[A-Z][A-Z0-9_]*", value)  # an environment variable's name
        or (value.startswith(("http://", "https://", "/", "./", "~", "$")) and "@" not in value)
        or value.endswith((":", "?", ": "))  # a prompt or a label
        or len(set(value)) <= 2
    ):
        return None
    if password:
        # any other literal a password-named variable holds is a password, short ones too
        return "a password literal" if len(value) >= 4 else None
    if re.fullmatch(r"[a-z][a-z0-9_.\-]*", value) and len(value) < 16:  # a name or a word
        return None
    if re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+", value):  # a dotted import path
        return None
    if len(value) >= 16 and _entropy(value) >= 3.0:
        return "a high-entropy literal"
    return None


def _secret(ctx: FileContext, name: str, value: ast.expr, where: ast.AST) -> None:
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        reason = secret_reason(name, value.value)
        if reason:
            ctx.emit("BTR405", where, f"{name} is assigned {reason}")


def check_assign(ctx: FileContext, target: ast.expr, value: ast.expr) -> None:
    """BTR402 and BTR405 (and django-cors-headers BTR401) on one assignment."""
    _debug_assign(ctx, target, value)
    name = dotted(target)
    if (
        name is None
        and isinstance(target, ast.Subscript)
        and isinstance(target.slice, ast.Constant)
    ):
        name = str(target.slice.value)
    if name:
        _secret(ctx, name, value, target)


def check_function_defaults(ctx: FileContext, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    """BTR405 on parameter defaults (``def connect(password="hunter22"):``)."""
    args = func.args
    positional = [*args.posonlyargs, *args.args]
    pairs = list(
        zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
    )
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d]
    for arg, default in pairs:
        _secret(ctx, arg.arg, default, default)


def _hash(ctx: FileContext, call: ast.Call, qual: str) -> None:
    if not qual.startswith("hashlib."):
        return
    algo = qual.rpartition(".")[2]
    if algo in ("scrypt", "pbkdf2_hmac", "file_digest"):
        return
    args = list(call.args[1:] if algo == "new" else call.args)
    for arg in [*args, *(k.value for k in call.keywords if k.arg in ("data", "string"))]:
        for node in ast.walk(arg):
            ident = (
                node.id
                if isinstance(node, ast.Name)
                else (node.attr if isinstance(node, ast.Attribute) else "")
            )
            if _PASSWORD_WORDS.search(ident):
                ctx.emit("BTR406", call, f"{qual}() of {ident}: fast hashes are brute-forced")
                return


_FAST_HASHES = frozenset(
    {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384",
     "sha3_512", "blake2b", "blake2s", "new"}
)  # fmt: skip
_DIGESTS = frozenset({"hexdigest", "digest", "finalize", "hex"})
_PASSWORD_SETTER = re.compile(r"^(set_?password|update_?password|set_?passwd)$", re.IGNORECASE)
_HASH_LIBS = ("cryptography.hazmat.primitives.hashes.", "Crypto.Hash.", "Cryptodome.Hash.")


def _fast_hash(ctx: FileContext, node: ast.expr, depth: int = 0) -> str | None:
    """The fast hash ``node``'s value comes from (``md5``...), through locals, or None.

    ``hashlib.md5(x).hexdigest()``, ``hashes.Hash(hashes.MD5())`` then ``.finalize()``,
    ``Crypto.Hash.MD5.new()`` then ``.hexdigest()``; names are followed to what they were
    assigned.
    """
    if depth > 4:
        return None
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _DIGESTS:
            return _fast_hash(ctx, func.value, depth + 1)
        qual = ctx.qual(func)
        if qual.startswith("hashlib.") and qual[8:] in _FAST_HASHES:
            return qual[8:]
        if qual.startswith(_HASH_LIBS):
            name = qual.rpartition(".")[0].rpartition(".")[2] if qual.endswith(".new") else ""
            if qual.endswith(".Hash") and node.args:
                name = ctx.qual(node.args[0]).removesuffix("()").rpartition(".")[2]
            if name.upper().startswith(("MD5", "SHA", "BLAKE")):
                return name
        return None
    if isinstance(node, ast.Name):
        for found in ctx.resolve(node):
            if found.node is not node:
                algo = _fast_hash(ctx, found.node, depth + 1)
                if algo:
                    return algo
    return None


def _stored_hash(ctx: FileContext, call: ast.Call) -> None:
    """BTR406 on ``user.set_password(md5_digest)``: a fast hash stored as the password."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else dotted(func) or ""
    if not _PASSWORD_SETTER.search(name):
        return
    for arg in call.args[:1]:
        algo = _fast_hash(ctx, arg)
        if algo:
            ctx.emit(
                "BTR406", call, f"{name}() stores a fast hash ({algo.lower()}) as the password"
            )
            return


def check_call(ctx: FileContext, call: ast.Call) -> None:
    """BTR401, BTR402, BTR404, BTR405 (getenv defaults, keyword arguments), BTR406."""
    qual = ctx.qual(call.func)
    _cors(ctx, call, qual)
    _debug_call(ctx, call, qual)
    _sql(ctx, call, qual)
    _hash(ctx, call, qual)
    _stored_hash(ctx, call)
    if qual in ("os.getenv", "os.environ.get") and len(call.args) == 2:
        key = call.args[0]
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            _secret(ctx, key.value.lower(), call.args[1], call.args[1])
    for kw in call.keywords:
        if kw.arg:
            _secret(ctx, kw.arg, kw.value, kw.value)


def check_compare(ctx: FileContext, node: ast.Compare) -> None:
    """BTR405 on ``password == "hunter22"``: a credential checked against a literal."""
    if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
        return  # ``"api_key" in SECRETS``: a lookup by name, not a credential check
    parts = [node.left, *node.comparators]
    names = [n for n in (dotted(p) for p in parts) if n]
    if not names:
        return
    for part in parts:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            for name in names:
                reason = secret_reason(name, part.value)
                if reason:
                    ctx.emit("BTR405", node, f"{name} is compared with {reason}")
                    return


def check_dict(ctx: FileContext, node: ast.Dict) -> None:
    """BTR405 on dict literals (``{"api_key": "sk_live_..."}``)."""
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            if key.value.lower() == "pass":
                continue  # {"pass": ..., "fail": ...}: a status, not a password
            _secret(ctx, key.value, value, value)
