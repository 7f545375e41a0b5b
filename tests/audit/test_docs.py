"""docs/audit.md lists every rule, with its anchor (the rules' docs links), a bad and a
good example; the examples are ``py`` blocks, which tests/docs does not execute."""

from __future__ import annotations

import re
from pathlib import Path

from buttress.audit import RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_every_rule_is_documented_with_a_bad_and_a_good_example() -> None:
    text = DOC.read_text()
    for rule_id, rule in RULES.items():
        anchor = rule.docs.rpartition("#")[2]
        assert f'<a id="{anchor}"></a>' in text, rule_id
        section = text.split(f'<a id="{anchor}"></a>', 1)[1].split("<a id=", 1)[0]
        assert f"#### {rule_id}: {rule.title} ({rule.priority.value})" in section
        assert re.search(r"Bad:\n\n```py\n.+?```\n\nGood:\n\n```py\n.+?```", section, re.DOTALL), (
            rule_id
        )
    assert "```python" not in text
