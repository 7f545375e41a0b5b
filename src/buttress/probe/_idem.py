"""The idempotency checks (PRB050-PRB052): replay, key reuse with another body, retry.

Each run uses fresh random keys (UUID 4), a handful of requests, and waits at most a few
seconds for a request still in flight (409 with ``Retry-After``). The body is the one given
(``--write-body``), else one built from the route's schema in ``/openapi.json``, else ``{}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from buttress.probe._http import Client, Exchange
from buttress.report import CheckStatus

__all__ = ["GIVE_UP_AFTER", "example_body", "idempotency", "other_body"]

PASS, FAIL, WARN = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.WARN
GIVE_UP_AFTER = 0.001  # seconds: the "very short client timeout" of PRB052
IN_FLIGHT_WAIT = 4.0  # seconds, at most, spent waiting out 409s for one request
PROBLEM = "application/problem+json"

Outcomes = dict[str, tuple[CheckStatus, str, str]]  # rule -> (status, evidence, where)


# -- bodies ----------------------------------------------------------------------


def _resolve(schema: Any, doc: Any) -> Any:
    for _ in range(8):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        node = doc
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        schema = node
    return schema


def _string(schema: dict[str, Any]) -> str:
    formats = {
        "uuid": str(uuid.uuid4()),
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "email": "probe@example.com",
        "uri": "https://example.com/",
    }
    value = formats.get(str(schema.get("format")), "probe")
    low = schema.get("minLength")
    high = schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        value = value + "x" * (low - len(value))
    if isinstance(high, int) and high >= 1:
        value = value[:high]
    return value


def _number(schema: dict[str, Any], kind: str) -> int | float:
    value: int | float = 1
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, (int, float)) and not isinstance(low, bool):
        value = max(value, low + (1 if "exclusiveMinimum" in schema else 0))
    if isinstance(high, (int, float)) and not isinstance(high, bool) and value > high:
        value = high
    return int(value) if kind == "integer" else float(value)


def example_body(schema: Any, doc: Any, depth: int = 0) -> Any:
    """A small value ``schema`` accepts: examples and defaults first, required fields only."""
    schema = _resolve(schema, doc)
    if depth > 8 or not isinstance(schema, dict):
        return None
    for name in ("example", "default", "const"):
        if name in schema:
            return schema[name]
    for name in ("examples", "enum"):
        if isinstance(schema.get(name), list) and schema[name]:
            return schema[name][0]
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example_body(part, doc, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    for name in ("anyOf", "oneOf"):
        options = [s for s in schema.get(name) or [] if _resolve(s, doc) != {"type": "null"}]
        if options:
            return example_body(options[0], doc, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        found = schema.get("properties")
        props: dict[str, Any] = found if isinstance(found, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        return {name: example_body(props.get(name, {}), doc, depth + 1) for name in required}
    if kind == "array":
        low = schema.get("minItems")
        return [example_body(schema.get("items", {}), doc, depth + 1)] if low else []
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return True
    return None


def other_body(body: Any) -> Any:
    """Another request for the same key: a number changed, else a field added."""
    if isinstance(body, dict):
        changed = dict(body)
        for name, value in changed.items():
            if isinstance(value, int) and not isinstance(value, bool):
                changed[name] = value + 1
                return changed
        changed["buttress_probe"] = uuid.uuid4().hex
        return changed
    return {"buttress_probe": uuid.uuid4().hex, "value": body}


# -- answers ---------------------------------------------------------------------


def _ident(seen: Exchange) -> str | None:
    """The id of the resource an answer names: ``id``, ``uuid``, ``*_id`` or Location."""
    data = seen.json()
    if isinstance(data, dict):
        names = [
            "id",
            "uuid",
            *(k for k in data if isinstance(k, str) and k.lower().endswith("id")),
        ]
        for name in names:
            value = data.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    location = seen.header("location")
    return location or None


def _replayed(seen: Exchange) -> bool:
    return seen.header("idempotent-replayed").lower() == "true"


def _show(seen: Exchange) -> str:
    ident = _ident(seen) if 200 <= seen.status < 300 else None
    notes = [f"id {ident}" if ident else "", "Idempotent-Replayed: true" if _replayed(seen) else ""]
    extra = ", ".join(n for n in notes if n)
    return seen.short() + (f" [{extra}]" if extra else "")


def _retry_after(seen: Exchange) -> float | None:
    raw = seen.header("retry-after").strip()
    try:
        return min(max(float(raw), 0.05), 1.0)
    except ValueError:
        return None


class _Writer:
    def __init__(self, client: Client, method: str, path: str) -> None:
        self.client = client
        self.method = method
        self.path = path

    def headers(self, key: str) -> dict[str, str]:
        return {"content-type": "application/json", "idempotency-key": key}

    async def send(self, key: str, body: bytes) -> tuple[Exchange, list[Exchange]]:
        """Send, then wait out retriable 409s (bounded); the last answer and the 409s."""
        end = time.monotonic() + IN_FLIGHT_WAIT
        waits: list[Exchange] = []
        while True:
            seen = await self.client.send(
                self.method, self.path, headers=self.headers(key), content=body
            )
            pause = _retry_after(seen) if seen.status == 409 else None
            if pause is None or time.monotonic() + pause > end or len(waits) >= 8:
                return seen, waits
            waits.append(seen)
            await asyncio.sleep(pause)


def _refused(first: Exchange) -> tuple[CheckStatus, str] | None:
    """Why the first write cannot be judged (FAIL: no answer or a 5xx; WARN: a 4xx)."""
    if not first.ok or first.status >= 500:
        return FAIL, f"the first write failed: {_show(first)}"
    if not 200 <= first.status < 300:
        return WARN, (
            f"the first write was refused ({_show(first)}): give --write-body a body the "
            "route accepts"
        )
    return None


# -- the checks ------------------------------------------------------------------


async def idempotency(client: Client, method: str, path: str, body: Any) -> Outcomes:
    """Run PRB050, PRB051 and PRB052 against ``method path`` with ``body``."""
    writer = _Writer(client, method, path)
    out: Outcomes = {}
    where = client.url(path)
    raw = json.dumps(body, separators=(",", ":")).encode()
    shown = raw.decode()[:80]

    key = str(uuid.uuid4())
    first, _ = await writer.send(key, raw)
    refused = _refused(first)
    if refused is not None:
        for rid in ("PRB050", "PRB051", "PRB052"):
            out[rid] = (refused[0], f"body {shown}: {refused[1]}", where)
        return out
    again, waits = await writer.send(key, raw)
    pair = f"same key twice: {_show(first)}; {_show(again)}"
    if waits:
        pair += f" (after {len(waits)} x 409 in flight)"
    if again.ok and again.status == first.status and again.body == first.body:
        out["PRB050"] = (PASS, pair, where)
    elif again.status == 409:
        out["PRB050"] = (WARN, pair + ": the first answer was not replayed", where)
    else:
        out["PRB050"] = (FAIL, pair + ": the second answer differs from the first", where)

    other = json.dumps(other_body(body), separators=(",", ":")).encode()
    mismatch, _ = await writer.send(key, other)
    text = f"same key, another body ({other.decode()[:80]}): {_show(mismatch)}"
    if mismatch.status == 422 and mismatch.content_type == PROBLEM:
        out["PRB051"] = (PASS, text, where)
    elif 400 <= mismatch.status < 500 and mismatch.status != 429:
        out["PRB051"] = (WARN, text + " (refused, but not as 422 problem+json)", where)
    else:
        out["PRB051"] = (FAIL, text + " (the reused key was not refused)", where)

    out["PRB052"] = await _timeout_retry(writer, raw, where)
    return out


async def _timeout_retry(writer: _Writer, raw: bytes, where: str) -> tuple[CheckStatus, str, str]:
    key = str(uuid.uuid4())
    gone = await writer.client.send_and_give_up(
        writer.method, writer.path, headers=writer.headers(key), content=raw, wait=GIVE_UP_AFTER
    )
    retry, waits = await writer.send(key, raw)
    steps = [f"with a {GIVE_UP_AFTER * 1000:g} ms timeout: {_show(gone)}"]
    steps += [f"retry: {_show(w)}" for w in waits]
    steps.append(f"retry: {_show(retry)}")
    if not retry.ok or retry.status >= 500:
        return FAIL, "; ".join(steps), where
    if retry.status == 409:
        return WARN, "; ".join(steps) + " (still 409: cannot tell)", where
    if not 200 <= retry.status < 300:
        return WARN, "; ".join(steps) + " (the retry was refused: cannot tell)", where
    check, _ = await writer.send(key, raw)
    steps.append(f"again: {_show(check)}")
    evidence = "; ".join(steps)
    first_id = _ident(gone) if gone.ok else None
    retry_id, check_id = _ident(retry), _ident(check)
    if retry_id and check_id and retry_id != check_id:
        return FAIL, f"{evidence}: each retry created a new resource", where
    if first_id and retry_id and first_id != retry_id:
        return FAIL, f"{evidence}: the retry created a second resource", where
    if check.ok and check.body != retry.body and not (retry_id and check_id):
        return FAIL, f"{evidence}: two retries with one key got different answers", where
    if (first_id and first_id == retry_id) or waits or _replayed(retry):
        return PASS, f"{evidence}: replayed, one resource", where
    return (
        WARN,
        f"{evidence}: no replay header, cannot tell whether the retry created a second resource",
        where,
    )
