"""Every rule id of SPIFFE-RULES.md in scope so far has a test named after it.

The ids are listed here rather than read from ../shared/design, so the check also
runs in a clone that has no design folder. A test "is named after" a rule when the
rule id appears in a test function's name (ID_5) or a parametrized case id ("L-5 ...").
"""

from __future__ import annotations

import re
from pathlib import Path

RULES = (
    [f"ID-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15)]
    + [f"L-{n}" for n in range(1, 11)]
    + [f"S-{n}" for n in range(1, 5)]
    + [f"B-{n}" for n in range(1, 8)]
    + ["P-1", "P-2", "P-3"]
)


def test_every_rule_has_a_named_test() -> None:
    text = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    names = set(re.findall(r"def (test_\w+)", text))
    case_ids = set(re.findall(r'(?:id=|\(|\[)\s*"([A-Z]+-\d+[^"]*)"', text))
    missing = []
    for rule in RULES:
        as_name = rule.replace("-", "_")
        named = any(re.search(rf"(^|_){as_name}(_|$)", n) for n in names)
        cased = any(re.match(rf"{rule}\b", c) for c in case_ids)
        if not (named or cased):
            missing.append(rule)
    assert not missing, f"rules without a test named after them: {missing}"
