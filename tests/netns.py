"""A small network of Linux network namespaces for multi-host tests.

Theory of operation: a *lab* is one private "switch" namespace holding a bridge, and one
namespace per node, each joined to the bridge by a veth pair (``eth0`` in the node, ``pN``
on the bridge). Every device is created directly inside its namespace, so the root
namespace gains nothing and loses nothing; deleting the namespaces deletes the bridge and
the veths with them. The subnet is private to the switch, so runs in parallel cannot
collide even though each uses the same addresses.

Names are ``PREFIX-sw`` and ``PREFIX-N`` with ``PREFIX = mtls-<pid>``. `open_lab` first
removes what an earlier run left behind: its own prefix, and any ``mtls-<pid>-`` whose pid
is no longer running (a test run that was killed outright). `Lab.close` kills every process
still inside the lab's namespaces and deletes them; it is idempotent, and also registered
with `atexit`, so an interrupted run cleans up too.

The blocking setup and teardown use `subprocess`; the cuts made while a test runs are
async (`Lab.cut`, `Lab.restore`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

#: Every namespace this harness makes starts with this; the next part is the owner's pid.
FAMILY = "mtls-"
SUBNET = "10.213.0"  # a /24, private to each lab's switch namespace
_OWNED = re.compile(rf"{FAMILY}(\d+)-")


class LabUnavailableError(Exception):
    """Network namespaces cannot be made here; the message says why (a skip reason)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def problem() -> str | None:
    """Why a lab cannot be made here (not root, no ``ip``), or None if it may work."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the tests as root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def namespaces() -> list[str]:
    """The names of all named network namespaces (``ip netns list``)."""
    listing = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process in `namespace` (``ip netns pids``)."""
    for word in _ip("netns", "pids", namespace, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def remove(names: Sequence[str]) -> None:
    """Kill the processes in each namespace of `names`, then delete it. Never raises."""
    for name in names:
        _kill_inside(name)
    for name in names:
        _ip("netns", "delete", name, check=False)


def sweep(prefix: str) -> list[str]:
    """Remove namespaces left by `prefix` or by a dead owner pid; returns their names."""
    stale = []
    for name in namespaces():
        match = _OWNED.match(name)
        if name.startswith(prefix + "-") or (match is not None and not _alive(int(match[1]))):
            stale.append(name)
    remove(stale)
    return stale


@dataclass(frozen=True, slots=True)
class Host:
    """One node's namespace: its name, its address, and its port on the switch."""

    namespace: str
    address: str
    port: str  # the veth end on the bridge, in the switch namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class Lab:
    """A switch namespace and its hosts. Owns the namespaces; `close` removes them."""

    prefix: str
    switch: str
    hosts: list[Host] = field(default_factory=list)
    closed: bool = False

    def names(self) -> list[str]:
        return [host.namespace for host in self.hosts] + [self.switch]

    async def cut(self, index: int) -> None:
        """Take host `index`'s switch port down: its packets go nowhere (no reset, no error)."""
        await trio.run_process(
            ["ip", "-n", self.switch, "link", "set", self.hosts[index].port, "down"]
        )

    async def restore(self, index: int) -> None:
        """Bring host `index`'s switch port back up."""
        await trio.run_process(
            ["ip", "-n", self.switch, "link", "set", self.hosts[index].port, "up"]
        )

    def close(self) -> None:
        """Kill what runs inside, delete every namespace (and with them the bridge, veths)."""
        if self.closed:
            return
        self.closed = True
        remove(self.names())
        atexit.unregister(self.close)


def open_lab(count: int, *, prefix: str | None = None) -> Lab:
    """Make a switch and `count` hosts at ``SUBNET.1`` upwards, each with ``lo`` up.

    Raises `LabUnavailableError` when the first ``ip netns add`` fails (no permission, no
    kernel support); any later failure raises RuntimeError after removing what was made.
    """
    if count > 250:
        raise ValueError("one /24 holds at most 250 hosts here")
    if (reason := problem()) is not None:
        raise LabUnavailableError(reason)
    prefix = prefix or f"{FAMILY}{os.getpid()}"
    sweep(prefix)
    lab = Lab(prefix, f"{prefix}-sw")
    added = _ip("netns", "add", lab.switch, check=False)
    if added.returncode != 0:
        raise LabUnavailableError(f"ip netns add failed: {added.stderr.strip()}")
    atexit.register(lab.close)
    try:
        _ip("-n", lab.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", lab.switch, "link", "set", "br0", "up")
        for index in range(count):
            host = Host(f"{prefix}-{index}", f"{SUBNET}.{index + 1}", f"p{index}")
            _ip("netns", "add", host.namespace)
            lab.hosts.append(host)
            _ip(
                "link", "add", "eth0", "netns", host.namespace, "type", "veth",
                "peer", "name", host.port, "netns", lab.switch,
            )  # fmt: skip
            _ip("-n", lab.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
    except BaseException:
        lab.close()
        raise
    return lab
