"""One keyed request of `IdempotencyMiddleware`: take the key, run the handler, record.

`KeyedRun` is the life of one key: `work` takes the key, runs the handler with a ``send``
that buffers what is to be stored, records the response (or releases or marks the key) and
answers the client while it waits; `detach` lets the work go on when the client stops
waiting. `RunPolicy` is what every run of one middleware shares; `Background` holds the
work that outlives its request. The replies (`refuse`, `replay`) and the stored-header
rules live here too, so that the middleware module only decides *whether* a request is
keyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from buttress._clock import Clock, Timer
from buttress.asgi._problem import send_problem
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import BackendError, ErrorCode
from buttress.stores._base import BeginOutcome, IdempotencyStore, StoredResponse
from buttress.telemetry import record_idempotency

__all__ = [
    "REPLAYED_HEADER",
    "STORED_HEADER",
    "Background",
    "BodyReplay",
    "KeyedRun",
    "RunPolicy",
    "refuse",
    "replay",
]

_log = logging.getLogger("buttress.asgi.idempotency")

REPLAYED_HEADER = b"idempotent-replayed"
# what the server span says a key found (buttress.idempotency.outcome)
_OUTCOMES = {
    BeginOutcome.ACQUIRED: "first",
    BeginOutcome.REPLAY: "replay",
    BeginOutcome.MISMATCH: "conflict",
    BeginOutcome.IN_FLIGHT: "in_flight",
}
STORED_HEADER = b"idempotent-stored"

# Never stored, never replayed: per-connection headers, cookies (a replay must not hand a
# session to whoever holds the key), the date, and our own markers.
_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"set-cookie",
        b"date",
        REPLAYED_HEADER,
        STORED_HEADER,
    }
)
# Retrying these may succeed and nothing was done: never replay them for a day.
_ALWAYS_RELEASED = frozenset({408, 425, 429})
# The record kept for a completed response that was not stored.
_NOT_STORED = ((STORED_HEADER, b"false"),)
# The record kept for a handler that started and did not finish cleanly (it failed after it
# began to answer, or ran past ``abandon_after``): what it did is unknown.
_UNKNOWN = ((STORED_HEADER, b"unknown"),)


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return None


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    value = _header(headers, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _kept_headers(
    headers: Iterable[tuple[bytes, bytes]], length: int
) -> tuple[tuple[bytes, bytes], ...]:
    kept = []
    has_length = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _DROPPED or name.startswith(b"proxy-"):
            continue
        has_length = has_length or name == b"content-length"
        kept.append((name, value))
    if not has_length:
        kept.append((b"content-length", str(length).encode("ascii")))
    return tuple(kept)


class Background:
    """The work of one middleware that outlives its requests.

    Handlers whose clients stopped waiting, and record retries; each is bounded
    (``abandon_after``, the lease).
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` until it ends; log it if it fails."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task of its own, tracked."""
        self.track(asyncio.get_running_loop().create_task(coro))

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error(
                "an idempotent handler failed after its client stopped waiting", exc_info=exc
            )

    async def adrain(self) -> None:
        """Wait until every tracked task has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPolicy:
    """What every keyed run of one `IdempotencyMiddleware` shares (see its arguments)."""

    app: ASGIApp
    store: IdempotencyStore
    clock: Clock
    lease: float
    ttl: float
    abandon_after: float
    max_response_body: int
    store_server_errors: bool
    fail_open: bool
    background: Background

    def releases(self, status: int) -> bool:
        """Whether a response with ``status`` frees the key (the retry runs again)."""
        return status in _ALWAYS_RELEASED or (status >= 500 and not self.store_server_errors)


async def refuse(
    send: Send, code: ErrorCode, reason: str, detail: str, retry_after: float | None = None
) -> None:
    await send_problem(
        send, code, detail=detail, retry_after=retry_after, extra={"idempotency_error": reason}
    )


async def replay(send: Send, response: StoredResponse) -> None:
    if response.headers == _UNKNOWN:
        await send_problem(
            send,
            ErrorCode.CONFLICT,
            detail="the first request with this Idempotency-Key started but did not finish "
            "cleanly (it failed after it began to answer, or ran too long after its client "
            "stopped waiting), so what it did is unknown; it will not run again: check the "
            "state of the resource, then use a new key",
            headers=_UNKNOWN,
            extra={"idempotency_error": "outcome_unknown", "original_status": response.status},
        )
        return
    if response.headers == _NOT_STORED:
        await send_problem(
            send,
            ErrorCode.CONFLICT,
            detail="the first request with this Idempotency-Key completed, but its response "
            "was streamed or too large to store, so it cannot be replayed; it will not run "
            "again: use a new key for a new request",
            headers=_NOT_STORED,
            extra={"idempotency_error": "response_not_stored", "original_status": response.status},
        )
        return
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [*response.headers, (REPLAYED_HEADER, b"true")],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class BodyReplay:
    """The request's ``receive`` after the middleware has read the body."""

    __slots__ = ("body", "receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        body = self.body
        if body is None:
            return await self.receive()
        self.body = None
        return {"type": "http.request", "body": body, "more_body": False}


# what the run does with the response it sees
_STORE = 1  # buffer it whole (start and body), record it, then send it
_HOLD = 2  # no Content-Length: the start is held until the first body chunk tells
_UNSTORED = 3  # streamed or too large: sent as it comes, a marker is recorded at the end
_RELEASE = 4  # 5xx (or 408/425/429): sent as it comes, the key is released at the end

# record retries when the store fails: 0.1 s doubling to 2 s, for at most one lease
_RETRY_FIRST = 0.1
_RETRY_MAX = 2.0


class KeyedRun:
    """One keyed request: begin, the handler, the record, and the client while it waits.

    `work` runs in a task of its own. The request's coroutine only waits for it, so the
    request deadline, a server that cancels a request whose client left, or any other
    cancellation stops the waiting and never the work. What happens then (`detach`):

    * before the handler started: it never starts, and the key is released (or never
      taken);
    * once it started: it runs on, shielded, for at most ``abandon_after`` seconds, its
      lease renewed; its response is recorded as usual (a retry gets 409 while it runs,
      the replay afterwards) and goes to nobody. Past the bound the handler is cancelled
      and the key is marked *abandoned*: its outcome is unknown, so it is never run again
      under that key;
    * while a recorded response is being sent: the send finishes first, so a client never
      gets a stored response cut short.

    A stored response is buffered whole and sent only once it is recorded: the client sees
    either all of it or, if the deadline fires first, the deadline's own problem+json.
    """

    __slots__ = (
        "abandon_timer",
        "chunks",
        "client",
        "delivered",
        "delivering",
        "fingerprint",
        "key",
        "mw",
        "renewal",
        "settled",
        "size",
        "start",
        "start_headers",
        "started",
        "state",
        "status",
        "timer",
        "token",
        "trailers",
        "work_task",
    )

    def __init__(self, mw: RunPolicy, key: str, fingerprint: str, send: Send) -> None:
        self.mw = mw
        self.key = key
        self.fingerprint = fingerprint
        self.client: Send | None = send  # None once the client stopped waiting
        self.token = ""
        self.state = 0
        self.status = 0
        self.start: Message = {}  # the http.response.start, while it is held
        self.start_headers: list[tuple[bytes, bytes]] = []  # its headers as the app sent them
        self.chunks: list[bytes] = []
        self.size = 0
        self.trailers = False
        self.started = False  # the handler was called
        self.settled = False  # the key was completed, marked or released
        self.delivering: Callable[..., Awaitable[None]] | None = None  # an answer being sent
        self.delivered: asyncio.Future[None] | None = None  # set when it is, if awaited
        self.renewal: asyncio.Task[None] | None = None
        self.timer: Timer | None = None
        self.abandon_timer: Timer | None = None
        self.work_task: asyncio.Task[bool] | None = None

    # ------------------------------------------------------------ the work
    async def work(self, scope: Scope, body: bytes, receive: Receive) -> bool:
        """Take the key and run the handler; True: the store is down, run it unprotected."""
        mw = self.mw
        try:
            begun = await mw.store.abegin(self.key, self.fingerprint, mw.lease)
        except BackendError as exc:
            _log.warning("idempotency store unavailable: %s", exc)
            record_idempotency("store_unavailable")
            state = scope.get("state")
            if state is not None:
                state["buttress.idempotency"] = "store_unavailable"
            if mw.fail_open:
                return self.client is not None
            await self._answer(
                refuse,
                ErrorCode.BACKEND_ERROR,
                "store_unavailable",
                "the idempotency store is unavailable; retry with the same key",
                ErrorCode.BACKEND_ERROR.default_retry_after,
            )
            return False
        outcome = begun.outcome
        label = _OUTCOMES.get(outcome, "unknown")
        record_idempotency(label)  # for the meters (buttress_idempotency_requests_total)
        state = scope.get("state")
        if state is not None:  # for the server span (buttress.asgi._tracing)
            state["buttress.idempotency"] = label
        if outcome is BeginOutcome.ACQUIRED:
            self.token = begun.token
            if self.client is None:  # nobody waits, and nothing ran: the key goes free
                await self._settle(None)
                return False
            await self._handle(scope, body, receive)
        elif outcome is BeginOutcome.REPLAY and begun.response is not None:
            await self._answer(replay, begun.response)
        elif outcome is BeginOutcome.MISMATCH:
            _audit_conflict(scope, self.key, "key_reused")
            await self._answer(
                refuse,
                ErrorCode.VALIDATION_FAILED,
                "key_reused",
                "this Idempotency-Key was used for a different request (method, path, query, "
                "content type or body); use a new key for a new request",
            )
        else:  # IN_FLIGHT
            _audit_conflict(scope, self.key, "in_flight")
            await self._answer(
                refuse,
                ErrorCode.TRANSIENT_CONFLICT,
                "in_flight",
                "a request with this Idempotency-Key is still being processed; retry later "
                "with the same key to get its response",
                1.0,
            )
        return False

    async def _handle(self, scope: Scope, body: bytes, receive: Receive) -> None:
        mw = self.mw
        self.started = True
        self.timer = mw.clock.call_later(mw.lease / 3, self._renew_due)
        try:
            await mw.app(scope, BodyReplay(body, receive), self.send)
        except asyncio.CancelledError:
            # only `abandon_after` cancels a started handler: whatever it did may stand
            await self._settle(None if self.state == _RELEASE else self._unknown())
            raise
        except BaseException:
            await self._conclude()
            raise
        await self._conclude()

    async def detach(self, work: asyncio.Task[bool]) -> None:
        """The client stopped waiting: let the work go on alone (see the class doc)."""
        self.client = None
        self.work_task = work
        mw = self.mw
        mw.background.track(work)
        if self.started and not self.settled:
            self.abandon_timer = mw.clock.call_later(mw.abandon_after, self._abandon)
        if self.delivering is not None:
            # a whole answer is on its way: finish it, then let the cancellation through
            delivered = self.delivered = asyncio.get_running_loop().create_future()
            while not delivered.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(delivered)

    def _abandon(self) -> None:
        work = self.work_task
        if not self.settled and work is not None and not work.done():
            _log.warning(
                "an idempotent handler ran %g s after its client stopped waiting: cancelled, "
                "its key marked abandoned",
                self.mw.abandon_after,
            )
            work.cancel()

    async def _answer(self, answer: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Send a whole answer to the client, if it still waits; never cut in half."""
        client = self.client
        if client is None:
            return
        self.delivering = answer
        try:
            await answer(client, *args)
        finally:
            self.delivering = None
            if self.delivered is not None:  # the client stopped waiting meanwhile
                self.delivered.set_result(None)

    # ------------------------------------------------------------ lease renewal
    def _renew_due(self) -> None:
        if not self.settled:
            self.renewal = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        mw = self.mw
        try:
            held = await mw.store.arenew(self.key, self.token, mw.lease)
        except BackendError as exc:  # try again next time: the lease is still ours a while
            _log.warning("idempotency lease renewal failed: %s", exc)
            held = True
        if not held:
            _log.warning("idempotency lease lost while the handler ran")
        elif not self.settled:
            self.timer = mw.clock.call_later(mw.lease / 3, self._renew_due)

    # ------------------------------------------------------------ the response
    async def _pass(self, message: Message) -> None:
        client = self.client
        if client is not None:
            await client(message)

    async def send(self, message: Message) -> None:
        """The handler's ``send``."""
        kind = message["type"]
        state = self.state
        if kind == "http.response.body":
            if state == _HOLD:
                body = message.get("body", b"")
                start = self.start
                if not message.get("more_body", False) and len(body) <= self.mw.max_response_body:
                    self.state = _STORE
                    self.chunks.append(body)
                    await self._finish()
                    return
                self.state = state = _UNSTORED
                await self._pass({**start, "headers": [*self.start_headers, *_NOT_STORED]})
            elif state == _STORE:
                self._buffer(message.get("body", b""))
                more = message.get("more_body", False)
                if self.state == _STORE:
                    if not more:
                        await self._finish()
                    return
                # Content-Length understated the body: too large after all, sent as it is
                await self._pass({**self.start, "headers": [*self.start_headers, *_NOT_STORED]})
                body = b"".join(self.chunks)
                self.chunks = []
                await self._pass({"type": "http.response.body", "body": body, "more_body": more})
                if not more and not self.trailers:
                    await self._finish()
                return
            if not message.get("more_body", False) and not self.trailers:
                await self._pass(message)
                await self._finish()
                return
        elif kind == "http.response.start":
            self.status = status = message["status"]
            self.trailers = bool(message.get("trailers", False))
            headers = message.get("headers", ())
            if self.mw.releases(status):
                self.state = _RELEASE
            else:
                length = _content_length(headers)
                if length is None and not self.trailers:
                    self.state = _HOLD
                    self.start = message
                    self.start_headers = list(headers)
                    return
                if self.trailers or length is None or length > self.mw.max_response_body:
                    self.state = _UNSTORED
                    message = {**message, "headers": [*headers, *_NOT_STORED]}
                else:
                    self.state = _STORE
                    self.start = message
                    # a copy now: the outer layers add their own headers to this same
                    # message on its way out (request id, rate limits, security headers),
                    # and a replay must not repeat the first request's
                    self.start_headers = list(headers)
                    return
        elif kind == "http.response.trailers":
            if not message.get("more_trailers", False):
                await self._pass(message)
                await self._finish()
                return
        elif kind == "http.response.pathsend":  # a file sent by the server: not stored
            if state in (_STORE, _HOLD):  # its start was held: it goes out first
                await self._pass({**self.start, "headers": [*self.start_headers, *_NOT_STORED]})
            if state != _RELEASE:
                self.state = _UNSTORED
            await self._pass(message)
            await self._finish()
            return
        await self._pass(message)

    def _buffer(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.mw.max_response_body:  # Content-Length understated the body
            self.state = _UNSTORED

    async def _finish(self) -> None:
        """The response is complete: record it (then send it, if it was held), or release."""
        state = self.state
        if state == _RELEASE:
            await self._settle(None)
        elif state == _STORE:
            body = b"".join(self.chunks)
            self.chunks = []
            await self._settle(
                StoredResponse(self.status, _kept_headers(self.start_headers, len(body)), body)
            )
            await self._answer(_send_whole, self.start, body)
        else:
            await self._settle(StoredResponse(self.status, _NOT_STORED, b""))

    async def _conclude(self) -> None:
        """The handler returned or raised: record what it answered, or free the key."""
        if self.settled:
            return
        if self.state in (_STORE, _HOLD, _UNSTORED):
            # it began to answer, then failed: whatever it did may stand, so the key is
            # never run again (its outcome is unknown)
            await self._settle(self._unknown())
        else:  # no answer, or one that releases: nothing to replay, the retry runs again
            await self._settle(None)

    def _unknown(self) -> StoredResponse:
        return StoredResponse(self.status, _UNKNOWN, b"")

    async def _settle(self, response: StoredResponse | None) -> None:
        if self.settled:
            return
        self.settled = True
        for timer in (self.timer, self.abandon_timer):
            if timer is not None:
                timer.cancel()
        renewal = self.renewal
        if renewal is not None and not renewal.done():
            renewal.cancel()
        if not await self._record(response):
            self.mw.background.spawn(self._record_later(response))

    async def _record(self, response: StoredResponse | None) -> bool:
        """One attempt to complete or release the key; False when the store failed."""
        mw = self.mw
        try:
            if response is None:
                await mw.store.arelease(self.key, self.token)
            elif not await mw.store.acomplete(self.key, self.token, response, mw.ttl):
                _log.warning("idempotency lease lost before the response could be stored")
        except BackendError as exc:
            _log.warning("idempotency store failed to record a response: %s", exc)
            return False
        return True

    async def _record_later(self, response: StoredResponse | None) -> None:
        """Retry the record while the lease lasts; past it, a retry may run the handler again.

        Meanwhile a duplicate gets 409 (the lease holds) or 503 (the store is down).
        """
        clock = self.mw.clock
        give_up = clock.now() + self.mw.lease
        delay = _RETRY_FIRST
        while clock.now() + delay < give_up:
            await clock.asleep(delay)
            if await self._record(response):
                return
            delay = min(delay * 2, _RETRY_MAX)
        _log.error(
            "idempotency: the store stayed down for the whole lease; the response to this "
            "key was not recorded, and a retry may run the handler again"
        )


async def _send_whole(send: Send, start: Message, body: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": body})


def _audit_conflict(scope: Scope, key: str, reason: str) -> None:
    """An ``idempotency.conflict`` business audit event (the scoped key, hashed)."""
    from buttress.auditlog import audit_event  # noqa: PLC0415 - only on a conflict

    audit_event(
        "idempotency.conflict",
        subject=key,
        reason=reason,
        method=scope["method"],
        path=scope["path"],
    )
