"""The README's Python examples run as written, and print exactly what the README says.

Each ``print(...)`` in a README example carries its expected output as a trailing
comment (``print(exc.reason)  # untrusted_chain``); a print without one is an error here.
A block's whole standard output must equal those comments, one line each, in source
order (the examples print each line once, top to bottom).
"""

from __future__ import annotations

import argparse
import ast
import io
import itertools
import re
import tokenize
from collections.abc import Iterator
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
    (tmp_path / "app").mkdir()
    config = parse_config(toml, base_dir=tmp_path, source="README.md")
    assert isinstance(config.identity, FileIdentity)
    assert set(config.identity.federated) == {"partner.org"}
    assert [e.backend for e in config.expose] == [("127.0.0.1", 9000)]
    assert str(config.forward[0].expect) == "spiffe://example.org/node/a"
    assert config.node.max_connections == 1024
    (write,) = config.write
    assert (write.key, write.key_mode) == (tmp_path / "app/svid.key", 0o600)
    assert write.on_rotate == ("systemctl", "reload", "app")


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


# ---------------------------------------------------------------- flags and paths

REPO = README.parent
#: The synopsis block of "The command line": one or more lines per command.
SYNOPSIS_HEAD = "## The command line"


def command_options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str]]:
    """(command path, option string) for every option of `parser` and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_options(sub, f"{path} {name}")
        else:
            for option in action.option_strings:
                yield path, option


def every_option() -> list[tuple[str, str]]:
    """Every option of ``meshtls`` (recursively), and of ``meshtls bench handshake`` and
    ``meshtls bench bulk``, whose options their own parsers read."""
    from meshtls._bench import parser as bench_parser
    from meshtls._bench_bulk import parser as bulk_parser
    from meshtls._cli import build_parser

    return [
        *command_options(build_parser(), "meshtls"),
        *command_options(bench_parser(), "meshtls bench handshake"),
        *command_options(bulk_parser(), "meshtls bench bulk"),
    ]


def synopsis(text: str) -> dict[str, str]:
    """Each command's synopsis lines, joined: ``{"meshtls ca init": "... --dir DIR ..."}``.

    An indented line continues the command of the line above it.
    """
    section = text.split(SYNOPSIS_HEAD, 1)[1]
    (block,) = re.findall(r"```\n(.*?)```", section, re.S)[:1]
    lines: dict[str, str] = {}
    command = ""
    for line in block.splitlines():
        if not line[:1].isspace():  # an indented line continues the command above it
            words = itertools.takewhile(lambda w: re.fullmatch(r"[a-z]+", w), line.split())
            command = " ".join(words)
        lines[command] = f"{lines.get(command, '')} {line.split('#', 1)[0].strip()}".strip()
    return lines


def _names(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_the_readme_documents_every_flag_of_every_command() -> None:
    """Each command's synopsis line in the README lists each of its options (help once)."""
    text = README.read_text()
    lines = synopsis(text)
    missing = []
    for command, option in every_option():
        where = text if option in ("-h", "--help") else lines.get(command, "")
        if not _names(where, option):
            missing.append(f"{command} {option}")
    assert not missing, f"README.md's command-line synopsis lacks {missing}"


def test_the_flag_check_reads_subcommands_and_the_synopsis() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--top")
    sub = parser.add_subparsers().add_parser("run")
    sub.add_argument("--fast", "-f")
    assert set(command_options(parser, "x")) == {
        ("x", "-h"),
        ("x", "--help"),
        ("x", "--top"),
        ("x run", "-h"),
        ("x run", "--help"),
        ("x run", "--fast"),
        ("x run", "-f"),
    }
    lines = synopsis(f"{SYNOPSIS_HEAD}\n\n```\nx run [--fast] # --top\nx run --slow\n```\n")
    assert lines == {"x run": "x run [--fast] x run --slow"}
    assert _names(lines["x run"], "--fast")
    assert not _names(lines["x run"], "--top")  # a comment does not document a flag
    assert not _names("--fast-path", "--fast")


#: Repository paths the README may name: a top-level directory, then the rest.
_REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|tests|benchmarks|src|\.ci)/[\w./-]*)")
_MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
_MARKDOWN_FILE = re.compile(r"(?<![\w./-])([\w./-]+\.md)\b")


def outside_references(text: str, repo: Path) -> list[str]:
    """What `text` names that is not in `repo`: ``../`` paths, links and ``*.md`` files
    that do not exist, and repository paths (``docs/...``, ``tests/...``) that do not."""
    problems = [
        f"'../' at line {text.count(chr(10), 0, m.start()) + 1}"
        for m in re.finditer(r"\.\./", text)
    ]
    for target in _MARKDOWN_LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        if not (repo / target.split("#")[0]).exists():
            problems.append(f"link {target}")
    for name in _MARKDOWN_FILE.findall(text):
        if name.lower() != "readme.md" and not (repo / name).exists():
            problems.append(f"file {name}")
    for path in _REPO_PATH.findall(text):
        if not (repo / path.rstrip(".")).exists():
            problems.append(f"path {path}")
    return problems


def test_the_readme_names_no_file_outside_the_repo() -> None:
    assert outside_references(README.read_text(), REPO) == []


def test_the_reference_check_catches_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("")
    text = (
        "See [here](docs/here.md#top), [web](https://example.org), docs/here.md, `docs/`.\n"
        "Not API.md, nor [gone](docs/gone.md), nor tests/nothing.py, nor ../other/x.\n"
    )
    assert outside_references(text, tmp_path) == [
        "'../' at line 2",
        "link docs/gone.md",
        "file API.md",
        "file docs/gone.md",
        "path docs/gone.md",
        "path tests/nothing.py",
    ]
