# ruff: noqa
"""BTR408: binding every interface in code."""

import os

import uvicorn
from flask import Flask

app = Flask(__name__)
HOST = "0.0.0.0"

if __name__ == "__main__":
    uvicorn.run("main:app", host="0.0.0.0", port=8000)  # expect: BTR408
    app.run(HOST, 8000)  # expect: BTR408
    app.run(host="::")  # expect: BTR408
    uvicorn.run("main:app", host=os.environ.get("HOST", "0.0.0.0"))
    uvicorn.run("main:app", host="127.0.0.1")
    app.run()
