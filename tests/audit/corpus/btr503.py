# ruff: noqa
"""BTR503: no /metrics (the app has health, a body limit, lifespan, idempotency)."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Header


@asynccontextmanager
async def lifespan(app):
    yield


class MaxBodySizeMiddleware: ...


app = FastAPI(lifespan=lifespan)  # expect: BTR503
app.add_middleware(MaxBodySizeMiddleware, limit=1_000_000)


@app.get("/health")
def health() -> dict:
    return {}


@app.post("/orders")
def create(idempotency_key: str = Header()) -> dict:
    return {}
