"""The node: one nursery that supervises a mesh node's long-running tasks.

Theory of operation. `open_node` starts, in this order: the health and metrics endpoint
(so that probes are answered from the first instant: ``/healthz`` 200, ``/readyz`` 503
"waiting for the first identity from ..."), the identity source (a live source's `run`
task, with a wait bounded by ``[node] startup_timeout``), the rotation task
(`meshtls._rotation`) and the identity watch (`Node._watch_identity`: the last rotation
for ``/status``, a warning at 80 % of our SVID's lifetime, an error at its expiry), the
mesh listener, every ``[[expose]]`` and ``[[forward]]`` listener, and last the dialer pool
(`meshtls._dialer.Dialer.run`: a nursery of its own with one keeper task per ``[[peers]]``
entry or `Node.add_peer`). The mesh listener, the tunnels and the pool are each given
``[tls] groups``, the key-exchange groups their handshakes offer and accept, when they
start (so a change needs a restart). The node is *ready* (``/readyz`` 200) once all of
them are up, and for as long as our SVID has not expired (`meshtls._status.readiness`);
the peers never decide readiness, ``/readyz`` only names how many are connected.

Messages. Without ``handler=``, the mesh listener runs a server message link
(`meshtls._channel.run_link`) on each verified connection and registers it, so `Node.send`
can answer a peer that only dialled us; the pool's keepers run client links to their peers.
Every incoming message goes to one bounded `Inbox` (`Node.messages`, or the `PeerChannel`
open for its sender). `Node.send` never dials: the pool's decisions are `meshtls._pool`'s
plain functions, the I/O is `meshtls._dialer`'s. With ``handler=``, the mesh listener hands
each verified `MeshStream` to it instead.

The node only supervises. What identity its listeners use is the rotation's business:
the listeners take the `Rotation` as their `IdentitySource`, the source reports what it
refuses to the rotation, and every verified connection runs under `Rotation.track` (its
deadline, and closure when its root leaves the bundle). The node is an `IdentitySource`
too, for embedders who dial with it.

Reload and drain. Each listener judges peers through a `Gate` (its authorizer, which the
node swaps) and reads the rotation's policy at every handshake. `Node.reload` applies a
new config all or nothing, without a checkpoint: it refuses (`ReloadError`) a change it
cannot apply live, else swaps the policy and the rules, re-reads the identity files and
has the rotation judge every live connection again; ``[[peers]]`` changes add, remove or
move pooled peers. `Node.drain` closes every listening socket but the metrics endpoint's
(new connections are refused at once) and stops the dialer pool, then waits for the live
connections to end.

Errors: a fault in one connection never stops the node. Every start-up failure, whatever
its type (an identity the policy refuses, no first identity in time, a Workload API that
says InvalidArgument, a listener that cannot bind, a CA directory that cannot be made), is
one `NodeError` raised by `open_node` itself, never an exception group. A fatal error
after start-up cancels the node and leaves `open_node` as an exception.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import trio
from cryptography import x509
from prometheus_client import CollectorRegistry

from ._authorize import Authorizer
from ._boundary import describe_error
from ._ca import read_crl_pem
from ._channel import Inbox, Message
from ._config import (
    Address,
    ExposeSettings,
    FileIdentity,
    ForwardSettings,
    LocalCAIdentity,
    NodeConfig,
    PeerSettings,
    WorkloadApiIdentity,
    format_address,
    parse_address,
)
from ._crlfeed import CrlFeed, CrlPlace
from ._dialer import Dialer
from ._duration import format_duration
from ._errors import HandshakeError, MeshError, VerificationError
from ._identity import Identity, NoIdentityError
from ._logs import event, event_fields, log_context
from ._metrics import (
    ListenerMetrics,
    MeshMetrics,
    NodeMetrics,
    add_process_collectors,
    serve_http,
)
from ._pool import PeerStatus
from ._prefetch import Revocations
from ._revocation import RevocationCache, RevocationTarget, StatusRecord
from ._rotation import DRAIN_MARGIN, ClosedConnection, Gate, Rotation
from ._sources import FileSource, LiveSource, LocalCASource
from ._spiffeid import SpiffeId
from ._status import (
    Json,
    LastRotation,
    NodeState,
    Phase,
    Readiness,
    lifetime_marks,
    readiness,
    status,
)
from ._stream import Access, MeshStream, OurRole, serve
from ._tls import TlsContexts
from ._tunnel import expose, forward

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DRAIN_MARGIN",
    "Node",
    "NodeError",
    "PeerChannel",
    "Reload",
    "ReloadError",
    "open_node",
]

logger = logging.getLogger("meshtls")
#: The access lines (one per served connection); a child, so it can be filtered apart.
access_logger = logging.getLogger("meshtls.access")

Clock = Callable[[], datetime]
Handler = Callable[[MeshStream], Awaitable[object]]
#: The longest the identity watch sleeps between looks at the clock: a wall clock that
#: jumps (suspend, NTP step) is noticed within this many seconds.
_WATCH_INTERVAL = 60.0


class NodeError(MeshError):
    """The node could not start, or stopped for a reason it cannot recover from."""


class ReloadError(MeshError):
    """`Node.reload` refused a config; the running config stays in force, all of it."""


@dataclass(frozen=True, slots=True)
class Reload:
    """What `Node.reload` applied: the keys that changed (``"[authorize] ids"``), whether the
    re-read identity files gave a new identity, and the live connections it closed."""

    changed: tuple[str, ...]
    rotated: bool
    closed: tuple[ClosedConnection, ...]


def _peer_id(peer: SpiffeId | str) -> SpiffeId:
    """A peer id given as text is parsed (`SpiffeIdError`, a `ValueError`, if bad)."""
    return peer if isinstance(peer, SpiffeId) else SpiffeId.parse(peer)


class PeerChannel:
    """A two-way channel with one peer, made by `Node.channel`: an async context manager.

    While it is open, the messages from `peer` come here (``async for message in
    channel``), not to `Node.messages`; `send` is `Node.send` to `peer`. Leaving the
    block closes it; messages queued here and not read go back to `Node.messages` as far
    as it has room (the rest are dropped, with a warning line).
    """

    def __init__(self, node: Node, peer: SpiffeId) -> None:
        self.node = node
        self.peer = peer
        self._subscription: AbstractContextManager[trio.MemoryReceiveChannel[Message]] | None = None
        self._receive: trio.MemoryReceiveChannel[Message] | None = None

    async def __aenter__(self) -> PeerChannel:
        if self._subscription is not None:
            raise RuntimeError("this channel is open already")
        subscription = self.node.inbox.subscribe(self.peer)
        self._receive = subscription.__enter__()  # trio.BusyResourceError: one is open
        self._subscription = subscription
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        subscription, self._subscription, self._receive = self._subscription, None, None
        if subscription is not None:
            subscription.__exit__(None, None, None)

    async def send(
        self,
        message: bytes | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as Node.send
    ) -> None:
        """`Node.send` to this channel's peer: returns once the peer node queued it."""
        await self.node.send(self.peer, message, timeout=timeout)

    def __aiter__(self) -> PeerChannel:
        return self

    async def __anext__(self) -> Message:
        if self._receive is None:
            raise RuntimeError("use the channel inside `async with node.channel(peer)`")
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Node:
    """A running node, made by `open_node`. Also an `IdentitySource` (the active identity).

    ``listeners`` maps ``"mesh"``, ``"metrics"``, ``"expose:<listen>"`` and
    ``"forward:<listen>"`` to the bound trio listeners (port 0 resolved). ``rotation``
    owns the active identity and the live connections.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._rng = rng
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.metrics = NodeMetrics(self.registry, clock=self._clock, prefix=config.metrics.prefix)
        add_process_collectors(self.registry)
        self.rotation = Rotation(
            policy=config.policy,
            metrics=self.metrics,
            clock=self._clock,
            groups=config.tls.groups,
        )
        settings = config.revocation
        #: The revocation room (P-4): the cache every handshake reads, and its prefetcher.
        self.revocations = Revocations(
            cache=RevocationCache(ocsp_ttl=settings.ocsp_cache_ttl, crl_ttl=settings.crl_cache_ttl),
            metrics=self.metrics,
            clock=self._clock,
            refresh_interval=settings.refresh_interval,
            skew=config.policy.clock_skew,
            live_chains=self._revocation_chains,
            on_revoked=self._revoked,
        )
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._ready = False  # started and not draining (`drain` clears it)
        self._started = False
        self._waiting_for: str | None = None
        self._last_rotation: LastRotation | None = None
        self._source: LiveSource | None = None
        #: One gate per listener, in config order: mesh, each expose, each forward.
        self._gates: list[Gate] = []
        self._listener_metrics: dict[str, ListenerMetrics] = {}
        #: Incoming messages (bounded: a full inbox slows the senders), and the dialer pool.
        self.inbox = Inbox(config.mesh.queue_size)
        self.mesh_metrics = MeshMetrics(self.registry, prefix=config.metrics.prefix)
        self.dialer = Dialer(
            rotation=self.rotation,
            revocations=self.revocations,
            clock=self._clock,
            observer=self,
            inbox=self.inbox,
            mesh=config.mesh,
            metrics=self.mesh_metrics,
            rng=rng,
            groups=config.tls.groups,
        )

    # ------------------------------------------------------------ what embedders read

    def identity(self) -> Identity:
        """The active identity (our SVID and bundles), which only the rotation changes."""
        return self.rotation.identity()

    def contexts(self) -> TlsContexts:
        """Shortcut for ``identity().contexts(groups)`` with the node's ``[tls] groups`` (the
        contexts its own listeners and dials use)."""
        return self.rotation.identity().contexts(self.rotation.groups)

    @property
    def ready(self) -> bool:
        """Whether the node should get traffic now (``/readyz`` 200); see `readiness`."""
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """Ready while started, not draining, and holding an SVID that has not expired."""
        return readiness(self.state())

    # ------------------------------------------------------------ messages

    async def send(
        self,
        peer_id: SpiffeId | str,
        message: bytes | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - default [mesh] send_timeout
    ) -> None:
        """Send `message` to the peer node `peer_id`; return once that node has queued it.

        Goes over the pool's link to that peer (waiting while it is dialled or backs off,
        never dialling twice), else over a live link that peer dialled to us. Waits at most
        `timeout` seconds (default ``[mesh] send_timeout``), the peer's ack included.
        Raises `SendError` when the send is not confirmed: ``unknown_peer``,
        ``unavailable``, ``timeout``, ``closed`` or ``too_large``; the message may then
        have arrived or not (a retry gives at-least-once). A text message goes as UTF-8.
        """
        await self.dialer.send(_peer_id(peer_id), message, timeout)

    def channel(self, peer_id: SpiffeId | str) -> PeerChannel:
        """A two-way channel with `peer_id`: ``async with node.channel(p) as ch:``."""
        return PeerChannel(self, _peer_id(peer_id))

    def messages(self) -> AsyncIterator[Message]:
        """Every incoming message that no open channel claims, in arrival order, each
        with its sender's verified SPIFFE id. Not reading them slows the senders. The
        iteration ends once the node has stopped and what was queued has been read."""
        return self.inbox.messages()

    def add_peer(self, peer_id: SpiffeId | str, address: str) -> None:
        """Keep a link to `peer_id` at `address` (``host:port``) from now on.

        Raises `ValueError` for a bad address or an id pooled already."""
        self.dialer.add(_peer_id(peer_id), parse_address(address))

    def remove_peer(self, peer_id: SpiffeId | str) -> None:
        """Stop keeping a link to `peer_id`; its links end. Raises `KeyError` if it is not
        a pooled peer."""
        sid = _peer_id(peer_id)
        if not self.dialer.remove(sid):
            raise KeyError(f"{sid} is not a pooled peer")

    def peers(self) -> list[PeerStatus]:
        """Every pooled peer's state, in the order added."""
        return self.dialer.statuses()

    def status(self) -> dict[str, Json]:
        """The ``/status`` document: who we are, what we trust, what runs (no secrets)."""
        document = status(self.state())
        document["revocation"] = {
            "mode": self.rotation.policy.revocation,
            **self.revocations.status(),
        }
        return document

    def state(self) -> NodeState:
        """A snapshot of what health depends on, at the node clock's now."""
        phase: Phase = "running" if self._ready else "draining" if self._started else "starting"
        try:
            identity = self.rotation.identity()
        except NoIdentityError:
            identity = None
        live = self.rotation.live_by_listener()
        problem = self.rotation.svid_problem
        return NodeState(
            now=self._clock(),
            phase=phase,
            waiting_for=self._waiting_for,
            identity=identity,
            listeners={name: _bound(ls) for name, ls in self.listeners.items()},
            connections={name: live.get(name, 0) for name in self.listeners if name != "metrics"},
            rotations=int(self.registry.get_sample_value(self._rotations_name) or 0),
            last_rotation=self._last_rotation,
            svid_problem=None if problem is None else str(problem),
            max_age=self.rotation.policy.max_age,
            peers=tuple(self.dialer.statuses()),
        )

    @property
    def _rotations_name(self) -> str:
        return f"{self.metrics.prefix}_certificate_rotations_total"

    def now(self) -> datetime:
        return self._clock()

    async def changed(self) -> None:
        """Wait for the next identity event: a rotation, or a refused update."""
        await self.rotation.changed()

    def renew(self) -> Identity:
        """Have a local CA identity issue our next SVID now (the rotation swaps it in, as
        at a scheduled renewal); for a certificate revoked before its time. Returns the
        new identity. Raises `NodeError` for another identity form, or before start-up,
        and `ConfigError` when the CA cannot issue."""
        if not isinstance(self._source, LocalCASource):
            raise NodeError("only a local CA identity can be renewed on demand")
        return self._source.renew()

    @property
    def live_connections(self) -> int:
        return self.rotation.live_connections

    # ------------------------------------------------------------ Observer (metrics)

    def handshake(self, role: OurRole, *, seconds: float, error: HandshakeError | None) -> None:
        self.metrics.handshake(role, seconds=seconds, reason=error.reason if error else None)

    def opened(self, role: OurRole) -> None:
        self.metrics.connection_opened(role)

    def closed(self, role: OurRole) -> None:
        self.metrics.connection_closed(role)

    def began(self, access: Access) -> None:
        series = self._listener_metrics.get(access.listener)
        if series is not None:
            series.began()

    def ended(self, access: Access) -> None:
        """A listener's connection ended: its metrics, and its access line (unless it was
        refused, or its end was logged already: one line per event)."""
        series = self._listener_metrics.get(access.listener)
        if series is not None:
            series.ended(
                refused=access.reason if access.ended == "rejected" and not access.served else None,
                received=access.received,
                sent=access.sent,
                backend_failed=access.backend_failed,
                seconds=access.duration if access.served else None,
            )
        if self.config.node.access_log and access.served and not access.reported:
            event_fields(access_logger, logging.INFO, "connection closed", access.fields())

    # ------------------------------------------------------------ start-up and drain

    def _local_crl(self) -> bytes | None:
        """``GET /crl.pem``: our local CA's current CRL; None (404) for other identities."""
        identity = self.config.identity
        return read_crl_pem(identity.directory) if isinstance(identity, LocalCAIdentity) else None

    # ------------------------------------------------------------ revocation (P-4)

    def _revocation_chains(self) -> list[Sequence[x509.Certificate]]:
        """The live chains whose statuses the prefetcher keeps warm: none with mode off."""
        if self.rotation.policy.revocation == "off":
            return []
        return self.rotation.live_chains()

    def _revoked(self, target: RevocationTarget, record: StatusRecord) -> None:
        """A status turned ``revoked``: close every live connection it authenticated."""
        if self.rotation.policy.revocation != "off":
            self.rotation.close_revoked(target)

    def _crl_places(self, source: LiveSource) -> list[CrlPlace]:
        """Where CRLs come from without a fetch: ``[revocation] crl_files``, our local CA's
        ``crl.pem``, and the CRLs the Workload API sends with our SVID."""
        places = [
            CrlPlace(f"file:{path}", functools.partial(_read_file, path))
            for path in self.config.revocation.crl_files
        ]
        identity = self.config.identity
        if isinstance(identity, LocalCAIdentity):
            directory = identity.directory
            places.append(CrlPlace(f"local-ca:{directory}", lambda: _some(read_crl_pem(directory))))
        if isinstance(identity, WorkloadApiIdentity):
            places.append(CrlPlace("workload-api", lambda: source.identity().crls))
        return places

    def _authorities(self) -> list[x509.Certificate]:
        """The certificates that may sign a CRL we are given: our bundles' authorities,
        our own chain, and the issuers in the chains of live connections."""
        identity = self.rotation.identity()
        found: dict[x509.Certificate, None] = {}
        for bundle in identity.bundles.values():
            found.update(dict.fromkeys(bundle.authorities))
        found.update(dict.fromkeys(identity.svid.chain[1:]))
        for chain in self.rotation.live_chains():
            found.update(dict.fromkeys(chain[1:]))
        return list(found)

    def _build_source(self) -> LiveSource:
        identity = self.config.identity
        on_invalid = self.rotation.refused
        if isinstance(identity, FileIdentity):
            return FileSource(
                cert=identity.cert,
                key=identity.key,
                bundle=identity.bundle,
                federated=dict(identity.federated),
                on_invalid=on_invalid,
            )
        if isinstance(identity, LocalCAIdentity):
            return LocalCASource(
                identity.directory,
                identity.spiffe_id,
                identity.ttl,
                clock=self._clock,
                rng=self._rng,
                on_invalid=on_invalid,
            )
        assert isinstance(identity, WorkloadApiIdentity)
        from ._workload import WorkloadApiSource  # noqa: PLC0415 - grpc only when used

        return WorkloadApiSource(identity.address, on_invalid=on_invalid)

    async def _start(self, nursery: trio.Nursery, handler: Handler | None) -> None:
        for note in self.config.notes:
            event(logger, logging.INFO, "config note", note=note)
        settings = self.config.node
        self._waiting_for = _source_text(self.config)
        if settings.metrics is not None:  # first: probes get answers while we wait
            with _binding("metrics", settings.metrics):
                self.listeners["metrics"] = await nursery.start(
                    functools.partial(
                        serve_http,
                        self.registry,
                        settings.metrics[0],
                        settings.metrics[1],
                        ready=self.readiness,
                        status=self.status,
                        files={"/crl.pem": self._local_crl},
                    ),
                )
            event(  # debug: "node ready" names it; a failed start stays one line
                logger,
                logging.DEBUG,
                "health endpoint serving",
                address=_bound(self.listeners["metrics"]),
            )
        source = self._source = self._build_source()
        timeout = settings.startup_timeout.total_seconds()
        try:
            with trio.fail_after(timeout):
                await nursery.start(source.run)
        except trio.TooSlowError:
            raise NodeError(
                f"no identity from {self._waiting_for} within {timeout:g}s ([node] startup_timeout)"
            ) from None
        generation, first = source.cell.generation, source.identity()
        try:
            self.rotation.begin(first)
        except VerificationError as exc:
            raise NodeError(f"our SVID {first.svid.spiffe_id} is refused: {exc}") from None
        nursery.start_soon(self.rotation.follow, source.cell, generation)
        nursery.start_soon(self._watch_identity, first)
        await nursery.start(self.revocations.run)
        feed = CrlFeed(
            self.revocations,
            self._crl_places(source),
            self._authorities,
            metrics=self.metrics,
            interval=min(self.config.revocation.refresh_interval, CRL_FEED_INTERVAL),
        )
        await nursery.start(feed.run)
        if self.config.write:  # [[write]]: our SVID on disk for other programs (_write)
            from ._write import start_writers  # noqa: PLC0415 - only nodes that write

            await start_writers(nursery, self.config.write, self.rotation, self.metrics)

        rotation = self.rotation
        self._gates = [Gate(rule) for rule in self._rules(self.config)]
        mesh_gate, *tunnel_gates = self._gates

        serve_one = handler or self.dialer.serve_inbound

        async def mesh_handler(stream: MeshStream) -> None:
            with rotation.track(stream, "server", listener="mesh", gate=mesh_gate):
                await serve_one(stream)

        with _binding("mesh", settings.listen), self._naming("mesh"):
            self.listeners["mesh"] = await nursery.start(
                functools.partial(
                    serve,
                    mesh_handler,
                    settings.listen[1],
                    host=settings.listen[0],
                    source=rotation,
                    authorize=mesh_gate,
                    policy=rotation.current_policy,
                    revocation=self.revocations,
                    handshake_timeout=settings.handshake_timeout.total_seconds(),
                    max_handshakes=settings.max_handshakes,
                    max_connections=settings.max_connections,
                    clock=self._clock,
                    observer=self,
                    groups=self.config.tls.groups,
                ),
            )
        for item, gate in zip(self.config.expose, tunnel_gates, strict=False):
            name = f"expose:{_text(item.listen)}"
            with _binding(name, item.listen), self._naming(name):
                self.listeners[name] = await nursery.start(
                    functools.partial(
                        expose,
                        item.listen,
                        item.backend,
                        source=rotation,
                        authorize=gate,
                        policy=rotation.current_policy,
                        revocation=self.revocations,
                        max_connections=item.max_connections,
                        handshake_timeout=settings.handshake_timeout.total_seconds(),
                        connect_timeout=item.connect_timeout.total_seconds(),
                        clock=self._clock,
                        observer=self,
                        track=functools.partial(rotation.track, listener=name, gate=gate),
                        proxy_protocol=item.proxy_protocol,
                        groups=self.config.tls.groups,
                    ),
                )
        forward_gates = tunnel_gates[len(self.config.expose) :]
        for fwd, gate in zip(self.config.forward, forward_gates, strict=True):
            name = f"forward:{_text(fwd.listen)}"
            with _binding(name, fwd.listen), self._naming(name):
                self.listeners[name] = await nursery.start(
                    functools.partial(
                        forward,
                        fwd.listen,
                        fwd.peer,
                        authorize=gate,
                        source=rotation,
                        policy=rotation.current_policy,
                        revocation=self.revocations,
                        max_connections=fwd.max_connections,
                        connect_timeout=fwd.connect_timeout.total_seconds(),
                        clock=self._clock,
                        observer=self,
                        track=functools.partial(rotation.track, listener=name, gate=gate),
                        groups=self.config.tls.groups,
                    ),
                )
        await nursery.start(self.dialer.run, self.config.peers)
        self._started = self._ready = True
        event(
            logger,
            logging.INFO,
            "node ready",
            id=first.svid.spiffe_id,
            listen={name: _bound(ls) for name, ls in self.listeners.items()},
        )

    @contextmanager
    def _naming(self, name: str) -> Iterator[None]:
        """Start a listener named `name`: its metric series, and its name on every log line
        of its connections (the log context its tasks inherit; `Access.listener` reads it)."""
        self._listener_metrics[name] = self.metrics.listener(name)
        with log_context(listener=name):
            yield

    async def _watch_identity(self, first: Identity) -> NoReturn:
        """Note each rotation (for ``/status``), and log once per SVID, on the node's clock:
        a warning when it passes 80 % of its usable life, an error when that ends (it
        expires, or grows older than the policy's ``max_age``).

        Sleeps on Trio's clock until the next mark (at most `_WATCH_INTERVAL`), or until
        the rotation swaps something in; a new SVID starts its marks afresh.
        """
        current = first
        warned = expired = False
        while True:
            svid = current.svid
            max_age = self.rotation.policy.max_age
            warn_at, expire_at = lifetime_marks(svid, max_age)
            aged = None  # the policy's max_age, when it ends our SVID before not_after
            if max_age is not None and expire_at < svid.not_after:
                aged = format_duration(max_age)
            now = self._clock()
            serial = format(svid.leaf.serial_number, "x")
            not_after = svid.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
            if not expired and now >= expire_at:
                warned = expired = True
                event(
                    logger,
                    logging.ERROR,
                    "our SVID is older than [policy] max_age: peers will refuse this node"
                    if aged
                    else "our SVID has expired: peers will refuse this node",
                    id=svid.spiffe_id,
                    serial=serial,
                    not_after=not_after,
                    max_age=aged,
                    seconds_ago=math.floor((now - expire_at).total_seconds()),
                )
            elif not warned and now >= warn_at:
                warned = True
                event(
                    logger,
                    logging.WARNING,
                    "our SVID is past 80% of its lifetime and has not been renewed",
                    id=svid.spiffe_id,
                    serial=serial,
                    not_after=not_after,
                    max_age=aged,
                    seconds_left=math.floor((expire_at - now).total_seconds()),
                )
            due = [mark for mark, done in ((warn_at, warned), (expire_at, expired)) if not done]
            wait = _WATCH_INTERVAL
            if due:  # each mark left is still ahead of `now`; max() guards rounding only
                wait = max(0.0, min((min(due) - now).total_seconds(), _WATCH_INTERVAL))
            with trio.move_on_after(wait):
                await self.rotation.changed()
            new = self.rotation.identity()
            if new is not current:
                svid_changed = new.svid.chain != svid.chain
                self._last_rotation = LastRotation(
                    self._clock(), svid_changed, new.bundles is not current.bundles
                )
                if svid_changed:
                    warned = expired = False
                current = new

    async def drain(self) -> None:
        """Stop being ready, stop accepting on every listener, and wait until every live
        connection has finished.

        The caller bounds the wait (``trio.move_on_after(shutdown_timeout)``); the
        connections still live then are cancelled when `open_node`'s block ends.
        """
        self.begin_drain()
        await self.rotation.drained()

    def begin_drain(self) -> None:
        """The first, immediate half of `drain`: not ready, and no new connection accepted.

        Call it before telling anyone the node is draining, so that nobody who read that
        can still get a connection accepted. Calling it again does nothing more.
        """
        self._ready = False
        self.stop_accepting()
        self.dialer.close()

    def stop_accepting(self) -> None:
        """Close the listening sockets of the mesh, expose and forward listeners at once.

        A new connection is refused by the kernel from then on, never accepted and left
        waiting; the live ones are untouched. The metrics endpoint stays up, so probes see
        ``/readyz`` 503 during a drain.
        """
        for name, listeners in self.listeners.items():
            if name != "metrics":
                for listener in listeners:
                    listener.socket.close()

    # ------------------------------------------------------------ reload

    def _apply_peers(
        self, moves: Sequence[tuple[SpiffeId, str]], addresses: dict[SpiffeId, Address]
    ) -> None:
        """Apply a reload's ``[[peers]]`` changes to the pool (a moved peer is redialled; a
        peer added already with `add_peer` is kept, or moved). Nothing while draining."""
        if not self.dialer.running:
            return
        for sid, what in moves:
            if what == "removed":
                self.dialer.remove(sid)
            elif self.dialer.address_of(sid) != addresses[sid]:  # else kept, link and all
                self.dialer.remove(sid)
                self.dialer.add(sid, addresses[sid])

    def _rules(self, config: NodeConfig) -> list[Authorizer]:
        """Each listener's authorizer under `config`: mesh, each expose, each forward."""
        own = self.identity().svid.spiffe_id.trust_domain
        default = config.authorize.authorizer(own)
        return [
            default,
            *(item.authorizer(default) for item in config.expose),
            *(fwd.authorizer() for fwd in config.forward),
        ]

    def reload(self, config: NodeConfig) -> Reload:
        """Apply `config` at once, all or nothing; then judge the live connections again.

        Applied live: ``[[peers]]`` (added, removed, moved), ``[authorize]``, ``[[expose]]
        allow``, ``[[forward]] expect``, ``[policy]``, ``[revocation] mode`` and
        ``hard_fail_wait``, and ``[node] shutdown_timeout``. New handshakes
        use them at once; each live connection whose peer no longer passes is closed,
        counted and logged (`Rotation.recheck`). The identity files (a file identity) are
        read again at once. Logs one summary event.

        Raises `ReloadError`, changing nothing, when `config` changes anything else (the
        message names each such key: they need a restart), or when our own SVID would fail
        the new policy while it passes the running one. Must run in the node's Trio thread;
        it never waits.
        """
        if self._source is None:
            raise ReloadError("the node has not started; nothing to reload")
        restart = needs_restart(self.config, config)
        if restart:
            raise ReloadError(
                f"these changes need a restart: {', '.join(restart)};"
                " the running config stays in force"
            )
        ours = self.identity().svid
        problem = self.rotation.passes(ours, config.policy)
        if problem is not None and self.rotation.passes(ours, self.config.policy) is None:
            # only what the new [policy] adds: an SVID that fails the running one too (it
            # expired, unrenewed) is no reason to keep the old rules, or the old files
            raise ReloadError(
                f"our SVID {ours.spiffe_id} would fail the new [policy]: {problem};"
                " the running config stays in force"
            )
        try:
            rules = self._rules(config)
        except MeshError as exc:
            raise ReloadError(f"{exc}; the running config stays in force") from exc
        changed = _live_changes(self.config, config)
        moves = _peer_changes(self.config.peers, config.peers)
        self.config = config
        self.rotation.policy = config.policy
        for gate, rule in zip(self._gates, rules, strict=True):
            gate.rule = rule
        rotated = False
        if isinstance(self._source, FileSource) and self._source.reload(force=True):
            rotated = self.rotation.apply(self._source.identity())
        closed = tuple(self.rotation.recheck())
        self._apply_peers(moves, {peer.id: peer.address for peer in config.peers})
        event(
            logger,
            logging.INFO,
            "config reloaded",
            changed=", ".join(changed) or "nothing",
            identity="rotated" if rotated else "unchanged",
            closed=len(closed),
        )
        return Reload(tuple(changed), rotated, closed)


#: `NodeConfig` fields `needs_restart` judges one by one; any other field that differs
#: needs a restart (so a key added later is never applied halfway).
_JUDGED: frozenset[str] = frozenset(
    {
        "identity",
        "node",
        "policy",
        "revocation",
        "authorize",
        "expose",
        "forward",
        "source",
        "notes",
        "peers",
        "mesh",
        "tls",
    }
)
#: ``[node]`` keys a reload applies (the shutdown timeout is read when the drain starts).
_LIVE_NODE_KEYS: frozenset[str] = frozenset({"shutdown_timeout"})
#: ``[revocation]`` keys a reload applies: both are in the policy each handshake reads.
#: ``crl_files`` needs a restart (they are loaded into the revocation cache at start).
_LIVE_REVOCATION_KEYS: frozenset[str] = frozenset({"mode", "hard_fail_wait"})


#: The longest time between two reads of the CRLs given without a fetch.
CRL_FEED_INTERVAL: Final = timedelta(seconds=5)


def _read_file(path: Path) -> tuple[bytes]:
    return (path.read_bytes(),)


def _some(data: bytes | None) -> tuple[bytes, ...]:
    return () if data is None else (data,)


def _differing(old: DataclassInstance, new: DataclassInstance) -> list[str]:
    """The names of the dataclass fields whose values differ between `old` and `new`."""
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def _form(config: NodeConfig) -> str:
    identity = config.identity
    if isinstance(identity, FileIdentity):
        return "files"
    return "local_ca" if isinstance(identity, LocalCAIdentity) else "workload_api"


def _tunnel_changes(
    kind: str,
    old: Sequence[ExposeSettings | ForwardSettings],
    new: Sequence[ExposeSettings | ForwardSettings],
    live: str,
) -> list[str]:
    """What differs in the ``[[kind]]`` tables beyond their `live` key: added, removed or
    changed tunnels, each named by its listen address."""
    before = [format_address(item.listen) for item in old]
    after = [format_address(item.listen) for item in new]
    if before != after:
        added = [f"[[{kind}]] {a} added" for a in after if a not in before]
        removed = [f"[[{kind}]] {a} removed" for a in before if a not in after]
        return added + removed or [f"[[{kind}]] order"]
    return [
        f"[[{kind}]] {address} {name}"
        for address, a, b in zip(before, old, new, strict=True)
        for name in _differing(a, b)
        if name != live
    ]


def needs_restart(old: NodeConfig, new: NodeConfig) -> list[str]:
    """Each change from `old` to `new` that a running node cannot apply, named for a person
    (``"[node] listen"``, ``"[[expose]] 127.0.0.1:8600 added"``); empty if there is none."""
    found: list[str] = []
    if type(old.identity) is not type(new.identity):
        found.append(f"[identity] form ({_form(old)} -> {_form(new)})")
    else:
        found += [f"[identity] {name}" for name in _differing(old.identity, new.identity)]
    found += [f"[node] {n}" for n in _differing(old.node, new.node) if n not in _LIVE_NODE_KEYS]
    found += [
        f"[revocation] {n}"
        for n in _differing(old.revocation, new.revocation)
        if n not in _LIVE_REVOCATION_KEYS
    ]
    found += [f"[mesh] {name}" for name in _differing(old.mesh, new.mesh)]
    # The groups are given to each listener and the pool when they start (`_start`).
    found += [f"[tls] {name}" for name in _differing(old.tls, new.tls)]
    found += _tunnel_changes("expose", old.expose, new.expose, "allow")
    found += _tunnel_changes("forward", old.forward, new.forward, "expect")
    found += [f"[{name}]" for name in _differing(old, new) if name not in _JUDGED]
    return found


def _live_changes(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The changes a reload applies, named as `needs_restart` names the others."""
    changed = [f"[policy] {name}" for name in _differing(old.policy, new.policy)]
    changed = [c for c in changed if c not in ("[policy] revocation", "[policy] hard_fail_wait")]
    changed += [
        f"[revocation] {n}"
        for n in _differing(old.revocation, new.revocation)
        if n in _LIVE_REVOCATION_KEYS
    ]
    changed += [f"[authorize] {name}" for name in _differing(old.authorize, new.authorize)]
    if old.node.shutdown_timeout != new.node.shutdown_timeout:
        changed.append("[node] shutdown_timeout")
    changed += [f"[[peers]] {peer} {what}" for peer, what in _peer_changes(old.peers, new.peers)]
    changed += [
        f"[[expose]] {format_address(a.listen)} allow"
        for a, b in zip(old.expose, new.expose, strict=True)
        if a.allow != b.allow
    ]
    changed += [
        f"[[forward]] {format_address(a.listen)} expect"
        for a, b in zip(old.forward, new.forward, strict=True)
        if a.expect != b.expect
    ]
    return changed


def _peer_changes(
    old: Sequence[PeerSettings], new: Sequence[PeerSettings]
) -> list[tuple[SpiffeId, str]]:
    """Each ``[[peers]]`` id added, removed or moved to another address."""
    before = {peer.id: peer.address for peer in old}
    after = {peer.id: peer.address for peer in new}
    found = [(sid, "removed") for sid in before if sid not in after]
    for sid, address in after.items():
        if sid not in before:
            found.append((sid, "added"))
        elif before[sid] != address:
            found.append((sid, f"moved to {format_address(address)}"))
    return found


@contextmanager
def _binding(name: str, address: tuple[str, int]) -> Iterator[None]:
    """A listener that cannot bind is a `NodeError` naming it (not a bare OSError)."""
    try:
        yield
    except OSError as exc:
        raise NodeError(
            f"cannot listen on {_text(address)} for {name}: {exc.strerror or exc}"
        ) from exc


def _source_text(config: NodeConfig) -> str:
    """Where the first identity comes from, for a person: "the Workload API at ..."."""
    identity = config.identity
    if isinstance(identity, FileIdentity):
        return f"the files {identity.cert}, {identity.key} and {identity.bundle}"
    if isinstance(identity, LocalCAIdentity):
        return f"the local CA in {identity.directory}"
    address = identity.address or "$SPIFFE_ENDPOINT_SOCKET"
    return f"the Workload API at {address}"


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound(listeners: list[trio.SocketListener]) -> str:
    """The first socket's bound address; ``"closed"`` once it is closed (e.g. on drain)."""
    try:
        name = listeners[0].socket.getsockname()
    except OSError:
        return "closed"
    return _text((str(name[0]), int(name[1])))


@asynccontextmanager
async def open_node(
    config: NodeConfig,
    *,
    handler: Handler | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Node]:
    """Start a node and yield it once it is ready; stop it when the block ends (the
    connections still live then are reset, never closed as if they had finished).

    `handler` runs for each verified peer on the mesh listener, given its `MeshStream`
    (default: message channels, see `Node.send` and `Node.messages`). `registry`
    receives the metrics (default: a new one, never the global registry, so several
    nodes can share a process). `clock` gives
    certificate time (default: the wall clock); `rng` draws the local CA's renewal jitter.
    Raises `NodeError` if it cannot start.
    """
    node = Node(config, registry=registry, clock=clock, rng=rng)
    failed: NodeError | None = None
    started = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                await node._start(nursery, handler)
            except Exception as exc:  # every start-up failure, of any type, is one NodeError
                failed = _start_failure(exc)
                nursery.cancel_scope.cancel()
            else:
                started = True
                try:
                    yield node
                finally:
                    node.rotation.cut_live()  # still live at the end: cut off, so reset
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _, other = group.split(Exception)  # a cancellation or an interrupt is not ours
        if started or failed is not None or other is not None:
            raise
        failed = _start_failure(group)  # a task that failed while the node was starting
    finally:
        node.inbox.close()  # every link has ended: `messages` ends once it is read
    if failed is not None:
        raise failed


def _start_failure(exc: BaseException) -> NodeError:
    """`exc`, which stopped the start-up, as one `NodeError` line (the original chained)."""
    if isinstance(exc, NodeError):
        return exc
    leaf: BaseException = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    text = str(leaf) if isinstance(leaf, MeshError) else describe_error(leaf)
    failed = NodeError(f"the node could not start: {text}")
    failed.__cause__ = exc
    return failed
