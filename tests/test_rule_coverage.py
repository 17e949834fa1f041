"""Every rule id of SPIFFE-RULES.md has a test named after it, or is pending, by name.

The ids are listed here rather than read from ../shared/design, so the check also
runs in a clone that has no design folder; where the folder is there, the list is
checked against it. A test "is named after" a rule when the rule id appears in a test
function's name (``test_P_5_...``) or starts a parametrized case id (``"L-5 ..."``).

A pending rule is one that is not implemented yet. It names the issue that brings it,
and the check fails as soon as a test is named after it, so the list cannot go stale.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DESIGN_RULES = TESTS.parent.parent / "shared" / "design" / "SPIFFE-RULES.md"

RULES = (
    [f"ID-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15)]
    + [f"L-{n}" for n in range(1, 11)]
    + [f"S-{n}" for n in range(1, 5)]
    + [f"P-{n}" for n in range(1, 6)]
    + [f"B-{n}" for n in range(1, 8)]
    + [f"W-{n}" for n in range(1, 5)]
)

#: Rules not implemented yet: rule id -> the issue that brings them.
PENDING: dict[str, str] = {}


def rules_with_a_test(texts: list[str]) -> set[str]:
    """The rule ids that some test in `texts` (test modules' source) is named after."""
    text = "\n".join(texts)
    names = set(re.findall(r"def (test_\w+)", text))
    case_ids = set(re.findall(r'(?:id=|\(|\[)\s*"([A-Z]+-\d+[^"]*)"', text))
    found = set()
    for rule in RULES:
        as_name = rule.replace("-", "_")
        named = any(re.search(rf"(^|_){as_name}(_|$)", n) for n in names)
        cased = any(re.match(rf"{rule}\b", c) for c in case_ids)
        if named or cased:
            found.add(rule)
    return found


#: This module is left out: its own examples below would count as tests.
COVERED = rules_with_a_test(
    [p.read_text() for p in sorted(TESTS.glob("test_*.py")) if p.name != Path(__file__).name]
)


def test_every_rule_has_a_named_test() -> None:
    missing = [rule for rule in RULES if rule not in COVERED and rule not in PENDING]
    assert not missing, f"rules without a test named after them: {missing}"


def test_a_pending_rule_has_no_test_yet() -> None:
    stale = {rule: issue for rule, issue in PENDING.items() if rule in COVERED}
    assert not stale, f"these rules have tests now: remove them from PENDING: {stale}"


def test_pending_rules_are_rules() -> None:
    assert set(PENDING) <= set(RULES)
    assert all(re.search(r"\bissue \d+\b", issue) for issue in PENDING.values())


def test_the_matcher_tells_names_and_case_ids_apart() -> None:
    """The check itself can fail: near misses do not count as tests."""
    found = rules_with_a_test(
        [
            "def test_P_5_no_tickets(): ...",
            "def test_L_10_binding(): ...",
            'CASES = [("S-2 no keyCertSign", 1)]',
            "def test_ID_1(): ...",
            # near misses
            "def test_L_1binding(): ...",  # L_1 glued to a word
            "def helper_W_1(): ...",  # not a test
            'x = f(match="W-2")',  # a keyword argument, not a case id
            'CASES = [("B-77 no such rule", 1)]',  # another id
            "def test_P_55(): ...",
        ]
    )
    assert found == {"P-5", "L-10", "S-2", "ID-1"}


def test_the_list_matches_the_design() -> None:
    if not DESIGN_RULES.exists():
        pytest.skip(f"no design folder at {DESIGN_RULES.parent} (a clone of the repository)")
    rows = re.findall(
        r"^\| ((?:ID|L|S|P|B|W)-\d+(?:, (?:ID|L|S|P|B|W)-\d+)*) \|", DESIGN_RULES.read_text(), re.M
    )
    design = {rule for row in rows for rule in row.split(", ")}
    assert design == set(RULES)
