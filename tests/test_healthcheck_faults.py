"""Review of ``buttress healthcheck URL``'s promises against raw servers that misbehave.

Each server is a raw socket on 127.0.0.1 served by daemon threads, closed at the end of
its test; a misbehaving answer is bounded (a trickle stops after at most 30 s).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from buttress.cli import main
from buttress.healthcheck import check

Handler = Callable[[socket.socket, "Raw"], None]


@dataclass
class Raw:
    """A loopback listener; ``requests`` holds the head of each request it read."""

    handler: Handler
    requests: list[bytes] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)  # a trickle finished
    sock: socket.socket = field(default_factory=socket.socket)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            self.requests.append(conn.recv(65536))
            self.handler(conn, self)


@contextlib.contextmanager
def raw(handler: Handler) -> Iterator[Raw]:
    server = Raw(handler)
    server.sock.bind(("127.0.0.1", 0))
    server.sock.listen(8)
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server
    finally:
        server.sock.close()


def _trickle(conn: socket.socket, server: Raw) -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 110 + b"\r\nContent-Length: 2\r\n\r\nok"
    for byte in answer:  # a byte every 0.2 s (under the timeout), ~30 s in all
        conn.sendall(bytes([byte]))
        time.sleep(0.2)
    server.done.set()


def _hang(conn: socket.socket, server: Raw) -> None:
    server.done.wait(30)  # accepts, reads, never answers


def _garbage(conn: socket.socket, server: Raw) -> None:
    conn.sendall(b"\x00\xffnot http at all\r\n\r\n")


def _down(conn: socket.socket, server: Raw) -> None:
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


def _endless_body(conn: socket.socket, server: Raw) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(100_000):  # until the client leaves
        conn.sendall(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")


def test_a_trickled_answer_is_cut_at_the_timeout() -> None:
    """Before: urllib's timeout is per read, so 5 bytes a second ran for 30 s, healthy."""
    with raw(_trickle) as server:
        code, why = check(server.url + "/health/live", timeout=0.5)
        assert (code, why) == (1, "no answer within 0.5 s")
        assert not server.done.is_set()  # it returned long before the trickle's end


def test_a_server_that_never_answers_is_bounded() -> None:
    with raw(_hang) as server:
        assert check(server.url + "/health/live", timeout=0.3) == (1, "no answer within 0.3 s")
        server.done.set()


def test_garbage_is_unhealthy_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: http.client.BadStatusLine escaped as a traceback."""
    with raw(_garbage) as server:
        assert main(["healthcheck", "--timeout", "2", server.url + "/health/live"]) == 1
    err = capsys.readouterr().err
    assert "not a valid HTTP answer" in err
    assert "Traceback" not in err


def test_an_endless_body_after_200_is_healthy_and_bounded() -> None:
    with raw(_endless_body) as server:
        assert check(server.url + "/health/live", timeout=1.0) == (0, "")


def test_secrets_in_the_url_are_used_but_never_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the URL was printed whole, and ``user:pw@host`` went to DNS as a host name."""
    with raw(_down) as server:
        url = server.url.replace("//", "//probe:s3cr%40t@") + "/health/ready?token=T0KEN&x=1"
        assert main(["healthcheck", "--timeout", "2", url]) == 1
        sent = server.requests[0].decode("latin-1")
    err = capsys.readouterr().err
    assert "HTTP 503" in err
    assert "/health/ready?token=***&x=***" in err
    for secret in ("s3cr", "probe:", "T0KEN"):
        assert secret not in err
    assert "GET /health/ready?token=T0KEN&x=1 HTTP/1.1" in sent
    assert f"Authorization: Basic {base64.b64encode(b'probe:s3cr@t').decode()}" in sent


def test_a_redirect_to_another_host_is_not_followed(capsys: pytest.CaptureFixture[str]) -> None:
    with raw(_down) as elsewhere:

        def moved(conn: socket.socket, server: Raw) -> None:
            conn.sendall(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere.url}/health\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )

        with raw(moved) as server:
            assert main(["healthcheck", "--timeout", "2", server.url + "/health"]) == 1
        assert elsewhere.requests == []
    assert "HTTP 307" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/health",
        "http://127.0.0.1.nip.io/health",
        "http://0.0.0.0:8000/health",
        "http://[::ffff:10.0.0.1]/health",
    ],
)
def test_remote_hosts_are_refused_before_any_request(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["healthcheck", url]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_a_refused_usage_error_does_not_echo_credentials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["healthcheck", "ftp://probe:s3cret@127.0.0.1/x?token=T0KEN"]) == 2
    err = capsys.readouterr().err
    assert "not an http" in err
    assert "s3cret" not in err
    assert "T0KEN" not in err
