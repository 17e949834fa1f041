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
- at 50 % node ``b``'s current certificate is revoked through the local CA (`LocalCA.revoke`
  writes ``crl.pem``; every node's CRL feed reads it within ``[revocation]
  refresh_interval``, 1 s here): the others close their links to ``b`` (reason
  ``revoked``) and refuse its handshakes;
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

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._errors import ConfigError
from ._spiffeid import TrustDomain

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
#: The shortest ``--duration`` that holds a rotation (0.55 x 15 s) and the whole story.
MIN_DURATION: Final = 10.0
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
            renew_after=round(max(2.0, story * 0.1), 1),
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
    `expires_in`: seconds our SVID has left (None while the node is down).
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


@dataclass(frozen=True, slots=True)
class PairView:
    """Messages from one node to another: confirmed sends, failed sends by reason, and
    what the receiver got."""

    sent: int = 0
    failed: int = 0
    received: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole demo at one instant, `elapsed` seconds after it started."""

    elapsed: float
    plan: Plan
    nodes: tuple[NodeView, ...]
    pairs: Mapping[tuple[str, str], PairView]
    events: tuple[str, ...] = ()


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
        f" restart={RESTARTED}@{plan.restart_at:g}s revoke={REVOKED}@{plan.revoke_at:g}s"
        f" renew={REVOKED}@{plan.renew_at:g}s"
    ]
    for node in snapshot.nodes:
        lines.append(
            f"node={node.name} rotations={node.rotations} revocations={node.revocations}"
            f" refused_revoked={node.refused_revoked} restarts={node.restarts}"
            f" handshakes_ok={node.handshakes_ok} handshakes_failed={node.handshakes_failed}"
        )
    for (source, target), pair in sorted(snapshot.pairs.items()):
        failures = ",".join(f"{k}:{v}" for k, v in sorted(pair.failures.items())) or "-"
        lines.append(
            f"pair={source}->{target} sent={pair.sent} failed={pair.failed}"
            f" received={pair.received} failures={failures}"
        )
    return lines
