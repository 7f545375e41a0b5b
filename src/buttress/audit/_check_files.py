"""Rules on the tree's non-Python files: containers, dependencies and CI workflows.

BTR603 (a Dockerfile without ``HEALTHCHECK``, a compose service without ``healthcheck:``),
BTR701 (requirements lines not pinned with ``==``), BTR702 (requirements files and no lock
file), BTR703 (no workflow runs the tests; ``|| true`` or ``continue-on-error: true`` on a
test step), BTR704 (no dependency vulnerability scan in CI and no Dependabot config).

The files are read as text, line by line: nothing is parsed as Python, no YAML loader
runs, nothing is executed. The line scanner understands the shapes these files take
(top-level ``services:`` keys, ``steps:`` lists of ``- name:/run:`` items, ``run: |``
blocks); anything cleverer (anchors, flow style) is read as plain lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from buttress.audit._config import AuditConfig
from buttress.audit._rules import RULES
from buttress.report import Finding, Location

__all__ = ["TextFile", "check_files", "kind_of"]

_COMPOSE = re.compile(r"^(docker-)?compose[\w.-]*\.ya?ml$")
_REQUIREMENTS = re.compile(r"^requirements[\w.-]*\.(txt|in)$")
_WORKFLOW = re.compile(r"(^|/)\.github/workflows/[^/]+\.ya?ml$")
_DEPENDABOT = re.compile(r"(^|/)\.github/dependabot\.ya?ml$")
_LOCKS = frozenset({"uv.lock", "poetry.lock", "pdm.lock", "Pipfile.lock", "pylock.toml"})
_TESTS = re.compile(
    r"\b(pytest|py\.test|tox|nox|unittest|coverage run|manage\.py test|hatch (run )?test|"
    r"make (test|check)|(npm|yarn|pnpm) (run )?test)\b"
    r"|[\w./-]*\btests?([-_.][\w-]*)?\.sh\b"  # scripts/test.sh, tests-start.sh
    r"|^-?\s*name:.*\b[Tt]est(s|ing)?\b",  # a step named "Run tests"
    re.MULTILINE,
)
#: Dockerfiles of test tooling (``Dockerfile.playwright``, ``Dockerfile.test``): no service
_TEST_IMAGE = re.compile(r"[.-](tests?|ci|e2e|playwright|cypress|selenium)$", re.IGNORECASE)
_SCANS = re.compile(
    r"pip-audit|pip_audit|\bsafety (check|scan)\b|osv-scanner|dependency-review-action|"
    r"\bsnyk\b|\btrivy\b|\bgrype\b"
)
_DEPLOY = re.compile(
    r"\.(ya?ml|sh|cron)$|(^|/)(crontab|Makefile|Justfile|Procfile)$|(^|/)cron\.d/[^/]+$"
)
_SWALLOW = re.compile(r"\|\|\s*(true|:|exit 0)\b")


@dataclass(frozen=True, slots=True)
class TextFile:
    """One non-Python file of the tree."""

    rel: str
    kind: str  # dockerfile, compose, requirements, lock, workflow, dependabot
    text: str


def kind_of(rel: str) -> str | None:
    """What kind of non-Python file ``rel`` is, or None when the audit ignores it."""
    name = rel.rpartition("/")[2]
    if _WORKFLOW.search(rel):
        return "workflow"
    if _DEPENDABOT.search(rel):
        return "dependabot"
    if name.startswith(("Dockerfile", "Containerfile")) or name.endswith(".dockerfile"):
        return "dockerfile"
    if _COMPOSE.match(name):
        return "compose"
    if _REQUIREMENTS.match(name) or (
        "/requirements/" in f"/{rel}" and name.endswith((".txt", ".in"))
    ):
        return "requirements"
    if name in _LOCKS or name.endswith(".lock"):
        return "lock"
    if _DEPLOY.search(rel):
        return "deploy"  # read only for what it says about backups (`_check_data`)
    return None


def line_finding(config: AuditConfig, rule_id: str, rel: str, line: int, message: str) -> Finding:
    """A finding of ``rule_id`` on a whole line of a file (its priority as configured)."""
    rule = RULES[rule_id]
    return Finding(
        rule_id=rule_id,
        category=rule.category,
        priority=config.severity.get(rule_id, rule.priority),
        message=message,
        location=Location(path=rel, line=line, column=1, end_line=line, end_column=1),
        fix=rule.fix,
        docs=rule.docs,
    )


def check_files(files: list[TextFile], config: AuditConfig) -> tuple[list[Finding], set[str]]:
    """The findings on ``files``, and the ``file:...`` applicability tokens they give."""
    out: list[Finding] = []
    kinds = {f.kind for f in files}
    tokens: set[str] = set()
    if kinds & {"dockerfile", "compose"}:
        tokens.add("file:container")
    if "requirements" in kinds:
        tokens.add("file:requirements")
    if "workflow" in kinds:
        tokens.add("file:workflow")

    def emit(rule_id: str, rel: str, line: int, message: str) -> None:
        if config.enabled(rule_id):
            out.append(line_finding(config, rule_id, rel, line, message))

    pinned = True
    for f in files:
        if f.kind == "dockerfile" and not _TEST_IMAGE.search(f.rel.rpartition("/")[2]):
            _dockerfile(f, emit)
        elif f.kind == "requirements":
            pinned &= _requirements(f, emit)
    _composes([f for f in files if f.kind == "compose"], emit)
    requirements = sorted(f.rel for f in files if f.kind == "requirements")
    hashed = any("--hash=" in f.text for f in files if f.kind == "requirements")
    if requirements and "lock" not in kinds and not hashed:
        emit(
            "BTR702",
            requirements[0],
            1,
            "requirements pinned without hashes and no lock file: an index can serve other "
            "files under the same versions"
            if pinned
            else "requirements files and no lock file: installs are not reproducible",
        )
    workflows = sorted((f for f in files if f.kind == "workflow"), key=lambda f: f.rel)
    if workflows:
        tested = False
        for f in workflows:
            tested |= _workflow(f, emit)
        if not tested:
            emit("BTR703", workflows[0].rel, 1, "no CI workflow runs the tests")
        scanned = "dependabot" in kinds or any(_SCANS.search(f.text) for f in workflows)
        if not scanned:
            emit(
                "BTR704",
                workflows[0].rel,
                1,
                "no CI workflow scans dependencies for vulnerabilities and there is no "
                "Dependabot config",
            )
    return out, tokens


_Emit = Callable[[str, str, int, str], None]


def _content(line: str) -> str:
    """A line without its comment (good enough for these files: ``#`` after a space)."""
    stripped = line.strip()
    if stripped.startswith("#"):
        return ""
    return re.split(r"\s#", stripped, maxsplit=1)[0].strip()


def _dockerfile(f: TextFile, emit: _Emit) -> None:
    last_from = 1
    for number, line in enumerate(f.text.splitlines(), 1):
        words = _content(line).split()
        if not words:
            continue
        op = words[0].upper()
        if op == "FROM":
            last_from = number
        elif op == "HEALTHCHECK" and (len(words) < 2 or words[1].upper() != "NONE"):
            return
    emit(
        "BTR603",
        f.rel,
        last_from,
        "Dockerfile has no HEALTHCHECK: the runtime cannot tell a hung container from a "
        "healthy one (orchestrators: configure probes instead)",
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _compose(f: TextFile) -> tuple[list[tuple[str, int]], set[str]]:
    """The services without a healthcheck (name, line), and those with one."""
    in_services = False
    service_indent: int | None = None
    current: tuple[str, int] | None = None
    checked = False
    missing: list[tuple[str, int]] = []
    healthy: set[str] = set()

    def finish() -> None:
        if current is not None:
            if checked:
                healthy.add(current[0])
            else:
                missing.append(current)

    for number, line in enumerate(f.text.splitlines(), 1):
        text = _content(line)
        if not text:
            continue
        indent = _indent(line)
        if indent == 0:
            finish()
            current = None
            in_services = text.startswith("services:")
            service_indent = None
            continue
        if not in_services:
            continue
        if service_indent is None:
            service_indent = indent
        if indent == service_indent and text.endswith(":"):
            finish()
            current, checked = (text[:-1].strip("'\""), number), False
        elif indent > service_indent and text.startswith("healthcheck:"):
            checked = True
    finish()
    return missing, healthy


def _composes(files: list[TextFile], emit: _Emit) -> None:
    """BTR603 on compose services, the files of one directory merged.

    ``compose.yml`` + ``compose.override.yml`` (or ``-f a.yml -f b.yml``) describe one
    service together: a healthcheck in either file counts for the service.
    """
    by_dir: dict[str, list[TextFile]] = {}
    for f in files:
        by_dir.setdefault(f.rel.rpartition("/")[0], []).append(f)
    for group in by_dir.values():
        parsed = [(f, *_compose(f)) for f in group]
        healthy = set().union(*(h for _, _, h in parsed))
        for f, missing, _ in parsed:
            for name, number in missing:
                if name not in healthy:
                    emit("BTR603", f.rel, number, f"compose service `{name}` has no healthcheck:")


def _requirements(f: TextFile, emit: _Emit) -> bool:
    """BTR701 on one requirements file; True when every requirement is pinned."""
    logical: list[tuple[int, str]] = []
    pinned = True
    pending = ""
    start = 0
    for number, line in enumerate(f.text.splitlines(), 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + line))
        pending = ""
    for number, line in logical:
        text = _content(line)
        if not text or text.startswith("-"):
            continue
        spec = text.split(";", 1)[0].split(" --", 1)[0].strip()
        if "@" in spec or "://" in spec or spec.startswith((".", "/", "file:")):
            continue  # a direct reference: pinned to what it names
        if "==" not in spec:
            name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0]
            emit("BTR701", f.rel, number, f"`{name}` is not pinned (==): installs drift")
            pinned = False
    return pinned


def _steps(lines: list[str]) -> list[list[tuple[int, str]]]:
    """The items of every ``steps:`` list: (line number, line) groups."""
    steps: list[list[tuple[int, str]]] = []
    steps_indent: int | None = None
    item_indent: int | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.strip().startswith("#"):
            if steps and item_indent is not None:
                steps[-1].append((number, line))
            continue
        indent = _indent(line)
        stripped = line.strip()
        if steps_indent is not None and indent <= steps_indent and not stripped.startswith("-"):
            steps_indent = item_indent = None
        if stripped.startswith("steps:"):
            steps_indent, item_indent = indent, None
            continue
        if steps_indent is None:
            continue
        if stripped.startswith("- ") and (item_indent is None or indent == item_indent):
            item_indent = indent
            steps.append([(number, line)])
        elif item_indent is not None and indent > item_indent and steps:
            steps[-1].append((number, line))
        else:
            steps_indent = item_indent = None
    return steps


def _workflow(f: TextFile, emit: _Emit) -> bool:
    """BTR703's swallowed failures in one workflow; True when it runs tests."""
    tested = False
    for step in _steps(f.text.splitlines()):
        body = "\n".join(_content(line) for _, line in step)
        if not _TESTS.search(body):
            continue
        tested = True
        for number, line in step:
            text = _content(line)
            if _SWALLOW.search(text):
                emit("BTR703", f.rel, number, "a failing test step is swallowed (`|| true`)")
            elif re.match(r"continue-on-error:\s*true\b", text.lstrip("- ")):
                emit("BTR703", f.rel, number, "a test step with continue-on-error: true")
    return tested
