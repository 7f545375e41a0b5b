# ruff: noqa
"""BTR102 passes: slowapi limits the writes."""

from fastapi import FastAPI, Request
from slowapi import Limiter
from slowapi.util import get_remote_address

limiter = Limiter(key_func=get_remote_address)
app = FastAPI()


@app.post("/orders")
@limiter.limit("10/minute")
def create(request: Request) -> dict:
    return {}
