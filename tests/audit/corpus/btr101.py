# ruff: noqa
"""BTR101: write routes without an idempotency mechanism (one app, in one file)."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware


@asynccontextmanager
async def lifespan(app):
    yield


app = FastAPI(lifespan=lifespan)  # expect: BTR101
app.add_middleware(BaseHTTPMiddleware, dispatch=None)


class BodySizeLimitMiddleware: ...


app.add_middleware(BodySizeLimitMiddleware)


@app.get("/healthz")
def health() -> dict:
    return {"ok": True}


@app.get("/metrics")
def metrics() -> str:
    return ""


@app.post("/orders")
def create_order() -> dict:
    return {}


@app.put("/orders/{order_id}")
def replace_order(order_id: int) -> dict:
    return {}
