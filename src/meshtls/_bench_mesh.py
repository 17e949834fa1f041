"""Mesh formation and message benchmarks: ``meshtls bench mesh`` and ``meshtls bench messages``.

    meshtls bench mesh [--nodes 10,50] [--rounds 3] [--baseline-count 300] [--json FILE] [--quiet]
    meshtls bench messages [--size 1KiB,64KiB] [--concurrency 1,16] [--count N | --seconds S]
        [--rounds 3] [--json FILE] [--quiet]

Theory of operation. Everything runs in this process, over 127.0.0.1 with ports the
kernel picks, so one clock (`time.perf_counter`) serves both ends.

Mesh formation. One temporary local CA (`LocalCAIdentity`, ECDSA P-256) is shared by every
node of the run. A round starts N nodes with `open_node` (mesh listener on port 0, metrics
endpoint off, no peers); that start-up is timed apart and *excluded*. Then the clock
starts, every node is given every other node with `Node.add_peer`, and the clock stops
when every node's `Node.peers()` shows its N-1 peers ``connected`` (polled every
`POLL_INTERVAL` seconds, one node at a time: the clock over-reads by at most one poll).
The handshakes are not assumed: they are read from each node's own
``handshakes_total{role,result}`` counters (client ``ok`` = links dialed and verified,
server ``ok`` = links accepted), summed over the nodes, before and after. Aggregate
handshakes/s = client ``ok`` handshakes / time to full mesh. In the same run (each round,
before or after the mesh, in turn) the single-pair sequential rate is measured with
``bench handshake``'s ``meshtls`` stack at concurrency 1: connect, handshake, one-byte
echo, close, one at a time, between two FileSource identities. The ratio is aggregate
rate / single-pair rate, each the median over rounds. A mesh link does more than that
handshake (a WebSocket upgrade after it), and the mesh's dials run concurrently: the
ratio says how much of one pair's sequential rate the whole mesh reaches.

Messages. Two nodes A and B; A is given B as a peer and the link comes up before any
timing. The ``channel`` stack: ``k`` tasks each loop ``await A.send(B, payload)``, which
returns once B's node has queued the message (confirmed send); B's receiver iterates
``B.messages()`` and stamps each message on arrival. The ``stream`` baseline sends the
same payloads over a bare `MeshStream` pair (`meshtls.connect`/`meshtls.serve`): each
message is a 4-byte length and the payload, the receiver stamps it once whole and answers
with its 8-byte sequence number, and a send returns when that answer arrives, so both
stacks confirm each message with one round trip. Messages/s and MiB/s count confirmed
sends over the step's wall time; latency runs from just before ``send`` to the stamp at
the receiver. Each payload starts with its sequence number, so every message is matched
to its send: a duplicate, unknown or wrongly sized message is an error. After each
channel step the receiver must have seen every confirmed message, and B's and A's
``messages_received_total``/``messages_sent_total`` deltas must equal the confirmed count.
Stacks alternate order each round; figures are medians over rounds and percentiles over
every sample of every round.

Used by ``meshtls bench mesh``/``messages``; the handshake bench is `meshtls._bench`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal, Protocol, cast

import trio

from . import _bench
from ._bench import HOST, Progress, environment, percentile, raise_fd_limit
from ._config import (
    MAX_DIALS,
    AuthorizeSettings,
    LocalCAIdentity,
    MeshSettings,
    NodeConfig,
    NodeSettings,
)
from ._node import Node, open_node
from ._spiffeid import SpiffeId, TrustDomain

TRUST_DOMAIN: Final = TrustDomain("bench.meshtls.local")
#: How often the mesh formation clock looks at a node's peers, in seconds.
POLL_INTERVAL: Final = 0.002
#: Sockets per node besides its links (mesh listener, a spare for the accept loop).
_FDS_PER_NODE: Final = 4
_FDS_SPARE: Final = 64
MESSAGE_STACKS: Final = ("channel", "stream")
WARMUP_MESSAGES: Final = 10
_SEQ: Final = 8  # bytes of sequence number at the start of every payload
_LENGTH: Final = 4  # bytes of length prefix on the stream baseline


# ---------------------------------------------------------------- nodes


def node_id(index: int) -> SpiffeId:
    return SpiffeId(TRUST_DOMAIN, f"/bench/node/{index}")


def node_config(ca_dir: Path, index: int, *, mesh: MeshSettings | None = None) -> NodeConfig:
    """A node of the benchmark: local CA identity, 127.0.0.1:0, no metrics endpoint, no
    access log, members of the bench trust domain allowed, no peers; `mesh` as ``[mesh]``
    (default: the defaults)."""
    return NodeConfig(
        mesh=mesh or MeshSettings(),
        identity=LocalCAIdentity(
            directory=ca_dir, spiffe_id=node_id(index), ttl=timedelta(minutes=30)
        ),
        node=NodeSettings(listen=(HOST, 0), metrics=None, access_log=False),
        authorize=AuthorizeSettings(member_of=TRUST_DOMAIN),
    )


def mesh_address(node: Node) -> str:
    """``host:port`` of the node's bound mesh listener."""
    (listener, *_) = node.listeners["mesh"]
    return f"{HOST}:{int(listener.socket.getsockname()[1])}"


#: The counters the benchmarks read, with the labels they are summed by.
_COUNTED: Final = {
    "handshakes_total": ("role", "result"),
    "peer_dials_total": ("result",),
    "channel_links_ended_total": ("role", "reason"),
    "messages_sent_total": (),
    "messages_received_total": (),
}


def snapshot(nodes: Sequence[Node]) -> collections.Counter[str]:
    """The `_COUNTED` counters summed over `nodes`, keyed ``name/label/label``
    (``handshakes_total/client/ok``; ``messages_sent_total/`` without labels): one collect
    per node, as a scrape would do."""
    total: collections.Counter[str] = collections.Counter()
    for node in nodes:
        prefix = f"{node.config.metrics.prefix}_"
        for family in node.registry.collect():
            for sample in family.samples:
                name = sample.name.removeprefix(prefix)
                labels = _COUNTED.get(name) if sample.name.startswith(prefix) else None
                if labels is not None:
                    key = f"{name}/" + "/".join(sample.labels.get(label, "") for label in labels)
                    total[key] += round(sample.value)
    return total


def _delta(
    after: collections.Counter[str], before: collections.Counter[str], name: str
) -> dict[str, int]:
    """What changed between two snapshots in counter `name`, keyed by its labels."""
    head = f"{name}/"
    keys = sorted(key for key in set(after) | set(before) if key.startswith(head))
    return {
        key.removeprefix(head): after[key] - before[key]
        for key in keys
        if after[key] != before[key]
    }


def _delta_handshakes(
    after: collections.Counter[str], before: collections.Counter[str]
) -> tuple[int, int, int]:
    now, was = _handshakes(after), _handshakes(before)
    return now[0] - was[0], now[1] - was[1], now[2] - was[2]


def _handshakes(counts: collections.Counter[str]) -> tuple[int, int, int]:
    """Handshakes: client ok, server ok, failed (either role)."""
    failed = counts["handshakes_total/client/failed"] + counts["handshakes_total/server/failed"]
    return counts["handshakes_total/client/ok"], counts["handshakes_total/server/ok"], failed


def connected(node: Node) -> int:
    """How many of the node's pooled peers are connected now."""
    return sum(1 for peer in node.peers() if peer.state == "connected")


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def fd_budget(nodes: int) -> int:
    """File descriptors a mesh of `nodes` needs: two per link (one per end), N(N-1) links."""
    return 2 * nodes * (nodes - 1) + _FDS_PER_NODE * nodes + _FDS_SPARE


# ---------------------------------------------------------------- mesh formation


@dataclass(frozen=True, slots=True)
class MeshRound:
    """One mesh of `nodes` formed once: what was timed, and what the metrics counted."""

    nodes: int
    startup_s: float  # opening the N nodes, not timed
    elapsed_s: float  # first add_peer to every node showing N-1 connected
    cpu_s: float
    client_ok: int
    server_ok: int
    failed: int
    dials: dict[str, int]  # the pool's own dial counter, by result
    links_ended: dict[str, int]  # ``role/reason`` -> links that ended while forming
    fds: int  # open file descriptors of the process with the mesh up
    gc: GcWatch  # Python's cyclic collector while the mesh formed
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.client_ok / self.elapsed_s if self.elapsed_s > 0 and not self.error else 0.0


@dataclass(slots=True)
class GcWatch:
    """Collections of the cyclic garbage collector, by generation, and the seconds they
    took, while `watching` (a callback in `gc.callbacks`)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    longest: float = 0.0
    _began: float = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)

    @contextlib.contextmanager
    def watching(self) -> Iterator[GcWatch]:
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)

    def report(self) -> dict[str, object]:
        return {
            "collections": list(self.collections),
            "seconds": [round(value, 3) for value in self.seconds],
            "longest_s": round(self.longest, 3),
        }


def _formation_deadline(nodes: int) -> float:
    return 60.0 + 0.05 * nodes * (nodes - 1)


async def form_mesh(
    ca_dir: Path, nodes: int, *, gc_freeze: bool = False, mesh_settings: MeshSettings | None = None
) -> MeshRound:
    """Open `nodes` nodes, then time their full mesh (see the module doc).

    Before the clock starts, garbage is collected (so an earlier round's is not collected
    on this round's clock); with `gc_freeze`, everything alive then is also moved out of
    the collector's sight (`gc.freeze`) until the round ends."""
    async with contextlib.AsyncExitStack() as stack:
        started = time.perf_counter()
        mesh: list[Node] = []
        for index in range(nodes):
            config = node_config(ca_dir, index, mesh=mesh_settings)
            mesh.append(await stack.enter_async_context(open_node(config)))
        startup = time.perf_counter() - started
        before = snapshot(mesh)
        addresses = [mesh_address(node) for node in mesh]
        error: str | None = None
        gc.collect()
        if gc_freeze:
            gc.freeze()
        start = time.perf_counter()
        cpu_start = time.process_time()
        watch = GcWatch()
        try:
            with watch.watching(), trio.fail_after(_formation_deadline(nodes)):
                for i, node in enumerate(mesh):
                    for j, address in enumerate(addresses):
                        if i != j:
                            node.add_peer(node_id(j), address)
                await _until_full(mesh)
        except trio.TooSlowError:
            error = (
                f"no full mesh after {_formation_deadline(nodes):.0f} s:"
                f" {sum(connected(node) for node in mesh)} of {nodes * (nodes - 1)} connected"
            )
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        with trio.move_on_after(2.0):  # untimed: a server may count its side a moment later
            await _settled(mesh, before)
        after = snapshot(mesh)
        fds = open_fds()
        if gc_freeze:
            gc.unfreeze()
    client_ok, server_ok, failed = _delta_handshakes(after, before)
    return MeshRound(
        nodes=nodes,
        startup_s=startup,
        elapsed_s=elapsed,
        cpu_s=cpu,
        client_ok=client_ok,
        server_ok=server_ok,
        failed=failed,
        dials=_delta(after, before, "peer_dials_total"),
        links_ended=_delta(after, before, "channel_links_ended_total"),
        gc=watch,
        fds=fds,
        error=error,
    )


async def _settled(mesh: Sequence[Node], before: collections.Counter[str]) -> None:
    """Until the server ends have counted as many handshakes as the client ends (in TLS 1.3
    the client finishes first, so the server's count can trail it)."""
    was = _handshakes(before)
    while True:
        client, server, _ = _handshakes(snapshot(mesh))
        if server - was[1] >= client - was[0]:
            return
        await trio.sleep(0.01)


async def _until_full(mesh: Sequence[Node], want: int | None = None) -> None:
    """Return once every node shows `want` peers (default: all the others) connected.

    Looks at one node per poll (a full node is dropped and the next looked at at once),
    then checks them all again."""
    want = len(mesh) - 1 if want is None else want
    while True:
        pending = list(mesh)
        while pending:
            if connected(pending[-1]) == want:
                pending.pop()
            else:
                await trio.sleep(POLL_INTERVAL)
        if all(connected(node) == want for node in mesh):
            return


@dataclass(frozen=True, slots=True)
class MeshOptions:
    nodes: tuple[int, ...] = (10, 50)
    rounds: int = 3
    baseline_count: int = 300
    gc_freeze: bool = False
    max_dials: int | None = None


def run_mesh(options: MeshOptions, progress: Progress | None = None) -> dict[str, object]:
    """Measure and return the mesh formation report (the JSON document)."""
    raise_fd_limit()
    biggest = max(options.nodes)
    soft = _soft_fd_limit()
    if soft is not None and fd_budget(biggest) > soft:
        raise ValueError(
            f"a mesh of {biggest} nodes needs about {fd_budget(biggest)} file descriptors;"
            f" the limit is {soft} (raise ulimit -n or ask for fewer --nodes)"
        )
    progress = progress or Progress(0, "off", sys.stderr)
    progress.total = options.rounds * (len(options.nodes) + 1)
    settings = (
        MeshSettings() if options.max_dials is None else MeshSettings(max_dials=options.max_dials)
    )
    baseline: list[_bench.Step] = []
    rounds: dict[int, list[MeshRound]] = {n: [] for n in options.nodes}
    done = 0
    with tempfile.TemporaryDirectory(prefix="meshtls-bench-mesh-") as tmp:
        ca_dir = Path(tmp) / "ca"
        for round_index in range(options.rounds):
            label = f"round {round_index + 1}/{options.rounds}"
            identity = _bench.make_identity(Path(tmp) / f"pair-{round_index}")
            jobs: list[int | None] = [None, *options.nodes]  # None: the single-pair baseline
            if round_index % 2:
                jobs.reverse()
            for job in jobs:
                if job is None:
                    progress.start(f"{label} single pair, {options.baseline_count} handshakes")
                    gc.collect()  # as before each mesh: no earlier round's garbage on its clock
                    step = _bench.MeshtlsStack().run(
                        identity, 1, options.baseline_count, lambda: None
                    )
                    baseline.append(step)
                    detail = f"{step.rate:8.1f} handshakes/s"
                    if step.errors:
                        detail += f", {step.errors} errors ({step.first_error})"
                else:
                    progress.start(f"{label} mesh of {job} nodes")
                    mesh = trio.run(
                        functools.partial(
                            form_mesh,
                            ca_dir,
                            job,
                            gc_freeze=options.gc_freeze,
                            mesh_settings=settings,
                        )
                    )
                    rounds[job].append(mesh)
                    detail = mesh.error or (
                        f"{mesh.elapsed_s:7.3f} s, {mesh.client_ok} handshakes,"
                        f" {mesh.rate:8.1f} handshakes/s"
                    )
                done += 1
                progress.finish(done, detail)
    progress.close()
    pair = _bench.summarise("meshtls", 1, baseline)
    pair_rate = cast(float, pair["handshakes_per_second"])
    results = [
        summarise_mesh(n, rounds[n], pair_rate, [step.rate for step in baseline])
        for n in options.nodes
    ]
    return {
        "benchmark": "mesh",
        "environment": environment(),
        "options": {
            "nodes": list(options.nodes),
            "rounds": options.rounds,
            "baseline_count": options.baseline_count,
            "poll_interval_s": POLL_INTERVAL,
            "timed": "first add_peer to every node's peers() showing N-1 connected;"
            " node start-up (CA issue, listener bind) is excluded",
            "identities": "one local CA, ECDSA P-256 leaves; metrics endpoints off",
            "gc_freeze": options.gc_freeze,
            "max_dials": settings.max_dials,
        },
        "single_pair": {
            "what": "meshtls connect/serve, one at a time: connect, handshake, 1-byte echo,"
            " close (bench handshake's meshtls row at concurrency 1)",
            **pair,
        },
        "results": results,
    }


def _soft_fd_limit() -> int | None:
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def summarise_mesh(
    nodes: int, rounds: Sequence[MeshRound], pair_rate: float, pair_rates: Sequence[float]
) -> dict[str, object]:
    """Medians over rounds for a mesh of `nodes`, with the ratio to the single-pair rate."""
    good = [r for r in rounds if r.error is None]
    errors = [r.error for r in rounds if r.error is not None]
    rate = statistics.median(r.rate for r in good) if good else 0.0
    elapsed = statistics.median(r.elapsed_s for r in good) if good else math.nan
    links = nodes * (nodes - 1)
    cpu = [r.cpu_s / r.client_ok * 1000 for r in good if r.client_ok]
    return {
        "nodes": nodes,
        "links_expected": links,
        "time_to_full_mesh_s": round(elapsed, 4),
        "handshakes_per_second": round(rate, 1),
        "links_per_second": round(links / elapsed, 1) if good and elapsed > 0 else 0.0,
        "ratio_to_single_pair": round(rate / pair_rate, 3) if pair_rate > 0 else None,
        "cpu_ms_per_handshake": round(statistics.median(cpu), 3) if cpu else None,
        "handshakes_match_links": bool(good)
        and all(r.client_ok == links and r.server_ok == links for r in good),
        "rounds": [
            {
                "time_to_full_mesh_s": round(r.elapsed_s, 4),
                "startup_s": round(r.startup_s, 3),
                "cpu_s": round(r.cpu_s, 3),
                "handshakes_client_ok": r.client_ok,
                "handshakes_server_ok": r.server_ok,
                "handshakes_failed": r.failed,
                "dials": r.dials,
                "links_ended": r.links_ended,
                "cpu_ms_per_link": round(r.cpu_s / links * 1000, 3),  # redials included
                "open_fds": r.fds,
                "gc": r.gc.report(),
                "handshakes_per_second": round(r.rate, 1),
                "ratio_to_single_pair": round(r.rate / p, 3) if p > 0 else None,
                "error": r.error,
            }
            for r, p in zip(rounds, pair_rates, strict=False)
        ],
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def render_mesh(report: dict[str, object]) -> str:
    """The mesh report as a text table."""
    env = cast(dict[str, object], report["environment"])
    options = cast(dict[str, object], report["options"])
    pair = cast(dict[str, object], report["single_pair"])
    lines = [
        f"Mesh formation, N nodes in one process over loopback: python {env['python']},"
        f" {env['openssl']}, {env['cpus_usable']} cpus; {options['rounds']} rounds"
        + (", gc.freeze() after start-up" if options.get("gc_freeze") else "")
        + (f", max_dials {options['max_dials']}" if options.get("max_dials") else ""),
        f"single pair (meshtls connect/serve, sequential): {pair['handshakes_per_second']}"
        f" handshakes/s (p50 {cast(dict[str, float], pair['latency_ms'])['p50']} ms,"
        f" cpu {pair['cpu_ms_per_handshake']} ms/hs)",
        f"{'nodes':>5s} {'links':>6s} {'full mesh s':>11s} {'links/s':>8s} {'hs/s':>8s}"
        f" {'ratio':>6s}"
        f" {'cpu ms/hs':>9s} {'client ok':>9s} {'server ok':>9s} {'failed':>6s} {'fds':>6s}"
        f" {'start s':>7s}",
    ]
    for entry in cast(list[dict[str, object]], report["results"]):
        rounds = cast(list[dict[str, object]], entry["rounds"])
        last = rounds[-1] if rounds else {}
        lines.append(
            f"{entry['nodes']!s:>5s} {entry['links_expected']!s:>6s}"
            f" {entry['time_to_full_mesh_s']!s:>11s} {entry['links_per_second']!s:>8s}"
            f" {entry['handshakes_per_second']!s:>8s}"
            f" {entry['ratio_to_single_pair']!s:>6s} {entry['cpu_ms_per_handshake']!s:>9s}"
            f" {last.get('handshakes_client_ok')!s:>9s} {last.get('handshakes_server_ok')!s:>9s}"
            f" {last.get('handshakes_failed')!s:>6s} {last.get('open_fds')!s:>6s}"
            f" {last.get('startup_s')!s:>7s}"
        )
        per_round = ", ".join(
            f"{r['time_to_full_mesh_s']} s / {r['handshakes_per_second']} hs/s"
            f" (gc {sum(cast(dict[str, list[float]], r['gc'])['seconds']):.2f} s)"
            for r in rounds
        )
        lines.append(f"      rounds: {per_round}")
        if not entry["handshakes_match_links"]:
            lines.append("      handshakes counted differ from N(N-1) links: links were redialled")
        for index, one in enumerate(rounds, 1):
            if one.get("links_ended"):
                lines.append(f"      round {index} links ended while forming: {one['links_ended']}")
        if entry["first_error"]:
            lines.append(f"      error: {entry['first_error']}")
    lines += [
        "links/s: N(N-1) / time to full mesh; hs/s: every handshake, redials included;",
        "ratio: mesh hs/s / single-pair hs/s (medians over rounds); gc: seconds in Python's",
        "cyclic garbage collector while forming; cpu ms/hs: process CPU (both ends) per",
        "handshake; client/server ok, failed, fds and start s are from the last round.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- messages


@dataclass(slots=True)
class Recorder:
    """Stamps each message at the receiver and matches it to its send by sequence number."""

    size: int
    starts: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    errors: int = 0
    first_error: str | None = None
    arrived: trio.Event = field(default_factory=trio.Event)
    want: int | None = None

    def sending(self, seq: int) -> None:
        self.starts[seq] = time.perf_counter()

    def got(self, data: bytes) -> None:
        now = time.perf_counter()
        seq = int.from_bytes(data[:_SEQ], "big")
        start = self.starts.pop(seq, None)
        if len(data) != self.size:
            self.failed(f"message {seq} is {len(data)} bytes, not {self.size}")
        elif start is None:
            self.failed(f"message {seq} was not sent, or arrived twice")
        else:
            self.latencies.append(now - start)
        self.received += 1
        if self.want is not None and self.received >= self.want:
            self.arrived.set()

    def failed(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what

    async def wait_for(self, count: int) -> None:
        """Until `count` messages have arrived."""
        self.want = count
        if self.received < count:
            await self.arrived.wait()


def payload(seq: int, size: int, filler: bytes) -> bytes:
    return seq.to_bytes(_SEQ, "big") + filler[: size - _SEQ]


class Sender(Protocol):
    async def send(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class MessageStep:
    """One stack, size and concurrency in one round."""

    elapsed: float
    cpu: float
    sent: int  # confirmed sends
    received: int
    latencies: list[float]
    errors: int
    first_error: str | None
    counted_sent: int | None = None  # the nodes' own counters, channel stack only
    counted_received: int | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


async def _warm_up(sender: Sender, receiver: list[Recorder], size: int) -> None:
    """`WARMUP_MESSAGES` sends, each confirmed and received, before a step is timed."""
    filler = bytes(size)
    warm = Recorder(size)
    receiver[0] = warm
    for seq in range(WARMUP_MESSAGES):
        warm.sending(seq)
        await sender.send(payload(seq, size, filler))
    with trio.fail_after(30):
        await warm.wait_for(WARMUP_MESSAGES)
    if warm.errors:
        raise RuntimeError(f"warm-up: {warm.first_error}")


async def _step(
    sender: Sender,
    receiver: list[Recorder],
    *,
    size: int,
    concurrency: int,
    count: int | None,
    seconds: float | None,
) -> tuple[Recorder, int, float, float, int, str | None]:
    """Run `concurrency` senders until `count` sends or `seconds` passed; then wait (up to
    30 s, untimed) until the receiver has every confirmed message. Returns the recorder,
    confirmed sends, wall and CPU seconds, send errors and the first."""
    filler = bytes(size)
    recorder = Recorder(size)
    receiver[0] = recorder
    next_seq = 0
    confirmed = 0
    errors = 0
    first_error: str | None = None
    deadline = math.inf

    async def worker() -> None:
        nonlocal next_seq, confirmed, errors, first_error
        while (count is None or next_seq < count) and time.perf_counter() < deadline:
            seq = next_seq
            next_seq += 1
            data = payload(seq, size, filler)
            recorder.sending(seq)
            try:
                await sender.send(data)
            except Exception as exc:  # a failed send is data: counted and reported
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                recorder.starts.pop(seq, None)
            else:
                confirmed += 1

    start = time.perf_counter()
    cpu_start = time.process_time()
    if seconds is not None:
        deadline = start + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    with trio.move_on_after(30):
        await recorder.wait_for(confirmed)
    return recorder, confirmed, elapsed, cpu, errors, first_error


class _ChannelSender:
    def __init__(self, node: Node, peer: SpiffeId) -> None:
        self._node = node
        self._peer = peer

    async def send(self, data: bytes) -> None:
        await self._node.send(self._peer, data)


class _FramedSender:
    """The stream baseline's sender: length-prefixed frames on one `MeshStream`, each
    confirmed by the receiver's 8-byte answer; answers come back in order."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._lock = trio.Lock()  # fair: frames go out in the order their senders queued
        self._waiting: collections.deque[trio.Event] = collections.deque()
        self._broken: BaseException | None = None

    async def send(self, data: bytes) -> None:
        done = trio.Event()
        async with self._lock:
            if self._broken is not None:
                raise RuntimeError("the stream broke") from self._broken
            self._waiting.append(done)
            await self._stream.send_all(len(data).to_bytes(_LENGTH, "big") + data)
        await done.wait()
        if self._broken is not None:
            raise RuntimeError("the stream broke before the answer") from self._broken

    async def read_answers(self) -> None:
        """Wake each sender when its answer arrives; when the stream ends or breaks, wake
        them all to fail (and fail every later send)."""
        buffer = bytearray()
        try:
            while chunk := await self._stream.receive_some():
                buffer += chunk
                while len(buffer) >= _SEQ:
                    del buffer[:_SEQ]
                    self._waiting.popleft().set()
            self._broken = EOFError("the receiver closed the stream")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = exc
        finally:
            if self._broken is None:
                self._broken = trio.ClosedResourceError("stopped reading answers")
            while self._waiting:
                self._waiting.popleft().set()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _framed_receiver(receiver: list[Recorder], stream: trio.abc.Stream) -> None:
    """The stream baseline's receiving end: stamp each whole frame, answer its sequence."""
    buffer = bytearray()
    try:
        while chunk := await stream.receive_some(1 << 18):
            buffer += chunk
            while len(buffer) >= _LENGTH:
                length = int.from_bytes(buffer[:_LENGTH], "big")
                if len(buffer) < _LENGTH + length:
                    break
                data = bytes(buffer[_LENGTH : _LENGTH + length])
                del buffer[: _LENGTH + length]
                receiver[0].got(data)
                await stream.send_all(data[:_SEQ])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the sender went away at the end of the round
    finally:
        await stream.aclose()


@dataclass(frozen=True, slots=True)
class MessageOptions:
    sizes: tuple[int, ...] = (1024, 65536)
    concurrency: tuple[int, ...] = (1, 16)
    count: int | None = 1000
    seconds: float | None = None
    rounds: int = 3
    stacks: tuple[str, ...] = MESSAGE_STACKS


async def _message_round(
    ca_dir: Path,
    identity: _bench.Identity,
    options: MessageOptions,
    round_index: int,
    progress: Progress,
) -> dict[tuple[str, int, int], MessageStep]:
    """One round: two nodes and one stream pair, every size x concurrency x stack."""
    steps: dict[tuple[str, int, int], MessageStep] = {}
    channel_in: list[Recorder] = [Recorder(0)]
    stream_in: list[Recorder] = [Recorder(0)]
    async with (
        open_node(node_config(ca_dir, 0)) as a,
        open_node(node_config(ca_dir, 1)) as b,
        trio.open_nursery() as nursery,
    ):
        a.add_peer(node_id(1), mesh_address(b))

        async def inbox() -> None:
            async for message in b.messages():
                channel_in[0].got(message.data)

        nursery.start_soon(inbox)
        with trio.fail_after(30):
            await _until_full([a], 1)
        channel = _ChannelSender(a, node_id(1))

        pair = _bench.MeshtlsStack()
        pair.setup(identity)
        port = await pair.serve(
            nursery, functools.partial(_framed_receiver, stream_in), _bench.Tally()
        )
        framed = _FramedSender(await pair.dial(port))
        nursery.start_soon(framed.read_answers)

        stacks = list(options.stacks)
        if round_index % 2:
            stacks.reverse()
        for size in options.sizes:
            for level in options.concurrency:
                for stack in stacks:
                    progress.start(
                        f"round {round_index + 1}/{options.rounds} {stack} {_size_text(size)}"
                        f" k={level}"
                    )
                    sender: Sender = channel if stack == "channel" else framed
                    inbound = channel_in if stack == "channel" else stream_in
                    await _warm_up(sender, inbound, size)
                    before = (snapshot([a]), snapshot([b]))
                    recorder, sent, elapsed, cpu, errors, first = await _step(
                        sender,
                        inbound,
                        size=size,
                        concurrency=level,
                        count=options.count,
                        seconds=options.seconds,
                    )
                    counted: tuple[int | None, int | None] = (None, None)
                    if stack == "channel":
                        sent_by_a = _delta(snapshot([a]), before[0], "messages_sent_total")
                        got_by_b = _delta(snapshot([b]), before[1], "messages_received_total")
                        counted = (sent_by_a.get("", 0), got_by_b.get("", 0))
                    step = MessageStep(
                        elapsed=elapsed,
                        cpu=cpu,
                        sent=sent,
                        received=recorder.received,
                        latencies=recorder.latencies,
                        errors=errors + recorder.errors,
                        first_error=first or recorder.first_error,
                        counted_sent=counted[0],
                        counted_received=counted[1],
                    )
                    steps[(stack, size, level)] = step
                    detail = f"{step.rate:9.1f} msg/s {step.rate * size / (1 << 20):8.2f} MiB/s"
                    if step.errors:
                        detail += f", {step.errors} errors ({step.first_error})"
                    progress.finish(progress.done + 1, detail)
        await framed.aclose()
        nursery.cancel_scope.cancel()
    return steps


def run_messages(options: MessageOptions, progress: Progress | None = None) -> dict[str, object]:
    """Measure and return the message report (the JSON document)."""
    raise_fd_limit()
    progress = progress or Progress(0, "off", sys.stderr)
    progress.total = (
        options.rounds * len(options.sizes) * len(options.concurrency) * len(options.stacks)
    )
    by_key: dict[tuple[str, int, int], list[MessageStep]] = {}
    with tempfile.TemporaryDirectory(prefix="meshtls-bench-messages-") as tmp:
        ca_dir = Path(tmp) / "ca"
        for round_index in range(options.rounds):
            identity = _bench.make_identity(Path(tmp) / f"pair-{round_index}")
            steps = trio.run(_message_round, ca_dir, identity, options, round_index, progress)
            for key, step in steps.items():
                by_key.setdefault(key, []).append(step)
    progress.close()
    results = [
        summarise_messages(stack, size, level, by_key[(stack, size, level)])
        for size in options.sizes
        for level in options.concurrency
        for stack in options.stacks
    ]
    return {
        "benchmark": "messages",
        "environment": environment(),
        "options": {
            "sizes": list(options.sizes),
            "concurrency": list(options.concurrency),
            "count": options.count,
            "seconds": options.seconds,
            "rounds": options.rounds,
            "stacks": list(options.stacks),
            "warmup": WARMUP_MESSAGES,
            "channel": "node A's send(B) until B's node queued it; stamped at B's messages()",
            "stream": "the same payloads over one bare MeshStream pair, 4-byte length prefix,"
            " each confirmed by the receiver's 8-byte answer",
        },
        "results": results,
        "ratios": compare_messages(results),
    }


def summarise_messages(
    stack: str, size: int, concurrency: int, steps: Sequence[MessageStep]
) -> dict[str, object]:
    """Median throughput over rounds and latency percentiles (ms) over every sample."""
    ordered = sorted(latency for step in steps for latency in step.latencies)
    rate = statistics.median(step.rate for step in steps)
    first_errors = [step.first_error for step in steps if step.first_error]
    return {
        "stack": stack,
        "size": size,
        "concurrency": concurrency,
        "messages_per_second": round(rate, 1),
        "mib_per_second": round(rate * size / (1 << 20), 3),
        "cpu_us_per_message": round(
            statistics.median(s.cpu / s.sent if s.sent else math.nan for s in steps) * 1e6, 1
        ),
        "sent": sum(step.sent for step in steps),
        "received": sum(step.received for step in steps),
        "counted_sent": _sum_or_none(step.counted_sent for step in steps),
        "counted_received": _sum_or_none(step.counted_received for step in steps),
        "samples": len(ordered),
        "latency_ms": {
            name: round(value * 1000, 3)
            for name, value in (
                ("p50", percentile(ordered, 50)),
                ("p90", percentile(ordered, 90)),
                ("p99", percentile(ordered, 99)),
                ("mean", statistics.fmean(ordered) if ordered else math.nan),
                ("max", ordered[-1] if ordered else math.nan),
            )
        },
        "rounds": [
            {
                "messages_per_second": round(step.rate, 1),
                "elapsed_s": round(step.elapsed, 4),
                "sent": step.sent,
                "received": step.received,
                "errors": step.errors,
            }
            for step in steps
        ],
        "errors": sum(step.errors for step in steps),
        "first_error": first_errors[0] if first_errors else None,
    }


def _sum_or_none(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def compare_messages(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """channel / stream: messages/s (ratio of medians) and p50, p99 latency, per size and level."""
    by_key = {(r["stack"], r["size"], r["concurrency"]): r for r in results}
    ratios: list[dict[str, object]] = []
    for (stack, size, level), channel in by_key.items():
        stream = by_key.get(("stream", size, level))
        if stack != "channel" or stream is None:
            continue
        rate = cast(float, stream["messages_per_second"])
        latency = cast(dict[str, float], channel["latency_ms"])
        base = cast(dict[str, float], stream["latency_ms"])
        ratios.append(
            {
                "size": size,
                "concurrency": level,
                "throughput_ratio": round(cast(float, channel["messages_per_second"]) / rate, 3)
                if rate > 0
                else None,
                "p50_ratio": round(latency["p50"] / base["p50"], 3) if base["p50"] > 0 else None,
                "p99_ratio": round(latency["p99"] / base["p99"], 3) if base["p99"] > 0 else None,
            }
        )
    return ratios


def render_messages(report: dict[str, object]) -> str:
    """The message report as a text table."""
    env = cast(dict[str, object], report["environment"])
    options = cast(dict[str, object], report["options"])
    amount = f"{options['count']} messages" if options["count"] else f"{options['seconds']} s"
    lines = [
        f"Messages between two nodes over loopback: python {env['python']}, {env['openssl']},"
        f" {env['cpus_usable']} cpus; {options['rounds']} rounds x {amount} per step",
        f"{'stack':7s} {'size':>6s} {'k':>3s} {'msg/s':>9s} {'MiB/s':>8s} {'cpu us/msg':>10s}"
        f" {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'sent':>7s} {'errors':>6s}",
    ]
    for entry in cast(list[dict[str, object]], report["results"]):
        latency = cast(dict[str, float], entry["latency_ms"])
        lines.append(
            f"{entry['stack']!s:7s} {_size_text(cast(int, entry['size'])):>6s}"
            f" {entry['concurrency']!s:>3s} {entry['messages_per_second']!s:>9s}"
            f" {entry['mib_per_second']!s:>8s} {entry['cpu_us_per_message']!s:>10s}"
            f" {latency['p50']:8.3f} {latency['p90']:8.3f} {latency['p99']:8.3f}"
            f" {entry['sent']!s:>7s} {entry['errors']!s:>6s}"
        )
    ratios = cast(list[dict[str, object]], report["ratios"])
    if ratios:
        lines.append("")
        lines.append("channel / bare MeshStream (ratio of medians; latency ratios of percentiles):")
        for ratio in ratios:
            lines.append(
                f"  {_size_text(cast(int, ratio['size'])):>6s} k={ratio['concurrency']!s:<3s}"
                f" msg/s {ratio['throughput_ratio']!s:>6s}  p50 {ratio['p50_ratio']!s:>6s}"
                f"  p99 {ratio['p99_ratio']!s:>6s}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

_SIZE_RE: Final = re.compile(r"(\d+)\s*(B|KiB|MiB|K|M)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20}


def parse_size(text: str) -> int:
    """``1KiB``, ``64KiB``, ``1MiB`` or a number of bytes (at least 8: the sequence number)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (such as 1KiB, 64KiB, 4096)")
    value = int(match[1]) * _UNITS[(match[2] or "").lower()]
    if value < _SEQ:
        raise argparse.ArgumentTypeError(f"a message must be at least {_SEQ} bytes: {text!r}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    values = tuple(parse_size(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"no sizes in {text!r}")
    return values


def _size_text(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _node_counts(text: str) -> tuple[int, ...]:
    values = _bench._positive_ints(text)
    if min(values) < 2:
        raise argparse.ArgumentTypeError(f"a mesh needs at least 2 nodes: {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"want a positive number of seconds: {text!r}")
    return value


Kind = type[argparse.ArgumentParser]


def mesh_parser(
    prog: str | None = None, kind: Kind = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser = kind(
        prog=prog,
        description="Time for N nodes in one process to form a full mesh, as aggregate"
        " handshakes/s next to the single-pair sequential rate of the same run.",
    )
    parser.add_argument("--nodes", type=_node_counts, default=(10, 50), metavar="N,N")
    parser.add_argument("--rounds", type=_bench.positive_int, default=3)
    parser.add_argument(
        "--baseline-count",
        type=_bench.positive_int,
        default=300,
        metavar="N",
        help="single-pair handshakes per round",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the nodes have started, so the cyclic garbage collector"
        " no longer scans them while the mesh forms",
    )
    parser.add_argument(
        "--max-dials",
        type=_max_dials,
        default=None,
        metavar="N",
        help="each node's [mesh] max_dials (dials in flight; default: the config default)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _max_dials(text: str) -> int:
    value = _bench.positive_int(text)
    if value > MAX_DIALS:
        raise argparse.ArgumentTypeError(f"at most {MAX_DIALS}, not {value}")
    return value


def messages_parser(
    prog: str | None = None, kind: Kind = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser = kind(
        prog=prog,
        description="Confirmed messages/s, MiB/s and send-to-receipt latency between two"
        " nodes, next to the same bytes over a bare MeshStream pair.",
    )
    parser.add_argument("--size", type=_sizes, default=(1024, 65536), metavar="SIZE,SIZE")
    parser.add_argument(
        "--concurrency",
        type=_bench._positive_ints,
        default=(1, 16),
        metavar="K,K",
        help="sends in flight at once",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--count", type=_bench.positive_int, metavar="N", help="messages per step")
    amount.add_argument(
        "--seconds", type=_positive_float, metavar="S", help="seconds of sending per step"
    )
    parser.add_argument("--rounds", type=_bench.positive_int, default=3)
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _mode(quiet: bool) -> Literal["bar", "lines", "off"]:
    return "off" if quiet else "bar" if sys.stderr.isatty() else "lines"


def _write(report: dict[str, object], path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")


def main_mesh(
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    kind: Kind = argparse.ArgumentParser,
) -> int:
    """``bench mesh``: 0 when every mesh formed with no failed handshake, 1 otherwise."""
    args = mesh_parser(prog, kind).parse_args(argv)
    options = MeshOptions(
        nodes=args.nodes,
        rounds=args.rounds,
        baseline_count=args.baseline_count,
        gc_freeze=args.gc_freeze,
        max_dials=args.max_dials,
    )
    report = run_mesh(options, Progress(0, _mode(args.quiet), sys.stderr))
    print(render_mesh(report))
    _write(report, args.json)
    results = cast(list[dict[str, object]], report["results"])
    failed = sum(cast(int, entry["errors"]) for entry in results)
    failed += sum(
        cast(int, r["handshakes_failed"])
        for entry in results
        for r in cast(list[dict[str, object]], entry["rounds"])
    )
    failed += cast(int, cast(dict[str, object], report["single_pair"])["errors"])
    if failed:
        print(f"{failed} failures: the figures are suspect", file=sys.stderr)
        return 1
    return 0


def main_messages(
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    kind: Kind = argparse.ArgumentParser,
) -> int:
    """``bench messages``: 0 when every send was confirmed and every message matched, else 1."""
    args = messages_parser(prog, kind).parse_args(argv)
    options = MessageOptions(
        sizes=args.size,
        concurrency=args.concurrency,
        count=None if args.seconds is not None else (args.count or 1000),
        seconds=args.seconds,
        rounds=args.rounds,
    )
    report = run_messages(options, Progress(0, _mode(args.quiet), sys.stderr))
    print(render_messages(report))
    _write(report, args.json)
    results = cast(list[dict[str, object]], report["results"])
    errors = sum(cast(int, entry["errors"]) for entry in results)
    lost = sum(
        cast(int, entry["sent"]) - cast(int, entry["received"])
        for entry in results
        if cast(int, entry["received"]) < cast(int, entry["sent"])
    )
    miscounted = sum(  # the nodes' own counters must agree with the confirmed sends
        1
        for entry in results
        if entry.get("counted_sent") is not None
        and (entry["counted_sent"] != entry["sent"] or entry["counted_received"] != entry["sent"])
    )
    if errors or lost or miscounted:
        print(
            f"{errors} errors, {lost} confirmed messages not received, {miscounted} steps whose"
            " node counters disagree with the confirmed sends: the figures are suspect",
            file=sys.stderr,
        )
        return 1
    return 0
