"""The node: one nursery that supervises a mesh node's long-running tasks.

Theory of operation. `open_node` starts, in this order: the identity source (a live
source's `run` task, with a bounded wait for the first identity), the rotation task
(`meshtls._rotation`), the mesh listener, every ``[[expose]]`` and ``[[forward]]``
listener, and the metrics endpoint; the node is *ready* (``/readyz`` 200) once all of them
are up. The dialer pool and the revocation prefetcher will join the same nursery.

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
from ._identity import Identity
from ._logs import event, event_fields, log_context
from ._metrics import ListenerMetrics, NodeMetrics, serve_http
from ._rotation import DRAIN_MARGIN, Rotation
from ._sources import FileSource, LiveSource, LocalCASource
from ._stream import Access, MeshStream, OurRole, serve
from ._tls import TlsContexts
from ._tunnel import expose, forward

__all__ = ["DRAIN_MARGIN", "Node", "NodeError", "open_node"]

logger = logging.getLogger("meshtls")
#: The access lines (one per served connection); a child, so it can be filtered apart.
access_logger = logging.getLogger("meshtls.access")

Clock = Callable[[], datetime]
Handler = Callable[[MeshStream], Awaitable[object]]
STARTUP_TIMEOUT = 30.0


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
        self.metrics = NodeMetrics(self.registry, clock=self._clock)
        self.rotation = Rotation(policy=config.policy, metrics=self.metrics, clock=self._clock)
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._listener_metrics: dict[str, ListenerMetrics] = {}
        self._ready = False

    # ------------------------------------------------------------ what embedders read

    def identity(self) -> Identity:
        """The active identity (our SVID and bundles), which only the rotation changes."""
        return self.rotation.identity()

    def contexts(self) -> TlsContexts:
        """Shortcut for ``identity().contexts()`` (built before the identity was swapped in)."""
        return self.rotation.identity().contexts()

    @property
    def ready(self) -> bool:
        return self._ready

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
        source = self._build_source()
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                await nursery.start(source.run)
        except trio.TooSlowError:
            raise NodeError(f"no identity from {source!r} within {STARTUP_TIMEOUT:g}s") from None
        generation, first = source.cell.generation, source.identity()
        try:
            self.rotation.begin(first)
        except VerificationError as exc:
            raise NodeError(f"our SVID {first.svid.spiffe_id} is refused: {exc}") from None
        nursery.start_soon(self.rotation.follow, source.cell, generation)

        settings = self.config.node
        rotation = self.rotation
        default_authorize = self.config.authorize.authorizer(first.svid.spiffe_id.trust_domain)

        async def mesh_handler(stream: MeshStream) -> None:
            with rotation.track(stream, "server", listener="mesh"):
                await handler(stream)

        with _binding("mesh", settings.listen), self._naming("mesh"):
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
            with _binding(name, item.listen), self._naming(name):
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
                    ),
                )
        for fwd in self.config.forward:
            name = f"forward:{_text(fwd.listen)}"
            with _binding(name, fwd.listen), self._naming(name):
                self.listeners[name] = await nursery.start(
                    functools.partial(
                        forward,
                        fwd.listen,
                        fwd.peer,
                        expect=fwd.expect,
                        source=rotation,
                        policy=self.config.policy,
                        max_connections=fwd.max_connections,
                        connect_timeout=fwd.connect_timeout.total_seconds(),
                        clock=self._clock,
                        observer=self,
                        track=functools.partial(rotation.track, listener=name),
                    ),
                )
        if settings.metrics is not None:
            with _binding("metrics", settings.metrics):
                self.listeners["metrics"] = await nursery.start(
                    functools.partial(
                        serve_http,
                        self.registry,
                        settings.metrics[0],
                        settings.metrics[1],
                        ready=lambda: self._ready,
                    ),
                )
        self._ready = True
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


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound(listeners: list[trio.SocketListener]) -> str:
    name = listeners[0].socket.getsockname()
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
