"""The probe's HTTP client: one origin, a hard deadline on every request, bounded bodies.

Every request goes to the origin given (paths only; redirects are not followed, proxies
from the environment are not used), is bounded by ``timeout`` seconds in total (connect,
send, headers and body, under `asyncio.wait_for`), reads at most `MAX_BODY` bytes of the
answer, and never raises: a transport failure (refused, reset, timed out, not HTTP) is
an `Exchange` with ``error`` set. After `GIVE_UP` transport failures in a row, or once the
run's deadline has passed, the client stops sending and answers every further request
with an error at once, so a target that hangs costs a few timeouts, not one per check.

Credentials in the base URL (``http://user:password@host``, sent as Basic auth) and its
query (``?token=...``, added to every request) are used on the wire only: `Client.base`,
`Client.url` and every `Exchange`'s ``url`` (the evidence) are without them (`redact`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx

__all__ = ["GIVE_UP", "MAX_BODY", "MAX_LOG", "Client", "Exchange"]

MAX_BODY = 256 * 1024
GIVE_UP = 3
MAX_LOG = 2000


@dataclass(slots=True)
class Exchange:
    """One request sent and what came back (or why nothing did)."""

    method: str
    url: str
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""
    elapsed: float = 0.0  # seconds
    error: str = ""  # set when no HTTP answer arrived
    sent: bool = True  # False when the client had given up before this one

    @property
    def ok(self) -> bool:
        """An HTTP answer arrived."""
        return not self.error

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters."""
        value: str = self.headers.get("content-type", "")
        return value.split(";", maxsplit=1)[0].strip().lower()

    def header(self, name: str) -> str:
        """A header's value ('' when absent)."""
        value: str = self.headers.get(name, "")
        return value

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        import json  # noqa: PLC0415

        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def short(self) -> str:
        """``GET /path -> 404 application/problem+json (3 ms)`` or the error."""
        path = httpx.URL(self.url).raw_path.decode("ascii", "replace")
        if self.error:
            return f"{self.method} {path} -> {self.error}"
        kind = f" {self.content_type}" if self.content_type else ""
        return f"{self.method} {path} -> {self.status}{kind} ({self.elapsed * 1000:.0f} ms)"


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "not a valid HTTP answer (connection closed or garbage)"
    if isinstance(exc, httpx.ReadError):
        return "connection reset while reading"
    if isinstance(exc, httpx.WriteError):
        return "connection reset while sending"
    if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
        return "connection reset or closed without an answer"
    if isinstance(exc, (ValueError, IndexError, asyncio.LimitOverrunError)):
        return "not a valid HTTP answer (garbage)"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


class Client:
    """Requests to one origin, each bounded in time and size; never raises."""

    def __init__(
        self,
        base: str,
        *,
        timeout: float,
        budget: float,
        give_up: int = GIVE_UP,
        connections: int = 16,
        record: bool = False,
    ) -> None:
        given = httpx.URL(base)
        self._userinfo = given.userinfo  # sent (Basic auth), never shown
        self._params = given.params  # added to every request, never shown
        self.base = str(given.copy_with(userinfo=b"", query=None, fragment=None)).rstrip("/")
        self.timeout = timeout
        self.deadline = time.monotonic() + budget
        self.sent = 0
        self.give_up = give_up  # transport failures in a row before it stops; 0: never
        self.record = record  # keep the first `MAX_LOG` exchanges in ``log`` (for parity)
        self.log: list[Exchange] = []
        self._failures = 0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"user-agent": "buttress-probe"},
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    @property
    def gave_up(self) -> bool:
        """True once the target stopped answering or the run's time is up."""
        stopped = 0 < self.give_up <= self._failures
        return stopped or time.monotonic() >= self.deadline

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on the target, as shown (no credentials, no token)."""
        return self.base + (path if path.startswith("/") else "/" + path)

    def _wire(self, url: str) -> httpx.URL:
        """The URL sent: ``url`` with the base URL's credentials and query put back."""
        target = httpx.URL(url)
        if self._userinfo:
            target = target.copy_with(userinfo=self._userinfo)
        return target.copy_merge_params(self._params) if self._params else target

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> Exchange:
        """Send one request; the answer, or an `Exchange` with ``error`` set."""
        return await self._timed(method, path, lambda seen: self._exchange(seen, headers, content))

    async def send_large(
        self, method: str, path: str, *, size: int, headers: dict[str, str]
    ) -> Exchange:
        """Send a ``size``-byte JSON body as a careful client does (``Expect: 100-continue``).

        The body goes out only after ``100 Continue`` (or a second without an answer),
        in chunks, and stops as soon as an answer arrives.

        A server that refuses the declared length at once answers before any body is
        sent, so its close cannot reset the connection under its own answer.
        """
        return await self._timed(method, path, lambda seen: self._large(seen, size, headers))

    async def send_and_give_up(
        self, method: str, path: str, *, headers: dict[str, str], content: bytes, wait: float
    ) -> Exchange:
        """Send a whole request, then wait only ``wait`` seconds: a client that times out.

        The request is written in full (so the service has it), then the connection is
        closed unless an answer began within ``wait``. The `Exchange` has ``error`` set
        when the client gave up; an answer that did arrive in time is kept as far as read.
        """
        return await self._timed(
            method, path, lambda seen: self._give_up(seen, headers, content, wait)
        )

    async def _timed(
        self, method: str, path: str, work: Callable[[Exchange], Awaitable[None]]
    ) -> Exchange:
        """Run one exchange within the timeout: counted, timed, any failure a result."""
        seen = Exchange(method=method, url=self.url(path))
        if self.gave_up:
            seen.sent = False
            seen.error = (
                "not sent: the run's time is up"
                if time.monotonic() >= self.deadline
                else "not sent: the target stopped answering"
            )
            return seen
        self.sent += 1
        if self.record and len(self.log) < MAX_LOG:
            self.log.append(seen)
        started = time.monotonic()
        try:
            await asyncio.wait_for(work(seen), self.timeout)
        except Exception as exc:  # any failure is a result, never a traceback
            seen.error = _describe(exc, self.timeout)
            seen.status = 0
            self._failures += 1
        else:
            self._failures = 0
        seen.elapsed = time.monotonic() - started
        return seen

    async def _raw(
        self, seen: Exchange, headers: dict[str, str], length: int, *extra: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own to ``seen.url``, the request's head written on it."""
        target = self._wire(seen.url)
        if self._userinfo:
            user, _, password = self._userinfo.partition(b":")
            pair = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
            extra = (*extra, f"authorization: Basic {base64.b64encode(pair).decode('ascii')}")
        context = None
        if target.scheme == "https":
            import ssl  # noqa: PLC0415

            context = ssl.create_default_context()
        port = target.port or (443 if target.scheme == "https" else 80)
        reader, writer = await asyncio.open_connection(target.host, port, ssl=context)
        lines = [
            f"{seen.method} {target.raw_path.decode('ascii')} HTTP/1.1",
            f"host: {target.netloc.decode('ascii')}",
            "user-agent: buttress-probe",
            f"content-length: {length}",
            *extra,
            "connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return reader, writer

    @staticmethod
    def _head(seen: Exchange, raw: bytes) -> bool:
        """The status and headers of an answer's head into ``seen``; False: not HTTP."""
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return False
        seen.status = int(parts[1])
        pairs = [h.split(":", 1) for h in header_lines if ":" in h]
        seen.headers = httpx.Headers([(k.strip(), v.strip()) for k, v in pairs])
        return True

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 0.5)

    async def _give_up(
        self, seen: Exchange, headers: dict[str, str], content: bytes, wait: float
    ) -> None:
        reader, writer = await self._raw(seen, headers, len(content))
        try:
            writer.write(content)
            await writer.drain()
            try:
                raw = await asyncio.wait_for(reader.read(MAX_BODY), wait)
            except TimeoutError:
                seen.error = f"the client gave up after {wait * 1000:g} ms (on purpose)"
                return
            head, _, body = raw.partition(b"\r\n\r\n")
            if not self._head(seen, head):
                seen.error = "not a valid HTTP answer (garbage)"
                return
            seen.body = body
        finally:
            await self._close(writer)

    async def _large(self, seen: Exchange, size: int, headers: dict[str, str]) -> None:
        reader, writer = await self._raw(seen, headers, size, "expect: 100-continue")
        try:
            await writer.drain()
            head = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
            try:
                await asyncio.wait({head}, timeout=min(1.0, self.timeout / 2))
                if head.done() and head.result().startswith(b"HTTP/1.1 100"):
                    head = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
                if not head.done():
                    await self._body(writer, head, size)
                raw = await head
            finally:
                head.cancel()
            if not self._head(seen, raw.rstrip(b"\r\n")):
                seen.error = "not a valid HTTP answer (garbage)"
                return
            length = seen.headers.get("content-length", "")
            want = min(int(length), MAX_BODY) if length.isdigit() else MAX_BODY
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                seen.body = await reader.readexactly(want) if length.isdigit() else b""
        finally:
            await self._close(writer)

    @staticmethod
    async def _body(writer: asyncio.StreamWriter, head: asyncio.Future[bytes], size: int) -> None:
        prefix = b'{"pad": "'
        sent = 0
        while sent < size and not head.done():
            chunk = prefix if sent == 0 else b"a" * min(65536, size - sent)
            writer.write(chunk)
            sent += len(chunk)
            drain = asyncio.ensure_future(writer.drain())
            waiting: set[asyncio.Future[Any]] = {drain, head}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                drain.cancel()
                return
            if drain.exception() is not None:
                return  # the server closed: its answer (if any) is in ``head``

    async def _exchange(
        self, seen: Exchange, headers: dict[str, str] | None, content: bytes | None
    ) -> None:
        request = self._http.build_request(
            seen.method, self._wire(seen.url), headers=headers, content=content
        )
        response = await self._http.send(request, stream=True)
        try:
            seen.status = response.status_code
            seen.headers = response.headers
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_BODY:
                    break
            seen.body = b"".join(chunks)[:MAX_BODY]
        finally:
            await response.aclose()
