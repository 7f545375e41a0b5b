# ruff: noqa
"""BTR407: no request body size limit (a Flask app; the Starlette app below has one)."""

from flask import Flask
from starlette.applications import Starlette
from starlette.routing import Route

from buttress.asgi import harden

app = Flask(__name__)  # expect: BTR407


@app.get("/livez")
def live() -> str:
    return "ok"


@app.get("/metrics")
def metrics() -> str:
    return ""


api = Starlette(routes=[Route("/readyz", live)])
hardened = harden(api)
