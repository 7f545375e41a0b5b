"""buttress's answers in a FastAPI app's OpenAPI document, so clients and contract tests see them.

`harden` answers some requests itself (problem+json 400, 409, 413, 422, 429, 503, 504)
and adds headers to every response; FastAPI's generated document knows none of it, and
says its 422 is ``application/json`` where buttress serves ``application/problem+json``.
`document_answers` wraps the app's ``openapi()`` method (FastAPI's documented place to
customise the document) so that the document it returns, once, also has:

* a ``ProblemDetails`` schema component (RFC 9457 members and buttress's, see
  `buttress.asgi._problem`), and a ``ValidationProblem`` (the same, with ``errors``);
* on every operation, the problem+json answers that can happen there given the settings:

  ===  ===================================================================
  400  a malformed ``Content-Length`` (body limit on), a missing or bad
       ``Idempotency-Key`` (routes that take one)
  404  operations with path parameters (the resource may not exist)
  409  routes that take an ``Idempotency-Key`` (the same key in flight, or
       the first outcome unknown)
  413  operations that take a body (POST, PUT, PATCH, DELETE, or a
       declared request body), when a body limit is set
  422  FastAPI's own (now ``application/problem+json``), and key reuse on
       routes that take an ``Idempotency-Key``
  429  operations a rate limit applies to
  503  load shedding or graceful shutdown on; routes with keys (the store
       down); rate-limited routes when the limits fail closed
  504  operations under the request deadline
  ===  ===================================================================

* response headers: ``x-request-id`` (the configured name) on every response;
  ``RateLimit`` and ``RateLimit-Policy`` where a rate limit applies; ``Retry-After`` on
  429 and 503 (and the retriable 409); ``Idempotent-Replayed`` on the successful answers
  of routes that take an ``Idempotency-Key``;
* the ``Idempotency-Key`` request header on those routes (required where the mode is
  ``required``), unless the operation declares it already.

What the app declared itself is kept: a status it documents is not replaced (except
FastAPI's generated 422, whose content becomes problem+json). Apps without ``openapi()``
(Starlette, bare ASGI) are left alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from buttress.errors import ErrorCode

__all__ = ["PROBLEM_SCHEMA", "document_answers"]

_PROBLEM_JSON = "application/problem+json"
_REF = "#/components/schemas/ProblemDetails"
_VALIDATION_REF = "#/components/schemas/ValidationProblem"
_PARAM = re.compile(r"\{[^}]*\}")
_UNSAFE = ("post", "put", "patch", "delete")
_KEY_PATTERN = r"^[!#-~]([ -~]{0,253}[!-~])?$"  # what buttress accepts as a bare key
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

#: The ``ProblemDetails`` schema component: every problem+json body buttress sends.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "ProblemDetails",
    "description": "An RFC 9457 problem, as buttress answers it (application/problem+json).",
    "type": "object",
    "properties": {
        "type": {"type": "string", "format": "uri", "description": "The problem type URI"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {
            "type": "string",
            "enum": [code.wire for code in ErrorCode],
            "description": "The error code; the type URI ends with it, '-' for '_'",
        },
        "retriable": {"type": "boolean"},
        "request_id": {"type": "string"},
        "retry_after": {"type": "integer", "description": "Seconds, as in Retry-After"},
        "policy": {"type": "string", "description": "The rate limit that refused"},
        "violated_policies": {"type": "array", "items": {"type": "string"}},
        "idempotency_error": {"type": "string"},
        "original_status": {"type": "integer"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "code", "retriable"],
}

_VALIDATION_SCHEMA: dict[str, Any] = {
    "title": "ValidationProblem",
    "description": "A 422 problem: the request does not match the schema (errors), or an "
    "Idempotency-Key was reused for another request.",
    "allOf": [{"$ref": _REF}],
}

_DESCRIPTIONS = {
    400: "Bad request (problem+json)",
    404: "Not found (problem+json)",
    409: "Conflict: a request with this Idempotency-Key is in flight, or its outcome is "
    "unknown (problem+json)",
    413: "Request body too large (problem+json)",
    422: "Validation failed (problem+json)",
    429: "Rate limited (problem+json)",
    503: "Overloaded, shutting down, or a store is unavailable (problem+json)",
    504: "The request deadline passed (problem+json)",
}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


class _Plan:
    """What buttress can answer, from the settings and the built parts (see `harden`)."""

    def __init__(self, settings: Any, parts: Any) -> None:
        self.request_id_header = str(getattr(settings, "request_id_header", "x-request-id"))
        self.body_limit = getattr(settings, "max_body_bytes", None) is not None or bool(
            getattr(settings, "body_limit_routes", None)
        )
        self.deadline = getattr(settings, "request_timeout", None) is not None
        self.deadline_exempt = frozenset(getattr(settings, "deadline_exempt_paths", ()) or ())
        self.unavailable = bool(
            getattr(parts, "shedding", None) is not None
            or getattr(parts, "shutdown", None) is not None
        )
        self.rate_limits = getattr(parts, "rate_limits", None)
        self.fail_closed = getattr(settings, "rate_limit_fail_mode", "open") == "closed"
        self.idempotency = getattr(parts, "idempotency", None)

    def limited(self, method: str, sample: str) -> bool:
        mw = self.rate_limits
        if mw is None:
            return False
        if sample in getattr(mw, "_exempt", ()) or sample.startswith(
            getattr(mw, "_exempt_below", ()) or ("\0",)
        ):
            return False
        upper = method.upper()
        for rule in getattr(mw, "rules", ()):
            methods = rule.methods
            if (
                methods is not None
                and upper not in methods
                and not (upper == "HEAD" and "GET" in methods)
            ):
                continue
            if rule.matcher is None or rule.matcher(sample):
                return True
        return False

    def idempotency_mode(self, method: str, sample: str) -> str:
        mw = self.idempotency
        if mw is None:
            return "off"
        try:
            mode, _ = mw.mode_for(method.upper(), sample)
        # buttress: ignore[BTR303] an unexpected route spec: document nothing rather than fail
        except Exception:
            return "off"
        return str(mode)


def document_answers(app: Any, settings: Any, parts: Any) -> bool:
    """Make ``app.openapi()`` also describe buttress's answers (see the module docstring).

    Returns False when ``app`` has no ``openapi()`` method (not FastAPI). Calling it
    twice wraps once.

    Example::

        app = FastAPI()
        hardened = harden(app)          # calls document_answers(app, settings, parts)
        app.openapi()["components"]["schemas"]["ProblemDetails"]
    """
    original = getattr(app, "openapi", None)
    if not callable(original) or not hasattr(app, "openapi_schema"):
        return False
    if getattr(original, "__buttress__", False):
        return True
    plan = _Plan(settings, parts)
    done: list[object] = [None]  # the document already completed (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = original()
        if schema is not done[0]:
            _complete(schema, plan)
            done[0] = schema
        return schema

    openapi.__buttress__ = True  # type: ignore[attr-defined]
    openapi.__wrapped__ = original  # type: ignore[attr-defined]
    app.openapi = openapi
    return True


def _complete(schema: dict[str, Any], plan: _Plan) -> None:
    """Add the components, answers, headers and parameters to an OpenAPI document."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ProblemDetails", copy.deepcopy(PROBLEM_SCHEMA))
    schemas.setdefault("ValidationProblem", copy.deepcopy(_VALIDATION_SCHEMA))
    for template, item in (schema.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        sample = _PARAM.sub("1", template)
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, dict):
                _complete_operation(operation, method, template, sample, plan)


def _complete_operation(
    operation: dict[str, Any], method: str, template: str, sample: str, plan: _Plan
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    mode = plan.idempotency_mode(method, sample) if method in _UNSAFE else "off"
    keyed = mode in ("required", "optional")
    limited = plan.limited(method, sample)
    has_body = "requestBody" in operation

    rate_headers = {
        "RateLimit": _header("The remaining quota of each policy (IETF RateLimit fields)"),
        "RateLimit-Policy": _header("The rate-limit policies that apply"),
    }
    retry_after = {
        "Retry-After": _header("Seconds to wait before trying again", {"type": "integer"})
    }

    wanted: dict[int, dict[str, Any]] = {}
    if plan.body_limit or keyed:
        wanted[400] = {}
    if "{" in template:
        wanted[404] = {}
    if keyed:
        wanted[409] = retry_after
    if (plan.body_limit and (has_body or method in _UNSAFE)) or keyed:
        wanted[413] = {}
    if keyed:
        wanted[422] = {}
    if limited:
        wanted[429] = {**rate_headers, **retry_after}
    if plan.unavailable or keyed or (limited and plan.fail_closed):
        wanted[503] = retry_after
    if plan.deadline and template not in plan.deadline_exempt:
        wanted[504] = {}

    for status, headers in wanted.items():
        key = str(status)
        ref = _VALIDATION_REF if status == 422 else _REF
        existing = responses.get(key)
        if existing is None:
            responses[key] = {
                "description": _DESCRIPTIONS[status],
                "content": {_PROBLEM_JSON: {"schema": {"$ref": ref}}},
                **({"headers": dict(headers)} if headers else {}),
            }
        elif headers:
            existing.setdefault("headers", {}).update(
                {k: v for k, v in headers.items() if k not in existing.get("headers", {})}
            )
    fastapi_422 = responses.get("422")
    if isinstance(fastapi_422, dict):
        _problem_422(fastapi_422)

    common = {plan.request_id_header: _header("The request id (echoed, or generated)")}
    if limited:
        common.update(rate_headers)
    for key, response in responses.items():
        if not isinstance(response, dict) or "$ref" in response:
            continue
        headers = response.setdefault("headers", {})
        extra: dict[str, Any] = dict(common)
        if keyed and key.startswith("2"):
            extra["Idempotent-Replayed"] = _header(
                "true when this is the stored answer to an earlier request with the same key",
                {"type": "string", "enum": ["true"]},
            )
        for name, value in extra.items():
            if not any(existing.lower() == name.lower() for existing in headers):
                headers[name] = value
    if keyed:
        _key_parameter(operation, required=mode == "required")


def _problem_422(response: dict[str, Any]) -> None:
    """FastAPI's 422 is served as problem+json by buttress: say so."""
    content = response.setdefault("content", {})
    generated = content.get("application/json")
    if isinstance(generated, dict) and str(generated.get("schema", {}).get("$ref", "")).endswith(
        "/HTTPValidationError"
    ):
        del content["application/json"]
    content.setdefault(_PROBLEM_JSON, {"schema": {"$ref": _VALIDATION_REF}})
    if response.get("description") == "Validation Error":
        response["description"] = _DESCRIPTIONS[422]


def _key_parameter(operation: dict[str, Any], *, required: bool) -> None:
    parameters: list[Any] = operation.setdefault("parameters", [])
    for parameter in parameters:
        if (
            isinstance(parameter, dict)
            and parameter.get("in") == "header"
            and str(parameter.get("name", "")).lower() == "idempotency-key"
        ):
            return
    parameters.append(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": required,
            "description": "A unique key per operation: a retry with the same key gets the "
            "first answer again (Idempotent-Replayed: true) instead of running twice",
            # printable ASCII, no surrounding blanks (the draft's quoted form also works)
            "schema": {"type": "string", "pattern": _KEY_PATTERN, "maxLength": 255},
        }
    )
