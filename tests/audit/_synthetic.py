"""A generated service tree of any size, for the memory test and bench/audit.py.

Packages of modules that look like service code: imports, settings, a FastAPI app and
routers across modules, classes with methods, loops, try/except, HTTP and database calls
(some with findings, most without). Every module is about ``LINES_PER_MODULE`` lines;
the tree grows by adding modules, as real services do.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LINES_PER_MODULE", "generate"]

LINES_PER_MODULE = 1000

_HEAD = '''"""Orders, module {n}."""

from __future__ import annotations

import logging

import httpx
import requests
from fastapi import APIRouter

from svc.settings import TIMEOUT, UPSTREAM

log = logging.getLogger(__name__)
router = APIRouter()
LIMITS_{n} = {{"orders": 100, "refunds": 10, "exports": 2}}
'''

_BLOCK = '''

class Order{n}x{i}:
    """An order kept in memory while it is priced."""

    currency: str = "EUR"
    retries: int = 3

    def __init__(self, order_id: int, lines: list[dict[str, float]]) -> None:
        self.order_id = order_id
        self.lines = lines
        self.total = 0.0

    def price(self, rates: dict[str, float]) -> float:
        total = 0.0
        for line in self.lines:
            quantity = line.get("quantity", 1.0)
            unit = line.get("unit", 0.0) * rates.get(self.currency, 1.0)
            if quantity > 10:
                unit = unit * 0.95
            elif quantity > 100:
                unit = unit * 0.9
            total += quantity * unit
        self.total = round(total, 2)
        return self.total


@router.get("/orders/{n}/{i}")
def read_{i}(order_id: int) -> dict[str, object]:
    response = requests.get(f"{{UPSTREAM}}/orders/{{order_id}}", timeout=TIMEOUT)
    response.raise_for_status()
    data = response.json()
    order = Order{n}x{i}(order_id, data.get("lines", []))
    return {{"id": order_id, "total": order.price({{"EUR": 1.0, "USD": 0.92}})}}


def export_{i}(ids: list[int]) -> list[dict[str, object]]:
    out = []
    with httpx.Client(timeout=TIMEOUT) as client:
        for order_id in ids:
            try:
                reply = client.get(f"{{UPSTREAM}}/orders/{{order_id}}")
                reply.raise_for_status()
            except httpx.HTTPError:
                log.exception("export failed", extra={{"order_id": order_id}})
                raise
            out.append({{"id": order_id, "body": reply.json(), "module": {n}, "block": {i}}})
    return out
'''


def generate(root: Path, lines: int) -> int:
    """Write a service of about ``lines`` lines under ``root``; returns the lines written."""
    pkg = root / "svc"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text('UPSTREAM = "https://orders.internal"\nTIMEOUT = 5.0\n')
    modules = max(1, lines // LINES_PER_MODULE)
    head_lines = _HEAD.count("\n")
    block_lines = _BLOCK.count("\n")
    blocks = max(1, (LINES_PER_MODULE - head_lines) // block_lines)
    main = ["from fastapi import FastAPI", "", "app = FastAPI()"]
    written = 0
    for n in range(modules):
        package = pkg / f"part{n // 50}"
        if not (package / "__init__.py").exists():
            package.mkdir(exist_ok=True)
            (package / "__init__.py").write_text("")
        text = _HEAD.format(n=n) + "".join(_BLOCK.format(n=n, i=i) for i in range(blocks))
        (package / f"orders_{n}.py").write_text(text)
        written += text.count("\n")
        main.insert(0, f"from svc.part{n // 50}.orders_{n} import router as router_{n}")
        main.append(f"app.include_router(router_{n})")
    (pkg / "main.py").write_text("\n".join(main) + "\n")
    return written
