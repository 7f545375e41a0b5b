r"""The ``buttress healthcheck URL`` command: one GET, the answer as an exit code.

Exit codes: 0 when the URL answers 2xx within the timeout, 1 when it answers anything
else, refuses the connection or times out, 2 for a usage error (not an http(s) URL, a
host that is not loopback without ``--allow-remote``, a timeout out of range). Nothing is
printed when healthy; otherwise one line on stderr says why (Docker keeps it in
``docker inspect``'s health log).

No proxy is used (a container's ``HTTP_PROXY`` must not send a probe of localhost
elsewhere) and redirects are not followed (a 3xx is not healthy: the probe names the
endpoint itself). Only loopback hosts by default: the command checks the service in its
own container. ``--timeout`` bounds the whole check (connect, headers, body), so a server
that trickles its answer a byte at a time is cut too. Credentials in the URL
(``http://user:password@...`` is sent as Basic auth) and query values are never printed.

Example (Dockerfile)::

    HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
      CMD ["buttress", "healthcheck", "http://127.0.0.1:8000/health/live"]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import ipaddress
import socket
import ssl
import sys
import threading
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from buttress._urls import redacted as redact

__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "EXIT_USAGE", "add_command", "check", "redact"]

EXIT_HEALTHY: Final = 0
EXIT_UNHEALTHY: Final = 1
EXIT_USAGE: Final = 2
_MAX_TIMEOUT: Final = 120.0

_DESCRIPTION = """\
GET the URL once; exit 0 when it answers 2xx in time, 1 otherwise, 2 for a usage error.
For Dockerfile HEALTHCHECK lines: no curl needed, nothing printed when healthy, no proxy,
no redirects, loopback hosts only unless --allow-remote.

  HEALTHCHECK --interval=10s --timeout=3s CMD ["buttress", "healthcheck", \\
      "http://127.0.0.1:8000/health/live"]
"""


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _usage_problem(url: str, timeout: float, allow_remote: bool) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            f"{redact(url)!r} is not an http:// or https:// URL (http://127.0.0.1:8000/health/live)"
        )
    try:
        _ = parts.port
    except ValueError:
        return f"{redact(url)!r} has an invalid port"
    if not _is_loopback(parts.hostname) and not allow_remote:
        return (
            f"{parts.hostname} is not a loopback address; a container checks itself "
            "(pass --allow-remote to check another host)"
        )
    if not 0 < timeout <= _MAX_TIMEOUT:
        return f"--timeout must be in (0, {_MAX_TIMEOUT:g}] seconds, not {timeout:g}"
    return None


def _get(parts: SplitResult, timeout: float, out: dict[str, Any]) -> None:
    """One GET on ``out["conn"]``; the status (or the failure) into ``out``."""
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    out["conn"] = conn
    headers = {"User-Agent": "buttress-healthcheck", "Connection": "close"}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        out["status"] = int(response.status)
        response.read(65536)  # drain a little: a clean end for the server's log
    except Exception as exc:  # any failure is an unhealthy answer, never a traceback
        out["error"] = exc
    finally:
        conn.close()


def check(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` once: ``(exit code, reason)``; the reason is empty when healthy.

    ``timeout`` bounds the whole exchange, whatever the server does (hangs, trickles,
    answers garbage); the reason never contains the URL's credentials or query.

    Example::

        code, why = check("http://127.0.0.1:8000/health/live", timeout=2.0)
    """
    parts = urlsplit(url)
    out: dict[str, Any] = {}
    worker = threading.Thread(target=_get, args=(parts, timeout, out), daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():  # connected, but the answer is not complete in time: cut it
        conn = out.get("conn")
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        worker.join(1.0)
        if "status" not in out:  # the status line and headers did not arrive in time
            return EXIT_UNHEALTHY, f"no answer within {timeout:g} s"
    error = out.get("error")
    if "status" not in out:  # no answer: say why
        if isinstance(error, TimeoutError):
            return EXIT_UNHEALTHY, f"no answer within {timeout:g} s"
        if isinstance(error, (ConnectionRefusedError, socket.gaierror)):
            return EXIT_UNHEALTHY, f"cannot connect: {error.strerror or type(error).__name__}"
        if isinstance(error, http.client.HTTPException):
            return EXIT_UNHEALTHY, f"not a valid HTTP answer: {type(error).__name__}"
        return EXIT_UNHEALTHY, f"connection failed: {type(error).__name__}"  # reset, TLS
    status = int(out.get("status", 0))
    if 200 <= status < 300:
        return EXIT_HEALTHY, ""
    return EXIT_UNHEALTHY, f"HTTP {status}"


def run_healthcheck(args: argparse.Namespace) -> int:
    """The command's handler: validate, GET once, print a reason only when unhealthy."""
    problem = _usage_problem(args.url, args.timeout, args.allow_remote)
    if problem is not None:
        print(f"buttress healthcheck: {problem}", file=sys.stderr)
        return EXIT_USAGE
    code, reason = check(args.url, timeout=args.timeout)
    if code != EXIT_HEALTHY and not args.quiet:
        print(f"buttress healthcheck: {redact(args.url)}: {reason}", file=sys.stderr)
    return code


def add_command(sub: Any) -> None:
    """Add ``buttress healthcheck`` to the subparsers ``sub``."""
    parser = sub.add_parser(
        "healthcheck",
        help="GET a health URL; exit 0 if 2xx, 1 if not (Docker HEALTHCHECK, no curl)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8000/health/live")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up after this long (default 5; keep it under HEALTHCHECK --timeout)",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a host that is not loopback"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing, even when unhealthy"
    )
    parser.set_defaults(handler=run_healthcheck)
