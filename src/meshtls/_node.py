"""The node: one nursery that supervises a mesh node's long-running tasks.

Theory of operation. `open_node` starts, in this order: the health and metrics endpoint
(so that probes are answered from the first instant: ``/healthz`` 200, ``/readyz`` 503
"waiting for the first identity from ..."), the identity source (a live source's `run`
task, with a wait bounded by ``[node] startup_timeout``), the rotation task
(`meshtls._rotation`) and the identity watch (`Node._watch_identity`: the last rotation
for ``/status``, a warning at 80 % of our SVID's lifetime, an error at its expiry), the
mesh listener, and every ``[[expose]]`` and ``[[forward]]`` listener. The node is *ready*
(``/readyz`` 200) once all of them are up, and for as long as our SVID has not expired
(`meshtls._status.readiness`). The dialer pool and the revocation prefetcher will join the
same nursery.

The node only supervises. What identity its listeners use is the rotation's business:
the listeners take the `Rotation` as their `IdentitySource`, the source reports what it
refuses to the rotation, and every verified connection runs under `Rotation.track` (its
deadline, and closure when its root leaves the bundle). The node is an `IdentitySource`
too, for embedders who dial with it.

Errors: a fault in one connection never stops the node. Every start-up failure, whatever
its type (an identity the policy refuses, no first identity in time, a Workload API that
says InvalidArgument, a listener that cannot bind, a CA directory that cannot be made), is
one `NodeError` raised by `open_node` itself, never an exception group. A fatal error
after start-up cancels the node and leaves `open_node` as an exception.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import NoReturn

import trio
from prometheus_client import CollectorRegistry

from ._boundary import describe_error
from ._config import (
    FileIdentity,
    LocalCAIdentity,
    NodeConfig,
    WorkloadApiIdentity,
)
from ._errors import HandshakeError, MeshError, VerificationError
from ._identity import Identity, NoIdentityError
from ._logs import event
from ._metrics import NodeMetrics, add_process_collectors, serve_http
from ._rotation import DRAIN_MARGIN, Rotation
from ._sources import FileSource, LiveSource, LocalCASource
from ._status import (
    Json,
    LastRotation,
    NodeState,
    Phase,
    Readiness,
    lifetime_marks,
    readiness,
    seconds_left,
    status,
)
from ._stream import MeshStream, OurRole, serve
from ._tls import TlsContexts
from ._tunnel import expose, forward

__all__ = ["DRAIN_MARGIN", "Node", "NodeError", "open_node"]

logger = logging.getLogger("meshtls")

Clock = Callable[[], datetime]
Handler = Callable[[MeshStream], Awaitable[object]]
#: The longest the identity watch sleeps between looks at the clock: a wall clock that
#: jumps (suspend, NTP step) is noticed within this many seconds.
_WATCH_INTERVAL = 60.0


class NodeError(MeshError):
    """The node could not start, or stopped for a reason it cannot recover from."""


async def _discard(stream: MeshStream) -> None:
    """The mesh listener's default handler until message channels arrive: read and drop."""
    while await stream.receive_some():
        pass


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
        self.rotation = Rotation(policy=config.policy, metrics=self.metrics, clock=self._clock)
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._ready = False  # started and not draining (`drain` clears it)
        self._started = False
        self._waiting_for: str | None = None
        self._last_rotation: LastRotation | None = None

    # ------------------------------------------------------------ what embedders read

    def identity(self) -> Identity:
        """The active identity (our SVID and bundles), which only the rotation changes."""
        return self.rotation.identity()

    def contexts(self) -> TlsContexts:
        """Shortcut for ``identity().contexts()`` (built before the identity was swapped in)."""
        return self.rotation.identity().contexts()

    @property
    def ready(self) -> bool:
        """Whether the node should get traffic now (``/readyz`` 200); see `readiness`."""
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """Ready while started, not draining, and holding an SVID that has not expired."""
        return readiness(self.state())

    def status(self) -> dict[str, Json]:
        """The ``/status`` document: who we are, what we trust, what runs (no secrets)."""
        return status(self.state())

    def state(self) -> NodeState:
        """A snapshot of what health depends on, at the node clock's now."""
        phase: Phase = "running" if self._ready else "draining" if self._started else "starting"
        try:
            identity = self.rotation.identity()
        except NoIdentityError:
            identity = None
        live = self.rotation.live_by_listener()
        return NodeState(
            now=self._clock(),
            phase=phase,
            waiting_for=self._waiting_for,
            identity=identity,
            listeners={name: _bound(ls) for name, ls in self.listeners.items()},
            connections={name: live.get(name, 0) for name in self.listeners if name != "metrics"},
            rotations=int(self.registry.get_sample_value(self._rotations_name) or 0),
            last_rotation=self._last_rotation,
        )

    @property
    def _rotations_name(self) -> str:
        return f"{self.metrics.prefix}_certificate_rotations_total"

    def now(self) -> datetime:
        return self._clock()

    async def changed(self) -> None:
        """Wait for the next identity event: a rotation, or a refused update."""
        await self.rotation.changed()

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

    # ------------------------------------------------------------ start-up and drain

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

    async def _start(self, nursery: trio.Nursery, handler: Handler) -> None:
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
                    ),
                )
            event(  # debug: "node ready" names it; a failed start stays one line
                logger,
                logging.DEBUG,
                "health endpoint serving",
                address=_bound(self.listeners["metrics"]),
            )
        source = self._build_source()
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
        if self.config.write:  # [[write]]: our SVID on disk for other programs (_write)
            from ._write import start_writers  # noqa: PLC0415 - only nodes that write

            await start_writers(nursery, self.config.write, self.rotation, self.metrics)

        rotation = self.rotation
        default_authorize = self.config.authorize.authorizer(first.svid.spiffe_id.trust_domain)

        async def mesh_handler(stream: MeshStream) -> None:
            with rotation.track(stream, "server", listener="mesh"):
                await handler(stream)

        with _binding("mesh", settings.listen):
            self.listeners["mesh"] = await nursery.start(
                functools.partial(
                    serve,
                    mesh_handler,
                    settings.listen[1],
                    host=settings.listen[0],
                    source=rotation,
                    authorize=default_authorize,
                    policy=self.config.policy,
                    handshake_timeout=settings.handshake_timeout.total_seconds(),
                    max_handshakes=settings.max_handshakes,
                    max_connections=settings.max_connections,
                    clock=self._clock,
                    observer=self,
                ),
            )
        for item in self.config.expose:
            name = f"expose:{_text(item.listen)}"
            with _binding(name, item.listen):
                self.listeners[name] = await nursery.start(
                    functools.partial(
                        expose,
                        item.listen,
                        item.backend,
                        source=rotation,
                        authorize=item.authorizer(default_authorize),
                        policy=self.config.policy,
                        max_connections=item.max_connections,
                        handshake_timeout=settings.handshake_timeout.total_seconds(),
                        connect_timeout=item.connect_timeout.total_seconds(),
                        clock=self._clock,
                        observer=self,
                        track=functools.partial(rotation.track, listener=name),
                        proxy_protocol=item.proxy_protocol,
                    ),
                )
        for fwd in self.config.forward:
            name = f"forward:{_text(fwd.listen)}"
            with _binding(name, fwd.listen):
                self.listeners[name] = await nursery.start(
                    functools.partial(
                        forward,
                        fwd.listen,
                        fwd.peer,
                        authorize=fwd.authorizer(),
                        source=rotation,
                        policy=self.config.policy,
                        max_connections=fwd.max_connections,
                        connect_timeout=fwd.connect_timeout.total_seconds(),
                        clock=self._clock,
                        observer=self,
                        track=functools.partial(rotation.track, listener=name),
                    ),
                )
        self._started = self._ready = True
        event(
            logger,
            logging.INFO,
            "node ready",
            id=first.svid.spiffe_id,
            listen={name: _bound(ls) for name, ls in self.listeners.items()},
        )

    async def _watch_identity(self, first: Identity) -> NoReturn:
        """Note each rotation (for ``/status``), and log once per SVID, on the node's clock:
        a warning when it passes 80 % of its lifetime, an error when it expires.

        Sleeps on Trio's clock until the next mark (at most `_WATCH_INTERVAL`), or until
        the rotation swaps something in; a new SVID starts its marks afresh.
        """
        current = first
        warned = expired = False
        while True:
            svid = current.svid
            warn_at, expire_at = lifetime_marks(svid)
            now = self._clock()
            serial = format(svid.leaf.serial_number, "x")
            not_after = svid.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
            if not expired and now >= expire_at:
                warned = expired = True
                event(
                    logger,
                    logging.ERROR,
                    "our SVID has expired: peers will refuse this node",
                    id=svid.spiffe_id,
                    serial=serial,
                    not_after=not_after,
                    seconds_ago=-seconds_left(svid, now),
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
                    seconds_left=seconds_left(svid, now),
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
        """Stop being ready, and wait until every live connection has finished.

        The caller bounds the wait (``trio.move_on_after(shutdown_timeout)``).
        """
        self._ready = False
        await self.rotation.drained()


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
    """Start a node and yield it once it is ready; stop it when the block ends.

    `handler` runs for each verified peer on the mesh listener (default: read and drop
    until the peer closes). `registry` receives the metrics (default: a new one, never
    the global registry, so several nodes can share a process). `clock` gives
    certificate time (default: the wall clock); `rng` draws the local CA's renewal jitter.
    Raises `NodeError` if it cannot start.
    """
    node = Node(config, registry=registry, clock=clock, rng=rng)
    failed: NodeError | None = None
    started = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                await node._start(nursery, handler or _discard)
            except Exception as exc:  # every start-up failure, of any type, is one NodeError
                failed = _start_failure(exc)
                nursery.cancel_scope.cancel()
            else:
                started = True
                try:
                    yield node
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _, other = group.split(Exception)  # a cancellation or an interrupt is not ours
        if started or failed is not None or other is not None:
            raise
        failed = _start_failure(group)  # a task that failed while the node was starting
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
