"""``buttress healthcheck URL``: a container ``HEALTHCHECK`` without curl.

Standard library only (``urllib``), so it runs in a slim image that has Python and
buttress but no curl or wget. It may import `buttress.errors` and `buttress._urls` (both
standard library only) and nothing heavier.
"""

from buttress.healthcheck._cli import EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE, check

__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "EXIT_USAGE", "check"]
