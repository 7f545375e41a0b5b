# ruff: noqa
"""BTR402: debug or auto-reload in entry points."""

import os

import uvicorn
from fastapi import FastAPI
from flask import Flask

app = FastAPI(debug=True)  # expect: BTR402
flask_app = Flask(__name__)
flask_app.debug = True  # expect: BTR402
flask_app.config["DEBUG"] = True  # expect: BTR402
flask_app.config.update(DEBUG=True)  # expect: BTR402

quiet = FastAPI(debug=False)
flask_app.config["DEBUG"] = os.environ.get("DEBUG") == "1"
DEBUG = True  # not a settings module

if __name__ == "__main__":
    uvicorn.run("main:app", reload=True)  # expect: BTR402
    flask_app.run(debug=True)  # expect: BTR402
    uvicorn.run("main:app", host="127.0.0.1", port=8000)
    flask_app.run(debug=os.environ.get("FLASK_DEBUG") == "1")
