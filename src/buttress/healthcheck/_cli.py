r"""The ``buttress healthcheck URL`` command: one GET, the answer as an exit code.

Exit codes: 0 when the URL answers 2xx within the timeout, 1 when it answers anything
else, refuses the connection or times out, 2 for a usage error (not an http(s) URL, a
host that is not loopback without ``--allow-remote``, a timeout out of range). Nothing is
printed when healthy; otherwise one line on stderr says why (Docker keeps it in
``docker inspect``'s health log).

No proxy is used (a container's ``HTTP_PROXY`` must not send a probe of localhost
elsewhere) and redirects are not followed (a 3xx is not healthy: the probe names the
endpoint itself). Only loopback hosts by default: the command checks the service in its
own container.

Example (Dockerfile)::

    HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
      CMD ["buttress", "healthcheck", "http://127.0.0.1:8000/health/live"]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "EXIT_USAGE", "add_command", "check"]

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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is the answer, not a pointer to follow


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
        return f"{url!r} is not an http:// or https:// URL (http://127.0.0.1:8000/health/live)"
    try:
        _ = parts.port
    except ValueError:
        return f"{url!r} has an invalid port"
    if not _is_loopback(parts.hostname) and not allow_remote:
        return (
            f"{parts.hostname} is not a loopback address; a container checks itself "
            "(pass --allow-remote to check another host)"
        )
    if not 0 < timeout <= _MAX_TIMEOUT:
        return f"--timeout must be in (0, {_MAX_TIMEOUT:g}] seconds, not {timeout:g}"
    return None


def check(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` once: ``(exit code, reason)``; the reason is empty when healthy.

    Example::

        code, why = check("http://127.0.0.1:8000/health/live", timeout=2.0)
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked: http(s) only
        url, method="GET", headers={"User-Agent": "buttress-healthcheck"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = int(response.status)
            response.read(65536)  # drain a little: a clean end for the server's log
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        exc.close()
    except TimeoutError:
        return EXIT_UNHEALTHY, f"no answer within {timeout:g} s"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return EXIT_UNHEALTHY, f"no answer within {timeout:g} s"
        return EXIT_UNHEALTHY, f"cannot connect: {reason}"
    except OSError as exc:  # reset, broken pipe, a response cut short
        return EXIT_UNHEALTHY, f"connection failed: {type(exc).__name__}"
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
        print(f"buttress healthcheck: {args.url}: {reason}", file=sys.stderr)
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
