"""The README's examples of tunnels run as written.

- "Two nodes, step by step": its shell block runs in bash, unchanged but for the port
  numbers, which are swapped for free ones on 127.0.0.1, and ``curl`` prints what the
  README says it prints. The real ``meshtls`` command, ``python3 -m http.server`` and the
  ``curl`` CLI, in their own processes.
- The node config example: a node loaded from it (ports swapped as well) passes ``curl``
  through its forward to its own expose and on to a backend.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls._config import parse_config
from meshtls.testing import CA

from .test_tunnel import http_backend

README = Path(__file__).parent.parent / "README.md"
WALKTHROUGH_HEADING = "## Two nodes, step by step"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl CLI")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def with_free_ports(text: str, ports: list[str]) -> str:
    """`text` with each of `ports` (as whole numbers) replaced by a free port."""
    swap = dict(zip(ports, map(str, free_ports(len(ports))), strict=True))
    return re.sub(r"\b(" + "|".join(ports) + r")\b", lambda m: swap[m.group(1)], text)


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index(WALKTHROUGH_HEADING) :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the walkthrough has no sh block"
    return match.group(1)


def test_the_walkthrough_names_its_ports_and_says_what_curl_prints() -> None:
    script = walkthrough()
    assert sorted(set(re.findall(r"\b(?:7000|8443|8444|8600|9000|9464|9465)\b", script))) == [
        "7000",
        "8443",
        "8444",
        "8600",
        "9000",
        "9464",
        "9465",
    ]
    (curl,) = [line for line in script.splitlines() if line.startswith("curl ")]
    assert curl.rpartition("#")[2].strip() == "hello through the mesh"


def test_the_two_node_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = with_free_ports(
        walkthrough(), ["7000", "8443", "8444", "8600", "9000", "9464", "9465"]
    )
    # Whatever happens, stop what the script left running and wait for it.
    cleanup = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp_path),
    }
    process = subprocess.Popen(
        ["bash", "-e", "-c", cleanup + script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the walkthrough hung:\n{out.decode()}\n{err.decode()}")
    assert process.returncode == 0, f"{out.decode()}\n{err.decode()}"
    curl = next(line for line in script.splitlines() if line.startswith("curl "))
    expected = curl.rpartition("#")[2].strip()
    assert out.decode().splitlines()[-1] == expected, err.decode()


async def test_the_readme_node_config_runs_curl_through_its_own_tunnels(tmp_path: Path) -> None:
    """The config example's forward dials its own expose: each side must accept the other."""
    (toml,) = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    ca = CA("example.org", now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node/a")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "partner-bundle.pem").write_bytes(CA("partner.org", now=ca.now).bundle_pem)
    (tmp_path / "app").mkdir()  # the example's [[write]] directory: the node writes, never creates
    with http_backend() as backend:
        toml = with_free_ports(toml, ["7000", "8443", "8600", "9464"])
        toml = toml.replace("127.0.0.1:9000", f"127.0.0.1:{backend}")
        config = parse_config(toml, base_dir=tmp_path, source="README.md")
        (forward,) = config.forward
        async with meshtls.open_node(config):
            with trio.fail_after(10):
                done = await trio.run_process(
                    ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{forward.listen[1]}/x"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
    assert (done.returncode, done.stdout) == (0, b"hello from /x"), done.stderr
    assert (tmp_path / "app" / "svid.pem").read_bytes() == issued.chain_pem  # [[write]] ran
