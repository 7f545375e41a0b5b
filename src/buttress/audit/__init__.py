"""``buttress audit``: the production-readiness checklist as a whole-program analyzer.

`audit` parses every Python file of a tree with `ast` (it never imports or executes the
audited code), indexes modules, imports and assignments across the program, finds the
web apps with their routes and middleware, and runs the rules of `RULES` (missing
timeouts, swallowed exceptions, CORS wildcards, hardcoded secrets... and what is absent:
no health endpoint, no /metrics, no idempotency on writes). The result is a
`buttress.report.Report`: scorecard, writers and CI gates are shared with the other
commands. docs/audit.md lists every rule with a bad and a good example.

Example::

    from pathlib import Path
    from buttress.audit import audit
    from buttress.report import to_markdown

    print(to_markdown(audit(Path("src"))))
"""

from buttress.audit._config import AuditConfig, load_config
from buttress.audit._rules import CATEGORIES, RULES
from buttress.audit._run import audit
from buttress.audit._suppress import read_baseline, write_baseline

__all__ = [
    "CATEGORIES",
    "RULES",
    "AuditConfig",
    "audit",
    "load_config",
    "read_baseline",
    "write_baseline",
]
