#!/usr/bin/env python3
"""Run the buttress benchmarks: ``python bench/run.py NAME``.

NAME: outbound, ratelimit, quotas, asgi, stores, memory, metrics, or all. ``./dev bench NAME`` calls
this. Extra arguments go to each script (see ``--help`` of ``bench/outbound.py``,
``bench/ratelimit.py``, ``bench/asgi.py``, ``bench/stores.py``, ``bench/memory.py`` and
``bench/metrics.py``).
With ``all`` the scripts run one after the other, never at once: on a 2-core machine two
benchmarks ruin each other. Each script runs in a fresh interpreter of the same Python.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "outbound": "outbound.py",
    "ratelimit": "ratelimit.py",
    "quotas": "quotas.py",
    "asgi": "asgi.py",
    "stores": "stores.py",
    "memory": "memory.py",
    "metrics": "metrics.py",
}
# module each benchmark needs beyond buttress (installed by the `bench` extra)
NEEDS = {
    "outbound": [
        "tenacity",
        "stamina",
        "backoff",
        "pybreaker",
        "circuitbreaker",
        "pyresilience",
        "aiolimiter",
    ],
    "ratelimit": ["limits", "aiolimiter", "pyrate_limiter"],
    "quotas": ["starlette", "slowapi"],
    "asgi": [
        "starlette",
        "uvicorn",
        "httptools",
        "slowapi",
        "asgi_correlation_id",
        "prometheus_fastapi_instrumentator",
        "secure",
    ],
    "stores": ["redis", "psycopg"],
    "memory": ["limits"],
    "metrics": ["prometheus_client"],
}


def usage() -> int:
    print(__doc__.strip(), file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        return usage()
    name, extra = argv[0], argv[1:]
    names = list(SCRIPTS) if name == "all" else [name]
    if any(n not in SCRIPTS for n in names):
        print(
            f"unknown benchmark {name!r}; choose from: {', '.join(SCRIPTS)}, all", file=sys.stderr
        )
        return 2
    missing = sorted({m for n in names for m in NEEDS[n] if importlib.util.find_spec(m) is None})
    if missing:
        print(
            f"missing peer libraries: {', '.join(missing)}\n"
            f"install them with: {sys.executable} -m pip install -e '{HERE.parent}[bench]'",
            file=sys.stderr,
        )
        return 1
    rc = 0
    for n in names:
        print(f"==> {n}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / SCRIPTS[n]), *extra]) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
