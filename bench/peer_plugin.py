"""buttress cases for the shared peer harness (`micro_outbound.py`, `micro_ratelimit.py`,
`asgi_stack.py`).

The harness loads this file by path and calls the hooks it knows::

    cp -r <shared>/peer-bench /tmp/peer-bench && cd /tmp/peer-bench
    $VENV/bin/python -B micro_outbound.py  --plugin /work/main/bench/peer_plugin.py --out buttress
    $VENV/bin/python -B micro_ratelimit.py --plugin /work/main/bench/peer_plugin.py --no-redis \
        --out buttress
    $VENV/bin/python -B asgi_stack.py      --plugin /work/main/bench/peer_plugin.py --out buttress

(the harness writes ``results/<out>.json`` next to itself, hence the copy when the shared
folder is read-only). Only the in-memory rate-limit groups are provided for now.
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
