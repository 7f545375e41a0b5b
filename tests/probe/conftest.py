"""Targets for the probe: the demo, a naive FastAPI app, and servers that misbehave.

Everything listens on a free loopback port and is stopped at the end; the misbehaving
servers are raw sockets (hang, reset, garbage, slow, trickle) in daemon threads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

from tests.conftest import free_port, served


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    """``python -m buttress demo`` on a free loopback port, ready (its start-up work done)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with served(
        [sys.executable, "-m", "buttress", "demo", "--port", str(port)], url + "/health/ready"
    ):
        yield url


class Item(BaseModel):
    name: str
    price: float


def naive_app() -> FastAPI:
    """No hardening: framework errors as application/json, no security headers, CORS that
    reflects any origin with credentials, X-Powered-By, a rate limit keyed on the client
    address (which uvicorn takes from X-Forwarded-For on loopback) and 429 without
    Retry-After, /health as plain JSON serving liveness and readiness, no /metrics, and a
    POST /items that creates a new item (a new id) every time, ignoring Idempotency-Key."""
    app = FastAPI()
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=".*",
        allow_credentials=True,
        allow_methods=["*"],
    )
    used: dict[str, int] = {}
    quota = 20

    @app.middleware("http")
    async def powered_by(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        response.headers["X-Powered-By"] = "Express 4.17.1"
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items")
    async def items(request: Request, response: Response) -> Any:
        who = request.client.host if request.client else "?"
        used[who] = used.get(who, 0) + 1
        left = max(0, quota - used[who])
        if used[who] > quota:
            return Response(status_code=429, headers={"RateLimit-Remaining": "0"})
        response.headers["RateLimit-Remaining"] = str(left)
        return [{"name": "a", "price": 1.0}]

    created = iter(range(1, 1_000_000))

    @app.post("/items", status_code=201)
    async def create(item: Item) -> dict[str, Any]:
        """Creates a new item every time: the Idempotency-Key is ignored."""
        return {"id": next(created), **item.model_dump()}

    return app


class ServerThread:
    """uvicorn serving ``app`` in a thread (its defaults: proxy headers, Server header)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def naive_url() -> Iterator[str]:
    with ServerThread(naive_app()) as url:
        yield url


class BadServer:
    """A TCP server that misbehaves in one ``mode``: hang, reset, garbage, slow, trickle."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accepted = 0

    def __enter__(self) -> str:
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        self.threads.append(thread)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in list(self.threads):
            thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
            with contextlib.suppress(OSError):
                if self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if self.mode == "garbage":
                    conn.sendall(b"\x00\xff\x13garbage not http\r\n\r\n" * 20)
                    return
                if self.mode == "slow":
                    self.stop.wait(2.0)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    return
                if self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while not self.stop.wait(0.05):
                        conn.sendall(b"x")
                    return
                self.stop.wait(30)  # hang: accept, read, never answer
