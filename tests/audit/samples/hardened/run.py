"""Entry point."""

import os

import uvicorn

if __name__ == "__main__":
    uvicorn.run("app.asgi:application", host="127.0.0.1", reload=os.environ.get("RELOAD") == "1")
