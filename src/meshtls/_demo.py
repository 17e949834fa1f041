"""``meshtls demo``: three nodes in one process that show a newcomer the whole mesh at once.

Theory of operation. `run_demo` makes a temporary directory with a local CA in it (removed
at exit), and runs three nodes, ``a``, ``b`` and ``c``, each an `open_node` block of its
own (`_Slot.run`) with a `LocalCAIdentity` from that one CA, a mesh listener and a metrics
endpoint on 127.0.0.1 port 0. Once all three are up, each learns the other two with
`Node.add_peer`; a node that restarts comes back on the port it had and adds them itself.

While the nodes run, every node sends to each of the other two at a steady rate
(`_Demo.send_loop`: ``--rate`` a second, each send awaited, so a confirmed send is one the
peer node queued) and counts what arrives (`_Demo.receive_loop`), per ordered pair. The
story (`Plan`, a pure value) then happens on Trio's clock:

- SVIDs are short (`svid_ttl`), so each node rotates while you watch;
- at 35 % of the story node ``c`` is restarted: its `open_node` block ends (its links are
  reset) and a new one starts on the same port; the others' pools reconnect;
- at 50 % node ``b`` is renewed and every link it is part of re-dialled (`_Demo.refresh`),
  so that they all carry its new certificate; that certificate is then revoked through
  the local CA (`LocalCA.revoke` writes ``crl.pem``; every node's CRL feed reads it
  within ``[revocation] refresh_interval``, 1 s here): the others close their links to ``b`` (reason
  ``revoked``) and refuse its handshakes (with the default TTL, b's own renewals come at
  about 40 % and 80 % of the run, clear of this);
- `Plan.renew_after` later, ``b`` is renewed early (`Node.renew`): a new SVID, not
  revoked, and the pools reconnect.

What you see is a `Snapshot` (pure values, built by `_Demo.snapshot` from the nodes'
metrics and peer states) rendered as a rich table (`render`) on a terminal, or as plain
periodic lines (`plain_lines`) when stdout is not one. The run always ends with a plain
summary (`summary_lines`): one ``key=value`` line per node and per ordered pair.

It ends at ``--duration``, or at the first SIGINT or SIGTERM (a second one stops at once),
always with the summary and exit 0. Errors: a node that cannot start is a `NodeError`
(exit 1 from the command line); nothing a peer does stops the demo.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import tempfile
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final, TextIO

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._ca import LocalCA
from ._config import (
    AuthorizeSettings,
    LocalCAIdentity,
    MeshSettings,
    NodeConfig,
    NodeSettings,
    RevocationSettings,
)
from ._errors import ConfigError, SendError
from ._logs import log_context, record_fields
from ._node import Node, open_node
from ._signals import STOP_SIGNALS, HeldSignals
from ._spiffeid import SpiffeId, TrustDomain

__all__ = [
    "DEFAULT_RATE",
    "DEFAULT_SVID_TTL",
    "MIN_DURATION",
    "MIN_SVID_TTL",
    "NodeView",
    "PairView",
    "PeerView",
    "Plan",
    "Snapshot",
    "plain_lines",
    "render",
    "run_demo",
    "summary_lines",
    "svid_ttl",
]

logger = logging.getLogger("meshtls")

TRUST_DOMAIN: Final = TrustDomain("demo.meshtls.local")
NAMES: Final = ("a", "b", "c")
RESTARTED: Final = "c"
REVOKED: Final = "b"
DEFAULT_SVID_TTL: Final = timedelta(minutes=2)
#: Links are drained `meshtls._rotation.DRAIN_MARGIN` (5 s) before an SVID expires, and a
#: local CA renews at half its lifetime: below 15 s a new link would live 3 s or less.
MIN_SVID_TTL: Final = timedelta(seconds=15)
#: The latest a local CA renews, as a fraction of the lifetime (`LocalCASource`'s
#: ``renew_fraction`` 0.5 plus its ``jitter`` 0.05).
RENEW_LATEST: Final = 0.55
#: The TTL is at most this share of ``--duration``: the first renewal comes by 44 % of it.
TTL_SHARE: Final = 0.8
#: The longest the story waits for the revoked node's re-dialled links before revoking.
REFRESH_WAIT: Final = 3.0
#: How often that wait looks at the pools.
POLL: Final = 0.05
#: The shortest ``--duration`` whose TTL is 80 % of it (not the 15 s floor): then b renews
#: by 44 % and again from 72 %, clear of its revocation at 50 % and early renewal at 60 %.
MIN_DURATION: Final = 19.0
#: How long the story lasts when no ``--duration`` is given (the nodes run on after it).
OPEN_STORY: Final = 60.0
DEFAULT_RATE: Final = 5.0
MAX_RATE: Final = 1000.0
#: A send not confirmed in this time counts as failed (reason ``timeout``).
SEND_TIMEOUT: Final = 1.0
#: Messages a second are measured over this window.
RATE_WINDOW: Final = 3.0
PLAIN_INTERVAL: Final = 2.0
LIVE_INTERVAL: Final = 0.25
EVENTS_SHOWN: Final = 8
#: An event line that repeats within this many seconds is counted on its first line.
REPEAT_WINDOW: Final = 3.0


# ---------------------------------------------------------------- the plan (pure)


def svid_ttl(duration: float | None, requested: timedelta | None = None) -> timedelta:
    """The SVID lifetime the nodes get: `requested` (default `DEFAULT_SVID_TTL`), but never
    more than `TTL_SHARE` of `duration`, so that a local CA, which renews by `RENEW_LATEST`
    of the lifetime, rotates at least once before the end; never below `MIN_SVID_TTL`.

    Raises `ConfigError` for a requested TTL below `MIN_SVID_TTL`.
    """
    ttl = DEFAULT_SVID_TTL if requested is None else requested
    if ttl < MIN_SVID_TTL:
        raise ConfigError(
            f"--svid-ttl {ttl.total_seconds():g}s is under {MIN_SVID_TTL.total_seconds():g}s:"
            " links are drained 5s before an SVID expires"
        )
    if duration is not None:
        cap = max(MIN_SVID_TTL, timedelta(seconds=math.floor(duration * TTL_SHARE)))
        ttl = min(ttl, cap)
    return ttl


@dataclass(frozen=True, slots=True)
class Plan:
    """When the story's events happen, in seconds from the start (Trio's clock).

    `renew_after`: how long the revoked node keeps its revoked SVID before it is renewed
    early, long enough for its peers' CRL feeds (1 s) to close its links and refuse it.
    """

    duration: float | None
    ttl: timedelta
    restart_at: float
    revoke_at: float
    renew_after: float

    @classmethod
    def make(cls, duration: float | None, requested_ttl: timedelta | None = None) -> Plan:
        """The plan for a run of `duration` seconds (None: until interrupted).

        Raises `ConfigError` for a duration under `MIN_DURATION` or a bad TTL.
        """
        if duration is not None and not duration >= MIN_DURATION:
            raise ConfigError(
                f"--duration {duration:g} is too short: the story needs at least"
                f" {MIN_DURATION:g} seconds"
            )
        story = OPEN_STORY if duration is None else duration
        return cls(
            duration=duration,
            ttl=svid_ttl(duration, requested_ttl),
            restart_at=round(story * 0.35, 1),
            revoke_at=round(story * 0.5, 1),
            renew_after=round(min(max(2.0, story * 0.1), 5.0), 1),
        )

    @property
    def renew_at(self) -> float:
        return self.revoke_at + self.renew_after


# ---------------------------------------------------------------- what is shown (pure)


@dataclass(frozen=True, slots=True)
class PeerView:
    """One pooled peer of a node: its name, state (``connecting``, ``connected``,
    ``backing_off``), for how long, and the last dial or link failure."""

    name: str
    state: str
    seconds: float
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as shown. Counts add up over restarts.

    `revocations`: how many of this node's certificates the CA revoked. `refused_revoked`:
    the peers this node refused, or whose live connections it closed, as revoked.
    `expires_in`: seconds our SVID has left (None while the node is down). `links_ended`:
    its message links that ended, by reason (``revoked``, ``drained``, ``broken``, ...).
    """

    name: str
    spiffe_id: str
    address: str
    up: bool
    peers: tuple[PeerView, ...] = ()
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    rotations: int = 0
    revocations: int = 0
    refused_revoked: int = 0
    restarts: int = 0
    expires_in: float | None = None
    rate: float = 0.0
    links_ended: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PairView:
    """Messages from one node to another: confirmed sends, failed sends by reason, what
    the receiver got, and how much of it after the revoked node was renewed (`late`)."""

    sent: int = 0
    failed: int = 0
    received: int = 0
    late: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole demo at one instant, `elapsed` seconds after it started; `revoked_at` and
    `renewed_at`: when the revocation and the renewal after it happened (None: not yet)."""

    elapsed: float
    plan: Plan
    nodes: tuple[NodeView, ...]
    pairs: Mapping[tuple[str, str], PairView]
    events: tuple[str, ...] = ()
    revoked_at: float | None = None
    renewed_at: float | None = None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{max(0.0, value):.0f}s"


def _peer_text(peer: PeerView) -> str:
    text = f"{peer.name} {peer.state} {_seconds(peer.seconds)}"
    if peer.state != "connected" and peer.last_error:
        text += f" ({_cut(peer.last_error, 40)})"
    return text


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_STATE_STYLE: Final = {"connected": "green", "connecting": "yellow", "backing_off": "red"}


def render(snapshot: Snapshot) -> RenderableType:
    """The live view: a table of the nodes, one of the ordered pairs, and the last events."""
    plan = snapshot.plan
    total = "until Ctrl-C" if plan.duration is None else f"of {plan.duration:g}s"
    title = (
        f"meshtls demo  {snapshot.elapsed:.0f}s {total}  (SVID ttl"
        f" {plan.ttl.total_seconds():g}s; restart {RESTARTED} at {plan.restart_at:g}s;"
        f" revoke {REVOKED} at {plan.revoke_at:g}s)"
    )
    nodes = Table(title=title, title_justify="left", expand=False)
    for header in ("node", "listen", "peers", "handshakes ok/failed", "rotations"):
        nodes.add_column(header)
    nodes.add_column("revoked / refused as revoked")
    nodes.add_column("links ended")
    nodes.add_column("SVID expires in", justify="right")
    nodes.add_column("msg/s in", justify="right")
    for node in snapshot.nodes:
        peers = Text()
        for index, peer in enumerate(node.peers):
            if index:
                peers.append("\n")
            peers.append(_peer_text(peer), style=_STATE_STYLE.get(peer.state, ""))
        name = f"{node.name}" + ("" if node.up else " (down)")
        if node.restarts:
            name += f"\nrestarts {node.restarts}"
        nodes.add_row(
            Text(name, style="bold" if node.up else "dim"),
            node.address,
            peers,
            f"{node.handshakes_ok} / {node.handshakes_failed}",
            str(node.rotations),
            f"{node.revocations} / {node.refused_revoked}",
            "\n".join(f"{reason} {n}" for reason, n in sorted(node.links_ended.items())) or "-",
            _seconds(node.expires_in),
            f"{node.rate:.1f}",
        )
    pairs = Table(title="messages per ordered pair", title_justify="left")
    for header in ("from -> to", "confirmed", "failed", "received"):
        pairs.add_column(header, justify="left" if header == "from -> to" else "right")
    for (source, target), pair in sorted(snapshot.pairs.items()):
        failed = str(pair.failed)
        if pair.failures:
            failed += " (" + ", ".join(f"{k} {v}" for k, v in sorted(pair.failures.items())) + ")"
        pairs.add_row(f"{source} -> {target}", str(pair.sent), failed, str(pair.received))
    events = Text("\n".join(snapshot.events[-EVENTS_SHOWN:]) or "(no events yet)")
    return Group(nodes, pairs, Text("events", style="bold"), events)


def plain_lines(snapshot: Snapshot) -> list[str]:
    """The periodic lines for a stdout that is not a terminal: one per node, no ANSI."""
    lines = []
    for node in snapshot.nodes:
        peers = ",".join(f"{p.name}:{p.state}" for p in node.peers) or "-"
        lines.append(
            f"t={snapshot.elapsed:.1f}s node={node.name} {'up' if node.up else 'down'}"
            f" peers={peers} handshakes={node.handshakes_ok}/{node.handshakes_failed}"
            f" rotations={node.rotations} revocations={node.revocations}"
            f" refused_revoked={node.refused_revoked} expires_in={_seconds(node.expires_in)}"
            f" msg_per_s={node.rate:.1f}"
        )
    return lines


def summary_lines(snapshot: Snapshot) -> list[str]:
    """The final summary: plain ``key=value`` words, one line per node and per ordered pair.

    ``revocations`` counts the node's certificates the CA revoked; ``refused_revoked`` the
    peers it refused or cut off as revoked; a pair's ``sent`` counts confirmed sends.
    """
    plan = snapshot.plan
    lines = [
        f"summary elapsed={snapshot.elapsed:.1f}s svid_ttl={plan.ttl.total_seconds():g}s"
        f" restart={RESTARTED}@{plan.restart_at:g}s revoke={REVOKED}@{_at(snapshot.revoked_at)}"
        f" renew={REVOKED}@{_at(snapshot.renewed_at)}"
    ]
    for node in snapshot.nodes:
        lines.append(
            f"node={node.name} rotations={node.rotations} revocations={node.revocations}"
            f" refused_revoked={node.refused_revoked} restarts={node.restarts}"
            f" handshakes_ok={node.handshakes_ok} handshakes_failed={node.handshakes_failed}"
            f" links_ended={_reasons(node.links_ended)}"
        )
    for (source, target), pair in sorted(snapshot.pairs.items()):
        lines.append(
            f"pair={source}->{target} sent={pair.sent} failed={pair.failed}"
            f" received={pair.received} after_renew={pair.late}"
            f" failures={_reasons(pair.failures)}"
        )
    return lines


def _at(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _reasons(counts: Mapping[str, int]) -> str:
    """``revoked:2,timeout:1`` (sorted; ``-`` for none): one word of a summary line."""
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


# ---------------------------------------------------------------- the run (I/O)


@dataclass(slots=True)
class _Pair:
    sent: int = 0
    failed: int = 0
    received: int = 0
    late: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def view(self) -> PairView:
        return PairView(self.sent, self.failed, self.received, self.late, dict(self.failures))


#: The metric samples a node's row adds up (summed over their labels), by our key.
_COUNTED: Final = {
    "handshakes_ok": ("handshakes_total", {"result": "ok"}),
    "handshakes_failed": ("handshakes_total", {"result": "failed"}),
    "rotations": ("certificate_rotations_total", {}),
    "refused_revoked": ("peer_verification_failures_total", {"reason": "revoked"}),
}


def _counted(node: Node) -> Counter[str]:
    """This node's counts from its registry: `_COUNTED`, and ``links_ended:<reason>``."""
    prefix = node.metrics.prefix
    found: Counter[str] = Counter()
    wanted = {f"{prefix}_{name}": name for name, _ in _COUNTED.values()}
    links = f"{prefix}_channel_links_ended_total"
    for family in node.registry.collect():
        for sample in family.samples:
            if sample.name == links:
                found[f"links_ended:{sample.labels.get('reason', '?')}"] += int(sample.value)
            if sample.name not in wanted:
                continue
            for key, (name, labels) in _COUNTED.items():
                if wanted[sample.name] == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    found[key] += int(sample.value)
    return found


class _Slot:
    """One of the demo's nodes across its restarts: its id, its port (0 until the first
    start binds one; kept for every restart), and counts that outlive each `Node`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.spiffe_id = SpiffeId(TRUST_DOMAIN, f"/node/{name}")
        self.port = 0
        self.node: Node | None = None
        self.restarts = 0
        self.revocations = 0
        self.before: Counter[str] = Counter()  # what the nodes before this one counted
        self.restart = trio.Event()
        self.received = 0
        self.samples: deque[tuple[float, int]] = deque()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counted(self) -> Counter[str]:
        now = _counted(self.node) if self.node is not None else Counter()
        return self.before + now

    def rate(self, now: float) -> float:
        """Messages received a second over the last `RATE_WINDOW` seconds."""
        self.samples.append((now, self.received))
        while len(self.samples) > 1 and self.samples[0][0] < now - RATE_WINDOW:
            self.samples.popleft()
        start, count = self.samples[0]
        return 0.0 if now <= start else (self.received - count) / (now - start)


class _Events(logging.Handler):
    """The demo's event list: its own story lines, and the nodes' warnings (a node's own
    log lines would tear the live table)."""

    def __init__(self, start: float) -> None:
        super().__init__(logging.WARNING)
        self.start = start
        self.lines: list[str] = []
        self._recent: dict[str, tuple[int, float, int]] = {}  # text: line, latest, count

    def add(self, text: str) -> None:
        """Add one line; the same text again within `REPEAT_WINDOW` seconds of its last
        time bumps the count on its line instead (a refused peer redials many times)."""
        now = trio.current_time() - self.start
        seen = self._recent.get(text)
        if seen is not None and now - seen[1] < REPEAT_WINDOW:
            index, _, count = seen
            self._recent[text] = (index, now, count + 1)
            self.lines[index] = f"{self.lines[index].split(' (x', 1)[0]} (x{count + 1})"
            return
        self._recent[text] = (len(self.lines), now, 1)
        self.lines.append(f"t={now:.1f}s {text}")

    def emit(self, record: logging.LogRecord) -> None:
        fields = record_fields(record)
        node = fields.get("node")
        detail = " ".join(  # ids and reasons only: addresses (ephemeral ports) never repeat
            f"{key}={fields[key]}"
            for key in ("reason", "peer", "spiffe_id", "claimed_id")
            if key in fields and (key == "reason" or str(fields[key]).startswith("spiffe://"))
        )
        try:
            text = f"{node or '-'}: {record.getMessage()}" + (f" ({detail})" if detail else "")
            self.add(text)
        except RuntimeError:  # logged outside Trio (at exit): nothing to show it in
            pass


class _Demo:
    """One run: the CA directory, the three slots, the counts, and the story."""

    def __init__(self, plan: Plan, directory: Path, *, rate: float) -> None:
        self.plan = plan
        self.rate = rate
        self.ca_dir = directory / "ca"
        self.ca = LocalCA.init(self.ca_dir, TRUST_DOMAIN)
        self.slots = {name: _Slot(name) for name in NAMES}
        self.by_id = {slot.spiffe_id: slot.name for slot in self.slots.values()}
        self.pairs = {(a, b): _Pair() for a in NAMES for b in NAMES if a != b}
        self.stop = trio.Event()
        self.start = trio.current_time()
        self.events = _Events(self.start)
        self.formed = trio.Event()  # set once every node has added the other two
        self.revoked_at: float | None = None  # when the story did it (seconds from start)
        self.renewed_at: float | None = None

    def config(self, slot: _Slot) -> NodeConfig:
        return NodeConfig(
            identity=LocalCAIdentity(
                directory=self.ca_dir, spiffe_id=slot.spiffe_id, ttl=self.plan.ttl
            ),
            node=NodeSettings(
                listen=("127.0.0.1", slot.port),
                metrics=("127.0.0.1", 0),
                access_log=False,
                shutdown_timeout=timedelta(0),
            ),
            revocation=RevocationSettings(refresh_interval=timedelta(seconds=1)),
            authorize=AuthorizeSettings(member_of=TRUST_DOMAIN),
            mesh=MeshSettings(
                send_timeout=timedelta(seconds=SEND_TIMEOUT),
                keepalive_interval=timedelta(seconds=2),
                keepalive_timeout=timedelta(seconds=2),
                dial_timeout=timedelta(seconds=2),
                backoff_initial=timedelta(milliseconds=200),
                backoff_max=timedelta(seconds=1),
            ),
        )

    def elapsed(self) -> float:
        return trio.current_time() - self.start

    # ------------------------------------------------------------ nodes

    async def run_slot(
        self, slot: _Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run `slot`'s node until cancelled; restart it (same port) when asked."""
        first = True
        while True:
            with log_context(node=slot.name):
                async with open_node(self.config(slot)) as node:
                    slot.port = int(node.listeners["mesh"][0].socket.getsockname()[1])
                    slot.node = node
                    if first:
                        task_status.started()
                        first = False
                        await self.formed.wait()
                    else:
                        self.add_peers(slot)
                        self.events.add(f"{slot.name}: back on {slot.address}, new SVID")
                    try:
                        async with trio.open_nursery() as traffic:
                            traffic.start_soon(self.receive_loop, slot, node)
                            for other in self.slots.values():
                                if other is not slot:
                                    traffic.start_soon(self.send_loop, slot, node, other)
                            await slot.restart.wait()
                            traffic.cancel_scope.cancel()
                    finally:
                        slot.before = slot.counted()
                        slot.node = None
            slot.restart = trio.Event()
            slot.restarts += 1
            self.events.add(f"{slot.name}: stopped (its open_node block ended); starting again")

    def add_peers(self, slot: _Slot) -> None:
        """`slot`'s node dials the other two (its log lines name it: the keepers it starts
        inherit this task's log context)."""
        assert slot.node is not None
        with log_context(node=slot.name):
            for other in self.slots.values():
                if other is not slot:
                    slot.node.add_peer(other.spiffe_id, other.address)

    async def send_loop(self, slot: _Slot, node: Node, target: _Slot) -> None:
        """Send to `target` `rate` times a second, each send awaited; count the outcome."""
        pair = self.pairs[(slot.name, target.name)]
        period = 1.0 / self.rate
        due = trio.current_time()
        sequence = 0
        while True:
            sequence += 1
            try:
                await node.send(
                    target.spiffe_id, f"{slot.name}->{target.name} #{sequence}".encode()
                )
            except SendError as exc:
                pair.failed += 1
                pair.failures[exc.reason] += 1
            else:
                pair.sent += 1
            due = max(due + period, trio.current_time())
            await trio.sleep_until(due)

    async def receive_loop(self, slot: _Slot, node: Node) -> None:
        async for message in node.messages():
            sender = self.by_id.get(message.sender)
            if sender is not None:
                pair = self.pairs[(sender, slot.name)]
                pair.received += 1
                if self.renewed_at is not None:
                    pair.late += 1
            slot.received += 1

    # ------------------------------------------------------------ the story

    async def story(self) -> None:
        """Restart one node, revoke another's certificate, renew it early; see the module."""
        plan = self.plan
        await trio.sleep_until(self.start + plan.restart_at)
        self.events.add(f"{RESTARTED}: restarting (same port)")
        self.slots[RESTARTED].restart.set()
        await trio.sleep_until(self.start + plan.revoke_at)
        slot = self.slots[REVOKED]
        node = slot.node
        if node is None:  # only c restarts, and it is up again by now
            return
        serial = await self.refresh(slot, node)
        self.ca.revoke(serial)
        slot.revocations += 1
        self.revoked_at = self.elapsed()
        self.events.add(f"{REVOKED}: certificate {serial:#x} revoked (crl.pem rewritten)")
        await trio.sleep(plan.renew_after)
        current = node.identity().svid.leaf.serial_number
        if current == serial:
            current = node.renew().svid.leaf.serial_number
            self.events.add(f"{REVOKED}: renewed early, new certificate {current:#x}")
        else:
            self.events.add(f"{REVOKED}: renewed on schedule, new certificate {current:#x}")
        self.renewed_at = self.elapsed()

    async def refresh(self, slot: _Slot, node: Node) -> int:
        """Renew `slot`'s SVID and re-dial every pooled link it is part of, so that the live
        links carry the certificate about to be revoked; returns its serial.

        Without this, the links could all still carry an earlier certificate of the node
        (a link keeps the one it was made with until it is replaced), and the revocation
        would close none of them. Waits at most `REFRESH_WAIT` for the links to come back.
        """
        serial = node.renew().svid.leaf.serial_number
        self.events.add(f"{slot.name}: renewed, certificate {serial:#x}; its links re-dialled")
        for other in self.slots.values():
            if other is slot or other.node is None:
                continue
            for near, far in ((other, slot), (slot, other)):
                assert near.node is not None
                with log_context(node=near.name):
                    near.node.remove_peer(far.spiffe_id)
                    near.node.add_peer(far.spiffe_id, far.address)
        for _ in range(round(REFRESH_WAIT / POLL)):  # three nodes' pools: no one event
            if all(
                peer.state == "connected"
                for other in self.slots.values()
                if other.node is not None
                for peer in other.node.peers()
            ):
                break
            await trio.sleep(POLL)
        return serial

    def snapshot(self) -> Snapshot:
        now = trio.current_time()
        views = []
        for slot in self.slots.values():
            counted = slot.counted()
            node = slot.node
            peers: tuple[PeerView, ...] = ()
            expires_in = None
            if node is not None:
                wall = node.now()
                peers = tuple(
                    PeerView(
                        self.by_id.get(peer.id, str(peer.id)),
                        peer.state,
                        (wall - peer.since).total_seconds(),
                        peer.last_error,
                    )
                    for peer in node.peers()
                )
                expires_in = (node.identity().svid.not_after - wall).total_seconds()
            views.append(
                NodeView(
                    name=slot.name,
                    spiffe_id=str(slot.spiffe_id),
                    address=slot.address,
                    up=node is not None,
                    peers=peers,
                    handshakes_ok=counted["handshakes_ok"],
                    handshakes_failed=counted["handshakes_failed"],
                    rotations=counted["rotations"],
                    revocations=slot.revocations,
                    refused_revoked=counted["refused_revoked"],
                    restarts=slot.restarts,
                    expires_in=expires_in,
                    rate=slot.rate(now),
                    links_ended={
                        key.split(":", 1)[1]: n
                        for key, n in counted.items()
                        if key.startswith("links_ended:") and n
                    },
                )
            )
        return Snapshot(
            elapsed=now - self.start,
            plan=self.plan,
            nodes=tuple(views),
            pairs={key: pair.view() for key, pair in self.pairs.items()},
            events=tuple(self.events.lines),
            revoked_at=self.revoked_at,
            renewed_at=self.renewed_at,
        )

    # ------------------------------------------------------------ the whole run

    async def run(self, out: TextIO, *, live: bool) -> Snapshot:
        """Start the nodes, form the mesh, play the story and show it until the duration
        ends or `stop` is set; return the last snapshot (taken before the nodes stop)."""
        async with trio.open_nursery() as nursery:
            for slot in self.slots.values():
                await nursery.start(self.run_slot, slot)
            for slot in self.slots.values():
                self.add_peers(slot)
            self.formed.set()
            self.events.add(f"local CA in {self.ca_dir} (removed at exit)")
            self.events.add("mesh formed: a, b and c each dial the other two")
            nursery.start_soon(self.story)
            deadline = math.inf if self.plan.duration is None else self.plan.duration
            with trio.move_on_at(self.start + deadline):
                await self.show(out, live=live)
            final = self.snapshot()
            nursery.cancel_scope.cancel()
        return final

    async def show(self, out: TextIO, *, live: bool) -> None:
        """Refresh the view until `stop`: a rich live table, or plain lines."""
        if live:
            console = Console(file=out)
            with Live(console=console, auto_refresh=False, transient=False) as view:
                while not self.stop.is_set():
                    view.update(render(self.snapshot()), refresh=True)
                    with trio.move_on_after(LIVE_INTERVAL):
                        await self.stop.wait()
                view.update(render(self.snapshot()), refresh=True)
            return
        shown = 0
        last = -math.inf
        try:
            while not self.stop.is_set():
                lines = self.events.lines
                for line in lines[shown:]:
                    print(f"event {line}", file=out)
                shown = len(lines)
                if trio.current_time() - last >= PLAIN_INTERVAL:
                    last = trio.current_time()
                    for line in plain_lines(self.snapshot()):
                        print(line, file=out)
                out.flush()
                with trio.move_on_after(0.5):
                    await self.stop.wait()
        finally:  # the events since the last pass (a stop signal's among them)
            for line in self.events.lines[shown:]:
                print(f"event {line}", file=out)


@contextmanager
def _quiet_logs(handler: logging.Handler) -> Iterator[None]:
    """The nodes' log lines go to `handler` only, while the demo runs."""
    meshtls = logging.getLogger("meshtls")
    saved = meshtls.handlers[:], meshtls.propagate, meshtls.level
    meshtls.handlers[:] = [handler]
    meshtls.propagate = False
    meshtls.setLevel(logging.WARNING)
    try:
        yield
    finally:
        meshtls.handlers[:], meshtls.propagate = saved[0], saved[1]
        meshtls.setLevel(saved[2])


async def _main(
    plan: Plan, directory: Path, *, rate: float, out: TextIO, live: bool, held: HeldSignals
) -> Snapshot:
    demo = _Demo(plan, directory, rate=rate)
    run_scope = trio.CancelScope()
    with _quiet_logs(demo.events), trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                pending = [signum for signum in held.pending if signum in STOP_SIGNALS]
                held.pending.clear()  # a SIGHUP held meanwhile means nothing to the demo
                for signum in pending:
                    on_signal(signum)
                async for received in signals:
                    on_signal(received)

            def on_signal(signum: int) -> None:
                if not demo.stop.is_set():
                    demo.events.add(f"{signal.Signals(signum).name}: stopping")
                    demo.stop.set()
                else:  # a second one: at once (the summary is still printed)
                    run_scope.cancel()

            nursery.start_soon(watch)
            with run_scope:
                final = await demo.run(out, live=live)
            if run_scope.cancelled_caught:
                final = demo.snapshot()
            nursery.cancel_scope.cancel()
    return final


def run_demo(
    plan: Plan,
    *,
    rate: float = DEFAULT_RATE,
    out: TextIO,
    held: HeldSignals,
    live: bool | None = None,
) -> Snapshot:
    """Run the demo to its end (the plan's duration, or a stop signal) and print the
    summary to `out`. `live`: the rich table (default: when `out` is a terminal).

    `held` holds SIGINT and SIGTERM (`signals_held`), entered before the imports. Raises
    `NodeError` if a node cannot start, `ConfigError` for a bad rate.
    """
    if not 0 < rate <= MAX_RATE:
        raise ConfigError(f"--rate must be more than 0 and at most {MAX_RATE:g}, not {rate:g}")
    if live is None:
        live = out.isatty()
    with tempfile.TemporaryDirectory(prefix="meshtls-demo-") as directory:
        run = functools.partial(_main, rate=rate, out=out, live=live, held=held)
        final = trio.run(run, plan, Path(directory))
    for line in summary_lines(final):
        print(line, file=out)
    return final
