"""The Python examples of README.md and docs/*.md run as tests, their shown output compared.

Tool: Sybil, chosen because it is maintained, lexes Markdown fences and doctest sessions
itself, keeps skip markers with their reason in the doc source
(``<!-- skip: next "reason" -->``) and takes a small parser for this project's
``python``-then-``text`` convention, where pytest-examples wants ``#>`` output comments,
pytest-markdown-docs compares no output and phmdoctest generates test files.

The rules (tests/docs/_blocks.py):

- a ``python`` block runs as a script, in a fresh namespace, as a reader who copies it
  would run it; an ``<!-- invisible-code-block: python ... -->`` right before it runs
  first, in the same namespace, for set-up the page leaves out;
- a ``text`` block right after it (only blank lines between) is what it prints, stdout
  and stderr together; ``...`` matches anything, trailing whitespace is ignored;
- a ``pycon`` block is a doctest session, with the same matching;
- each block runs as a process of its own would: its globals are the module
  ``__main__`` (so ``ROOT_URLCONF=__name__`` finds its ``urlpatterns``), with Python's own
  exception hooks, no buttress process-error hooks installed yet and Django's settings
  not configured; the process-wide state it leaves behind (logging, structlog, telemetry
  hooks, exception hooks, Django's settings, a Sentry client, the environment,
  ``sys.argv``) is put back or closed after it.

Blocks in other languages (bash, console, json, yaml) are prose; the demo's curl commands
are checked against the running demo in test_demo_commands.py.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path

import pytest
from sybil import Example

from tests.docs._blocks import DOCUMENTS, ROOT, examples, relative, run, skips

BLOCKS = [group for path in DOCUMENTS for group in examples(path)]

#: Every skipped block, by document and reason: keep this list short.
EXPECTED_SKIPS: dict[str, list[str]] = {}


@pytest.mark.parametrize("group", BLOCKS, ids=[relative(g[-1]) for g in BLOCKS])
def test_example(group: list[Example]) -> None:
    for example in group:  # the skip directives before the block, then the block
        example.evaluate()


def test_every_document_has_examples() -> None:
    counted = {path.name: 0 for path in DOCUMENTS}
    for group in BLOCKS:
        counted[Path(group[-1].path).name] += 1
    assert counted["README.md"] >= 2
    assert counted["quickstart.md"] >= 10
    assert counted["asgi.md"] >= 15
    assert counted["observability.md"] >= 5


def test_skipped_blocks_are_few_and_listed() -> None:
    found = {
        str(path.relative_to(ROOT)): [reason for _, reason in skips(path)] for path in DOCUMENTS
    }
    found = {name: reasons for name, reasons in found.items() if reasons}
    assert found == EXPECTED_SKIPS
    assert sum(map(len, found.values())) <= 5


@pytest.mark.parametrize("server", ["redis", "postgres"])
def test_store_example_prints_the_same_on_every_server(
    server: str, request: pytest.FixtureRequest
) -> None:
    """docs/shared-state.md: 'given redis://... or postgresql://... it prints the same lines'."""
    url = request.getfixturevalue(f"{server}_url")
    [example] = [g[-1] for g in BLOCKS if "sys.argv[1]" in g[-1].parsed.source]
    block = example.parsed
    assert 'namespace="docs-example"' in block.source
    # a namespace of this run's own: keys another run left cannot change the output
    source = block.source.replace("docs-example", f"docs-{uuid.uuid4().hex[:12]}")
    report = run(dataclasses.replace(block, source=source, argv=(url,)), example.path)
    assert not report, report


def test_examples_import_only_public_names() -> None:
    """A reader copies the import lines: a private module (``buttress.x._y``) in an example
    is a name the library may move without notice."""
    private = re.compile(r"^\s*(?:from|import)\s+(buttress(?:\.\w+)*\._\w+)", re.MULTILINE)
    found = [
        f"{relative(group[-1])}: {match.group(1)}"
        for group in BLOCKS
        for example in group
        for match in private.finditer(example.parsed.source)
    ]
    assert not found, found
