# ruff: noqa
"""BTR604: one health route serves liveness and readiness."""

from fastapi import FastAPI

app = FastAPI()  # expect: BTR604


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
