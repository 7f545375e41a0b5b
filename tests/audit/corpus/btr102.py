# ruff: noqa
"""BTR102: public write routes and no rate limit anywhere."""

from fastapi import FastAPI

app = FastAPI()  # expect: BTR102


@app.post("/orders")
def create() -> dict:
    return {}


@app.delete("/orders/{order_id}")
def delete(order_id: int) -> None: ...
