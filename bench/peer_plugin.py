"""buttress cases for the shared peer harness (`micro_outbound.py`, `micro_ratelimit.py`,
`asgi_stack.py`).

The harness loads this file by path and calls the hooks it knows::

    cp -r <shared>/peer-bench /tmp/peer-bench && cd /tmp/peer-bench
    P=/work/main/bench/peer_plugin.py R=redis://127.0.0.1:6390/0
    $VENV/bin/python -B micro_outbound.py  --plugin $P --out buttress
    $VENV/bin/python -B micro_ratelimit.py --plugin $P --redis-url $R --out buttress
    $VENV/bin/python -B asgi_stack.py      --plugin $P --out buttress

(the harness writes ``results/<out>.json`` next to itself, hence the copy when the shared
folder is read-only). ``--groups redis-sync --groups redis-async`` (the flag repeats) keeps
only the Redis groups; ``--no-redis`` only the in-memory ones. With ``--redis-url`` on a free
loopback port the harness starts a private ``redis-server`` pinned to CPU 1 (itself on CPU 0)
and stops it afterwards.

Rate-limit groups: in memory, `RateLimiter`; on Redis, `RedisStore.acquire` /
``aacquire`` with one `RateRequest` per decision (1 and 8 asyncio callers), with and without
local denials (over-limit keys answered in process until their retry time), in a fresh
namespace (the harness's ``ctx.prefix``) whose keys are deleted when the case closes.
``asgi_apps()`` gives the harness one app, ``buttress``: the harness's bare Starlette app
(``GET /hello`` -> ``{"message": "hello"}``) behind ``harden()`` with every feature on and
the JSON access log going to /dev/null (built by ``bench/asgi.py``, also in the uvicorn
worker the harness starts).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _buttress_cases as bc  # noqa: E402 - needs the path above


def outbound_cases(Case):
    return [
        Case(name, kind, "buttress", build, note=note) for name, kind, build, note in bc.OUTBOUND
    ]


def ratelimit_cases(Case, ctx):
    return [
        Case(name, group, "buttress", make, note=note) for name, group, make, note in bc.RATELIMIT
    ]


def asgi_apps():
    import asgi as _asgi  # noqa: PLC0415 - bench/asgi.py; Starlette only when this hook is used

    return {"buttress": _asgi.create_buttress}
