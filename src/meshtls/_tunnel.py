"""Tunnels, like ghostunnel: `expose` (mTLS in, plaintext out) and `forward` (the reverse).

Theory of operation: a tunnel joins two streams and copies each direction in its own
task. A copy moves one chunk at a time, so a slow reader slows the writer at the
other end (backpressure: no unbounded buffer anywhere). When one side ends its
direction, the copy half-closes the other side's matching direction and the opposite
direction keeps flowing, so request/response protocols that half-close work. When
both directions are done, both streams are closed.

No byte is lost quietly. A tunnel that cannot finish (either side breaks, a copy
fails in any way, the tunnel is cancelled, or its far end cannot be reached) resets
both sides instead of closing them: the plaintext socket gets a TCP RST, the mTLS
stream is closed without close_notify (`MeshStream.abort`), so whoever is at either
end sees an error, never a clean EOF after a short transfer.

Each listener has its own cap on concurrent connections; a connection over the cap is
reset at once and logged. The mTLS side is a `MeshStream`, so
its peer has passed verification and the listener's own authorizer before one byte is
copied.

An expose with ``proxy_protocol`` first sends its backend a PROXY protocol v2 header
(haproxy's proxy-protocol.txt, section 2.2): command PROXY, TCP over IPv4 or IPv6, the
peer's address as the source and the address it reached us on as the destination, then
two TLVs. ``PP2_TYPE_SSL`` (0x20) says the client came over TLS with a certificate that
verified (client flags SSL|CERT_CONN|CERT_SESS, verify 0) with a ``PP2_SUBTYPE_SSL_VERSION``
sub-TLV ("TLSv1.3"), for parsers that know only the standard types; ``PP2_TYPE_SPIFFE_ID``
(0xE0, the first of the custom range 0xE0-0xEF) carries the peer's verified SPIFFE id as
UTF-8. No CRC32C or padding TLV is sent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NoReturn

import trio

from ._authorize import Authorizer
from ._boundary import describe_error
from ._errors import HandshakeError
from ._identity import IdentitySource
from ._logs import Throttle, event, log_context, throttled
from ._revocation import RevocationView
from ._spiffeid import SpiffeId
from ._stream import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    LINGER_RESET,
    Access,
    Clock,
    MeshStream,
    Observer,
    OurRole,
    PolicyRead,
    accounted,
    connect,
    serve,
)

Track = Callable[[MeshStream, OurRole], AbstractContextManager[None]]


@contextmanager
def _untracked(stream: MeshStream, role: OurRole) -> Iterator[None]:
    yield


logger = logging.getLogger("meshtls")

COPY_SIZE = 65536


#: Seconds a tunnel waits for its far end: forward's dial and handshake, expose's dial.
DEFAULT_CONNECT_TIMEOUT = 10.0


def _check_connect_timeout(seconds: float) -> None:
    if not seconds > 0:  # NaN too
        raise ValueError(f"connect_timeout must be positive, not {seconds!r}")


#: The two kinds of stream a tunnel joins.
Tunnelled = MeshStream | trio.SocketStream


async def _copy(source: Tunnelled, sink: Tunnelled) -> None:
    """Copy until `source` ends, then half-close `sink`."""
    while True:
        data = await source.receive_some(COPY_SIZE)
        if not data:
            break
        await sink.send_all(data)
    await sink.send_eof()


def reset(stream: Tunnelled) -> None:
    """Close `stream` at once so that its peer sees an error, never a clean end.

    A plaintext socket is closed with SO_LINGER 0 (a TCP RST); a `MeshStream` is aborted
    (no close_notify, then an RST). Never blocks, so it also works in a cancelled task.
    """
    if isinstance(stream, MeshStream):
        stream.abort()
        return
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    stream.socket.close()


async def join(left: Tunnelled, right: Tunnelled) -> None:
    """Copy both ways until both directions end; then close both. Owns both streams.

    If either copy fails in any way, or the join is cancelled, both streams are reset
    (`reset`) instead: a transfer cut off part-way must never look finished at either
    end. A copy failure is not raised: its words go on each `MeshStream` side
    (``end_error``), for the connection's access line; cancellation propagates.
    """
    failure: Exception | None = None

    async def copy(source: Tunnelled, sink: Tunnelled, scope: trio.CancelScope) -> None:
        nonlocal failure
        try:
            await _copy(source, sink)
        except Exception as exc:  # whatever broke, the tunnel is cut: reset both below
            failure = failure or exc
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, left, right, nursery.cancel_scope)
            nursery.start_soon(copy, right, left, nursery.cancel_scope)
    except BaseException:
        reset(left)
        reset(right)
        raise
    if failure is not None:
        for side in (left, right):
            if isinstance(side, MeshStream) and side.end_error is None:
                side.end_error = f"tunnel cut off: {_words(failure)}"
        reset(left)
        reset(right)
        return
    try:
        await left.aclose()
    finally:
        await right.aclose()


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_VERSION_PROXY = 0x21  # version 2, command PROXY
PP2_TCP_OVER_IPV4 = 0x11
PP2_TCP_OVER_IPV6 = 0x21
PP2_UNSPEC = 0x00
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_CLIENT_SSL_CERT_VERIFIED = 0x01 | 0x02 | 0x04  # SSL, CERT_CONN, CERT_SESS
#: Our TLV type for the peer's verified SPIFFE id (custom range 0xE0-0xEF).
PP2_TYPE_SPIFFE_ID = 0xE0


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def _packed_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.partition("%")[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def proxy_header(
    source: tuple[str, int], destination: tuple[str, int], spiffe_id: SpiffeId
) -> bytes:
    """The PROXY protocol v2 header for a verified peer at `source` that reached us at
    `destination` (see the module docstring for the TLVs). Addresses of two families
    (which a dual-stack socket can give) are sent as UNSPEC: the backend then uses the
    connection's own addresses, and still reads the TLVs."""
    src, dst = _packed_ip(source[0]), _packed_ip(destination[0])
    if src.version != dst.version:
        family, addresses = PP2_UNSPEC, b""
    else:
        family = PP2_TCP_OVER_IPV4 if src.version == 4 else PP2_TCP_OVER_IPV6
        addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    ssl = struct.pack("!BI", PP2_CLIENT_SSL_CERT_VERIFIED, 0) + _tlv(
        PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"
    )
    tlvs = _tlv(PP2_TYPE_SSL, ssl) + _tlv(PP2_TYPE_SPIFFE_ID, str(spiffe_id).encode())
    body = addresses + tlvs
    return PROXY_V2_SIGNATURE + struct.pack("!BBH", PP2_VERSION_PROXY, family, len(body)) + body


def _socket_address(name: object) -> tuple[str, int]:
    """A TCP socket's (host, port) from getpeername/getsockname (IPv6 gives 4 items)."""
    assert isinstance(name, tuple)
    return str(name[0]), int(name[1])


def proxy_header_for(stream: MeshStream) -> bytes:
    """`proxy_header` for the verified peer of `stream`, from its socket's two ends."""
    return proxy_header(
        _socket_address(stream.socket.getpeername()),
        _socket_address(stream.socket.getsockname()),
        stream.peer.spiffe_id,
    )


async def expose(
    listen: tuple[str, int],
    backend: tuple[str, int] | Path,
    *,
    source: IdentitySource,
    authorize: Authorizer,
    policy: PolicyRead | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    clock: Clock | None = None,
    revocation: RevocationView | None = None,
    on_rejected: Callable[[HandshakeError], object] | None = None,
    observer: Observer | None = None,
    track: Track = _untracked,
    proxy_protocol: bool = False,
    groups: str | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """mTLS in on `listen`, plaintext out to `backend` (a TCP address, or the path of a
    Unix socket), for peers `authorize` accepts.

    ``started()`` gives the listeners. At most `max_connections` tunnels are open (`serve`'s
    cap). A backend that refuses the connection, or does not accept it within
    `connect_timeout` seconds, resets the peer's stream (logged). `track` wraps each
    tunnel (the node's deadlines); `clock` gives the time certificates are judged at
    (default: the wall clock), `revocation` the statuses P-4 reads (`serve`'s). With
    `proxy_protocol`, the backend first gets a PROXY v2
    header naming the peer (`proxy_header`); without it, nothing but the peer's bytes.
    `groups` are the key-exchange groups accepted (`serve`'s). Runs until cancelled.
    """
    _check_connect_timeout(connect_timeout)
    if isinstance(backend, Path):
        backend_text = f"unix:{backend}"
    else:
        host, port = backend
        backend_text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def dial_backend() -> trio.SocketStream:
        if isinstance(backend, Path):
            return await trio.open_unix_socket(backend)
        return await trio.open_tcp_stream(*backend)

    async def tunnel(stream: MeshStream) -> None:
        upstream: trio.SocketStream | None = None
        try:
            with trio.move_on_after(connect_timeout):
                upstream = await dial_backend()
        except OSError as exc:
            problem, why = _words(exc), "unreachable"
        else:
            problem, why = f"no connection within {connect_timeout:g}s", "timeout"
        if upstream is None:
            throttled(
                logger,
                logging.ERROR,
                "expose backend unreachable",
                key=("reason", "backend"),
                reason=why,
                backend=backend_text,
                error=problem,
            )
            if stream.account is not None:
                stream.account.backend_failed = stream.account.reported = True
            stream.end_error = f"backend {why}: {problem}"
            stream.abort()  # the peer's client must not read a clean EOF as the answer
            return
        with track(stream, "server"):
            if proxy_protocol:
                try:
                    await upstream.send_all(proxy_header_for(stream))
                except (OSError, trio.BrokenResourceError) as exc:
                    event(
                        logger,
                        logging.ERROR,
                        "expose backend broke before the PROXY header was sent",
                        backend=backend_text,
                        error=_words(exc),
                    )
                    reset(upstream)
                    stream.abort()
                    return
            await join(stream, upstream)

    host, port = listen
    await serve(
        tunnel,
        port,
        host=host,
        source=source,
        authorize=authorize,
        policy=policy,
        handshake_timeout=handshake_timeout,
        max_connections=max_connections,
        clock=clock,
        revocation=revocation,
        on_rejected=on_rejected,
        observer=observer,
        groups=groups,
        task_status=task_status,
    )


async def forward(
    listen: tuple[str, int],
    peer: tuple[str, int],
    *,
    authorize: Authorizer,
    source: IdentitySource,
    policy: PolicyRead | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    clock: Clock | None = None,
    revocation: RevocationView | None = None,
    observer: Observer | None = None,
    track: Track = _untracked,
    groups: str | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Plaintext in on `listen`, mTLS out to `peer`, which `authorize` must accept (the
    node's ``expect``, as `authorize_patterns` builds it, or a `Gate` a reload can change).
    `policy` may be a callable, read for each connection.

    A peer that cannot be reached, fails verification, is refused by `authorize`, or has not
    completed its TCP connect and handshake within `connect_timeout` seconds: the
    plaintext client is reset (logged). At most `max_connections` clients at once; one
    more is reset at once. `clock` gives the time certificates are judged at (default:
    the wall clock), `revocation` the statuses P-4 reads and `groups` the key-exchange
    groups offered (both `connect`'s). ``started()``
    gives the listeners. Each client is one line: the
    rejection (`connect`'s) or the failure (rate-limited per reason, like `serve`'s), or
    its `Access` to the observer, whose bytes are the plaintext client's.
    """
    _check_connect_timeout(connect_timeout)
    if max_connections < 1:
        raise ValueError("a connection cap must be >= 1")
    connections = trio.CapacityLimiter(max_connections)
    peer_host, peer_port = peer

    throttle = Throttle()
    peer_text = f"[{peer_host}]:{peer_port}" if ":" in peer_host else f"{peer_host}:{peer_port}"

    async def tunnel(client: trio.SocketStream) -> None:
        with accounted("client", _peer_of(client), observer) as access:
            await forward_client(client, access)

    async def forward_client(client: trio.SocketStream, access: Access) -> None:
        try:
            connections.acquire_nowait()
        except trio.WouldBlock:
            access.refused_at_cap("forward at its connection cap, resetting", max_connections)
            reset(client)
            return
        try:
            await forward_one(client, access)
        except Exception as exc:  # a bug: one client's failure is that client's alone
            event(logger, logging.ERROR, "forward failed, resetting the client", exc_info=exc)
            access.ended, access.error, access.reported = "reset", describe_error(exc), True
            reset(client)
        finally:
            connections.release()

    async def forward_one(client: trio.SocketStream, access: Access) -> None:
        upstream: MeshStream | None = None
        why: str | None = None
        try:
            with trio.move_on_after(connect_timeout):
                upstream = await connect(
                    peer_host,
                    peer_port,
                    source=source,
                    authorize=authorize,
                    policy=policy,
                    clock=clock,
                    revocation=revocation,
                    observer=observer,
                    groups=groups,
                )
        except HandshakeError as exc:  # connect logged it: one line per event
            why, problem = exc.reason, exc.detail
        except OSError as exc:
            problem = _words(exc)
        else:
            problem = f"no verified connection within {connect_timeout:g}s"
        if upstream is None:
            if why is None:
                why = "timeout" if problem.startswith("no verified") else "unreachable"
                throttled(
                    logger,
                    logging.WARNING,
                    "forward could not reach its peer",
                    key=("reason", "target"),
                    reason=why,
                    target=peer_text,
                    error=problem,
                )
            access.ended, access.reason, access.error = "reset", why, problem
            access.backend_failed = access.reported = True
            reset(client)  # its request went nowhere: no clean EOF as the answer
            return
        access.spiffe_id = str(upstream.peer.spiffe_id)
        access.served = True
        try:
            with log_context(spiffe_id=access.spiffe_id), track(upstream, "client"):
                await join(client, upstream)
        finally:
            # The listener's side is the plaintext client: what it sent went up, and back.
            access.received, access.sent = upstream.bytes_sent, upstream.bytes_received
            access.ended, access.reason, access.error = upstream.ending()
            if upstream.end == "rejected":  # the node cut it off and logged that line
                access.reported = True

    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(throttle.run)
        with throttle.using():
            for listener in listeners:
                nursery.start_soon(_accept_plain, listener, nursery, tunnel)
        task_status.started(listeners)
    # Every listener was closed (a node's drain) and every client has ended.
    await trio.sleep_forever()


async def _accept_plain(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    tunnel: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept plaintext clients until `listener` is closed (a node's drain), then return.

    Out of descriptors or memory: log, back off 100 ms and go on, as `trio.serve_tcp` does.
    """
    async with listener:
        while True:
            try:
                client = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:
                if listener.socket.fileno() == -1:
                    return
                throttled(
                    logger,
                    logging.ERROR,
                    "accept failed, retrying in 100 ms",
                    key=("error",),
                    error=_words(exc),
                )
                await trio.sleep(0.1)
                continue
            nursery.start_soon(_closing, tunnel, client)


async def _closing(
    tunnel: Callable[[trio.SocketStream], Awaitable[None]], client: trio.SocketStream
) -> None:
    """Run `tunnel` for `client`, then close `client` whatever happened (it may be reset)."""
    async with client:
        await tunnel(client)


def _peer_of(client: trio.SocketStream) -> str:
    """``host:port`` of a plaintext client (``-`` once it is gone)."""
    try:
        host, port = client.socket.getpeername()[:2]
    except OSError:
        return "-"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _words(exc: BaseException) -> str:
    """An I/O error in words: ``connection refused``, not a Python repr.

    A broken stream (ours or trio's) wraps the socket error it met: that error's words
    are the story; one broken by TLS (a failure, a rejection) says it in its own message.
    """
    words = _socket_words(exc)
    if words is None and isinstance(exc, trio.BrokenResourceError):
        words = _socket_words(exc.__cause__) or str(exc) or None
    if words is None and type(exc) is OSError and str(exc):  # trio: "all attempts ... failed"
        group = exc.__cause__
        each = group.exceptions if isinstance(group, BaseExceptionGroup) else ()
        why = sorted({w for w in map(_socket_words, each) if w is not None})
        words = f"{exc}: {', '.join(why)}" if why else str(exc)
    return words or describe_error(exc)


def _socket_words(exc: BaseException | None) -> str | None:
    """``connection reset by peer`` for a socket error (not a TLS one), else None."""
    if not isinstance(exc, OSError) or isinstance(exc, ssl.SSLError):
        return None
    if exc.errno:  # trio's own: "Error connecting to ('127.0.0.1', 1): Connection refused"
        return os.strerror(exc.errno).lower()
    return exc.strerror.lower() if exc.strerror else None
