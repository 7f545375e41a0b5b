"""RFC 9457 problem details: the one shape of every error buttress answers.

Example::

    from buttress.asgi.problems import send_problem
    from buttress.errors import ErrorCode

    await send_problem(send, ErrorCode.RATE_LIMITED, retry_after=2.0)
"""

from buttress.asgi._errors import install_exception_handlers
from buttress.asgi._problem import problem_body, send_problem

__all__ = ["install_exception_handlers", "problem_body", "send_problem"]
