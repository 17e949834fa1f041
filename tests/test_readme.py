"""The README's Python examples run as written, and print exactly what the README says.

Each ``print(...)`` in a README example carries its expected output as a trailing
comment (``print(exc.reason)  # untrusted_chain``); a print without one is an error here.
A block's whole standard output must equal those comments, one line each, in source
order (the examples print each line once, top to bottom).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import pytest

README = Path(__file__).parent.parent / "README.md"


@dataclass(frozen=True)
class Example:
    code: str
    line: int  # the README line of the block's first code line

    def compiled(self) -> CodeType:
        # Padded so that a traceback names the README's own line numbers.
        return compile("\n" * (self.line - 1) + self.code, str(README), "exec")


def examples(text: str) -> list[Example]:
    return [
        Example(m.group(1), text.count("\n", 0, m.start(1)) + 1)
        for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]


def expected_output(example: Example) -> str:
    """What the example says it prints: the comment after each ``print(...)``, in order."""
    comments = {
        token.start[0]: token.string[1:].strip()
        for token in tokenize.generate_tokens(io.StringIO(example.code).readline)
        if token.type == tokenize.COMMENT
    }
    prints = sorted(
        (
            node
            for node in ast.walk(ast.parse(example.code))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
        ),
        key=lambda node: (node.lineno, node.col_offset),
    )
    lines = []
    for node in prints:
        end = node.end_lineno or node.lineno
        readme_line = example.line + end - 1
        assert end in comments, f"README.md:{readme_line}: a print without its output as a comment"
        lines.append(comments[end])
    return "".join(f"{line}\n" for line in lines)


EXAMPLES = examples(README.read_text())


def test_the_readme_has_examples_that_print() -> None:
    assert len(EXAMPLES) >= 2
    assert all(expected_output(example) for example in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line-{e.line}" for e in EXAMPLES])
def test_readme_example_prints_what_the_readme_says(
    example: Example, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = expected_output(example)
    exec(example.compiled(), {"__name__": "readme"})  # noqa: S102
    assert capsys.readouterr().out == expected


def test_expected_output_reads_the_comments() -> None:
    """The reader itself: comments after prints, in order; a print without one is refused."""
    example = Example("x = 1  # not a print\nprint(x)  # 1\nprint(\n    x + 1,\n)  # 2\n", 1)
    assert expected_output(example) == "1\n2\n"
    with pytest.raises(AssertionError, match=r"README.md:12: a print without"):
        expected_output(Example("print(1)  # 1\nprint(2)\n", 11))


def test_readme_node_config_parses(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from meshtls._config import FileIdentity, parse_config
    from meshtls.testing import CA

    (toml,) = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    ca = CA("example.org", now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node/a")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "partner-bundle.pem").write_bytes(CA("partner.org", now=ca.now).bundle_pem)
    config = parse_config(toml, base_dir=tmp_path, source="README.md")
    assert isinstance(config.identity, FileIdentity)
    assert set(config.identity.federated) == {"partner.org"}
    assert [e.backend for e in config.expose] == [("127.0.0.1", 9000)]
    assert str(config.forward[0].expect) == "spiffe://example.org/node/a"
    assert config.node.max_connections == 1024


def test_readme_config_names_every_key() -> None:
    """The README documents every config key: each key the loader knows appears in its own
    table's section of the example (a key of another identity form may be in a comment)."""
    from meshtls._config import _TABLES

    (toml,) = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    sections: dict[str, str] = {}
    for header, body in re.findall(
        r"^\[\[?([\w.]+)\]\]?[^\n]*\n(.*?)(?=^\[|\Z)", toml, re.M | re.S
    ):
        sections[header] = sections.get(header, "") + body
    missing = [
        f"[{table}] {key}"
        for table, keys in _TABLES.items()
        for key in keys
        if not re.search(rf"(^|\s){re.escape(key)} = ", sections.get(table, ""), re.M)
        and not (key == "federated" and "identity.federated" in sections)
    ]
    assert not missing, f"README.md's config example lacks {missing}"
