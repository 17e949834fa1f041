"""The network-namespace harness (`tests.netns`): hosts reach each other over the switch
until a cut, and a lab removes what it made, and what a crashed run left, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio

from . import netns

pytestmark = pytest.mark.multihost

PROBE = """\
import socket, sys
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect((sys.argv[1], 9))
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("unreachable")
"""


def _lab_or_skip(count: int, prefix: str) -> netns.Lab:
    try:
        return netns.open_lab(count, prefix=prefix)
    except netns.LabUnavailableError as exc:
        pytest.skip(f"multi-host test needs network namespaces: {exc}")


@pytest.fixture
def pair() -> Iterator[netns.Lab]:
    made = _lab_or_skip(2, f"{netns.FAMILY}{os.getpid()}-pair")
    try:
        yield made
    finally:
        made.close()


async def _probe(lab: netns.Lab, source: int, target: int) -> str:
    """What a TCP connect from host `source` to port 9 of host `target` meets."""
    argv = lab.hosts[source].command([sys.executable, "-c", PROBE, lab.hosts[target].address])
    done = await trio.run_process(argv, capture_stdout=True)
    return done.stdout.decode().strip()


async def test_lab_hosts_reach_each_other_until_cut(pair: netns.Lab) -> None:
    assert await _probe(pair, 0, 1) == "refused"  # reached: nothing listens on port 9
    await pair.cut(1)
    assert await _probe(pair, 0, 1) == "unreachable"
    assert await _probe(pair, 1, 0) == "unreachable"
    await pair.restore(1)
    with trio.fail_after(5):
        while (answer := await _probe(pair, 0, 1)) != "refused":
            assert answer == "unreachable"


def _root_links() -> list[str]:
    listing = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in listing.stdout.splitlines())


def test_lab_sweeps_leftovers_and_removes_all_it_made() -> None:
    prefix = f"{netns.FAMILY}{os.getpid()}-sweep"
    if netns.problem() is None:
        subprocess.run(["ip", "netns", "add", f"{prefix}-7"], check=False)  # a crashed run's
    before = _root_links()
    lab = _lab_or_skip(2, prefix)
    try:
        assert f"{prefix}-7" not in netns.namespaces()
        assert set(lab.names()) <= set(netns.namespaces())
        assert _root_links() == before  # the root namespace gained no device
    finally:
        lab.close()
    assert not set(lab.names()) & set(netns.namespaces())
    assert _root_links() == before
