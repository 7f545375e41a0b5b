# ruff: noqa
"""BTR604 passes: separate liveness and readiness."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/livez")
def live() -> dict:
    return {"status": "ok"}


@app.get("/readyz")
def ready() -> dict:
    return {"status": "ok"}
