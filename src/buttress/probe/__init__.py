"""``buttress probe URL``: black-box checks of a running service, in the audit's report model.

Each check (``PRB###``) is a pass, warn, fail or n/a with its evidence (the requests sent,
the status and headers seen); the `buttress.report` writers and gates do the rest. The
checks always run; the modes add theirs (`GROUPS`): a load with k6-style `Threshold`
gates (`LoadPlan`), SIGTERM under load of a service the probe starts, a dependency
fault, the deploy gate (`WatchOptions`) and parity with another environment.

Example::

    from buttress.probe import LoadPlan, ProbeOptions, Threshold, probe
    from buttress.report import to_json

    plan = LoadPlan(path="/orders", rate=50, duration=5,
                    thresholds=(Threshold.parse("p95<500ms"),))
    print(to_json(probe(ProbeOptions(url="http://127.0.0.1:8000", load=plan))))
"""

from buttress.probe._load import LoadPlan
from buttress.probe._rules import GROUPS, RULES
from buttress.probe._run import MAX_BURST, ProbeOptions, is_loopback, probe, run
from buttress.probe._threshold import Sample, Stats, Threshold
from buttress.probe._watch import WatchOptions

__all__ = [
    "GROUPS",
    "MAX_BURST",
    "RULES",
    "LoadPlan",
    "ProbeOptions",
    "Sample",
    "Stats",
    "Threshold",
    "WatchOptions",
    "is_loopback",
    "probe",
    "run",
]
