"""Noisy neighbours, shown: an admin view (JSON) and Prometheus metrics of the heaviest keys.

`TopKeysView` answers ``GET /health/ratelimit`` with, per rate-limit policy, the heaviest
keys admitted and refused over the sliding window of a `NoisyNeighbours` (hashed ids only:
the HMAC of `RateLimitMiddleware.key_hash`, which ``BUTTRESS_KEY_SECRET`` keeps stable
across processes). Like the ``/health`` details, it needs ``Authorization: Bearer
<token>`` or, with ``expose="loopback"``, a loopback client that is not a proxy.

`TopKeysCollector` exports the same numbers as one gauge family,
``buttress_ratelimit_top_keys{policy, outcome, key}``: at most ``top`` hashed keys per
policy and outcome, so the label set stays bounded whatever the traffic.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from buttress.asgi._context import is_local_request
from buttress.asgi._heavy_hitters import NoisyNeighbours
from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = ["TopKeysCollector", "TopKeysView"]

_JSON = b"application/json"


class TopKeysView(Stage):
    """``GET <path>``: the heaviest keys per policy, admitted and refused, as JSON.

    Args:
        app: the ASGI application.
        top_keys: the `NoisyNeighbours` the rate limits record into.
        key_hash: how a key is shown (`RateLimitMiddleware.key_hash`).
        path: where the view answers (default ``/health/ratelimit``).
        token: a secret; ``Authorization: Bearer <token>`` unlocks the view (the
            ``/health`` details token).
        expose: ``"loopback"`` (token or a loopback client, the default) or ``"token"``.

    Example::

        app = TopKeysView(app, noisy, middleware.key_hash, token=os.environ["HEALTH_TOKEN"])
    """

    def __init__(
        self,
        app: ASGIApp,
        top_keys: NoisyNeighbours,
        key_hash: Callable[[str], str],
        *,
        path: str = "/health/ratelimit",
        token: str | None = None,
        expose: Literal["loopback", "token"] = "loopback",
    ) -> None:
        owner = "TopKeysView"
        if not isinstance(top_keys, NoisyNeighbours):
            raise ConfigurationError(f"{owner}(top_keys={top_keys!r}): a NoisyNeighbours")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"{owner}(path={path!r}): must start with '/'")
        if expose not in ("loopback", "token"):
            raise ConfigurationError(f"{owner}(expose={expose!r}): 'loopback' or 'token'")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigurationError(f"{owner}(token=...): a non-empty string")
        self.app = app
        self.top_keys = top_keys
        self.key_hash = key_hash
        self.path = path
        self.expose = expose
        self._digest = None if token is None else hashlib.sha256(token.encode()).digest()

    def stage_hooks(self) -> Hooks:
        """Arrive: the view's path answered."""
        return Hooks(arrive=self.arrive)

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Answer the view's path; pass anything else on."""
        if ex.scope["path"] != self.path:
            return None
        return self._answer(ex.scope, ex.send)

    def allowed(self, scope: Scope) -> bool:
        """The bearer token matches, or (``expose="loopback"``) a local caller asks."""
        digest = self._digest
        if digest is not None:
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, credentials = bytes(value).strip().partition(b" ")
                    if scheme.lower() == b"bearer" and hmac.compare_digest(
                        hashlib.sha256(credentials.strip()).digest(), digest
                    ):
                        return True
        return self.expose == "loopback" and is_local_request(scope)

    async def _answer(self, scope: Scope, send: Send) -> bool:
        head = scope["method"] == "HEAD"
        if scope["method"] not in {"GET", "HEAD"}:
            await send_problem(
                send, ErrorCode.METHOD_NOT_ALLOWED, detail="this view answers GET", head=head
            )
            return True
        if not self.allowed(scope):
            await send_problem(
                send,
                ErrorCode.FORBIDDEN,
                detail="the rate-limit view needs the health token (Authorization: Bearer)",
                head=head,
            )
            return True
        body = {
            "window_seconds": self.top_keys.window,
            "top": self.top_keys.top,
            "policies": self.top_keys.report(self.key_hash),
        }
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(payload)).encode("ascii")),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else payload})
        return True


class TopKeysCollector:
    """A Prometheus collector: ``<namespace>_ratelimit_top_keys{policy, outcome, key}``.

    Example::

        registry.register(TopKeysCollector(noisy, middleware.key_hash))
    """

    def __init__(
        self,
        top_keys: NoisyNeighbours,
        key_hash: Callable[[str], str],
        namespace: str = "buttress",
    ) -> None:
        self.top_keys = top_keys
        self.key_hash = key_hash
        self.name = f"{namespace}_ratelimit_top_keys" if namespace else "ratelimit_top_keys"

    def describe(self) -> list[Any]:
        """No description up front: the family is built at each scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """One gauge family: the requests of each heavy key over the window."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - optional

        family = GaugeMetricFamily(
            self.name,
            "Requests of the heaviest keys per rate-limit policy over the sliding window "
            "(Space-Saving upper bound; key is an HMAC id)",
            labels=["policy", "outcome", "key"],
        )
        for policy, outcomes in self.top_keys.report(self.key_hash).items():
            for outcome, entries in outcomes.items():
                for entry in entries:
                    family.add_metric(
                        [policy, outcome, str(entry["id"])], float(str(entry["count"]))
                    )
        yield family


def mount_top_keys(
    app: ASGIApp,
    top_keys: NoisyNeighbours,
    key_hash: Callable[[str], str],
    metrics: Any,
    token: str | None,
) -> TopKeysView:
    """The view for `harden` (the health token), its collector on ``metrics``' registry.

    Example::

        stages.append(mount_top_keys(app, noisy, limits.key_hash, parts.metrics, token))
    """
    if metrics is not None and not getattr(metrics, "multiprocess", False):
        collector = TopKeysCollector(top_keys, key_hash)
        # another app on this registry may export the family already
        with contextlib.suppress(ValueError):
            metrics.registry.register(collector)
    return TopKeysView(app, top_keys, key_hash, token=token)
