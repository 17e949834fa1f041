"""The node: one nursery that supervises a mesh node's long-running tasks.

Theory of operation. `open_node` starts, in this order: the identity source (a live
source's `run` task, with a bounded wait for the first identity), the rotation task,
the mesh listener, every ``[[expose]]`` and ``[[forward]]`` listener, and the metrics
endpoint; the node is *ready* (``/readyz`` 200) once all of them are up. The dialer
pool and the revocation prefetcher will join the same nursery.

The node is itself the `IdentitySource` its listeners use: `contexts()` gives the
*active* identity, which only the rotation task changes. Each identity the source
publishes is first checked as a peer would check it (`verify_svid` against our own
bundles and the policy: a lifetime over ``max_ttl`` is refused with one clear line and
counted); if it passes it is swapped in at once, so new handshakes use it.

Every verified connection (mesh listener, expose, forward) runs inside a cancel scope
whose deadline is a drain margin before the earlier of the peer's and our own
``not_after``: nothing outlives its credentials, and the deadline is known from the
start (`Node.deadline`). When a bundle update removes a root, the live connections
that chained to it are cancelled (B-7) and counted.

Errors: a fault in one connection never stops the node. A fatal error (no first
identity in time, a Workload API that says InvalidArgument, a listener that cannot
bind) cancels the node and leaves `open_node` as an exception; before the node is
ready it is a `NodeError` raised directly.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import trio
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from ._bundle import BundleSet
from ._config import (
    FileIdentity,
    LocalCAIdentity,
    NodeConfig,
    WorkloadApiIdentity,
)
from ._errors import HandshakeError, MeshError, Reason, VerificationError
from ._metrics import NodeMetrics, serve_http
from ._sources import FileSource, IdentityCell, LiveSource, LocalCASource
from ._stream import MeshStream, OurRole, serve
from ._svid import verify_svid
from ._tls import TlsContexts
from ._tunnel import expose, forward

logger = logging.getLogger("meshtls")

Clock = Callable[[], datetime]
Handler = Callable[[MeshStream], Awaitable[object]]
STARTUP_TIMEOUT = 30.0
#: How long before a credential's expiry its connections are closed.
DRAIN_MARGIN = timedelta(seconds=5)


class NodeError(MeshError):
    """The node could not start, or stopped for a reason it cannot recover from."""


async def _discard(stream: MeshStream) -> None:
    """The mesh listener's default handler until message channels arrive: read and drop."""
    while await stream.receive_some():
        pass


class _Live:
    __slots__ = ("role", "scope", "stream")

    def __init__(self, stream: MeshStream, scope: trio.CancelScope, role: OurRole) -> None:
        self.stream = stream
        self.scope = scope
        self.role = role


class Node:
    """A running node, made by `open_node`. Also the `IdentitySource` of its listeners.

    ``listeners`` maps ``"mesh"``, ``"metrics"``, ``"expose:<listen>"`` and
    ``"forward:<listen>"`` to the bound trio listeners (port 0 resolved).
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
        self.listeners: dict[str, list[trio.SocketListener]] = {}
        self._active: TlsContexts | None = None
        self._ready = False
        self._live: set[_Live] = set()
        self._live_changed = trio.Event()
        self._changed = trio.Event()

    # ------------------------------------------------------------ identity

    def contexts(self) -> TlsContexts:
        if self._active is None:
            raise NodeError("the node has no identity yet")
        return self._active

    @property
    def ready(self) -> bool:
        return self._ready

    def now(self) -> datetime:
        return self._clock()

    def _check_own(self, contexts: TlsContexts) -> VerificationError | None:
        """Our own SVID, checked as a peer would check it (against our bundles + policy)."""
        try:
            verify_svid(
                contexts.svid.chain, contexts.bundles, policy=self.config.policy, now=self.now()
            )
        except VerificationError as exc:
            return exc
        return None

    def _activate(self, contexts: TlsContexts) -> None:
        previous = self._active
        self._active = contexts
        svid = contexts.svid
        self.metrics.set_certificate(svid.not_before, svid.not_after)
        if previous is not None:
            self.metrics.rotated()
            logger.info(
                "identity rotated id=%s not_after=%s",
                svid.spiffe_id,
                svid.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if previous.bundles is not contexts.bundles:
                self._close_untrusted(contexts.bundles)
        self._pulse()

    def _build_source(self) -> LiveSource:
        identity = self.config.identity
        on_invalid = self._identity_invalid
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

    def _identity_invalid(self, reason: Reason, message: str) -> None:
        self.metrics.certificate_invalid(reason)
        logger.warning("identity update rejected reason=%s detail=%r", reason, message)
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait for the next identity event: a rotation, or a refused update."""
        await self._changed.wait()

    async def _rotate(self, cell: IdentityCell) -> NoReturn:
        """Apply each new identity the source publishes, if it passes our own checks."""
        generation = cell.generation
        while True:
            generation, contexts = await cell.wait_newer(generation)
            problem = self._check_own(contexts)
            if problem is not None:
                self._identity_invalid(problem.reason, f"our new SVID is refused: {problem}")
                continue
            self._activate(contexts)

    # ------------------------------------------------------------ live connections

    def deadline(self, stream: MeshStream) -> datetime:
        """When `stream` will be closed: a drain margin before the first expiry involved."""
        ours = self.contexts().svid.not_after
        return min(stream.peer.not_after, ours) - DRAIN_MARGIN

    @contextmanager
    def track(self, stream: MeshStream, role: OurRole) -> Iterator[None]:
        """Run a verified connection under its deadline and the node's trust checks.

        The deadline is announced on the stream as ``stream.closes_at`` first, so the
        handler can finish what it is sending before then: no cut by surprise.
        """
        stream.closes_at = self.deadline(stream)
        seconds = (stream.closes_at - self.now()).total_seconds()
        with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
            entry = _Live(stream, scope, role)
            self._live.add(entry)
            try:
                yield
            finally:
                self._live.discard(entry)
                self._live_changed.set()
                self._live_changed = trio.Event()
        if scope.cancelled_caught and trio.current_time() >= scope.deadline:
            logger.info(
                "connection closed at its deadline peer=%s role=%s", stream.peer.spiffe_id, role
            )

    def _close_untrusted(self, bundles: BundleSet) -> None:
        """Cancel the live connections whose root is gone from their domain's bundle (B-7)."""
        for entry in list(self._live):
            peer = entry.stream.peer
            bundle = bundles.get(peer.spiffe_id.trust_domain)
            root = peer.chain[-1].public_bytes(Encoding.DER)
            if bundle is None or root not in bundle.authority_ders:
                logger.warning(
                    "closing a connection whose root left the bundle peer=%s role=%s",
                    peer.spiffe_id,
                    entry.role,
                )
                self.metrics.peer_rejected("untrusted_chain")
                entry.scope.cancel()

    @property
    def live_connections(self) -> int:
        return len(self._live)

    # ------------------------------------------------------------ Observer (metrics)

    def handshake(self, role: OurRole, *, seconds: float, error: HandshakeError | None) -> None:
        self.metrics.handshake(role, seconds=seconds, reason=error.reason if error else None)

    def opened(self, role: OurRole) -> None:
        self.metrics.connection_opened(role)

    def closed(self, role: OurRole) -> None:
        self.metrics.connection_closed(role)

    # ------------------------------------------------------------ start-up

    async def _start(self, nursery: trio.Nursery, handler: Handler) -> None:
        for note in self.config.notes:
            logger.info("config note=%r", note)
        source = self._build_source()
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                await nursery.start(source.run)
        except trio.TooSlowError:
            raise NodeError(f"no identity from {source!r} within {STARTUP_TIMEOUT:g}s") from None
        first = source.contexts()
        problem = self._check_own(first)
        if problem is not None:
            raise NodeError(f"our SVID {first.svid.spiffe_id} is refused: {problem}")
        self._activate(first)
        nursery.start_soon(self._rotate, source.cell)

        settings = self.config.node
        default_authorize = self.config.authorize.authorizer(first.svid.spiffe_id.trust_domain)

        async def mesh_handler(stream: MeshStream) -> None:
            with self.track(stream, "server"):
                await handler(stream)

        with _binding("mesh", settings.listen):
            self.listeners["mesh"] = await nursery.start(
                functools.partial(
                    serve,
                    mesh_handler,
                    settings.listen[1],
                    host=settings.listen[0],
                    source=self,
                    authorize=default_authorize,
                    policy=self.config.policy,
                    handshake_timeout=settings.handshake_timeout.total_seconds(),
                    max_handshakes=settings.max_handshakes,
                    clock=self._clock,
                    observer=self,
                ),
            )
        for item in self.config.expose:
            with _binding(f"expose:{_text(item.listen)}", item.listen):
                self.listeners[f"expose:{_text(item.listen)}"] = await nursery.start(
                    functools.partial(
                        expose,
                        item.listen,
                        item.backend,
                        source=self,
                        authorize=item.authorizer(default_authorize),
                        policy=self.config.policy,
                        max_connections=item.max_connections,
                        handshake_timeout=settings.handshake_timeout.total_seconds(),
                        observer=self,
                        track=self.track,
                    ),
                )
        for fwd in self.config.forward:
            with _binding(f"forward:{_text(fwd.listen)}", fwd.listen):
                self.listeners[f"forward:{_text(fwd.listen)}"] = await nursery.start(
                    functools.partial(
                        forward,
                        fwd.listen,
                        fwd.peer,
                        expect=fwd.expect,
                        source=self,
                        policy=self.config.policy,
                        max_connections=fwd.max_connections,
                        observer=self,
                        track=self.track,
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
        logger.info(
            "node ready id=%s listen=%s",
            first.svid.spiffe_id,
            ",".join(f"{name}={_bound(ls)}" for name, ls in self.listeners.items()),
        )

    async def drain(self) -> None:
        """Stop being ready, and wait until every live connection has finished.

        The caller bounds the wait (``trio.move_on_after(shutdown_timeout)``).
        """
        self._ready = False
        while self._live:
            await self._live_changed.wait()


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
    async with trio.open_nursery() as nursery:
        try:
            await node._start(nursery, handler or _discard)
        except NodeError as exc:  # raised here, not grouped: the caller sees a NodeError
            failed = exc
            nursery.cancel_scope.cancel()
        except MeshError as exc:  # a task that failed before it started (e.g. the source)
            failed = NodeError(f"the node could not start: {exc}")
            failed.__cause__ = exc
            nursery.cancel_scope.cancel()
        else:
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
