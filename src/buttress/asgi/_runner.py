"""Stages and the runner: how every inbound feature of `buttress.asgi` is built and composed.

A *stage* is one feature (request context, access log, metrics, CORS, load shedding...).
It declares, in `Hooks`, what it does at the moments of a request:

``arrive(ex)``
    The request arrived. Return None to pass it on, or an awaitable that answers it (then
    resolves True: the request goes no deeper) or decides something that needs I/O first
    (then resolves False: pass it on). While that awaitable runs, ``ex.send`` is the
    stage's own ``send``: its answer passes the ``start`` hooks of the stages outside it.
``start(ex, headers)``
    A response is starting through this stage: edit ``headers`` (a fresh list) in place.
``end(ex)``
    The response body ended (its last ``http.response.body``, or ``pathsend``).
``fail(ex, exc)``
    Something inside raised ``exc`` (any `BaseException`, cancellation included). Return
    None to let it go on outwards, or an awaitable resolving True when the stage handled
    it (answered, or chose to swallow it) and False to let it go on.
``finish(ex)``
    The request is over (for stages that passed it on): logs, metrics, slots, context.
``around(ex, app)``
    At most one stage, the innermost, calls the handler itself (the request deadline runs
    it under the public `buttress.resilience.Timeout`).
``other(scope, receive, send, app)``
    Lifespan and WebSocket scopes (the runner passes them through otherwise).

A stage also names the request headers it reads (``reads``: the runner scans the headers
once per request into ``ex.found``, name -> values in order) and the per-request
attributes it keeps on the `Exchange` (``fields``).

The `Runner` composes stages once, when the app is built: per hook, a tuple of only the
bound methods that are configured (and, for ``start``, ``end``, ``fail`` and ``finish``,
one such tuple per depth, so that an answer given by stage *k* passes the hooks of the
stages outside *k* only, as in a stack of middlewares). A request then costs one
coroutine frame, one `Exchange` and one ``send`` wrapper, whatever the number of stages.
It behaves exactly like the same stages stacked as separate middlewares, outermost first:
each stage is also an ASGI middleware (`Stage.__call__` is a runner of that one stage),
which is how every ``...Middleware`` class of `buttress.asgi` is used on its own.

The request path is generated as source from those tuples when the runner is built (see
`_compile`): the hooks of a composition are called one after the other, with no loop over
a tuple, in a ``__call__`` and a ``send`` of classes made for that composition. The tuples
stay the one description of the composition; the rare paths (a stage answering, something
raising, a message sent from inside a stage) run the general code below over them.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, NamedTuple

from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import ConfigurationError

__all__ = ["Exchange", "Hooks", "Runner", "Stage"]

Headers = list[tuple[bytes, bytes]]
Arrive = Callable[["Exchange"], "Awaitable[bool] | None"]
Start = Callable[["Exchange", Headers], None]
Moment = Callable[["Exchange"], None]
Fail = Callable[["Exchange", BaseException], "Awaitable[bool] | None"]
Around = Callable[["Exchange", ASGIApp], Awaitable[None]]
Other = Callable[[Scope, Receive, Send, ASGIApp], Awaitable[None]]

_NOTHING: frozenset[bytes] = frozenset()


class Hooks(NamedTuple):
    """What a stage does, hook by hook (None: nothing at that moment). See the module doc."""

    arrive: Arrive | None = None
    start: Start | None = None
    end: Moment | None = None
    fail: Fail | None = None
    finish: Moment | None = None
    around: Around | None = None
    other: Other | None = None
    reads: frozenset[bytes] = _NOTHING
    fields: tuple[str, ...] = ()


class Exchange:
    """One request on its way through a runner: the state its stages share.

    Attributes:
        scope: the ASGI scope.
        receive: the ``receive`` the handler gets (a stage may replace it).
        found: the request headers the stages read, lower-case name -> values in order.
        status: the response status once a response started (0 before).
        size: response body bytes sent so far.
        ended: the response body ended.
        depth: whose ``send`` is sending: the stages outside this index edit the headers.
        mute: messages sent from deeper than this index are dropped (see `silence`).
        blocked: raised as the handler's exception when it returns after `silence`.

    The runner builds a subclass per composition, with a slot for each stage ``field``.
    """

    __slots__ = (
        "blocked",
        "depth",
        "ended",
        "found",
        "mute",
        "out",
        "receive",
        "scope",
        "size",
        "status",
    )

    # per composition, set on the subclass: the hooks by depth
    start_at: ClassVar[tuple[tuple[Start, ...], ...]] = ((),)
    end_at: ClassVar[tuple[tuple[Moment, ...], ...]] = ((),)

    def __init__(self, scope: Scope, receive: Receive, send: Send, depth: int) -> None:
        self.scope = scope
        self.receive = receive
        self.out = send
        self.status = 0
        self.size = 0
        self.ended = False
        self.depth = depth
        self.mute = depth
        self.blocked: BaseException | None = None
        self.found: dict[bytes, list[bytes]] = {}

    def silence(self, level: int, error: BaseException) -> None:
        """Drop what is sent from inside stage ``level`` from now on; raise ``error`` there.

        For a stage that refused the request while the handler runs (the body limit, when
        a streamed body passes it): the handler's own answer is dropped, and when the
        handler returns, ``error`` reaches the stage's ``fail`` hook as if it had raised.
        """
        if self.blocked is None:
            self.mute = level
            self.blocked = error

    async def send(self, message: Message) -> None:
        """The ``send`` the handler (and every stage's answer) gets."""
        depth = self.depth
        if depth > self.mute:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            hooks = self.start_at[depth]
            if hooks:
                headers = list(message.get("headers", ()))
                for hook in hooks:
                    hook(self, headers)
                message["headers"] = headers
        elif kind == "http.response.body":
            body = message.get("body")
            if body:
                self.size += len(body)
            if not self.ended and not message.get("more_body", False):
                self.ended = True
                for end in self.end_at[depth]:
                    end(self)
        elif kind == "http.response.pathsend" and not self.ended:
            self.ended = True
            for end in self.end_at[depth]:
                end(self)
        await self.out(message)


def _other_link(hook: Other, inner: ASGIApp) -> ASGIApp:
    async def other(scope: Scope, receive: Receive, send: Send) -> None:
        await hook(scope, receive, send, inner)

    return other


class Runner:
    """The stages of a composition, outermost first, around an ASGI ``app``.

    Args:
        stages: the `Stage` objects, outermost first.
        app: the application (the handler) they wrap.

    Example::

        app = Runner([RequestContextMiddleware(app), AccessLogMiddleware(app)], app)
    """

    def __init__(self, stages: Sequence[Stage], app: ASGIApp) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.app = app
        hooks = [stage.stage_hooks() for stage in self.stages]
        n = len(hooks)
        self._n = n
        self._arrive = tuple((i, h.arrive) for i, h in enumerate(hooks) if h.arrive is not None)
        owners = [i for i, h in enumerate(hooks) if h.around is not None]
        if len(owners) > 1 or (owners and owners[0] != n - 1):
            names = ", ".join(type(self.stages[i]).__name__ for i in owners)
            raise ConfigurationError(
                f"Runner(stages=...): the 'around' position belongs to one stage, the "
                f"innermost; found it on {names}"
            )
        self._around = hooks[owners[0]].around if owners else None

        def below(k: int, name: str) -> tuple[Any, ...]:
            return tuple(
                getattr(hooks[i], name) for i in reversed(range(k)) if getattr(hooks[i], name)
            )

        self._fail_below = tuple(
            tuple((i, h.fail) for i, h in reversed(list(enumerate(hooks[:k]))) if h.fail)
            for k in range(n + 1)
        )
        self._finish_below = tuple(below(k, "finish") for k in range(n + 1))
        fields: list[str] = []
        for stage, h in zip(self.stages, hooks, strict=True):
            for name in h.fields:
                if name in fields or name in Exchange.__slots__:
                    raise ConfigurationError(
                        f"Runner(stages=...): {type(stage).__name__} keeps {name!r} on the "
                        "request, and so does another stage"
                    )
                fields.append(name)
        start_at = tuple(below(k, "start") for k in range(n + 1))
        end_at = tuple(below(k, "end") for k in range(n + 1))
        self._exchange: type[Exchange] = type(
            "Exchange",
            (Exchange,),
            {
                "__slots__": tuple(fields),
                "__module__": __name__,
                "start_at": start_at,
                "end_at": end_at,
                "send": _compile_send(n, start_at[n], end_at[n]),
            },
        )
        reads: set[bytes] = set()
        for h in hooks:
            reads |= h.reads
        self._reads = frozenset(reads)
        other = app
        for h in reversed(hooks):
            if h.other is not None:
                other = _other_link(h.other, other)
        self._other = other
        _compile(self)

    def __repr__(self) -> str:
        names = ", ".join(type(stage).__name__ for stage in self.stages)
        return f"{type(self).__name__}([{names}])"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request: replaced, per composition, by the code `_compile` generates."""
        raise NotImplementedError  # pragma: no cover - every Runner is compiled in __init__

    def _finish(self, ex: Exchange, passed: int) -> None:
        """Run the ``finish`` hooks outside ``passed``; raise the first error after all ran."""
        error: Exception | None = None
        for finish in self._finish_below[passed]:
            try:
                finish(ex)
            except Exception as finish_error:  # the outer stages still finish
                error = error or finish_error
        if error is not None:
            raise error

    async def _failed(self, ex: Exchange, exc: BaseException, passed: int) -> None:
        """Offer ``exc`` to the ``fail`` hooks outside ``passed``; re-raise if none took it."""
        for index, fail in self._fail_below[passed]:
            ex.depth = index
            try:
                answer = fail(ex, exc)
                if answer is not None and await answer:
                    return
            except BaseException as new:  # a failing answer goes on outwards
                exc = new
        raise exc


# ----------------------------------------------------------------- the generated code
# The source depends only on the composition's shape (how many stages, which of them have
# which hooks); the hooks themselves are names in the namespace the code runs in. One code
# object per shape, its source kept in `linecache` so that tracebacks show it.
_CODE: dict[str, Any] = {}
_SHAPES = itertools.count()


def _function(source: str, names: dict[str, Any], name: str) -> Any:
    """Compile ``source`` (the definition of ``name``) once per text, run it in ``names``."""
    code = _CODE.get(source)
    if code is None:
        code = _CODE[source] = compile(source, f"<buttress.asgi runner {next(_SHAPES)}>", "exec")
    filename = code.co_filename  # (again each time: something may have cleared the cache)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(code, names)  # noqa: S102 - our own generated source, see `_compile`
    return names.pop(name)


def _compile_send(n: int, starts: tuple[Start, ...], ends: tuple[Moment, ...]) -> Any:
    """The composition's ``Exchange.send``: the hooks of a handler's message, unrolled.

    A message from the handler (depth ``n``, nothing muted) passes every ``start`` and
    ``end`` hook, innermost first, one call after the other; any other message takes the
    general `Exchange.send`.
    """
    names: dict[str, Any] = {"general": Exchange.send}
    for k, start in enumerate(starts):
        names[f"start_{k}"] = start
    for k, end in enumerate(ends):
        names[f"end_{k}"] = end
    ends_in_body = [f"            end_{k}(self)" for k in range(len(ends))]
    ends_in_pathsend = [f"        end_{k}(self)" for k in range(len(ends))]
    lines = [
        "async def send(self, message):",
        f"    if self.depth != {n} or self.mute != {n}:",
        "        await general(self, message)",
        "        return",
        "    kind = message['type']",
        "    if kind == 'http.response.start':",
        "        self.status = message['status']",
    ]
    if starts:
        lines.append("        headers = list(message.get('headers', ()))")
        lines += [f"        start_{k}(self, headers)" for k in range(len(starts))]
        lines.append("        message['headers'] = headers")
    lines += [
        "    elif kind == 'http.response.body':",
        "        body = message.get('body')",
        "        if body:",
        "            self.size += len(body)",
        "        if not self.ended and not message.get('more_body', False):",
        "            self.ended = True",
        *ends_in_body,
        "    elif kind == 'http.response.pathsend' and not self.ended:",
        "        self.ended = True",
        *ends_in_pathsend,
        "    await self.out(message)",
    ]
    return _function("\n".join(lines) + "\n", names, "send")


def _compile(runner: Runner) -> None:
    """Make ``runner`` an instance of a class whose ``__call__`` is its composition's code.

    The generated ``__call__`` is the request path of the module doc, with the
    composition's hooks called in order: the ``arrive`` hooks outermost first (``passed``
    says how far the request got), the handler (or the ``around`` hook), and when every
    stage passed it on the ``finish`` hooks innermost first, each one run even when one
    before it raised. A stage's answer, an exception and an early finish go through the
    general `Runner._failed` and `Runner._finish`.
    """
    n = runner._n  # noqa: SLF001 - the runner's own parts
    names: dict[str, Any] = {
        "Exchange": runner._exchange,  # noqa: SLF001
        "READS": runner._reads,  # noqa: SLF001
        # made and initialised without the class call: Python calls Python directly
        "new": object.__new__,
        "init": Exchange.__init__,
    }
    lines = [
        "async def __call__(self, scope, receive, send):",
        "    if scope['type'] != 'http':",
        "        await self._other(scope, receive, send)",
        "        return",
        "    ex = new(Exchange)",
        f"    init(ex, scope, receive, send, {n})",
    ]
    if runner._reads:  # noqa: SLF001
        lines += [
            "    found = ex.found",
            "    for name, value in scope['headers']:",
            "        if name in READS:",
            "            values = found.get(name)",
            "            if values is None:",
            "                found[name] = [value]",
            "            else:",
            "                values.append(value)",
        ]
    lines += ["    passed = 0", "    try:"]
    for k, (index, hook) in enumerate(runner._arrive):  # noqa: SLF001
        names[f"arrive_{k}"] = hook
        if index:
            lines.append(f"        passed = {index}")
        lines += [
            f"        answer = arrive_{k}(ex)",
            "        if answer is not None:",
            f"            ex.depth = {index}",
            "            if await answer:",
            "                return",
            f"            ex.depth = {n}",
        ]
    lines.append(f"        passed = {n}")
    if runner._around is None:  # noqa: SLF001
        lines.append("        await self.app(scope, ex.receive, ex.send)")
    else:
        names["around"] = runner._around  # noqa: SLF001
        lines.append("        await around(ex, self.app)")
    lines += [
        "        if ex.blocked is not None:",
        "            raise ex.blocked",
        "    except BaseException as exc:",
        "        await self._failed(ex, exc, passed)",
        "    finally:",
    ]
    finishes = runner._finish_below[n]  # noqa: SLF001
    if finishes:
        lines += [f"        if passed == {n}:", "            error = None"]
        for k, hook in enumerate(finishes):
            names[f"finish_{k}"] = hook
            lines += [
                "            try:",
                f"                finish_{k}(ex)",
                "            except Exception as finish_error:",
                "                if error is None:" if k else "",
                f"                {'    ' if k else ''}error = finish_error",
            ]
        lines += [
            "            if error is not None:",
            "                raise error",
            "        else:",
            "            self._finish(ex, passed)",
        ]
    else:
        lines += [f"        if passed != {n}:", "            self._finish(ex, passed)"]
    source = "\n".join(line for line in lines if line) + "\n"
    call = _function(source, names, "__call__")
    base: type[Runner] = type(runner)
    while base.__dict__.get("_compiled"):  # built again: compose from the class it came from
        base = base.__mro__[1]
    runner.__class__ = type(
        base.__name__,
        (base,),
        {
            "__call__": call,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "_compiled": True,
        },
    )


class Stage:
    """One inbound feature: its `Hooks` for the moments of a request (see the module doc).

    A stage is also an ASGI middleware around ``app``: called, it runs as a `Runner` of
    itself alone. Subclasses set ``app`` and implement `stage_hooks`.
    """

    app: ASGIApp
    _alone: Runner | None = None

    def stage_hooks(self) -> Hooks:
        """What this stage does at each moment of a request."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runner = self._alone
        if runner is None or runner.app is not self.app:
            runner = self._alone = Runner((self,), self.app)
        await runner(scope, receive, send)
