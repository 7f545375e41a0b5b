"""One report model for every buttress command that judges a service.

``buttress audit`` (static), and later ``buttress probe`` (black box) and ``backup
verify``, fill the same `Report`: `Rule` definitions, one `Check` per rule (pass, fail,
not applicable) and the `Finding` objects that show why a check failed. Everything after
that is shared: the `Scorecard` (`score`), the writers (`to_json`, `to_markdown`,
`to_sarif`, the rich terminal `render`), and the CI gates (`evaluate` with `Gates`,
exit codes `EXIT_OK`, `EXIT_GATE`, `EXIT_USAGE`).

Example::

    from buttress.report import Gates, Priority, evaluate, to_json

    print(to_json(report))
    sys.exit(evaluate(report, Gates(fail_on=Priority.P0)).exit_code)
"""

from buttress.report._command import add_report_arguments, finish, gates_from, write_report
from buttress.report._gate import (
    EXIT_GATE,
    EXIT_OK,
    EXIT_USAGE,
    GateResult,
    Gates,
    evaluate,
    gate_scorecard,
)
from buttress.report._json import SCHEMA_VERSION, to_dict, to_json
from buttress.report._markdown import to_markdown
from buttress.report._model import (
    Check,
    CheckStatus,
    Finding,
    Level,
    Location,
    Priority,
    Report,
    Rule,
    Skipped,
)
from buttress.report._sarif import to_sarif, to_sarif_dict
from buttress.report._score import CategoryScore, Scorecard, score
from buttress.report._terminal import render

__all__ = [
    "EXIT_GATE",
    "EXIT_OK",
    "EXIT_USAGE",
    "SCHEMA_VERSION",
    "CategoryScore",
    "Check",
    "CheckStatus",
    "Finding",
    "GateResult",
    "Gates",
    "Level",
    "Location",
    "Priority",
    "Report",
    "Rule",
    "Scorecard",
    "Skipped",
    "add_report_arguments",
    "evaluate",
    "finish",
    "gate_scorecard",
    "gates_from",
    "render",
    "schema_path",
    "score",
    "to_dict",
    "to_json",
    "to_markdown",
    "to_sarif",
    "to_sarif_dict",
    "write_report",
]


def schema_path() -> str:
    """The path of the JSON report's schema (``schema/report.schema.json``, shipped)."""
    from pathlib import Path  # noqa: PLC0415

    return str(Path(__file__).with_name("schema") / "report.schema.json")
