"""Review of ``buttress probe``'s promises: loopback only, no secrets in any report
format, bounded against huge and endless answers, redirects never followed.

The servers are raw sockets on 127.0.0.1 served by daemon threads, closed after each test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buttress.cli import main
from buttress.probe import ProbeOptions, is_loopback, probe
from buttress.probe._http import MAX_BODY, Client

Answer = Callable[[socket.socket], None]


class Raw:
    """A loopback listener answering each request with ``answer``; ``requests``: the heads."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            self.requests.append(conn.recv(65536))
            if not self.stop.is_set():
                self.answer(conn)


@contextlib.contextmanager
def raw(answer: Answer) -> Iterator[Raw]:
    server = Raw(answer)
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server
    finally:
        server.stop.set()
        server.sock.close()


def _error(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")


def _huge(conn: socket.socket) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\nConnection: close\r\n\r\n"
    conn.sendall(head + b"x" * 10 * 1024 * 1024)


def _endless(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(100_000):  # until the client leaves (a broken pipe ends it)
        conn.sendall(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")


# -- loopback only -----------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.2", "[::1]", "LocalHost"]
)
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert is_loopback(f"http://{host}:8000/")


@pytest.mark.parametrize(
    "host",
    [
        "evil.localhost",  # before: accepted; the resolver may ask DNS, which may say anything
        "0.0.0.0",
        "127.1",
        "2130706433",
        "localhost.",
        "[::ffff:127.0.0.1]",
        "127.0.0.1.nip.io",
        "localhost.example.com",
    ],
)
def test_other_hosts_are_refused_before_any_request(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not is_loopback(f"http://{host}:8000/")
    assert main(["probe", f"http://{host}:8000"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_a_redirect_off_loopback_is_never_followed() -> None:
    with raw(_error) as elsewhere:
        location = f"{elsewhere.url}/stolen".encode()

        def moved(conn: socket.socket) -> None:
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\n\r\n")

        with raw(moved) as target:
            report = probe(ProbeOptions(url=target.url, timeout=1.0, burst=10))
        assert target.requests
        assert elsewhere.requests == []
    assert {c.rule.id: c.status.value for c in report.checks}["PRB001"] == "fail"


# -- no secrets in the evidence ----------------------------------------------------

SECRETS = ("s3cretPW", "T0KENQ", "probe-user")


@pytest.mark.parametrize("fmt", ["terminal", "json", "markdown", "sarif"])
def test_url_credentials_reach_the_service_but_no_report(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the URL's password and token were in every format (target, locations,
    evidence), and a query in the base URL swallowed every path (``/?token=T0KENQ/...``)."""
    out = tmp_path / "report"
    with raw(_error) as server:
        url = server.url.replace("//", "//probe-user:s3cretPW@") + "/?token=T0KENQ"
        argv = ["probe", url, "--timeout", "1", "--burst", "5", "--write-route", "POST /orders"]
        main([*argv, "--format", fmt, "--output", str(out)])
    text = out.read_text() + "".join(capsys.readouterr())
    for secret in SECRETS:
        assert secret not in text
    assert "token=***" in text
    heads = [r.decode("latin-1") for r in server.requests]
    auth = "authorization: basic " + base64.b64encode(b"probe-user:s3cretPW").decode().lower()
    assert all(auth in h.lower() for h in heads)  # the raw 2 MiB POST too
    assert any(h.startswith("GET /health/live?token=T0KENQ ") for h in heads)
    assert any(h.startswith("POST /orders?token=T0KENQ ") and "100-continue" in h for h in heads)


# -- bounded against huge and endless answers --------------------------------------


@pytest.mark.parametrize("answer", [_huge, _endless], ids=["10MB", "endless-chunked"])
def test_huge_and_endless_bodies_are_read_up_to_the_bound(answer: Answer) -> None:
    async def one(url: str) -> tuple[int, int, str]:
        client = Client(url, timeout=2.0, budget=10.0)
        try:
            seen = await client.send("GET", "/health/live")
        finally:
            await client.aclose()
        return seen.status, len(seen.body), seen.error

    with raw(answer) as server:
        assert asyncio.run(one(server.url)) == (200, MAX_BODY, "")


@pytest.mark.parametrize("answer", [_huge, _endless], ids=["10MB", "endless-chunked"])
def test_a_probe_of_huge_answers_ends_with_a_report(
    answer: Answer, capsys: pytest.CaptureFixture[str]
) -> None:
    with raw(answer) as server:
        code = main(["probe", server.url, "--timeout", "1", "--burst", "5", "--fail-on", "P1"])
    out, err = capsys.readouterr()
    assert code == 1  # the gate: no health+json, no problem+json errors
    assert "Traceback" not in out + err
    assert "PRB001" in out
