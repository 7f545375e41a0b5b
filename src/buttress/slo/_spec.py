"""Read an SLO spec (buttress's own YAML, or OpenSLO v1 documents) into a `Spec`, or say why not.

`load_spec(path)` returns the `Spec` or raises `SpecError`, which carries every problem
found, each with its line and column (`Problem`), so ``buttress slo validate`` can list
them all at once. The format is in docs/slo.md; the short version::

    service: orders
    slos:
      - name: availability
        objective: 99.9
        sli: {buttress: availability}
      - name: latency
        objective: 99
        sli: {buttress: latency, threshold: 500ms}
    alerts: {error_rate: true, latency_p95: true}
    probes: {targets: ["http://127.0.0.1:8000"]}
    backups: {rpo: 26h, verify_within: 8d}

A file whose documents say ``apiVersion: openslo/v1`` is read as OpenSLO: its ``SLO``
documents (with an inline ``indicator`` or an ``indicatorRef`` to an ``SLI`` document,
ratio metrics, rolling windows, the occurrences budgeting method) become the `Slo` list.
"""

from __future__ import annotations

import re
from pathlib import Path

from buttress.errors import ConfigurationError
from buttress.slo._model import (
    HTTP_LATENCY_BUCKETS,
    Backups,
    Duration,
    Probes,
    Sli,
    Slo,
    Spec,
    Thresholds,
    has_window,
    parse_duration,
)
from buttress.slo._yaml import Node, Problem, Problems, documents

__all__ = ["SpecError", "load_spec", "parse_spec"]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*,?)?\s*")
_REGEX_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~)\s*"((?:[^"\\]|\\.)*)"')
# Perl syntax Python's re knows and Prometheus' RE2 refuses (promtool: "unsupported Perl syntax")
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|>|P=|#)|[*+?}]\+")
_DEFAULT_WINDOW = Duration("30d", 30 * 86400.0)
_MAX_BYTES = 1_000_000
_MIN_WINDOW = 3 * 86400.0
_REQUESTS = "buttress_http_requests_total"
_DURATION = "buttress_http_request_duration_seconds"


class SpecError(ConfigurationError):
    """A spec that cannot be used; ``problems`` lists each error with its line.

    Example::

        try:
            load_spec("slo.yml")
        except SpecError as exc:
            for problem in exc.problems:
                print(problem)          # slo.yml:7:16: slos[0].objective: ...
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the SLO spec:\n{lines}")


def load_spec(path: str | Path) -> Spec:
    """The `Spec` in the file at ``path``; `SpecError` lists every problem found."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError([Problem(source, 1, 1, f"cannot read the file: {exc}")]) from exc
    if len(data) > _MAX_BYTES:
        raise SpecError([Problem(source, 1, 1, f"larger than {_MAX_BYTES} bytes: not a spec")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(source, 1, 1, f"not UTF-8 text ({exc})")]) from exc
    return parse_spec(text, source)


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """The `Spec` written in ``text`` (``source`` names it in errors)."""
    problems = Problems(source)
    docs = list(documents(text, problems))
    spec: Spec | None = None
    if not problems.items:
        if not docs:
            problems.add(None, "the file has no YAML document")
        elif any(_is_openslo(doc) for doc in docs):
            spec = _OpenSlo(problems, source).read(docs)
        elif len(docs) > 1:
            problems.add(docs[1], "one spec per file (or OpenSLO documents, apiVersion openslo/v1)")
        else:
            spec = _read_native(docs[0], source)
    if problems.items or spec is None:
        raise SpecError(problems.items)
    return spec


# --------------------------------------------------------------------------- small readers


def _name(node: Node) -> str | None:
    text = node.text()
    if text is not None and not _NAME.fullmatch(text):
        node.error(f"{text!r}: use lower-case letters, digits, - and _ (at most 64)")
        return None
    return text


def _duration(node: Node, *, at_most: float | None = None) -> Duration | None:
    value = node.value()
    if value is None:
        return None
    duration = parse_duration(str(value)) if isinstance(value, str) else None
    if duration is None:
        node.error(f"{value!r} is not a duration: write it as Prometheus does (5m, 1h30m, 30d)")
        return None
    if at_most is not None and duration.seconds > at_most:
        node.error(f"{duration.text} is too long (at most {at_most / 86400:g} days)")
        return None
    return duration


def _seconds(node: Node) -> float | None:
    """A latency: a duration (``500ms``) or a number of seconds."""
    value = node.value()
    if isinstance(value, str):
        duration = parse_duration(value)
        if duration is None:
            node.error(f"{value!r} is not a latency: write 500ms, 1s or 0.5")
        return duration.seconds if duration else None
    seconds = node.number()
    if seconds is not None and seconds <= 0:
        node.error(f"{seconds:g} s: a latency is above 0")
        return None
    return seconds


def _percent(node: Node, *, low: float, high: float) -> float | None:
    """A percentage (``99.9`` or ``"99.9%"``) as a ratio (``0.999``)."""
    value = node.value()
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1])
        except ValueError:
            node.error(f"{value!r} is not a percentage")
            return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        node.error(f"expected a percentage such as 99.9, found {value!r}")
        return None
    if not low < float(value) < high:
        node.error(f"{value}: a percentage between {low:g} and {high:g} (excluded)")
        return None
    return round(float(value) / 100.0, 12)


def _flag_or_mapping(node: Node, allowed: list[str]) -> dict[str, Node] | None:
    """``true`` (the defaults), ``false`` (off: None) or a mapping of options."""
    if node.is_mapping():
        return node.mapping(allowed)
    value = node.value()
    if value is True:
        return {}
    if value is not False:
        node.error(f"expected true, false or a mapping of {', '.join(allowed)}")
    return None


def _regex_problem(pattern: str) -> str | None:
    """Why Prometheus would refuse ``pattern`` as a regular expression (None: it is fine)."""
    bad = _NOT_RE2.search(pattern)
    if bad is not None:
        return f"{bad.group()!r} is not RE2 syntax (Prometheus has no lookaround or backreferences)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"not a regular expression: {exc}"
    return None


def _selector(node: Node) -> str | None:
    text = node.value()
    if text is None or text == "":
        return ""
    if not isinstance(text, str) or not _SELECTOR.fullmatch(text):
        node.error(f'{text!r}: label matchers without braces, such as job="orders", env!="dev"')
        return None
    for match in _REGEX_MATCHER.finditer(text):
        problem = _regex_problem(re.sub(r"\\(.)", r"\1", match.group(2)))
        if problem is not None:
            node.error(f"{match.group(1)}: {problem}")
            return None
    return text.strip().rstrip(",")


# --------------------------------------------------------------------------- native format


_TOP = [
    "version",
    "service",
    "selector",
    "window",
    "labels",
    "runbook_base_url",
    "slos",
    "alerts",
    "probes",
    "backups",
]
_SLO = ["name", "objective", "window", "description", "sli"]
_SLI = ["buttress", "threshold", "routes", "errors", "good", "total"]


def _read_native(doc: Node, source: str) -> Spec | None:
    top = doc.mapping(_TOP)
    if top is None:
        return None
    if "version" in top and top["version"].value() not in ("buttress/v1", 1):
        top["version"].error("the only version is buttress/v1")
    service = _name(top["service"]) if "service" in top else None
    if "service" not in top:
        doc.error("service: missing (the service's name, such as orders)")
    selector = _selector(top["selector"]) if "selector" in top else f'job="{service}"'
    window = _duration(top["window"], at_most=366 * 86400) if "window" in top else None
    labels = _labels(top["labels"]) if "labels" in top else ()
    runbook = ""
    if "runbook_base_url" in top:
        runbook = top["runbook_base_url"].text() or ""
    slos: list[Slo] = []
    if "slos" in top:
        seen: dict[str, Node] = {}
        for item in top["slos"].items():
            slo = _read_slo(item, window or _DEFAULT_WINDOW, selector or "")
            if slo is None:
                continue
            if slo.name in seen:
                item.error(
                    f"the name {slo.name!r} is used twice (first on line {seen[slo.name].line})"
                )
            seen[slo.name] = item
            slos.append(slo)
    thresholds = _read_thresholds(top["alerts"]) if "alerts" in top else Thresholds()
    probes = _read_probes(top["probes"]) if "probes" in top else None
    backups = _read_backups(top["backups"]) if "backups" in top else None
    if not set(top) & {"slos", "alerts", "probes", "backups"}:
        doc.error("nothing to generate: add slos, alerts, probes or backups")
    if service is None or selector is None or thresholds is None:
        return None
    return Spec(
        service=service,
        selector=selector,
        slos=tuple(slos),
        thresholds=thresholds,
        probes=probes,
        backups=backups,
        labels=labels,
        runbook_base_url=runbook.rstrip("/"),
        source=source,
    )


def _labels(node: Node) -> tuple[tuple[str, str], ...]:
    entries = node.mapping(_AnyKey())
    out = []
    for key, value in (entries or {}).items():
        if not _LABEL.fullmatch(key) or key.startswith("__"):
            value.error(f"{key!r} is not a Prometheus label name")
            continue
        if key in ("service", "slo", "severity"):
            value.error(f"{key!r} is set by buttress slo; choose another label name")
            continue
        text = value.value()
        if text is None or isinstance(text, list | dict):
            value.error("expected a label value")
            continue
        out.append((key, str(text)))
    return tuple(out)


class _AnyKey(list[str]):
    """An ``allowed`` list that allows any key (label names are the user's)."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str)


def _read_slo(item: Node, default_window: Duration, selector: str) -> Slo | None:
    entries = item.mapping(_SLO)
    if entries is None:
        return None
    for key in ("name", "objective", "sli"):
        if key not in entries:
            item.error(f"{key}: missing")
    name = _name(entries["name"]) if "name" in entries else None
    objective = _percent(entries["objective"], low=50, high=100) if "objective" in entries else None
    window = default_window
    if "window" in entries:
        window = _duration(entries["window"], at_most=366 * 86400) or default_window
    description = ""
    if "description" in entries:
        description = entries["description"].text() or ""
    sli = _read_sli(entries["sli"], selector) if "sli" in entries else None
    if name is None or objective is None or sli is None:
        return None
    if window.seconds < _MIN_WINDOW:
        entries.get("window", item).error(
            f"{window.text}: an SLO window of at least 3d (the ticket alert looks back 3 days)"
        )
        return None
    return Slo(name=name, objective=objective, window=window, sli=sli, description=description)


def _read_sli(node: Node, selector: str) -> Sli | None:
    entries = node.mapping(_SLI)
    if entries is None:
        return None
    if "buttress" in entries:
        kind = entries["buttress"].value()
        extra = sorted(set(entries) & {"errors", "good", "total"})
        if extra:
            entries[extra[0]].error("a buttress SLI builds its own queries: drop it")
        routes = ""
        if "routes" in entries:
            routes = entries["routes"].text() or ""
            if '"' in routes or "\\" in routes:
                entries["routes"].error('a regular expression without " or \\')
            elif (problem := _regex_problem(routes)) is not None:
                entries["routes"].error(problem)
        matchers = ",".join(m for m in (selector, f'route=~"{routes}"' if routes else "") if m)
        if kind == "availability":
            if "threshold" in entries:
                entries["threshold"].error("only a latency SLI has a threshold")
            return _availability(matchers)
        if kind == "latency":
            return _latency(entries, node, matchers)
        entries["buttress"].error(f"{kind!r}: availability or latency")
        return None
    for key in ("threshold", "routes"):
        if key in entries:
            entries[key].error("only an SLI built from buttress's metrics (buttress: ...) takes it")
    if "total" not in entries or ("errors" in entries) == ("good" in entries):
        node.error(
            "give buttress: availability|latency, or total and one of errors or good "
            "(PromQL with {{window}} where the range goes)"
        )
        return None
    queries: dict[str, str] = {}
    for key in ("errors", "good", "total"):
        if key in entries:
            text = entries[key].text()
            if text is not None and not has_window(text):
                entries[key].error(
                    "a query needs {{window}} where the range goes: rate(x[{{window}}])"
                )
                text = None
            if text is None:
                return None
            queries[key] = text
    return Sli(
        kind="ratio", total=queries["total"], errors=queries.get("errors"), good=queries.get("good")
    )


def _availability(matchers: str) -> Sli:
    """Errors are 5xx answers; requests cancelled by their client (499) count for nothing."""
    sep = "," if matchers else ""
    return Sli(
        kind="availability",
        errors=f'sum(rate({_REQUESTS}{{{matchers}{sep}status=~"5.."}}[{{{{window}}}}])) '
        "or vector(0)",
        total=f'sum(rate({_REQUESTS}{{{matchers}{sep}status!="499"}}[{{{{window}}}}]))',
    )


def _latency(entries: dict[str, Node], node: Node, matchers: str) -> Sli | None:
    if "threshold" not in entries:
        node.error("threshold: missing (the latency a good request stays under, such as 500ms)")
        return None
    threshold = _seconds(entries["threshold"])
    if threshold is None:
        return None
    if not any(abs(threshold - b) < 1e-9 for b in HTTP_LATENCY_BUCKETS):
        buckets = ", ".join(f"{b * 1000:g}ms" for b in HTTP_LATENCY_BUCKETS)
        entries["threshold"].error(
            f"{threshold * 1000:g}ms is not a bucket boundary of {_DURATION}; use one of {buckets}"
        )
        return None
    sep = "," if matchers else ""
    le = repr(float(threshold))  # prometheus-client writes 1.0, 0.5, 0.25
    return Sli(
        kind="latency",
        good=f'sum(rate({_DURATION}_bucket{{{matchers}{sep}le="{le}"}}[{{{{window}}}}]))',
        total=f"sum(rate({_DURATION}_count{{{matchers}}}[{{{{window}}}}]))",
        latency_threshold=threshold,
    )


def _read_thresholds(node: Node) -> Thresholds | None:
    entries = node.mapping(["error_rate", "latency_p95", "rate_window"])
    if entries is None:
        return None
    out = Thresholds()
    error_ratio = p95 = None
    error_for, p95_for, rate_window = out.error_for, out.p95_for, out.rate_window
    if "error_rate" in entries:
        opts = _flag_or_mapping(entries["error_rate"], ["above", "for"])
        if opts is not None:
            error_ratio = _percent(opts["above"], low=0, high=100) if "above" in opts else 0.01
            if "for" in opts:
                error_for = _duration(opts["for"], at_most=86400) or error_for
    if "latency_p95" in entries:
        opts = _flag_or_mapping(entries["latency_p95"], ["above", "for"])
        if opts is not None:
            p95 = _seconds(opts["above"]) if "above" in opts else 0.5
            if "for" in opts:
                p95_for = _duration(opts["for"], at_most=86400) or p95_for
    if "rate_window" in entries:
        rate_window = _duration(entries["rate_window"], at_most=3600) or rate_window
    return Thresholds(
        error_ratio=error_ratio,
        error_for=error_for,
        p95_seconds=p95,
        p95_for=p95_for,
        rate_window=rate_window,
    )


def _read_probes(node: Node) -> Probes | None:
    entries = node.mapping(["targets", "paths", "exporter", "interval", "timeout", "for"])
    if entries is None:
        return None
    targets: list[str] = []
    for item in entries["targets"].items() if "targets" in entries else []:
        url = item.text()
        if url is not None and not re.fullmatch(r"https?://[^\s/]+(?:/[^\s]*)?", url):
            item.error(f"{url!r}: a base URL such as http://127.0.0.1:8000")
        elif url is not None:
            targets.append(url.rstrip("/"))
    if "targets" not in entries:
        node.error("targets: missing (the base URLs to probe)")
    paths: list[str] = []
    for item in entries["paths"].items() if "paths" in entries else []:
        path = item.text()
        if path is not None and not path.startswith("/"):
            item.error(f"{path!r}: a path starts with /")
        elif path is not None:
            paths.append(path)
    exporter = "127.0.0.1:9115"
    if "exporter" in entries:
        exporter = entries["exporter"].text() or exporter
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", exporter):
            entries["exporter"].error(f"{exporter!r}: host:port of blackbox_exporter")
    defaults = Probes(targets=())
    interval = defaults.interval
    if "interval" in entries:
        interval = _duration(entries["interval"], at_most=3600) or interval
    timeout = defaults.timeout
    if "timeout" in entries:
        timeout = _duration(entries["timeout"], at_most=60) or timeout
    if timeout.seconds >= interval.seconds:
        entries.get("timeout", node).error(
            f"timeout {timeout.text} must be shorter than the interval {interval.text}"
        )
    for_ = _duration(entries["for"], at_most=86400) if "for" in entries else defaults.for_
    if not targets:
        return None
    return Probes(
        targets=tuple(targets),
        paths=tuple(paths) or defaults.paths,
        exporter=exporter,
        interval=interval,
        timeout=timeout,
        for_=for_ or defaults.for_,
    )


def _read_backups(node: Node) -> Backups | None:
    entries = node.mapping(["rpo", "verify_within", "selector", "for"])
    if entries is None:
        return None
    if "rpo" not in entries:
        node.error("rpo: missing (the oldest a backup may be, such as 26h)")
        return None
    rpo = _duration(entries["rpo"], at_most=366 * 86400)
    verify = None
    if "verify_within" in entries:
        verify = _duration(entries["verify_within"], at_most=366 * 86400)
    selector = _selector(entries["selector"]) if "selector" in entries else ""
    for_ = _duration(entries["for"], at_most=86400) if "for" in entries else None
    if rpo is None or selector is None:
        return None
    return Backups(
        rpo=rpo, verify_within=verify, selector=selector, for_=for_ or Backups(rpo=rpo).for_
    )


# --------------------------------------------------------------------------- OpenSLO v1


def _is_openslo(doc: Node) -> bool:
    entries = doc.mapping(_AnyKey()) if doc.is_mapping() else None
    if not entries or "apiVersion" not in entries:
        return False
    return bool(entries["apiVersion"].value() == "openslo/v1")


_META = ["name", "displayName", "namespace", "labels", "annotations"]
_OPENSLO_SLO = [
    "description",
    "service",
    "indicator",
    "indicatorRef",
    "timeWindow",
    "budgetingMethod",
    "objectives",
    "alertPolicies",
]
_OBJECTIVE = [
    "displayName",
    "op",
    "value",
    "target",
    "targetPercent",
    "timeSliceTarget",
    "timeSliceWindow",
    "indicator",
    "indicatorRef",
    "compositeWeight",
]


class _OpenSlo:
    """Reads OpenSLO v1 documents: SLOs with ratio-metric indicators over rolling windows."""

    def __init__(self, problems: Problems, source: str) -> None:
        self.problems = problems
        self.source = source
        self.slis: dict[str, Node] = {}

    def read(self, docs: list[Node]) -> Spec | None:
        slo_docs: list[tuple[Node, dict[str, Node]]] = []
        for doc in docs:
            entries = doc.mapping(["apiVersion", "kind", "metadata", "spec"])
            if entries is None:
                continue
            if "apiVersion" not in entries or entries["apiVersion"].value() != "openslo/v1":
                entries.get("apiVersion", doc).error(
                    "every document of an OpenSLO file says apiVersion: openslo/v1"
                )
                continue
            kind = entries["kind"].value() if "kind" in entries else None
            if kind == "SLO":
                slo_docs.append((doc, entries))
            elif kind == "SLI":
                name = self._meta_name(doc, entries)
                if name is not None and "spec" in entries:
                    self.slis[name] = entries["spec"]
            elif kind not in (
                "Service",
                "AlertPolicy",
                "AlertCondition",
                "AlertNotificationTarget",
                "DataSource",
            ):
                entries.get("kind", doc).error(
                    f"{kind!r}: an OpenSLO v1 kind (SLO, SLI, Service...)"
                )
        slos: list[Slo] = []
        services: set[str] = set()
        for doc, entries in slo_docs:
            service, read = self._slo(doc, entries)
            if service:
                services.add(service)
            slos.extend(read)
        if not slo_docs:
            self.problems.add(docs[0], "no document of kind SLO")
        if len(services) > 1:
            self.problems.add(
                docs[0],
                f"SLOs of several services ({', '.join(sorted(services))}): one service per file",
            )
        if self.problems.items or not services:
            return None
        service = services.pop()
        return Spec(
            service=service, selector=f'job="{service}"', slos=tuple(slos), source=self.source
        )

    def _meta_name(self, doc: Node, entries: dict[str, Node]) -> str | None:
        if "metadata" not in entries:
            doc.error("metadata: missing")
            return None
        meta = entries["metadata"].mapping(_META)
        if meta is None:
            return None
        if "name" not in meta:
            entries["metadata"].error("name: missing")
            return None
        return _name(meta["name"])

    def _slo(self, doc: Node, entries: dict[str, Node]) -> tuple[str | None, list[Slo]]:
        name = self._meta_name(doc, entries)
        if "spec" not in entries:
            doc.error("spec: missing")
            return None, []
        spec = entries["spec"].mapping(_OPENSLO_SLO)
        if spec is None:
            return None, []
        for key in ("service", "timeWindow", "objectives"):
            if key not in spec:
                entries["spec"].error(f"{key}: missing")
        service = _name(spec["service"]) if "service" in spec else None
        if "budgetingMethod" in spec and spec["budgetingMethod"].value() != "Occurrences":
            spec["budgetingMethod"].error(
                "only Occurrences (a share of events) is supported: Timeslices and "
                "RatioTimeslices need per-slice rules buttress slo does not write"
            )
        window = self._window(spec["timeWindow"]) if "timeWindow" in spec else None
        sli = self._indicator(spec, entries["spec"])
        slos: list[Slo] = []
        objectives = spec["objectives"].items() if "objectives" in spec else []
        for i, node in enumerate(objectives):
            obj = node.mapping(_OBJECTIVE)
            if obj is None:
                continue
            if "target" in obj:
                target = obj["target"].number()
                objective = target if target is not None and 0.5 < target < 1 else None
                if target is not None and objective is None:
                    obj["target"].error(f"{target:g}: a ratio between 0.5 and 1 (excluded)")
            elif "targetPercent" in obj:
                objective = _percent(obj["targetPercent"], low=50, high=100)
            else:
                node.error("target (0.999) or targetPercent (99.9): missing")
                objective = None
            for key in ("op", "value", "timeSliceTarget", "timeSliceWindow"):
                if key in obj:
                    obj[key].error(f"{key}: threshold metrics and time slices are not supported")
            suffix = ""
            if len(objectives) > 1:
                label = obj["displayName"].text() if "displayName" in obj else None
                suffix = "-" + re.sub(r"[^a-z0-9]+", "-", (label or str(i)).lower()).strip("-")
            if name and objective is not None and window is not None and sli is not None:
                slos.append(
                    Slo(name=f"{name}{suffix}"[:64], objective=objective, window=window, sli=sli)
                )
        return service, slos

    def _window(self, node: Node) -> Duration | None:
        items = node.items()
        if len(items) != 1:
            node.error("one time window")
            return None
        entries = items[0].mapping(["duration", "isRolling", "calendar"])
        if entries is None:
            return None
        if "calendar" in entries or (
            "isRolling" in entries and entries["isRolling"].value() is not True
        ):
            items[0].error("only rolling windows (isRolling: true) are supported")
            return None
        if "duration" not in entries:
            items[0].error("duration: missing")
            return None
        window = _duration(entries["duration"], at_most=366 * 86400)
        if window is not None and window.seconds < _MIN_WINDOW:
            entries["duration"].error(f"{window.text}: an SLO window of at least 3d")
            return None
        return window

    def _indicator(self, spec: dict[str, Node], at: Node) -> Sli | None:
        if "indicator" in spec:
            entries = spec["indicator"].mapping(["metadata", "spec"])
            if entries is None or "spec" not in entries:
                spec["indicator"].error("spec: missing")
                return None
            return self._sli(entries["spec"])
        if "indicatorRef" in spec:
            ref = spec["indicatorRef"].text()
            if ref is None:
                return None
            if ref not in self.slis:
                known = ", ".join(sorted(self.slis)) or "none"
                spec["indicatorRef"].error(f"no SLI document named {ref!r} (found: {known})")
                return None
            return self._sli(self.slis[ref])
        at.error("indicator or indicatorRef: missing")
        return None

    def _sli(self, node: Node) -> Sli | None:
        entries = node.mapping(["description", "ratioMetric", "thresholdMetric"])
        if entries is None:
            return None
        if "ratioMetric" not in entries:
            node.error("only ratioMetric indicators are supported (good or bad, and total)")
            return None
        ratio = entries["ratioMetric"].mapping(
            ["counter", "good", "bad", "total", "rawType", "raw"]
        )
        if ratio is None:
            return None
        counter = ratio["counter"].value() if "counter" in ratio else True
        if "raw" in ratio or "rawType" in ratio:
            entries["ratioMetric"].error(
                "raw ratios are not supported: give good or bad, and total"
            )
            return None
        if "total" not in ratio or ("good" in ratio) == ("bad" in ratio):
            entries["ratioMetric"].error("total and one of good or bad")
            return None
        queries: dict[str, str] = {}
        for key in ("good", "bad", "total"):
            if key in ratio:
                query = self._query(ratio[key], counter=counter is not False)
                if query is None:
                    return None
                queries[key] = query
        return Sli(
            kind="ratio",
            total=queries["total"],
            errors=queries.get("bad"),
            good=queries.get("good"),
        )

    def _query(self, node: Node, *, counter: bool) -> str | None:
        entries = node.mapping(["metricSource"])
        source = (
            entries["metricSource"].mapping(["type", "metricSourceRef", "spec"])
            if (entries and "metricSource" in entries)
            else None
        )
        if source is None or "spec" not in source:
            node.error("metricSource.spec.query: missing")
            return None
        if "type" in source and source["type"].value() != "Prometheus":
            source["type"].error("only Prometheus metric sources are supported")
            return None
        query_spec = source["spec"].mapping(["query"])
        if query_spec is None or "query" not in query_spec:
            source["spec"].error("query: missing")
            return None
        query = query_spec["query"].text()
        if query is None or has_window(query):
            return query
        if counter:  # a counter's selector: its rate over the window
            return f"sum(rate({query}[{{{{window}}}}]))"
        return f"sum(sum_over_time({query}[{{{{window}}}}]))"
