"""Handshakes per second and latency: meshtls against bare trio.SSLStream, asyncio and blocking ssl.

    meshtls bench handshake [--count 300] [--rounds 5] [--concurrency 1,16,64]
        [--stacks meshtls,meshtls-x25519,meshtls-rev,trio,asyncio,uvloop,blocking,
                  pyopenssl-membio,pyopenssl-membio-pq,spiffe-tls] [--json FILE] [--no-memory]
        [--quiet]

Theory of operation. Every stack runs its own server and its own clients in this
process, over 127.0.0.1 with a port the kernel picks, with the same ECDSA P-256
identities from `meshtls.testing.CA`: full TLS 1.3 handshakes, each side requiring
and verifying the other's certificate against the CA bundle, no resumption (the
server sends no tickets). One *handshake* is: connect, handshake, send one byte and
read the server's echo, then close. The echo matters: in TLS 1.3 the client
finishes before the server has checked the client certificate, so only the echo
proves that the server accepted us. Latency runs from before the connect to the
echo's arrival; the close is outside the latency but inside the throughput, which
is handshakes done / wall time of the step, with `concurrency` clients at work.

The stacks are measured round-robin: each round runs every concurrency level, and
at each level every stack (starting with a different stack each round), each
time with a fresh server and `count` handshakes after a short warm-up. So machine
noise lands on all stacks alike. We report the median over rounds of each
stack's throughput, latency percentiles over all the samples of all rounds, and
meshtls as a ratio of medians to each baseline. A ratio a target judges (and the
table over bare trio) is *paired* instead: the median of the per-round ratios, each
of two steps run seconds apart in the same round, so that the machine drifting
between rounds (seen here: bare trio at 124 and 194 handshakes/s in two rounds of
one run) cancels out of the ratio; the ratio of medians is printed beside it.

Key exchange (issue 11): ``meshtls`` offers meshtls's default groups (the hybrid
``X25519MLKEM768``, then ``X25519``) and ``meshtls-x25519`` offers ``X25519`` only; each
checks on its warm-up streams that it negotiated the group it asked for. Every run prints
the hybrid's cost from the two rows: the ratio of their handshakes/s and the CPU
microseconds per handshake of each (both sides, as the process spends them).

``uvloop`` is the asyncio row on uvloop's event loop (the ``bench`` dependency group);
without uvloop it is reported unavailable, with the reason, as spiffe-tls is.

Revocation (issue 9): ``meshtls-rev`` is meshtls with revocation on, soft-fail, each
side reading one `Revocations` whose cache was filled with ``good`` OCSP statuses for
both chains before timing (a warm cache, no network). The plain ``meshtls`` row has no
revocation view, so P-4 looks nothing up: it is revocation off. Both rows are measured
in the same rounds, and reported as the on/off ratio, paired (its target too) and as a
ratio of medians.

pyOpenSSL rows (issue 11), at concurrency 1 only, on the OpenSSL that cryptography
bundles (4.x) rather than the system's: ``pyopenssl-membio`` is a pyOpenSSL client and
server over memory BIOs in one thread, no sockets and no event loop: the floor of an
engine on that OpenSSL (chain verification only, like the trio row). It offers X25519
only, as the stdlib rows do on OpenSSL 3.0; ``pyopenssl-membio-pq`` is the same with
the hybrid ``X25519MLKEM768`` first, so the two give the post-quantum cost. Their unit
of work ends with the client's close_notify read by the server. ``spiffe-tls`` is
py-spiffe's spiffe-tls (the direct competitor), with ONE reused ``create_ssl_context``
per side (not ``dial``, which builds a context per connection) over blocking sockets, a
server thread and TCP_NODELAY, checking the peer's SPIFFE ID; it is given X25519 too.
Each of these servers sends no ticket, as meshtls's and the stdlib rows' do
(`meshtls._ossl.refuse_resumption`: cryptography's binding has no
``SSL_CTX_set_num_tickets``). Without spiffe-tls (the ``bench`` dependency group),
its row is reported unavailable, with the reason.

Idle memory: 1,000 client streams connected to a server whose handler holds each
one idle; both ends live in this process, so a connection's cost is the two
streams (client and server) and their two sockets. Measured twice, in fresh
event loops: once plain, for the RSS (VmRSS) and C-heap (glibc ``mallinfo2``,
which sees OpenSSL's allocations) deltas, and once under `tracemalloc`, for the
Python heap (which does not see OpenSSL's). Free memory is handed back to the
kernel (``malloc_trim``) before each baseline, so that an earlier run's freed
pages do not hide this run's growth.

Used by ``meshtls bench handshake`` and by ``benchmarks/handshake.py``.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import itertools
import json
import math
import os
import platform
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol, TextIO, cast

import cryptography
import trio
from cryptography import x509
from OpenSSL import SSL
from prometheus_client import CollectorRegistry

import meshtls

from . import _ossl
from ._metrics import NodeMetrics
from ._prefetch import Revocations
from ._revocation import chain_targets
from .testing import CA

HOST: Final = "127.0.0.1"
TRUST_DOMAIN: Final = "example.org"
STACKS: Final = (
    "meshtls",
    "meshtls-x25519",
    "meshtls-rev",
    "trio",
    "asyncio",
    "uvloop",
    "blocking",
    "pyopenssl-membio",
    "pyopenssl-membio-pq",
    "spiffe-tls",
)
BASELINES: Final = (
    "trio",
    "asyncio",
    "uvloop",
    "blocking",
    "pyopenssl-membio",
    "pyopenssl-membio-pq",
    "spiffe-tls",
)
#: Stacks measured at concurrency 1 only (issue 11's sequential rows).
SEQUENTIAL_STACKS: Final = ("pyopenssl-membio", "pyopenssl-membio-pq", "spiffe-tls")
#: The pyOpenSSL rows' groups: X25519 as the stdlib rows on OpenSSL 3.0, and the hybrid.
PYOPENSSL_GROUPS: Final = {
    "pyopenssl-membio": "X25519",
    "pyopenssl-membio-pq": _ossl.DEFAULT_GROUPS,  # X25519MLKEM768, then X25519
}
#: meshtls with revocation on (soft-fail, a warm cache) and the meshtls row it is compared to.
REVOCATION_STACK: Final = "meshtls-rev"
#: meshtls offering X25519 only; the plain ``meshtls`` row offers the default (hybrid first).
X25519_STACK: Final = "meshtls-x25519"
#: Issue 11: meshtls at concurrency 1 is compared with these in every run (engine floor and
#: the direct competitor), as a ratio of medians.
ISSUE_11_PEERS: Final = ("pyopenssl-membio", "pyopenssl-membio-pq", "spiffe-tls")
MEMORY_STACKS: Final = ("meshtls", "trio")
WARMUP: Final = 3  # handshakes before each measured step, not counted
IDLE_CONNECTIONS: Final = 1000
IDLE_OPENERS: Final = 32  # connections opened in parallel while filling the idle set
#: Targets for a stack's handshakes/s over a baseline's at one concurrency: (stack, baseline,
#: concurrency) -> (relation, bound, issue). Issue 11 raised issue 3's 1.3x over trio at c=1
#: to 1.8x (X25519) and 1.6x (hybrid) and added asyncio and uvloop at c=64; issue 3's
#: "not behind trio at c=64" still applies.
RATIO_TARGETS: Final[dict[tuple[str, str, int], tuple[Literal[">=", ">"], float, int]]] = {
    (X25519_STACK, "trio", 1): (">=", 1.8, 11),
    ("meshtls", "trio", 1): (">=", 1.6, 11),
    ("meshtls", "asyncio", 64): (">", 1.0, 11),
    ("meshtls", "uvloop", 64): (">", 1.0, 11),
    ("meshtls", "trio", 64): (">=", 1.0, 3),
}
TARGET_P99_OVER_P50: Final = 2.0
TARGET_BYTES_PER_STREAM: Final = 64 * 1024
#: Issue 9: handshakes/s with revocation on (warm cache) at least this share of it off.
TARGET_REVOCATION_RATIO: Final = 0.95

Role = Literal["server", "client"]
Tick = Callable[[], None]


# ---------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class Identity:
    """PEM files for a server and a client SVID of one trust domain, and its bundle."""

    directory: Path

    def cert(self, role: Role) -> Path:
        return self.directory / f"{role}.pem"

    def key(self, role: Role) -> Path:
        return self.directory / f"{role}.key"

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle.pem"

    @staticmethod
    def spiffe_id(role: Role) -> str:
        return f"spiffe://{TRUST_DOMAIN}/bench/{role}"

    def ssl_context(self, role: Role) -> ssl.SSLContext:
        """The stdlib context of the baselines: TLS 1.3 only, mutual, no tickets, no hostname."""
        server = role == "server"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        if server:
            context.num_tickets = 0
        context.load_cert_chain(self.cert(role), self.key(role))
        context.load_verify_locations(cafile=self.bundle)
        return context


def make_identity(directory: Path, *, now: datetime | None = None) -> Identity:
    """A fresh CA and two ECDSA P-256 leaves, written to `directory` (created if need be).

    The leaves are valid from 5 minutes before `now` for 50 minutes, inside the
    default policy's one-hour TTL cap; a run issues new ones every round.
    """
    now = now or datetime.now(UTC)
    start = now - timedelta(minutes=5)
    directory.mkdir(parents=True, exist_ok=True)
    identity = Identity(directory)
    ca = CA(TRUST_DOMAIN, now=start)
    roles: tuple[Role, ...] = ("server", "client")
    for role in roles:
        issued = ca.issue(
            Identity.spiffe_id(role),
            not_before=start,
            ttl=timedelta(minutes=50),
            key_type="ec-p256",
        )
        identity.cert(role).write_bytes(issued.chain_pem)
        key = identity.key(role)
        key.touch(mode=0o600)
        key.write_bytes(issued.key_pem)
    identity.bundle.write_bytes(ca.bundle_pem)
    return identity


# ---------------------------------------------------------------- one measured step


@dataclass(slots=True)
class Tally:
    """Failures seen by clients or servers; safe to update from threads."""

    errors: int = 0
    first_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{where}: {type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Step:
    """One stack at one concurrency in one round: the wall time and each handshake's latency."""

    elapsed: float  # seconds, first connect to last close
    cpu: float  # seconds of CPU, every thread of the process, over the same span
    latencies: list[float]  # seconds, successful handshakes only
    errors: int
    first_error: str | None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_per_handshake(self) -> float:
        return self.cpu / len(self.latencies) if self.latencies else math.nan


def _step_deadline(count: int) -> float:
    """Seconds after which a stuck step fails rather than hangs."""
    return 120.0 + 0.5 * count


class Stack(Protocol):
    name: str

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        """Start a server, warm up, then time `count` handshakes by `concurrency` clients."""
        ...


# ---------------------------------------------------------------- trio stacks

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]


class _TrioFlavour(abc.ABC):
    """What the two trio stacks share: the client loop, the echo handler, idle memory."""

    name: str

    @abc.abstractmethod
    def setup(self, identity: Identity) -> None:
        """Build contexts or sources; called once per step, before the server starts."""

    @abc.abstractmethod
    async def serve(self, nursery: trio.Nursery, handler: StreamHandler, tally: Tally) -> int:
        """Start a server on HOST, port 0, running `handler` on each verified stream."""

    @abc.abstractmethod
    async def dial(self, port: int) -> trio.abc.Stream:
        """A client stream to HOST:`port` whose handshake has completed."""

    def check_peer(self, stream: trio.abc.Stream) -> None:  # noqa: B027  (optional hook)
        """Run on each warm-up stream: does the stream know whom it talks to?"""

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        self.setup(identity)
        return trio.run(self._run, concurrency, count, tick)

    async def _run(self, concurrency: int, count: int, tick: Tick) -> Step:
        tally = Tally()

        async def echo(stream: trio.abc.Stream) -> None:
            try:
                data = await stream.receive_some(1)
                if data:
                    await stream.send_all(data)
                    while await stream.receive_some():
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                tally.failed("server", exc)
            finally:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            port = await self.serve(nursery, echo, tally)
            with trio.fail_after(_step_deadline(count)):
                for _ in range(WARMUP):
                    stream = await self.dial(port)
                    self.check_peer(stream)
                    await stream.aclose()
                step = await self._clients(port, concurrency, count, tick, tally)
            nursery.cancel_scope.cancel()
        return step

    async def _one(self, port: int) -> float:
        start = time.perf_counter()
        stream = await self.dial(port)
        try:
            await stream.send_all(b"x")
            if await stream.receive_some(1) != b"x":
                raise RuntimeError("no echo from the server")
            latency = time.perf_counter() - start
        finally:
            await stream.aclose()
        return latency

    async def _clients(
        self, port: int, concurrency: int, count: int, tick: Tick, tally: Tally
    ) -> Step:
        remaining = count
        latencies: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    latencies.append(await self._one(port))
                except Exception as exc:  # counted and reported: a failed handshake is data
                    tally.failed("client", exc)
                tick()

        start = time.perf_counter()
        cpu_start = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, count)):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        return Step(elapsed, cpu, latencies, tally.errors, tally.first_error)

    # ------------------------------------------------------------ idle memory

    def idle_memory(self, identity: Identity, connections: int, *, traced: bool) -> MemorySample:
        """Memory growth while `connections` verified connections sit idle (see module doc)."""
        raise_fd_limit()
        self.setup(identity)
        return trio.run(self._idle, connections, traced)

    async def _idle(self, connections: int, traced: bool) -> MemorySample:
        tally = Tally()
        held = 0
        all_held = trio.Event()
        release = trio.Event()
        wanted = 0

        async def hold(stream: trio.abc.Stream) -> None:
            nonlocal held
            held += 1
            if held == wanted:
                all_held.set()
            try:
                await release.wait()
            finally:
                await stream.aclose()

        async def fill(port: int, n: int, streams: list[trio.abc.Stream]) -> None:
            remaining = n

            async def opener() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    streams.append(await self.dial(port))

            async with trio.open_nursery() as nursery:
                for _ in range(min(IDLE_OPENERS, n)):
                    nursery.start_soon(opener)

        async with trio.open_nursery() as nursery:
            port = await self.serve(nursery, hold, tally)
            with trio.fail_after(_step_deadline(connections)):
                # Warm-up: the first connections initialise caches that would count as ours.
                warm: list[trio.abc.Stream] = []
                wanted = min(10, connections)
                await fill(port, wanted, warm)
                await all_held.wait()
                for stream in warm:
                    await stream.aclose()
                del warm
                release.set()
                await trio.sleep(0.05)  # let the server handlers close

                held, wanted = 0, connections
                all_held, release = trio.Event(), trio.Event()
                if traced:
                    tracemalloc.start()
                try:
                    before = _memory_now(traced)
                    streams: list[trio.abc.Stream] = []
                    await fill(port, connections, streams)
                    await all_held.wait()
                    after = _memory_now(traced)
                finally:
                    if traced:
                        tracemalloc.stop()
                release.set()
                for stream in streams:
                    await stream.aclose()
            nursery.cancel_scope.cancel()
        if tally.errors:
            raise RuntimeError(f"idle memory: {tally.first_error}")
        return after.minus(before)


class TrioSSLStack(_TrioFlavour):
    """Bare `trio.SSLStream` over `trio.open_tcp_stream` and `trio.serve_tcp`, stdlib contexts."""

    name = "trio"

    def setup(self, identity: Identity) -> None:
        self._server_context = identity.ssl_context("server")
        self._client_context = identity.ssl_context("client")

    async def serve(self, nursery: trio.Nursery, handler: StreamHandler, tally: Tally) -> int:
        context = self._server_context

        async def on_tcp(tcp: trio.SocketStream) -> None:
            tls = trio.SSLStream(tcp, context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                tally.failed("server", exc)
                await tls.aclose()
                return
            await handler(tls)

        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=HOST), on_tcp, 0)
        return _port_of(listeners)

    async def dial(self, port: int) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(HOST, port)
        tls = trio.SSLStream(tcp, self._client_context, server_side=False, https_compatible=False)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls


class MeshtlsStack(_TrioFlavour):
    """`meshtls.connect` and `meshtls.serve` with `FileSource`s and `authorize_member_of`,
    offering `groups` (None: meshtls's default, the hybrid first)."""

    name = "meshtls"
    groups: str | None = None

    def __init__(self) -> None:
        self._authorize = meshtls.authorize_member_of(TRUST_DOMAIN)

    @property
    def expected_group(self) -> str:
        """The group a meshtls pair must negotiate: the first one offered."""
        return (self.groups or _ossl.DEFAULT_GROUPS).split(":")[0]

    def _source(self, identity: Identity, role: Role) -> meshtls.FileSource:
        return meshtls.FileSource(
            cert=identity.cert(role), key=identity.key(role), bundle=identity.bundle
        )

    def setup(self, identity: Identity) -> None:
        self._server_source = self._source(identity, "server")
        self._client_source = self._source(identity, "client")

    async def serve(self, nursery: trio.Nursery, handler: StreamHandler, tally: Tally) -> int:
        serve = functools.partial(
            meshtls.serve,
            handler,
            0,
            host=HOST,
            source=self._server_source,
            authorize=self._authorize,
            groups=self.groups,
        )
        return _port_of(await nursery.start(serve))

    async def dial(self, port: int) -> trio.abc.Stream:
        return await meshtls.connect(
            HOST, port, source=self._client_source, authorize=self._authorize, groups=self.groups
        )

    def check_peer(self, stream: trio.abc.Stream) -> None:
        peer = getattr(stream, "peer", None)
        if not isinstance(peer, meshtls.VerifiedPeer):
            raise RuntimeError(f"meshtls stream has no VerifiedPeer: {peer!r}")
        if str(peer.spiffe_id) != Identity.spiffe_id("server"):
            raise RuntimeError(f"meshtls verified the wrong peer: {peer.spiffe_id}")
        group = getattr(stream, "group", None)
        if not isinstance(group, str) or group.lower() != self.expected_group.lower():
            raise RuntimeError(f"{self.name} negotiated {group!r}, not {self.expected_group}")


class MeshtlsX25519Stack(MeshtlsStack):
    """`MeshtlsStack` offering X25519 only: the classic key exchange, for the hybrid's cost."""

    name = X25519_STACK
    groups = "X25519"


class MeshtlsRevocationStack(MeshtlsStack):
    """`MeshtlsStack` with revocation on: soft-fail, and a `Revocations` (with its own
    `NodeMetrics`) shared by server and client whose cache already holds ``good`` OCSP
    statuses for both chains, stored in `setup` before anything is timed. Every handshake
    looks up on both sides, as a node would; nothing is fetched (no prefetcher runs)."""

    name = REVOCATION_STACK

    def __init__(self) -> None:
        super().__init__()
        self._policy = meshtls.ValidationPolicy(revocation="soft-fail")
        self.revocations = self._warm_room(None)

    def _warm_room(self, identity: Identity | None) -> Revocations:
        now = datetime.now(UTC)
        room = Revocations(metrics=NodeMetrics(CollectorRegistry(), clock=lambda: now))
        if identity is None:
            return room
        (root,) = x509.load_pem_x509_certificates(identity.bundle.read_bytes())
        roles: tuple[Role, ...] = ("server", "client")
        for role in roles:
            leaf = x509.load_pem_x509_certificates(identity.cert(role).read_bytes())[0]
            for target in chain_targets((leaf, root)):
                room.cache.store_ocsp(
                    target.ref,
                    "good",
                    this_update=now - timedelta(minutes=1),
                    next_update=now + timedelta(hours=1),
                    now=now,
                    origin="bench",
                )
        return room

    def cache_checks(self, result: str = "good") -> float:
        """``revocation_checks_total{source="cache", result}`` of the current room."""
        metrics = self.revocations.metrics
        assert metrics is not None
        value = metrics.registry.get_sample_value(
            f"{metrics.prefix}_revocation_checks_total", {"source": "cache", "result": result}
        )
        return value or 0.0

    def setup(self, identity: Identity) -> None:
        super().setup(identity)
        self.revocations = self._warm_room(identity)

    async def serve(self, nursery: trio.Nursery, handler: StreamHandler, tally: Tally) -> int:
        serve = functools.partial(
            meshtls.serve,
            handler,
            0,
            host=HOST,
            source=self._server_source,
            authorize=self._authorize,
            policy=self._policy,
            revocation=self.revocations,
            groups=self.groups,
        )
        return _port_of(await nursery.start(serve))

    async def dial(self, port: int) -> trio.abc.Stream:
        return await meshtls.connect(
            HOST,
            port,
            source=self._client_source,
            authorize=self._authorize,
            policy=self._policy,
            revocation=self.revocations,
            groups=self.groups,
        )


def _port_of(listeners: object) -> int:
    """The port of the first listener with a socket: `serve_tcp` and `serve` start with a list."""
    items = listeners if isinstance(listeners, list | tuple) else [listeners]
    for item in items:
        sock = getattr(item, "socket", None)
        if isinstance(sock, trio.socket.SocketType):
            return int(sock.getsockname()[1])
    raise RuntimeError(f"cannot find a port in {listeners!r}")


# ---------------------------------------------------------------- asyncio stack


def uvloop_unavailable() -> str | None:
    """Why the ``uvloop`` row cannot run here, or None when it can."""
    try:
        import uvloop  # noqa: F401, PLC0415 - optional: the bench dependency group
    except ImportError as exc:
        return f"uvloop is not installed ({exc}); it is in the 'bench' dependency group"
    return None


class AsyncioStack:
    """`asyncio.open_connection` and `asyncio.start_server`, stdlib contexts, in a fresh
    `asyncio.Runner` per step: the standard event loop, or uvloop's (``uvloop``)."""

    def __init__(self, name: Literal["asyncio", "uvloop"] = "asyncio") -> None:
        self.name: str = name

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        if self.name == "asyncio":
            return None
        import uvloop  # noqa: PLC0415 - optional: build_stacks checked it imports

        return uvloop.new_event_loop

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        server_context = identity.ssl_context("server")
        client_context = identity.ssl_context("client")
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            return runner.run(self._run(server_context, client_context, concurrency, count, tick))

    async def _run(
        self,
        server_context: ssl.SSLContext,
        client_context: ssl.SSLContext,
        concurrency: int,
        count: int,
        tick: Tick,
    ) -> Step:
        tally = Tally()
        handlers: set[asyncio.Task[object]] = set()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            try:
                data = await reader.read(1)
                if data:
                    writer.write(data)
                    await writer.drain()
                    while await reader.read(65536):
                        pass
            except OSError as exc:
                tally.failed("server", exc)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                if task is not None:
                    handlers.discard(task)

        async def one(port: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection(HOST, port, ssl=client_context)
            try:
                writer.write(b"x")
                await writer.drain()
                if await reader.read(1) != b"x":
                    raise RuntimeError("no echo from the server")
                latency = time.perf_counter() - start
            finally:
                writer.close()
                await writer.wait_closed()
            return latency

        remaining = count
        latencies: list[float] = []

        async def worker(port: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                try:
                    latencies.append(await one(port))
                except Exception as exc:  # counted and reported
                    tally.failed("client", exc)
                tick()

        server = await asyncio.start_server(echo, HOST, 0, ssl=server_context, backlog=1024)
        try:
            port = int(server.sockets[0].getsockname()[1])
            async with asyncio.timeout(_step_deadline(count)):
                for _ in range(WARMUP):
                    await one(port)
                start = time.perf_counter()
                cpu_start = time.process_time()
                await asyncio.gather(*(worker(port) for _ in range(min(concurrency, count))))
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu_start
                if handlers:  # the last server handlers may still be closing
                    await asyncio.wait(set(handlers))
        finally:
            server.close()
            await server.wait_closed()
        return Step(elapsed, cpu, latencies, tally.errors, tally.first_error)


# ---------------------------------------------------------------- blocking stack


class _BlockingServer:
    """An accept loop in a thread handing each connection to a thread pool."""

    def __init__(self, context: ssl.SSLContext, workers: int, tally: Tally) -> None:
        self._context = context
        self._tally = tally
        self._listener = socket.create_server((HOST, 0), backlog=1024)
        self._listener.settimeout(0.05)  # so that the accept loop sees `_stopping`
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-blocking-server")
        self._thread = threading.Thread(target=self._accept_loop, name="bench-blocking-accept")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()  # blocking: the listener has a timeout
            except TimeoutError:
                continue
            except OSError as exc:
                self._tally.failed("server accept", exc)
                return
            self._pool.submit(self._handle, conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    data = tls.recv(1)
                    if data:
                        tls.sendall(data)
                        while tls.recv(65536):
                            pass
            except OSError as exc:
                self._tally.failed("server", exc)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._listener.close()
        self._pool.shutdown(wait=True)


class BlockingStack:
    """Plain blocking `ssl` sockets: a threaded server; clients in threads when concurrent."""

    name = "blocking"

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        client_context = identity.ssl_context("client")
        tally = Tally()
        server = _BlockingServer(identity.ssl_context("server"), 2 * concurrency + 4, tally)
        try:
            for _ in range(WARMUP):
                self._one(server.port, client_context)
            return self._clients(
                server.port,
                client_context,
                concurrency=concurrency,
                count=count,
                tick=tick,
                tally=tally,
            )
        finally:
            server.close()

    @staticmethod
    def _one(port: int, context: ssl.SSLContext) -> float:
        start = time.perf_counter()
        with socket.create_connection((HOST, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(sock) as tls:
                tls.sendall(b"x")
                if tls.recv(1) != b"x":
                    raise RuntimeError("no echo from the server")
                return time.perf_counter() - start

    def _clients(
        self,
        port: int,
        context: ssl.SSLContext,
        *,
        concurrency: int,
        count: int,
        tick: Tick,
        tally: Tally,
    ) -> Step:
        tickets = iter(range(count))
        lock = threading.Lock()
        latencies: list[float] = []

        def worker() -> None:
            while True:
                with lock:
                    if next(tickets, None) is None:
                        return
                try:
                    latency = self._one(port, context)
                except Exception as exc:  # counted and reported
                    tally.failed("client", exc)
                else:
                    with lock:
                        latencies.append(latency)
                tick()

        start = time.perf_counter()
        cpu_start = time.process_time()
        if concurrency == 1:
            worker()
        else:
            threads = [
                threading.Thread(target=worker, name=f"bench-blocking-client-{i}")
                for i in range(min(concurrency, count))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        return Step(elapsed, cpu, latencies, tally.errors, tally.first_error)


# ---------------------------------------------------------------- pyOpenSSL stacks (issue 11)


def pyopenssl_context(identity: Identity, role: Role, groups: str) -> SSL.Context:
    """A pyOpenSSL context as the stdlib rows' `Identity.ssl_context`: TLS 1.3 only, mutual,
    the bundle as trust store, no hostname; no resumption (`_ossl.refuse_resumption`)."""
    server = role == "server"
    context = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate_chain_file(str(identity.cert(role)))
    context.use_privatekey_file(str(identity.key(role)))
    context.load_verify_locations(str(identity.bundle))
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    _ossl.refuse_resumption(context)
    _ossl.set_groups(context, groups)
    return context


def _take(connection: SSL.Connection) -> bytes:
    """Everything a memory-BIO connection has to send, or b""."""
    try:
        return connection.bio_read(65536)
    except SSL.WantReadError:
        return b""


def _step_on(connection: SSL.Connection) -> bool:
    """Advance a handshake; True once complete."""
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        return False
    return True


class PyOpenSSLMembioStack:
    """A pyOpenSSL client and server over memory BIOs in one thread: the engine floor."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups = PYOPENSSL_GROUPS[name]
        self.last_group: str | None = None

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        server_context = pyopenssl_context(identity, "server", self.groups)
        client_context = pyopenssl_context(identity, "client", self.groups)
        tally = Tally()
        for _ in range(WARMUP):
            self._one(server_context, client_context)
        latencies: list[float] = []
        start = time.perf_counter()
        cpu_start = time.process_time()
        for _ in range(count):
            try:
                latencies.append(self._one(server_context, client_context))
            except Exception as exc:  # counted and reported
                tally.failed("pair", exc)
            tick()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        return Step(elapsed, cpu, latencies, tally.errors, tally.first_error)

    def _one(self, server_context: SSL.Context, client_context: SSL.Context) -> float:
        start = time.perf_counter()
        client = SSL.Connection(client_context, None)
        client.set_connect_state()
        server = SSL.Connection(server_context, None)
        server.set_accept_state()
        client_done = server_done = False
        for _ in range(8):  # a TLS 1.3 mutual handshake takes 2 flights each way
            client_done = client_done or _step_on(client)
            if data := _take(client):
                server.bio_write(data)
            server_done = server_done or _step_on(server)
            if data := _take(server):
                client.bio_write(data)
            if client_done and server_done:
                break
        else:
            raise RuntimeError("the memory-BIO handshake did not finish")
        client.send(b"x")
        server.bio_write(_take(client))
        server.send(server.recv(1))
        client.bio_write(_take(server))
        if client.recv(1) != b"x":
            raise RuntimeError("no echo from the server")
        latency = time.perf_counter() - start
        self.last_group = _ossl.negotiated_group(client)
        client.shutdown()
        server.bio_write(_take(client))
        try:
            server.recv(1)
        except SSL.ZeroReturnError:
            pass
        else:
            raise RuntimeError("the server read data instead of close_notify")
        return latency


def spiffe_tls_unavailable() -> str | None:
    """Why the ``spiffe-tls`` row cannot run here, or None when it can."""
    try:
        import spiffetls  # noqa: F401, PLC0415 - optional: the bench dependency group
    except ImportError as exc:
        return f"spiffe-tls is not installed ({exc}); it is in the 'bench' dependency group"
    return None


class _StaticX509Source:
    """What spiffe-tls reads of an ``X509Source`` (``svid``, ``bundles``), from files."""

    def __init__(self, identity: Identity, role: Role) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415
        from spiffe import TrustDomain, X509Bundle, X509Svid  # noqa: PLC0415

        self.svid = X509Svid.load(str(identity.cert(role)), str(identity.key(role)), Encoding.PEM)
        bundle = X509Bundle.load(TrustDomain(TRUST_DOMAIN), str(identity.bundle), Encoding.PEM)
        self.bundles = frozenset({bundle})

    def subscribe_for_updates(self, callback: Callable[[], None]) -> None:
        """A static source never updates."""


class SpiffeTlsStack:
    """py-spiffe's spiffe-tls: one reused ``create_ssl_context`` per side (the server's as
    ``spiffetls.listen`` builds it, before its first connection so that its groups and
    tickets can still be set), blocking sockets; each side authorizes the other's SPIFFE ID."""

    name = "spiffe-tls"

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        from spiffe import SpiffeId  # noqa: PLC0415
        from spiffe.workloadapi.x509_source import X509Source  # noqa: PLC0415
        from spiffetls import create_ssl_context  # noqa: PLC0415
        from spiffetls.tlsconfig.authorize import authorize_id  # noqa: PLC0415

        server_source = cast(X509Source, _StaticX509Source(identity, "server"))
        client_source = cast(X509Source, _StaticX509Source(identity, "client"))
        with warnings.catch_warnings():
            # spiffe-tls 0.4 passes pyOpenSSL X509 objects, which pyOpenSSL 26 deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            server_context = create_ssl_context(  # as spiffetls.listen(MTLS) builds it
                SSL.TLS_SERVER_METHOD,
                server_source,
                authorize_id(SpiffeId(Identity.spiffe_id("client"))),
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            )
            client_context = create_ssl_context(
                SSL.TLS_CLIENT_METHOD,
                client_source,
                authorize_id(SpiffeId(Identity.spiffe_id("server"))),
                SSL.VERIFY_PEER,
            )
        for context in (server_context, client_context):
            _ossl.set_groups(context, "X25519")
            _ossl.refuse_resumption(context)
        listener = SSL.Connection(server_context, socket.create_server((HOST, 0), backlog=1024))
        listener.set_accept_state()
        tally = Tally()
        server = _SpiffeTlsServer(listener, tally)
        try:
            for _ in range(WARMUP):
                self._one(server.port, client_context)
            latencies: list[float] = []
            start = time.perf_counter()
            cpu_start = time.process_time()
            for _ in range(count):
                try:
                    latencies.append(self._one(server.port, client_context))
                except Exception as exc:  # counted and reported
                    tally.failed("client", exc)
                tick()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        finally:
            server.close()
        return Step(elapsed, cpu, latencies, tally.errors, tally.first_error)

    @staticmethod
    def _one(port: int, context: SSL.Context) -> float:
        start = time.perf_counter()
        with socket.create_connection((HOST, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = SSL.Connection(context, sock)
            conn.set_connect_state()
            conn.do_handshake()  # the server's SPIFFE ID is authorized in the verify callback
            conn.sendall(b"x")
            if conn.recv(1) != b"x":
                raise RuntimeError("no echo from the server")
            latency = time.perf_counter() - start
            conn.shutdown()
        return latency


class _SpiffeTlsServer:
    """spiffe-tls's listening connection served by one thread, one connection at a time."""

    def __init__(self, listener: SSL.Connection, tally: Tally) -> None:
        self._listener = listener
        self._tally = tally
        listener.settimeout(0.05)  # so that the accept loop sees `_stopping`
        self.port = int(listener.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="bench-spiffe-tls")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                self._tally.failed("server accept", exc)
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.do_handshake()  # the client's SPIFFE ID is authorized here
                data = conn.recv(1)
                conn.sendall(data)
                while conn.recv(65536):
                    pass
            except SSL.ZeroReturnError:
                pass  # the client's close_notify
            except (SSL.Error, OSError) as exc:
                self._tally.failed("server", exc)
            finally:
                conn.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._listener.close()


class UnavailableStack:
    """A stack that cannot run here; `reason` says why. Measured as nothing."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def run(self, identity: Identity, concurrency: int, count: int, tick: Tick) -> Step:
        raise RuntimeError(f"{self.name} is unavailable: {self.reason}")


# ---------------------------------------------------------------- memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC: Final = _libc()


def _malloc_in_use() -> int | None:
    """Bytes malloc'd and not freed (main arena + mmap'd chunks), or None without glibc 2.33+."""
    function = getattr(_LIBC, "mallinfo2", None) if _LIBC is not None else None
    if function is None:
        return None
    function.restype = _MallInfo2
    info = cast(_MallInfo2, function())
    return int(info.uordblks) + int(info.hblkhd)


def _malloc_trim() -> None:
    function = getattr(_LIBC, "malloc_trim", None) if _LIBC is not None else None
    if function is not None:
        function(0)


def _rss() -> int:
    """This process's resident set size in bytes, from /proc/self/status (0 if unreadable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class MemorySample:
    python_heap: int | None  # tracemalloc's traced bytes; None when not tracing
    rss: int
    malloc: int | None

    def minus(self, base: MemorySample) -> MemorySample:
        return MemorySample(
            None
            if self.python_heap is None or base.python_heap is None
            else self.python_heap - base.python_heap,
            self.rss - base.rss,
            None if self.malloc is None or base.malloc is None else self.malloc - base.malloc,
        )


def _memory_now(traced: bool) -> MemorySample:
    """Collect garbage, hand free pages back to the kernel, then read each instrument."""
    gc.collect()
    _malloc_trim()
    heap = tracemalloc.get_traced_memory()[0] if traced else None
    return MemorySample(heap, _rss(), _malloc_in_use())


def idle_memory(
    stack: _TrioFlavour, identity: Identity, connections: int = IDLE_CONNECTIONS
) -> dict[str, object]:
    """Idle memory of `connections` verified connections of a trio stack, both ends in-process."""
    plain = stack.idle_memory(identity, connections, traced=False)
    traced = stack.idle_memory(identity, connections, traced=True)
    streams = 2 * connections
    heap = traced.python_heap or 0
    result: dict[str, object] = {
        "stack": stack.name,
        "connections": connections,
        "streams": streams,
        "divided_by": "streams = 2 x connections (client end + server end, both in this process)",
        "python_heap_bytes": heap,
        "python_heap_bytes_per_stream": round(heap / streams),
        "rss_bytes": plain.rss,
        "rss_bytes_per_stream": round(plain.rss / streams),
        "malloc_bytes": plain.malloc,
        "malloc_bytes_per_stream": None if plain.malloc is None else round(plain.malloc / streams),
    }
    return result


# ---------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of sorted values, interpolating linearly between ranks."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(stack: str, concurrency: int, steps: Sequence[Step]) -> dict[str, object]:
    """Median throughput over rounds and latency percentiles (ms) over every sample."""
    ordered = sorted(itertools.chain.from_iterable(step.latencies for step in steps))
    rates = [step.rate for step in steps]
    first_errors = [step.first_error for step in steps if step.first_error]
    return {
        "stack": stack,
        "concurrency": concurrency,
        "handshakes_per_second": round(statistics.median(rates), 1),
        "cpu_ms_per_handshake": round(
            statistics.median(step.cpu_per_handshake for step in steps) * 1000, 3
        ),
        "rounds": [
            {
                "handshakes_per_second": round(step.rate, 1),
                "elapsed_s": round(step.elapsed, 4),
                "cpu_s": round(step.cpu, 4),
                "handshakes": len(step.latencies),
                "errors": step.errors,
            }
            for step in steps
        ],
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
        "errors": sum(step.errors for step in steps),
        "first_error": first_errors[0] if first_errors else None,
    }


def _rate(entry: dict[str, object]) -> float:
    return cast(float, entry["handshakes_per_second"])


def _latency(entry: dict[str, object], name: str) -> float:
    return cast(dict[str, float], entry["latency_ms"])[name]


def _round_ratios(mine: dict[str, object], theirs: dict[str, object], rate: str) -> list[float]:
    """`mine`'s `rate` over `theirs`' in each round where `theirs`' is above zero (both
    rows of one run: round i of each ran in the same round, seconds apart)."""
    mine_rounds = cast(list[dict[str, float]], mine["rounds"])
    their_rounds = cast(list[dict[str, float]], theirs["rounds"])
    return [
        m[rate] / o[rate] for m, o in zip(mine_rounds, their_rounds, strict=True) if o[rate] > 0
    ]


def per_round(
    mine: dict[str, object], theirs: dict[str, object], rate: str = "handshakes_per_second"
) -> list[float]:
    """`_round_ratios`, rounded for display."""
    return [round(ratio, 3) for ratio in _round_ratios(mine, theirs, rate)]


def paired(
    mine: dict[str, object], theirs: dict[str, object], rate: str = "handshakes_per_second"
) -> float | None:
    """The median of the per-round ratios of `rate` (unrounded; the result rounded to 3
    places): the ratio a target judges (see the module doc; `meshtls bench bulk` judges
    its MiB/s so too). None when `theirs` had no rate above zero in any round."""
    ratios = _round_ratios(mine, theirs, rate)
    return round(statistics.median(ratios), 3) if ratios else None


def compare(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """meshtls's median throughput over each baseline's, at each concurrency, and per round."""
    by_key = {(cast(str, r["stack"]), cast(int, r["concurrency"])): r for r in results}
    ratios: list[dict[str, object]] = []
    for (stack, concurrency), mesh in by_key.items():
        if stack != "meshtls":
            continue
        for baseline in BASELINES:
            other = by_key.get((baseline, concurrency))
            if other is None or _rate(other) <= 0:
                continue
            ratios.append(
                {
                    "concurrency": concurrency,
                    "baseline": baseline,
                    "ratio": round(_rate(mesh) / _rate(other), 3),
                    "per_round": per_round(mesh, other),
                }
            )
    return ratios


def versus_trio(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Every other stack's handshakes/s over bare trio's at concurrency 1 (the issue 11
    table): paired (`paired`, what the targets judge), per round, and as a ratio of medians;
    and the hybrid group's cost: pyopenssl-membio-pq over pyopenssl-membio."""
    rows = {cast(str, r["stack"]): r for r in results if r["concurrency"] == 1 and _rate(r) > 0}
    ratios: list[dict[str, object]] = []
    trio_row = rows.get("trio")
    for stack, row in rows.items():
        if trio_row is not None and stack != "trio":
            ratios.append(
                {
                    "stack": stack,
                    "over": "trio",
                    "paired": paired(row, trio_row),
                    "per_round": per_round(row, trio_row),
                    "ratio": round(_rate(row) / _rate(trio_row), 3),
                }
            )
    x25519, hybrid = rows.get("pyopenssl-membio"), rows.get("pyopenssl-membio-pq")
    if x25519 is not None and hybrid is not None:
        ratios.append(
            {
                "stack": "pyopenssl-membio-pq",
                "over": "pyopenssl-membio",
                "paired": paired(hybrid, x25519),
                "per_round": per_round(hybrid, x25519),
                "ratio": round(_rate(hybrid) / _rate(x25519), 3),
            }
        )
    return ratios


def compare_revocation(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Revocation on (warm cache) over off: handshakes/s (ratio of medians, `paired`, and
    per round) and p50 latency, at each concurrency both rows were measured."""
    by_key = {(cast(str, r["stack"]), cast(int, r["concurrency"])): r for r in results}
    ratios: list[dict[str, object]] = []
    for (stack, concurrency), on in by_key.items():
        off = by_key.get(("meshtls", concurrency))
        if stack != REVOCATION_STACK or off is None or _rate(off) <= 0:
            continue
        p50_off = _latency(off, "p50")
        ratios.append(
            {
                "concurrency": concurrency,
                "ratio": round(_rate(on) / _rate(off), 3),
                "paired": paired(on, off),
                "per_round": per_round(on, off),
                "p50_ratio": round(_latency(on, "p50") / p50_off, 3) if p50_off > 0 else None,
            }
        )
    return ratios


def _by_key(results: Sequence[dict[str, object]]) -> dict[tuple[str, int], dict[str, object]]:
    return {(cast(str, r["stack"]), cast(int, r["concurrency"])): r for r in results}


def versus_peers(
    results: Sequence[dict[str, object]], unavailable: Sequence[dict[str, str]] = ()
) -> list[dict[str, object]]:
    """Issue 11: meshtls (hybrid) and meshtls-x25519 over the engine floor and spiffe-tls at
    concurrency 1, as ratios of medians; a pair not measured says why (``note``)."""
    by_key = _by_key(results)
    missing = {entry["stack"]: entry["reason"] for entry in unavailable}
    ratios: list[dict[str, object]] = []
    for stack in ("meshtls", X25519_STACK):
        mesh = by_key.get((stack, 1))
        for peer in ISSUE_11_PEERS:
            other = by_key.get((peer, 1))
            ratio: float | None = None
            note: str | None = None
            if mesh is None:
                note = f"{stack} not measured at concurrency 1"
            elif other is None:
                note = missing.get(peer, f"{peer} not measured at concurrency 1")
            elif _rate(other) > 0:
                ratio = round(_rate(mesh) / _rate(other), 3)
            else:
                note = f"{peer} completed no handshake"
            ratios.append({"stack": stack, "over": peer, "ratio": ratio, "note": note})
    return ratios


def hybrid_cost(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The hybrid group's cost for meshtls at each concurrency both rows ran at: ``meshtls``
    (X25519MLKEM768) over ``meshtls-x25519`` handshakes/s (ratio of medians, and per round),
    and each row's median CPU microseconds per handshake (both sides, in this process)."""
    by_key = _by_key(results)
    costs: list[dict[str, object]] = []
    for (stack, concurrency), hybrid in by_key.items():
        classic = by_key.get((X25519_STACK, concurrency))
        if stack != "meshtls" or classic is None or _rate(classic) <= 0:
            continue
        cpu_hybrid = round(cast(float, hybrid["cpu_ms_per_handshake"]) * 1000, 1)
        cpu_classic = round(cast(float, classic["cpu_ms_per_handshake"]) * 1000, 1)
        costs.append(
            {
                "concurrency": concurrency,
                "ratio": round(_rate(hybrid) / _rate(classic), 3),
                "per_round": per_round(hybrid, classic),
                "cpu_us_per_handshake_hybrid": cpu_hybrid,
                "cpu_us_per_handshake_x25519": cpu_classic,
                "cpu_us_extra": round(cpu_hybrid - cpu_classic, 1),
                "cpu_ratio": round(cpu_hybrid / cpu_classic, 3) if cpu_classic > 0 else None,
            }
        )
    return costs


def _target(
    name: str, value: float | None, relation: str, bound: float, issue: int
) -> dict[str, object]:
    met: bool | None = None
    if value is not None:
        met = {">=": value >= bound, ">": value > bound, "<=": value <= bound}[relation]
    return {
        "name": name,
        "issue": issue,
        "value": value,
        "target": f"{relation} {bound}",
        "met": met,
    }


def judge(
    results: Sequence[dict[str, object]],
    memory: Sequence[dict[str, object]],
    revocation: Sequence[dict[str, object]] = (),
) -> list[dict[str, object]]:
    """Issue 11's targets, and issue 3's and 9's that still apply, each computed from this
    run's figures with its verdict: ``met`` is None (value None) for a target whose figures
    this run did not measure (a stack or level left out, or ``--no-memory``). A ratio of two
    stacks' handshakes/s is judged `paired` (its ``ratio_of_medians`` is kept beside it)."""
    by_key = _by_key(results)
    targets: list[dict[str, object]] = []
    for (stack, baseline, concurrency), (relation, bound, issue) in RATIO_TARGETS.items():
        mesh, other = by_key.get((stack, concurrency)), by_key.get((baseline, concurrency))
        value = medians = None
        if mesh is not None and other is not None and _rate(other) > 0:
            value = paired(mesh, other)
            medians = round(_rate(mesh) / _rate(other), 3)
        name = f"{stack} / {baseline} handshakes/s at concurrency {concurrency}"
        target = _target(name, value, relation, bound, issue)
        target["ratio_of_medians"] = medians
        targets.append(target)
    entry = by_key.get(("meshtls", 1))
    spread = None
    if entry is not None and _latency(entry, "p50") > 0:
        spread = round(_latency(entry, "p99") / _latency(entry, "p50"), 3)
    name = "meshtls p99 / p50 latency at concurrency 1"
    targets.append(_target(name, spread, "<=", TARGET_P99_OVER_P50, 11))
    rss = None
    for sample in memory:
        if sample["stack"] == "meshtls":
            rss = cast(int, sample["rss_bytes_per_stream"])
    name = "meshtls RSS bytes per idle MeshStream"
    targets.append(_target(name, rss, "<=", TARGET_BYTES_PER_STREAM, 11))
    for ratio in revocation:
        value = cast("float | None", ratio["paired"])
        name = f"meshtls revocation on / off handshakes/s at concurrency {ratio['concurrency']}"
        target = _target(name, value, ">=", TARGET_REVOCATION_RATIO, 9)
        target["ratio_of_medians"] = ratio["ratio"]
        targets.append(target)
    return targets


def environment() -> dict[str, object]:
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "openssl": ssl.OPENSSL_VERSION,
        "pyopenssl_openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "trio": trio.__version__,
        "cryptography": cryptography.__version__,
        "meshtls": meshtls.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count() or 0,
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count() or 0,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: 1,000 idle connections are 2,000 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- progress


class Progress:
    """A one-line bar on a terminal, a line per finished step otherwise, or nothing."""

    def __init__(self, total: int, mode: Literal["bar", "lines", "off"], out: TextIO) -> None:
        self.total = max(total, 1)
        self.mode = mode
        self.out = out
        self.done = 0
        self.label = ""
        self._drawn = 0.0
        self._lock = threading.Lock()

    def start(self, label: str) -> None:
        self.label = label
        self._draw(force=True)

    def tick(self) -> None:
        self.done += 1  # from threads too: a lost increment is corrected by `finish`
        if self.mode == "bar" and time.perf_counter() - self._drawn >= 0.1:
            self._draw(force=False)

    def finish(self, done: int, detail: str) -> None:
        self.done = done
        if self.mode == "lines":
            print(f"{self.label}: {detail}", file=self.out, flush=True)
        self._draw(force=True)

    def note(self, text: str) -> None:
        if self.mode == "lines":
            print(text, file=self.out, flush=True)
        elif self.mode == "bar":
            self.label = text
            self._draw(force=True)

    def close(self) -> None:
        if self.mode == "bar":
            print("\r\033[K", end="", file=self.out, flush=True)

    def _draw(self, *, force: bool) -> None:
        if self.mode != "bar" or not self._lock.acquire(blocking=force):
            return
        try:
            share = min(self.done / self.total, 1.0)
            filled = round(30 * share)
            bar = "#" * filled + "-" * (30 - filled)
            print(f"\r[{bar}] {share:4.0%} {self.label}\033[K", end="", file=self.out, flush=True)
            self._drawn = time.perf_counter()
        finally:
            self._lock.release()


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Options:
    count: int = 300
    rounds: int = 5
    concurrency: tuple[int, ...] = (1, 16, 64)
    stacks: tuple[str, ...] = STACKS
    memory: bool = True
    idle: int = IDLE_CONNECTIONS


def build_stacks(names: Sequence[str]) -> list[Stack]:
    """The stacks to run, in `STACKS` order."""
    stacks: list[Stack] = []
    for name in STACKS:
        if name not in names:
            continue
        if name == "meshtls":
            stacks.append(MeshtlsStack())
        elif name == X25519_STACK:
            stacks.append(MeshtlsX25519Stack())
        elif name == REVOCATION_STACK:
            stacks.append(MeshtlsRevocationStack())
        elif name == "trio":
            stacks.append(TrioSSLStack())
        elif name == "asyncio":
            stacks.append(AsyncioStack())
        elif name == "uvloop":
            reason = uvloop_unavailable()
            stacks.append(
                AsyncioStack("uvloop") if reason is None else UnavailableStack(name, reason)
            )
        elif name == "blocking":
            stacks.append(BlockingStack())
        elif name in PYOPENSSL_GROUPS:
            stacks.append(PyOpenSSLMembioStack(name))
        elif (reason := spiffe_tls_unavailable()) is not None:
            stacks.append(UnavailableStack(name, reason))
        else:
            stacks.append(SpiffeTlsStack())
    return stacks


def levels_of(stack: Stack, concurrency: Sequence[int]) -> list[int]:
    """The concurrency levels `stack` is measured at: none if unavailable, 1 if sequential."""
    if isinstance(stack, UnavailableStack):
        return []
    if stack.name in SEQUENTIAL_STACKS:
        return [level for level in concurrency if level == 1]
    return list(concurrency)


def run_benchmark(options: Options, progress: Progress | None = None) -> dict[str, object]:
    """Measure and return the whole report (the JSON document)."""
    raise_fd_limit()
    stacks = build_stacks(options.stacks)
    unavailable_reasons = [
        (stack.name, stack.reason) for stack in stacks if isinstance(stack, UnavailableStack)
    ]
    stacks = [stack for stack in stacks if not isinstance(stack, UnavailableStack)]
    steps_per_round = sum(len(levels_of(stack, options.concurrency)) for stack in stacks)
    total = options.rounds * steps_per_round * options.count
    progress = progress or Progress(total, "off", sys.stderr)
    progress.total = max(total, 1)
    steps: dict[tuple[str, int], list[Step]] = {}
    memory: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="meshtls-bench-") as tmp:
        done = 0
        for round_index in range(options.rounds):
            identity = make_identity(Path(tmp) / f"round-{round_index}")
            turn = round_index % len(stacks) if stacks else 0
            order = stacks[turn:] + stacks[:turn]
            for concurrency in options.concurrency:
                for stack in order:
                    if concurrency not in levels_of(stack, options.concurrency):
                        continue
                    progress.start(
                        f"round {round_index + 1}/{options.rounds} {stack.name} c={concurrency}"
                    )
                    step = stack.run(identity, concurrency, options.count, progress.tick)
                    steps.setdefault((stack.name, concurrency), []).append(step)
                    done += options.count
                    detail = f"{step.rate:8.1f} handshakes/s"
                    if step.errors:
                        detail += f", {step.errors} errors ({step.first_error})"
                    progress.finish(done, detail)
        if options.memory:
            identity = make_identity(Path(tmp) / "memory")
            for stack in stacks:
                if stack.name in MEMORY_STACKS:
                    progress.note(f"memory: {options.idle} idle {stack.name} connections")
                    memory.append(idle_memory(cast(_TrioFlavour, stack), identity, options.idle))
    progress.close()
    results = [
        summarise(stack.name, concurrency, steps[(stack.name, concurrency)])
        for concurrency in options.concurrency
        for stack in stacks
        if (stack.name, concurrency) in steps
    ]
    ratios = compare(results)
    revocation = compare_revocation(results)
    unavailable = [{"stack": name, "reason": reason} for name, reason in unavailable_reasons]
    return {
        "benchmark": "handshake",
        "environment": environment(),
        "options": {
            "count": options.count,
            "rounds": options.rounds,
            "concurrency": list(options.concurrency),
            "stacks": [stack.name for stack in stacks],
            "warmup": WARMUP,
            "memory": options.memory,
            "idle_connections": options.idle,
        },
        "results": results,
        "unavailable": unavailable,
        "ratios": ratios,
        "versus_trio": versus_trio(results),
        "versus_peers": versus_peers(results, unavailable),
        "hybrid_cost": hybrid_cost(results),
        "revocation": revocation,
        "memory": memory,
        "targets": judge(results, memory, revocation),
    }


# ---------------------------------------------------------------- command line


def render(report: dict[str, object]) -> str:
    """The report as text tables."""
    lines: list[str] = []
    env = cast(dict[str, object], report["environment"])
    options = cast(dict[str, object], report["options"])
    lines.append(
        f"TLS 1.3 mutual-auth handshakes over loopback, ECDSA P-256: python {env['python']},"
        f" {env['openssl']}, {env['cpus_usable']} cpus;"
        f" {options['rounds']} rounds x {options['count']} handshakes"
    )
    lines.append(
        f"pyOpenSSL rows: {env.get('pyopenssl_openssl', '?')}; pyopenssl-membio offers X25519,"
        " -pq X25519MLKEM768 first; spiffe-tls reuses one context, X25519"
    )
    lines.append(
        f"{'stack':19s} {'conc':>4s} {'hs/s':>8s} {'rounds (hs/s)':>20s} {'cpu ms/hs':>9s}"
        f" {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'p99/p50':>7s} {'errors':>6s}"
    )
    for entry in cast(list[dict[str, object]], report["results"]):
        rounds = cast(list[dict[str, float]], entry["rounds"])
        rounds_text = " ".join(f"{r['handshakes_per_second']:.0f}" for r in rounds)
        p50, p90, p99 = (_latency(entry, name) for name in ("p50", "p90", "p99"))
        spread = f"{p99 / p50:7.2f}" if p50 > 0 else f"{'-':>7s}"
        cpu = cast(float, entry["cpu_ms_per_handshake"])
        lines.append(
            f"{entry['stack']!s:19s} {entry['concurrency']!s:>4s} {_rate(entry):8.1f}"
            f" {rounds_text:>20s} {cpu:9.3f} {p50:8.3f} {p90:8.3f} {p99:8.3f}"
            f" {spread} {entry['errors']!s:>6s}"
        )
    for missing in cast(list[dict[str, str]], report.get("unavailable", [])):
        lines.append(f"{missing['stack']:19s} unavailable: {missing['reason']}")
    ratios = cast(list[dict[str, object]], report["ratios"])
    if ratios:
        lines.append("")
        lines.append("meshtls handshakes/s as a ratio of medians (per round in brackets):")
        for ratio in ratios:
            rounds_text = ", ".join(map(str, cast(list[float], ratio["per_round"])))
            lines.append(
                f"  c={ratio['concurrency']!s:>3s} vs {ratio['baseline']!s:19s}"
                f" {ratio['ratio']!s:>6s}  [{rounds_text}]"
            )
    peers = cast(list[dict[str, object]], report.get("versus_peers", []))
    if peers:
        lines.append("")
        lines.append(
            "meshtls at concurrency 1 over the engine floor and spiffe-tls, handshakes/s as a"
            " ratio of medians:"
        )
        for entry in peers:
            shown = entry["ratio"] if entry["ratio"] is not None else f"n/a ({entry['note']})"
            lines.append(f"  {entry['stack']!s:19s} / {entry['over']!s:19s} {shown!s:>6s}")
    costs = cast(list[dict[str, object]], report.get("hybrid_cost", []))
    if costs:
        lines.append("")
        lines.append(
            "meshtls hybrid (X25519MLKEM768) vs X25519: handshakes/s as a ratio of medians"
            " (per round in brackets); CPU us per handshake, both sides:"
        )
        for entry in costs:
            rounds_text = ", ".join(map(str, cast(list[float], entry["per_round"])))
            lines.append(
                f"  c={entry['concurrency']!s:>3s} {entry['ratio']!s:>6s}  [{rounds_text}]"
                f"  cpu {entry['cpu_us_per_handshake_hybrid']} vs"
                f" {entry['cpu_us_per_handshake_x25519']} us"
                f" ({entry['cpu_us_extra']:+} us, x{entry['cpu_ratio']})"
            )
    over_trio = cast(list[dict[str, object]], report.get("versus_trio", []))
    if over_trio:
        lines.append("")
        lines.append(
            "handshakes/s at concurrency 1, paired (the median of the per-round ratios, in"
            " brackets), then as a ratio of medians:"
        )
        for entry in over_trio:
            rounds_text = ", ".join(map(str, cast(list[float], entry["per_round"])))
            lines.append(
                f"  {entry['stack']!s:19s} / {entry['over']!s:16s} {entry['paired']!s:>6s}"
                f"  [{rounds_text}]  {entry['ratio']!s:>6s}"
            )
    revocation = cast(list[dict[str, object]], report.get("revocation", []))
    if revocation:
        lines.append("")
        lines.append(
            "meshtls revocation on (soft-fail, warm cache) / off, handshakes/s paired (per"
            " round in brackets), then as a ratio of medians:"
        )
        for entry in revocation:
            rounds_text = ", ".join(map(str, cast(list[float], entry["per_round"])))
            lines.append(
                f"  c={entry['concurrency']!s:>3s} {entry['paired']!s:>6s}  [{rounds_text}]"
                f"  {entry['ratio']!s:>6s}"
                f"  p50 latency on/off {entry['p50_ratio']}"
            )
    memory = cast(list[dict[str, object]], report["memory"])
    if memory:
        lines.append("")
        lines.append(
            "idle memory, bytes per stream (both ends are in this process: deltas divided by"
            " 2 x connections):"
        )
        lines.append(f"{'stack':9s} {'conns':>6s} {'RSS':>9s} {'C heap':>9s} {'Py heap':>9s}")
        for entry in memory:
            malloc = entry["malloc_bytes_per_stream"]
            lines.append(
                f"{entry['stack']!s:9s} {entry['connections']!s:>6s}"
                f" {entry['rss_bytes_per_stream']!s:>9s}"
                f" {'n/a' if malloc is None else str(malloc):>9s}"
                f" {entry['python_heap_bytes_per_stream']!s:>9s}"
            )
    targets = cast(list[dict[str, object]], report["targets"])
    if targets:
        lines.append("")
        lines.append("targets (issue 11, and issues 3 and 9 where they still apply):")
        for target in targets:
            if target["met"] is None:
                verdict, value = "not measured in this run", "-"
            else:
                verdict, value = ("met" if target["met"] else "NOT MET"), str(target["value"])
                if target.get("ratio_of_medians") is not None:
                    value += f" paired (ratio of medians {target['ratio_of_medians']})"
            lines.append(
                f"  [issue {target['issue']}] {target['name']}: {value}"
                f" (target {target['target']}) {verdict}"
            )
    return "\n".join(lines)


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers: {text!r}")
    return values


def stack_names(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of names from `choices` (a bench's stacks)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = sorted(set(names) - set(choices))
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown stack {', '.join(unknown) or '(none)'}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer: {text!r}")
    return value


def parser(
    prog: str | None = None, kind: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The benchmark's options; `prog` names the command in usage (default: the script's
    name), `kind` is the parser class (``meshtls`` passes its one-line-error parser)."""
    parser = kind(
        prog=prog,
        description="TLS 1.3 mutual-auth handshakes/s and latency: meshtls and baselines.",
    )
    parser.add_argument("--count", type=positive_int, default=300, help="per stack, level, round")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--concurrency", type=_positive_ints, default=(1, 16, 64), metavar="C,C")
    parser.add_argument("--stacks", type=stack_names(STACKS), default=STACKS, metavar="NAME,NAME")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-memory part")
    parser.add_argument("--idle", type=positive_int, default=IDLE_CONNECTIONS, metavar="N")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    kind: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> int:
    """Run the benchmark; 0 when every handshake succeeded, 1 otherwise, 2 on usage errors.

    Ctrl-C raises `KeyboardInterrupt` to the caller (``meshtls`` turns it into exit 130)."""
    args = parser(prog, kind).parse_args(argv)
    options = Options(
        count=args.count,
        rounds=args.rounds,
        concurrency=args.concurrency,
        stacks=args.stacks,
        memory=not args.no_memory,
        idle=args.idle,
    )
    mode: Literal["bar", "lines", "off"] = (
        "off" if args.quiet else "bar" if sys.stderr.isatty() else "lines"
    )
    report = run_benchmark(options, Progress(0, mode, sys.stderr))
    print(render(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    results = cast(list[dict[str, object]], report["results"])
    if not results:
        print("nothing to measure", file=sys.stderr)
        return 1
    errors = sum(cast(int, entry["errors"]) for entry in results)
    if errors:
        print(f"{errors} handshakes failed: the figures are suspect", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
