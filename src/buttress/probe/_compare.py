"""Parity (``buttress probe A --compare B``): the same checks on two environments, and what differs.

Both targets get the same checks, one after the other. Each check of the report shows
both sides (its status is the worse of the two, so the gates judge both environments);
the parity checks then compare what the two sent back to the same requests (matched by
method and path, the probe's random parts masked):

- PRB095: the checks' statuses;
- PRB096: the status codes;
- PRB097: the headers that carry a policy (security, CORS, caching, rate limits,
  request ids, fingerprints): present on one side only, or with another value;
- PRB098: the health answers' shape (media type, fields, components checked);
- PRB099: the latency: the median of the matched requests, B against A (more than twice
  and 50 ms apart warns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from buttress.probe._http import Exchange
from buttress.probe._threshold import percentile
from buttress.report import CheckStatus

__all__ = ["POLICY_HEADERS", "compare_runs", "merge_status"]

PASS, FAIL, WARN, NA = (
    CheckStatus.PASS,
    CheckStatus.FAIL,
    CheckStatus.WARN,
    CheckStatus.NOT_APPLICABLE,
)
#: Compared by value (the rest of `POLICY_HEADERS` by presence: their values vary per request).
VALUE_HEADERS = (
    "x-content-type-options",
    "x-frame-options",
    "content-security-policy",
    "strict-transport-security",
    "referrer-policy",
    "cache-control",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "permissions-policy",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "ratelimit-policy",
    "server",
    "x-powered-by",
    "content-type",
)
POLICY_HEADERS = (
    *VALUE_HEADERS,
    "ratelimit",
    "ratelimit-remaining",
    "x-ratelimit-remaining",
    "retry-after",
    "x-request-id",
    "idempotent-replayed",
)
_RANK = {FAIL: 3, WARN: 2, PASS: 1, NA: 0}
_RANDOM = re.compile(r"buttress-probe-[0-9a-f]+")

Outcomes = dict[str, tuple[CheckStatus, str]]


def merge_status(a: CheckStatus, b: CheckStatus) -> CheckStatus:
    """The worse of two statuses (fail > warn > pass > not applicable)."""
    return a if _RANK[a] >= _RANK[b] else b


def _key(seen: Exchange) -> str:
    path = seen.url.split("://", 1)[-1]
    path = path[path.find("/") :] if "/" in path else "/"
    return f"{seen.method} {_RANDOM.sub('buttress-probe-*', path)}"


def _first(log: Iterable[Exchange]) -> dict[str, Exchange]:
    firsts: dict[str, Exchange] = {}
    for seen in log:
        firsts.setdefault(_key(seen), seen)
    return firsts


def _header_diffs(a: Exchange, b: Exchange) -> list[str]:
    diffs = []
    for name in POLICY_HEADERS:
        va, vb = a.header(name), b.header(name)
        if bool(va) != bool(vb):
            side = "A" if va else "B"
            diffs.append(f"{name} only on {side} ({va or vb})")
        elif name in VALUE_HEADERS and va != vb:
            diffs.append(f"{name}: A {va!r}, B {vb!r}")
    return diffs


def _shape(seen: Exchange | None) -> str:
    if seen is None:
        return "none found"
    body = seen.json()
    fields = sorted(body) if isinstance(body, dict) else []
    checks = body.get("checks") if isinstance(body, dict) else None
    components = sorted(checks) if isinstance(checks, dict) else []
    status = body.get("status") if isinstance(body, dict) else None
    return (
        f"{seen.status} {seen.content_type or '(no type)'} status={status} "
        f"fields={','.join(fields) or '-'} checks={','.join(components) or '-'}"
    )


def compare_runs(
    statuses: tuple[dict[str, CheckStatus], dict[str, CheckStatus]],
    logs: tuple[list[Exchange], list[Exchange]],
    health: tuple[list[Exchange | None], list[Exchange | None]],
) -> Outcomes:
    """PRB095-PRB099 from both runs' check statuses, exchanges and health answers."""
    out: Outcomes = {}
    a_status, b_status = statuses
    differ = [
        f"{rid}: A {a_status[rid].value}, B {b_status.get(rid, NA).value}"
        for rid in a_status
        if a_status[rid] is not b_status.get(rid, NA)
    ]
    if differ:
        out["PRB095"] = (FAIL, f"{len(differ)} checks differ: " + "; ".join(differ))
    else:
        out["PRB095"] = (PASS, f"all {len(a_status)} checks have the same status")

    a_first, b_first = _first(logs[0]), _first(logs[1])
    both = [k for k in a_first if k in b_first and a_first[k].ok and b_first[k].ok]
    codes = [
        f"{k}: A {a_first[k].status}, B {b_first[k].status}"
        for k in both
        if a_first[k].status != b_first[k].status
    ]
    one_sided = [k for k in a_first if k in b_first and a_first[k].ok != b_first[k].ok]
    codes += [
        f"{k}: A {a_first[k].short().split(' -> ')[-1]}, B {b_first[k].short().split(' -> ')[-1]}"
        for k in one_sided
    ]
    if not both:
        out["PRB096"] = (FAIL, "no request got an answer from both sides")
    elif codes:
        out["PRB096"] = (
            FAIL,
            f"{len(codes)} of {len(both)} requests differ: " + "; ".join(codes[:8]),
        )
    else:
        out["PRB096"] = (PASS, f"the same status on all {len(both)} requests answered by both")

    headers: list[str] = []
    for k in both:
        diffs = _header_diffs(a_first[k], b_first[k])
        headers += [f"{k}: {d}" for d in diffs]
    if not both:
        out["PRB097"] = (NA, "no request answered by both sides")
    elif headers:
        out["PRB097"] = (FAIL, f"{len(headers)} differences: " + "; ".join(headers[:8]))
    else:
        out["PRB097"] = (PASS, f"the same policy headers on {len(both)} requests")

    shapes = []
    for name, a_seen, b_seen in zip(("liveness", "readiness"), *health, strict=True):
        sa, sb = _shape(a_seen), _shape(b_seen)
        if sa != sb:
            shapes.append(f"{name}: A {sa}; B {sb}")
    if shapes:
        out["PRB098"] = (FAIL, " | ".join(shapes))
    else:
        out["PRB098"] = (PASS, f"liveness and readiness: {_shape(health[0][1])}")

    out["PRB099"] = _latency(a_first, b_first, both)
    return out


def _latency(a: dict[str, Exchange], b: dict[str, Exchange], keys: list[str]) -> Any:
    if not keys:
        return (NA, "no request answered by both sides")
    ta = sorted(a[k].elapsed for k in keys)
    tb = sorted(b[k].elapsed for k in keys)
    ma, mb = percentile(ta, 50), percentile(tb, 50)
    text = (
        f"median of {len(keys)} requests: A {ma * 1000:.0f} ms, B {mb * 1000:.0f} ms; "
        f"p95 A {percentile(ta, 95) * 1000:.0f} ms, B {percentile(tb, 95) * 1000:.0f} ms"
    )
    slow, fast = max(ma, mb), min(ma, mb)
    if slow > 2 * fast and slow - fast > 0.05:
        return (WARN, f"{text}: {'B' if mb > ma else 'A'} is slower")
    return (PASS, text)
