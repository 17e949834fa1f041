"""Five nodes, each a process in its own network namespace, keep a full mesh through a
SIGKILL and restart of one node and a cut of another's link; no confirmed send is lost.

The network is `tests.netns`: a private switch namespace with a bridge, five node
namespaces at 10.213.0.1-5. Each node is `tests.mesh_agent` (``open_node`` with a local-CA
identity from one shared CA directory, the other four as ``[[peers]]``), sending a numbered
message to every peer every `INTERVAL` seconds and recording confirmed sends, failed sends
(with the `SendError` reason) and receipts in a JSON file.

Phases, each ending as soon as its condition holds (every wait bounded):

1. formed: every node has 4 connected peers and a confirmed send to each;
2. node `KILLED` is SIGKILLed: every other node is told (a `SendError` to it), and messages
   among the other four keep flowing (confirmed and received counts rise for every pair);
3. it restarts (a new incarnation): the mesh is full again, messages flow both ways;
4. node `CUT`'s switch port goes down: every other node and `CUT` itself are told, and the
   other four keep flowing;
5. it comes back up: the mesh is full again, messages flow both ways;
6. every agent stops sending (SIGUSR1), then ends (SIGTERM, exit 0) with a final record.

The no-loss claim, precisely: for every send that an agent recorded as confirmed (any
incarnation, including the killed one's last flushed record), a receiver that was never
killed recorded it. A receiver's record is complete (it is written after every sender
stopped and its inbox went idle). The killed node's first incarnation took messages it never
wrote down (it flushes every 0.2 s), so for that node only the sends confirmed after its
second incarnation was ready count. A confirmation then came from the second incarnation:
the first was dead and reaped, and every sender had already seen a send to it fail, before
the second was started. At the end, the pool's view shows it reconnected: each peer of the
killed and of the cut node counts at least two links made to it (``connected_total``), and
every `SendError` reason is one the contract names for a peer that is away. The two
bystanders, neither killed nor cut, never saw a send to each other fail from the kill on,
and never went more than `MAX_PAUSE` without a confirmed send to each other.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import trio

from meshtls import TrustDomain
from meshtls._ca import LocalCA

from . import netns

pytestmark = pytest.mark.multihost

ROOT = Path(__file__).resolve().parent.parent
NODES = 5
KILLED = 0  # SIGKILLed, then started again
CUT = 1  # its switch port goes down, then up
TRUST_DOMAIN = "mesh.test"
PORT = 7443
INTERVAL = 0.05  # seconds an agent waits after each send, per peer
FLOWING = 5  # a pair "keeps exchanging" when this many more sends were confirmed and received
POLL = 0.1
MAX_PAUSE = 2.0  # seconds: the longest a bystander pair may go without a confirmed send

#: The [mesh] settings: short enough that a dead link is noticed, and redialled, in seconds.
MESH = """\
[mesh]
send_timeout = "2s"
keepalive_interval = "500ms"
keepalive_timeout = "1s"
upgrade_timeout = "2s"
dial_timeout = "1s"
backoff_initial = "100ms"
backoff_max = "1s"
"""


def node_id(index: int) -> str:
    return f"spiffe://{TRUST_DOMAIN}/node/{index}"


def node_config(lab: netns.Lab, index: int, ca_dir: Path) -> str:
    """Node `index`'s TOML: its own address, the other four as peers."""
    peers = "".join(
        f'\n[[peers]]\nid = "{node_id(other)}"\naddress = "{host.address}:{PORT}"\n'
        for other, host in enumerate(lab.hosts)
        if other != index
    )
    return f"""\
[identity]
local_ca = "{ca_dir}"
spiffe_id = "{node_id(index)}"
ttl = "10m"

[node]
listen = "{lab.hosts[index].address}:{PORT}"
metrics = "off"
handshake_timeout = "2s"
shutdown_timeout = "0s"

[revocation]
mode = "off"

[authorize]
member_of = "{TRUST_DOMAIN}"

{MESH}{peers}"""


@dataclass
class Agent:
    """One node's agent process; each start is a new incarnation with its own files."""

    index: int
    host: netns.Host
    config: Path
    incarnation: int = 0
    process: trio.Process | None = None
    killed: bool = False  # by the test, on purpose

    @property
    def id(self) -> str:
        return node_id(self.index)

    def record_path(self, incarnation: int | None = None) -> Path:
        return self.config.with_name(f"agent{self.index}.{incarnation or self.incarnation}.json")

    def log_path(self, incarnation: int | None = None) -> Path:
        return self.config.with_name(f"agent{self.index}.{incarnation or self.incarnation}.log")

    async def start(self) -> None:
        self.incarnation += 1
        self.killed = False
        argv = [
            sys.executable, "-m", "tests.mesh_agent", str(self.config),
            "--record", str(self.record_path()),
            "--incarnation", str(self.incarnation),
            "--interval", str(INTERVAL),
        ]  # fmt: skip
        with _log_file(self.log_path()) as log:
            self.process = await trio.lowlevel.open_process(
                self.host.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL this incarnation and reap it."""
        assert self.process is not None
        self.killed = True
        self.process.kill()
        await self.process.wait()

    def record(self, incarnation: int | None = None) -> Seen | None:
        return Seen.load(self.record_path(incarnation))


@dataclass(frozen=True, slots=True)
class Seen:
    """One agent's record (see `tests.mesh_agent`); times are `time.monotonic`."""

    id: str
    incarnation: int
    ready: float | None
    stopped: bool
    peers: dict[str, str]  # id -> pool state
    links: dict[str, int]  # id -> links made to it (connected_total)
    sent: dict[str, list[tuple[int, float]]]  # peer -> confirmed (seq, t)
    failed: dict[str, list[tuple[int, str, float]]]  # peer -> (seq, reason, t)
    received: dict[str, dict[str, list[int]]]  # sender -> its incarnation -> seqs
    unreadable: int  # messages that were not "INCARNATION SEQ"

    @classmethod
    def load(cls, path: Path) -> Seen | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return cls(
            id=data["id"],
            incarnation=data["incarnation"],
            ready=data["ready"],
            stopped=data["stopped"],
            peers={peer["id"]: peer["state"] for peer in data["peers"]},
            links={peer["id"]: peer["connected_total"] for peer in data["peers"]},
            sent={peer: [(seq, t) for seq, t in items] for peer, items in data["sent"].items()},
            failed={
                peer: [(seq, reason, t) for seq, reason, t in items]
                for peer, items in data["failed"].items()
            },
            received=data["received"],
            unreadable=data["unreadable"],
        )

    def lost(self, receiver: Seen, *, since: float = 0.0) -> list[int]:
        """Seqs confirmed to `receiver` after `since` that `receiver` never took."""
        got = set(receiver.received.get(self.id, {}).get(str(self.incarnation), []))
        return [seq for seq, t in self.sent.get(receiver.id, []) if t > since and seq not in got]


def _log_file(path: Path) -> IO[bytes]:
    return path.open("wb")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class View:
    """The agents' records at one moment (the current incarnation of each)."""

    records: dict[int, Seen]

    def sent(self, a: int, b: int, since: float = 0.0) -> int:
        """Sends from `a` to `b` that `a` saw confirmed after `since`."""
        record = self.records.get(a)
        items = record.sent.get(node_id(b), []) if record else []
        return sum(1 for _, t in items if t > since)

    def failed(self, a: int, b: int, since: float = 0.0) -> int:
        """Sends from `a` to `b` that raised `SendError` after `since`."""
        record = self.records.get(a)
        items = record.failed.get(node_id(b), []) if record else []
        return sum(1 for _, _, t in items if t > since)

    def received(self, b: int, a: int) -> int:
        """Messages `b` took from `a`, every incarnation of `a`."""
        record = self.records.get(b)
        by_incarnation = record.received.get(node_id(a), {}) if record else {}
        return sum(len(seqs) for seqs in by_incarnation.values())

    def connected(self, a: int) -> int:
        record = self.records.get(a)
        return sum(state == "connected" for state in record.peers.values()) if record else 0

    def not_full(self) -> str | None:
        """None when every node has all its peers connected, else the counts."""
        counts = [self.connected(a) for a in range(NODES)]
        return None if counts == [NODES - 1] * NODES else f"connected peers per node: {counts}"

    def stalled(self, before: View, nodes: list[int]) -> str | None:
        """The ordered pairs among `nodes` whose exchange did not rise by `FLOWING` since
        `before` (confirmed by the sender and taken by the receiver), or None."""
        pairs = [
            f"{a}->{b}"
            for a in nodes
            for b in nodes
            if a != b
            and (
                self.sent(a, b) - before.sent(a, b) < FLOWING
                or self.received(b, a) - before.received(b, a) < FLOWING
            )
        ]
        return f"not flowing: {pairs}" if pairs else None


#: A phase's condition: None when it holds, else what is still missing.
Condition = Callable[[View], str | None]


def first_missing(*missing: str | None) -> str | None:
    return next((item for item in missing if item is not None), None)


@dataclass
class Fleet:
    """The agents of one lab. `until` polls their records; callers bound it."""

    agents: list[Agent]
    phases: list[tuple[str, float]] = field(default_factory=list)
    waiting: str = ""

    def view(self) -> View:
        records = {agent.index: agent.record() for agent in self.agents}
        return View({index: record for index, record in records.items() if record is not None})

    def check_alive(self) -> None:
        """Fail when an agent exited that the test did not kill."""
        for agent in self.agents:
            process = agent.process
            if process is not None and not agent.killed and process.returncode is not None:
                raise AssertionError(f"agent {agent.index} exited with {process.returncode}")

    async def until(self, what: str, condition: Condition) -> View:
        """Poll the records until `condition` holds; fail at once if an agent exits.
        `waiting` says what was missing at the last poll (printed if the caller times out)."""
        start = time.monotonic()
        while True:
            self.check_alive()
            view = self.view()
            missing = condition(view)
            if missing is None:
                self.phases.append((what, round(time.monotonic() - start, 2)))
                return view
            self.waiting = f"waiting for {what}: {missing}"
            await trio.sleep(POLL)

    def tails(self) -> str:
        parts = [self.waiting]
        for agent in self.agents:
            for incarnation in range(1, agent.incarnation + 1):
                log = agent.log_path(incarnation)
                parts.append(f"--- agent {agent.index}.{incarnation} ({log.name})\n{_tail(log)}")
        return "\n".join(parts)


@asynccontextmanager
async def running(agents: list[Agent]) -> AsyncIterator[Fleet]:
    """Start every agent; on the way out, kill and reap whichever still runs. On failure,
    print what the last wait was missing and the tail of every agent's output."""
    fleet = Fleet(agents)
    try:
        for agent in agents:
            await agent.start()
        yield fleet
    except BaseException:
        print(fleet.tails())
        raise
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            for agent in agents:
                if agent.process is not None and agent.process.returncode is None:
                    agent.process.kill()
                    await agent.process.wait()


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    """Five host namespaces on a private switch; removed afterwards, even on failure."""
    try:
        made = netns.open_lab(NODES)
    except netns.LabUnavailableError as exc:
        pytest.skip(f"multi-host test needs network namespaces: {exc}")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def agents(lab: netns.Lab, tmp_path: Path) -> list[Agent]:
    """One shared CA directory and one config per node (nothing started)."""
    ca_dir = tmp_path / "ca"
    LocalCA.init(ca_dir, TrustDomain.parse(TRUST_DOMAIN))
    made = []
    for index, host in enumerate(lab.hosts):
        config = tmp_path / f"node{index}.toml"
        config.write_text(node_config(lab, index, ca_dir))
        made.append(Agent(index, host, config))
    return made


def _everyone(view: View, since: float, node: int) -> str | None:
    """Every other node confirmed a send to `node` after `since`, and `node` one to each."""
    quiet = [
        f"{a}->{b}"
        for a in range(NODES)
        for b in range(NODES)
        if a != b and node in (a, b) and view.sent(a, b, since) == 0
    ]
    return f"no confirmed send yet: {quiet}" if quiet else None


def _told(view: View, since: float, node: int, *, one_way: bool = False) -> str | None:
    """Every other node had a send to `node` fail (`SendError`) after `since`, and unless
    `one_way`, `node` had one to every other node fail."""
    untold = [
        f"{a}->{b}"
        for a in range(NODES)
        for b in range(NODES)
        if a != b and (b == node or (a == node and not one_way)) and view.failed(a, b, since) == 0
    ]
    return f"no SendError yet: {untold}" if untold else None


async def test_five_namespaces_keep_a_mesh_through_a_kill_and_a_cut(
    lab: netns.Lab, agents: list[Agent]
) -> None:
    began = time.monotonic()
    others = [index for index in range(NODES) if index != KILLED]
    rest = [index for index in range(NODES) if index != CUT]
    async with running(agents) as fleet:
        with trio.fail_after(20):
            start = await fleet.until(
                "formed",
                lambda v: first_missing(
                    v.not_full(), *(_everyone(v, 0.0, node) for node in range(NODES))
                ),
            )

        killed_at = time.monotonic()
        await agents[KILLED].kill()
        with trio.fail_after(10):
            dead = await fleet.until(
                "killed: the others told and still exchanging",
                lambda v: first_missing(
                    _told(v, killed_at, KILLED, one_way=True), v.stalled(start, others)
                ),
            )

        await agents[KILLED].start()

        def restarted(view: View) -> str | None:
            record = view.records.get(KILLED)
            if record is None or record.incarnation != agents[KILLED].incarnation:
                return "no record from the new incarnation yet"
            ready = record.ready or time.monotonic()
            return first_missing(
                view.not_full(), _everyone(view, ready, KILLED), view.stalled(dead, others)
            )

        with trio.fail_after(20):
            back = await fleet.until("restarted: the full mesh again", restarted)

        cut_at = time.monotonic()
        await lab.cut(CUT)
        with trio.fail_after(10):
            cut = await fleet.until(
                "cut: both sides told, the others still exchanging",
                lambda v: first_missing(_told(v, cut_at, CUT), v.stalled(back, rest)),
            )

        restored_at = time.monotonic()
        await lab.restore(CUT)
        with trio.fail_after(20):
            await fleet.until(
                "restored: the full mesh again",
                lambda v: first_missing(
                    v.not_full(), _everyone(v, restored_at, CUT), v.stalled(cut, rest)
                ),
            )

        for agent in agents:
            agent.signal(signal.SIGUSR1)

        def stopped(view: View) -> str | None:
            sending = [a for a, record in view.records.items() if not record.stopped]
            return f"still sending: {sending}" if sending else None

        with trio.fail_after(10):
            await fleet.until("stopped sending", stopped)
        for agent in agents:
            agent.signal(signal.SIGTERM)
        with trio.fail_after(10):
            for agent in agents:
                assert agent.process is not None
                assert await agent.process.wait() == 0, f"agent {agent.index} exit status"
        final = fleet.view().records
        first_killed = agents[KILLED].record(1)
        assert first_killed is not None
        senders = [*final.values(), first_killed]
        checked = assert_none_lost(senders, final)
        reasons = Counter(
            reason
            for record in senders
            for items in record.failed.values()
            for _, reason, _ in items
        )
        print(f"multihost: {time.monotonic() - began:.1f} s; phases (s): {fleet.phases}")
        print(f"multihost: {checked} confirmed sends all received; SendErrors: {dict(reasons)}")
        assert checked >= 500
        assert [record.unreadable for record in senders] == [0] * len(senders)
        assert set(reasons) <= {"unavailable", "closed", "timeout"}
        relinked = {
            (a, b): final[a].links[node_id(b)]
            for a in range(NODES)
            for b in range(NODES)
            if a != b and (b in (KILLED, CUT) or a == CUT)
        }
        assert min(relinked.values()) >= 2, relinked
        gap = assert_bystanders_undisturbed(final, since=killed_at)
        print(
            f"multihost: longest pause between two confirmed sends of a bystander pair: {gap:.2f} s"
        )


def assert_bystanders_undisturbed(final: dict[int, Seen], *, since: float) -> float:
    """Between the nodes neither killed nor cut, no send failed after `since` (the kill),
    and no two confirmed sends of one pair (nor `since` and the first) were more than
    `MAX_PAUSE` apart. Returns the longest pause seen."""
    bystanders = [index for index in range(NODES) if index not in (KILLED, CUT)]
    longest = 0.0
    for a in bystanders:
        for b in bystanders:
            if a == b:
                continue
            failed = [item for item in final[a].failed.get(node_id(b), []) if item[2] > since]
            assert failed == [], f"{a}->{b} failed while the others were out: {failed}"
            times = [t for _, t in final[a].sent[node_id(b)] if t > since]
            pauses = [later - earlier for earlier, later in itertools.pairwise([since, *times])]
            longest = max(longest, *pauses)
    assert longest <= MAX_PAUSE
    return longest


def assert_none_lost(senders: list[Seen], final: dict[int, Seen]) -> int:
    """Every send in `senders` confirmed to a receiver in `final` was received, apart from
    the killed node's window (module docstring). Returns how many sends were checked."""
    checked = 0
    for sender in senders:
        for index, receiver in final.items():
            since = 0.0
            if index == KILLED:
                assert receiver.ready is not None
                since = receiver.ready
            lost = sender.lost(receiver, since=since)
            assert lost == [], f"{sender.id} ({sender.incarnation}) -> {receiver.id}: {lost}"
            checked += sum(1 for _, t in sender.sent.get(receiver.id, []) if t > since)
    return checked
