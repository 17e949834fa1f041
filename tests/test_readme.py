"""The README's Python examples run, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block-{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # noqa: S102
    out = capsys.readouterr().out
    assert "spiffe://example.org/" in out


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
    config = parse_config(toml, base_dir=tmp_path, source="README.md")
    assert isinstance(config.identity, FileIdentity)
    assert [e.backend for e in config.expose] == [("127.0.0.1", 9000)]
    assert str(config.forward[0].expect) == "spiffe://example.org/server"
