"""``buttress probe URL``: black-box checks of a running service, in the audit's report model.

Each check (``PRB###``) is a pass, warn, fail or n/a with its evidence (the requests sent,
the status and headers seen); the `buttress.report` writers and gates do the rest.

Example::

    from buttress.probe import ProbeOptions, probe
    from buttress.report import to_json

    print(to_json(probe(ProbeOptions(url="http://127.0.0.1:8000", burst=50))))
"""

from buttress.probe._rules import RULES
from buttress.probe._run import MAX_BURST, ProbeOptions, is_loopback, probe, run

__all__ = ["MAX_BURST", "RULES", "ProbeOptions", "is_loopback", "probe", "run"]
