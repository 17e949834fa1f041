"""`MeshStream`, `connect` and `serve`: TCP upgraded to verified TLS 1.3 mutual TLS.

Theory of operation
-------------------
A `MeshStream` owns a nonblocking stdlib socket and a sans-I/O `TlsSession`. I/O is
the leanest loop that trio allows: try the system call, and only on
``BlockingIOError`` wait with `trio.lowlevel.wait_readable`/`wait_writable`. A
handshake is therefore one engine step per flight, plus a wait per network round
trip, instead of a pass through a generic retry loop for every engine call.

Each public operation is a checkpoint exactly once when it does not block (trio's
contract): the fast paths end with `trio.lowlevel.checkpoint()`.

Verification happens before the stream exists. `connect` and `serve` run the
handshake, then `verify_handshake_chain` on the chain OpenSSL verified (trust-domain
binding, SPIFFE rules, time, policy, then revocation from the view's cache, with one
bounded wait under hard-fail: `_judge_chain`), then the authorizer. Only a stream that passed
all of that is returned to the caller or handed to the handler; anything else is
closed, logged on one line and raised (or, in `serve`, counted and dropped).

Sending: `send_all` and the engine's own replies (post-handshake messages) share
one lock, so records never interleave on the socket. Cancelling a send after some
of a record left breaks the stream, as with any TLS stream.

In TLS 1.3 a client completes its handshake before the server has looked at the
client's certificate. So a server's rejection reaches `connect`'s caller later: as
`PeerRejectedError` (a `trio.BrokenResourceError`) from the first `receive_some` or
`send_all` after the server has closed the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Final, Literal, NoReturn, Protocol, get_args

import trio
from cryptography import x509

from ._authorize import Authorizer
from ._boundary import describe_error
from ._bundle import BundleSet
from ._certs import quiet
from ._errors import HandshakeError, Reason, VerificationError
from ._identity import IdentitySource
from ._logs import Throttle, context_fields, event, log_context, throttled
from ._ossl import validate_groups
from ._policy import DEFAULT_POLICY, ValidationPolicy
from ._revocation import RevocationPendingError, RevocationView
from ._svid import (
    MAX_CHAIN_LENGTH,
    Role,
    VerifiedPeer,
    leaf_spiffe_id,
    verify_handshake_chain,
    verify_svid,
)
from ._tls import (
    Deferred,
    SentChain,
    SessionError,
    TlsError,
    TlsSession,
    _verify_reason,
    alert_reason,
    alert_words,
)

logger = logging.getLogger("meshtls")

RECEIVE_SIZE: Final = 65536
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_MAX_HANDSHAKES: Final = 256
DEFAULT_MAX_CONNECTIONS: Final = 1024
#: How long `MeshStream.aclose` waits for the socket to take our close_notify.
CLOSE_NOTIFY_TIMEOUT: Final = 5.0
#: SO_LINGER on, 0 s: `close` sends a TCP RST and drops unsent data (an abort, not an EOF).
LINGER_RESET: Final = struct.pack("ii", 1, 0)
_ACCEPT_CAPACITY_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

Clock = Callable[[], datetime]
#: A policy, or a callable read by each handshake (a node swaps its policy on reload).
PolicyRead = ValidationPolicy | Callable[[], ValidationPolicy]


def _policy_reader(policy: PolicyRead | None) -> Callable[[], ValidationPolicy]:
    """`policy` as a callable that each handshake reads (the default policy for None)."""
    if callable(policy):
        return policy
    fixed = policy or DEFAULT_POLICY
    return lambda: fixed


def _wall_clock() -> datetime:
    return datetime.now(UTC)


OurRole = Literal["client", "server"]
#: How a connection ended, as its access line and metrics say it.
Ending = Literal["closed", "reset", "timeout", "rejected", "cancelled"]
ENDINGS: Final[tuple[Ending, ...]] = get_args(Ending)


class Access:
    """One accepted connection's account, from accept to its end (for logs and metrics).

    Made by `serve` (and `forward`) for each connection it accepts, and handed to the
    observer twice: `Observer.began` at accept, `Observer.ended` once at the end. The
    owner fills it in as the connection goes: ``listener`` is the ``listener`` field of
    the log context (the node names each listener there); ``spiffe_id`` the verified
    peer's id; ``received``/``sent`` the application bytes from and to the side that
    connected to the listener; ``ended`` (with ``reason`` for a rejection, ``error`` in
    words for a reset) how it ended. ``served`` says a verified peer reached the handler
    or tunnel; ``reported`` that its end was logged already (a rejection, a bug), so an
    access line would be a second line for one event.
    """

    __slots__ = (
        "backend_failed",
        "ended",
        "error",
        "finished",
        "listener",
        "peer",
        "reason",
        "received",
        "reported",
        "role",
        "sent",
        "served",
        "spiffe_id",
        "started",
    )

    def __init__(self, role: OurRole, peer: str) -> None:
        self.listener = str(context_fields().get("listener") or "")
        self.role: OurRole = role
        self.peer = peer
        self.started = trio.current_time()
        self.finished: float | None = None
        self.spiffe_id: str | None = None
        self.received = 0
        self.sent = 0
        self.ended: Ending = "closed"
        self.reason: str | None = None
        self.error: str | None = None
        self.served = False
        self.reported = False
        self.backend_failed = False

    @property
    def duration(self) -> float:
        """Seconds from accept to the end (or to now, while it lasts); Trio time."""
        end = trio.current_time() if self.finished is None else self.finished
        return max(0.0, end - self.started)

    def rejected(self, reason: str) -> None:
        """It ended refused for `reason`, and that was logged (one line per event)."""
        self.ended, self.reason, self.reported = "rejected", reason, True

    def refused_at_cap(self, what: str, limit: int) -> None:
        """It was refused at its listener's connection cap: one warning `what`, rate-limited
        per source host, and counted as ``connection_limit``. The caller resets it."""
        throttled(
            logger,
            logging.WARNING,
            what,
            key=("reason", "source"),
            reason="connection_limit",
            limit=limit,
            source=_source(self.peer),
        )
        self.rejected("connection_limit")

    def fields(self) -> dict[str, object]:
        """The access line's fields: who, how much, how long, how it ended."""
        return {
            "listener": self.listener or None,
            "peer": self.peer,
            "spiffe_id": self.spiffe_id,
            "ended": self.ended,
            "reason": self.reason,
            "error": self.error,
            "received_bytes": self.received,
            "sent_bytes": self.sent,
            "duration": round(self.duration, 6),
        }


@contextlib.contextmanager
def accounted(role: OurRole, peer: str, observer: Observer | None) -> Iterator[Access]:
    """The `Access` of one accepted connection, reported to `observer` at accept and at the
    end, with ``peer`` on every log line inside. A cancellation (the node stopping) ends
    it as ``cancelled``; whatever else happens, `Observer.ended` is called once."""
    access = Access(role, peer)
    if observer is not None:
        observer.began(access)
    try:
        with log_context(peer=peer):
            yield access
    except BaseException:
        access.ended = "cancelled"
        raise
    finally:
        access.finished = trio.current_time()
        if observer is not None:
            observer.ended(access)


class Observer(Protocol):
    """What a node watches: handshakes (with our role), verified connections, and the
    account of each accepted connection (`Access`).

    Called synchronously from the connection's task; must not block or raise.
    """

    def handshake(self, role: OurRole, *, seconds: float, error: HandshakeError | None) -> None: ...

    def opened(self, role: OurRole) -> None: ...

    def closed(self, role: OurRole) -> None: ...

    def began(self, access: Access) -> None: ...

    def ended(self, access: Access) -> None: ...


class PeerRejectedError(trio.BrokenResourceError):
    """The peer ended the connection in a way that means it rejected us, or broke TLS.

    ``reason`` is one of `REASONS` (``protocol_error`` when the peer gave no detail).
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason


# ---------------------------------------------------------------- socket primitives


async def _recv(
    sock: socket.socket, max_bytes: int, *, wait_first: bool = False
) -> tuple[bytes, bool]:
    """Receive at least one byte, or b"" at EOF; and whether it had to wait (a checkpoint).

    With `wait_first`, wait for readability before the first try: for a reply to what we
    just sent, which cannot be there yet (a failed try costs a system call and an
    exception)."""
    waited = wait_first
    if wait_first:
        await trio.lowlevel.wait_readable(sock)
    while True:
        try:
            return sock.recv(max_bytes), waited
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            waited = True


async def _send_all(sock: socket.socket, data: bytes) -> bool:
    """Send every byte; return whether it had to wait. Raises OSError (the caller maps it)."""
    view = memoryview(data)
    waited = False
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            waited = True
        else:
            view = view[sent:]
    return waited


def _prepare(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _address(sock: socket.socket) -> str:
    try:
        return _host_port(sock.getpeername())
    except OSError:
        return "-"


def _host_port(address: object) -> str:
    """``host:port`` (``[v6]:port``) of a socket address tuple; ``-`` for anything else."""
    if not isinstance(address, tuple) or len(address) < 2:
        return "-"
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _handshake(
    sock: socket.socket,
    session: TlsSession,
    *,
    connecting: bool = False,
    progress: _Handshake | None = None,
) -> None:
    """Drive the engine until the handshake completes. Raises TlsError.

    With `connecting`, the first flight goes out through `_send_first`, and an OSError
    from it (the TCP connect failed) propagates as it is. `progress`, when given, records
    when we are waiting on the peer (for eviction under load).
    """
    while True:
        try:
            done = session.handshake()
        except TlsError as exc:
            alert = session.outgoing()  # tell the peer why, if the engine wrote an alert
            if alert:
                with contextlib.suppress(OSError):  # the peer may be gone already
                    sock.send(alert)
                    if progress is not None and exc.verdict is not None:
                        progress.alerted = True  # we refused its certificate: linger
            raise
        out = session.outgoing()
        if out and connecting:
            connecting = False
            await _send_first(sock, out)
        elif out:
            try:
                await _send_all(sock, out)
            except OSError as exc:
                raise TlsError("protocol_error", f"the peer went away ({exc})") from None
        if done:
            return
        if progress is not None:
            progress.waiting_since = trio.current_time()
        try:
            # after a flight, the peer's answer is a round trip away: wait before reading
            data, _ = await _recv(sock, RECEIVE_SIZE, wait_first=bool(out))
        except OSError as exc:
            raise TlsError("protocol_error", f"the peer went away ({exc})") from None
        if progress is not None:
            progress.waiting_since = None
        if not data:
            raise TlsError("protocol_error", "the peer closed the connection during the handshake")
        session.feed(data)


# ---------------------------------------------------------------- the stream


class MeshStream(trio.abc.HalfCloseableStream):
    """A TLS 1.3 stream whose peer passed SPIFFE verification and authorization.

    Made only by `connect` and `serve`. ``peer`` is the `VerifiedPeer`. The stream owns
    its socket and closes it in `aclose` (after a close_notify), or resets it in `abort`
    (for work cut off part-way). `send_eof` sends TLS close_notify; the peer may go on
    sending, and every byte it sends is still received (TLS 1.3 half-close). A peer
    that closes TCP without close_notify breaks the stream (`trio.BrokenResourceError`):
    truncation is never mistaken for EOF. A TLS failure sends OpenSSL's alert to the
    peer and raises `trio.BrokenResourceError`, never an engine error.
    """

    __slots__ = (
        "_aborted",
        "_broken",
        "_closed",
        "_cut_off",
        "_eof_sent",
        "_ours",
        "_receiving",
        "_send_lock",
        "_sending",
        "_session",
        "_sock",
        "_watch",
        "account",
        "bytes_received",
        "bytes_sent",
        "closes_at",
        "end",
        "end_error",
        "end_reason",
        "peer",
    )

    def __init__(
        self,
        sock: socket.socket,
        session: TlsSession,
        peer: VerifiedPeer,
        watch: tuple[Observer, OurRole] | None = None,
        *,
        ours: OurRole = "client",
    ) -> None:
        self._watch = watch
        self._ours: OurRole = ours
        #: Application bytes received and sent so far (for the access log and metrics).
        self.bytes_received = 0
        self.bytes_sent = 0
        #: How the connection ended when its owner decided it (a node's deadline: "timeout";
        #: a root that left: "rejected"), with the reason; else it is read from the stream.
        self.end: Ending | None = None
        self.end_reason: str | None = None
        #: Why work on this stream was cut off, in words (a tunnel's failed copy).
        self.end_error: str | None = None
        #: The `Access` of the listener connection this stream serves (None when dialed).
        self.account: Access | None = None
        self._aborted = False
        self._cut_off = False
        if watch is not None:
            watch[0].opened(watch[1])
        #: When a node will close this stream (a drain margin before the first expiry among
        #: the certificates involved); None outside a node. Finish messages before it.
        self.closes_at: datetime | None = None
        self._sock = sock
        self._session = session
        self.peer = peer
        self._send_lock = trio.StrictFIFOLock()
        self._sending = False
        self._receiving = False
        self._closed = False
        self._broken: BaseException | None = None
        self._eof_sent = False

    def __repr__(self) -> str:
        return f"<MeshStream peer={self.peer.spiffe_id} address={_address(self._sock)}>"

    @property
    def address(self) -> str:
        """The peer's ``host:port`` (``-`` once the socket is closed), for log lines."""
        return _address(self._sock)

    @property
    def socket(self) -> socket.socket:
        """The underlying TCP socket. Do not read or write it: the stream owns it."""
        return self._sock

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this MeshStream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this MeshStream is broken") from self._broken

    def ending(self) -> tuple[Ending, str | None, str | None]:
        """How this connection ended, for its access line: (ended, reason, error in words).

        The owner's verdict (`end`) first; else a broken stream or an abort is a reset
        (with the error that broke it), and anything else closed.
        """
        if self.end is not None:
            return self.end, self.end_reason, self.end_error
        if self._broken is not None:
            return "reset", None, self.end_error or _words(self._broken, self._ours)
        if self._aborted:
            return "reset", None, self.end_error
        return "closed", None, None

    @property
    def group(self) -> str | None:
        """The key-exchange group the handshake negotiated (``X25519MLKEM768``)."""
        return self._session.group

    @property
    def broken(self) -> bool:
        """Whether the connection itself failed (the peer reset or cut it, or TLS failed)."""
        return self._broken is not None

    def _break(self, exc: BaseException) -> None:
        """Mark the stream broken by `exc`, kept without its traceback: its frames hold
        this stream, a cycle that would keep stream, session and socket until the cyclic
        collector ran (the raised error still chains to `exc`)."""
        self._broken = exc.with_traceback(None)

    def _fail(self, exc: SessionError) -> trio.BrokenResourceError:
        """The TLS session failed: break the stream, tell the peer why, return the error.

        OpenSSL writes a fatal alert when it fails a session (bad_record_mac,
        record_overflow, unexpected_message, ...; RFC 8446 says the peer MUST get it).
        It goes out now, without waiting, unless a send is under way (the alert would
        land inside that send's record); then closing the stream sends it.
        """
        self._break(exc)
        if not (self._sending or self._send_lock.locked()):
            self._send_pending()
        return _broken_by(exc, self._ours, heard=self.bytes_received > 0)

    def _send_pending(self) -> None:
        """Whatever the engine has queued, in one nonblocking send, errors ignored."""
        try:
            out = self._session.outgoing()
            if out:
                self._sock.send(out)
        except OSError:
            pass

    async def _flush(self) -> bool:
        """Send whatever the engine has queued; return whether that was a checkpoint.

        Breaks the stream if interrupted part-way. The lock is taken without a
        checkpoint when nobody holds it (`Lock.acquire` always checkpoints).
        """
        contended = False
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
            contended = True
        try:
            return await self._flush_locked() or contended
        finally:
            self._send_lock.release()

    async def _flush_locked(self) -> bool:
        if self._closed:  # another task's aclose took the lock first and closed the socket
            raise trio.ClosedResourceError("this MeshStream was closed")
        out = self._session.outgoing()
        if not out:
            return False
        try:
            return await _send_all(self._sock, out)
        except OSError as exc:
            self._break(exc)
            raise trio.BrokenResourceError(f"sending failed: {_words(exc, self._ours)}") from exc
        except BaseException as exc:  # cancelled with part of a record sent
            # not the exception itself: it is on its way up, and keeps its frames
            self._break(trio.BrokenResourceError(f"a send was interrupted ({type(exc).__name__})"))
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("cannot send after send_eof()")
            if data:
                try:
                    self._session.write(data)
                except SessionError as exc:
                    raise self._fail(exc) from exc
            if not await self._flush():
                await trio.lowlevel.checkpoint()
            self.bytes_sent += len(data)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check_usable()
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if max_bytes is None:
            max_bytes = RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            waited = False
            while True:
                self._check_usable()
                try:
                    data = self._session.read(max_bytes)
                except SessionError as exc:
                    raise self._fail(exc) from exc
                if self._session.has_output() and await self._flush():  # e.g. a KeyUpdate reply
                    waited = True
                if data is not None:
                    self.bytes_received += len(data)
                    if not waited:
                        await trio.lowlevel.checkpoint()
                    return data
                try:
                    chunk, blocked = await _recv(self._sock, RECEIVE_SIZE)
                except OSError as exc:
                    self._break(exc)
                    raise trio.BrokenResourceError(
                        f"receiving failed: {_words(exc, self._ours)}"
                    ) from exc
                waited = waited or blocked
                if chunk:
                    self._session.feed(chunk)
                else:
                    self._session.feed_eof()
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            self._check_usable()
            waited = False
            if not self._eof_sent:
                self._eof_sent = True
                try:
                    self._session.close_notify()
                except SessionError as exc:
                    raise self._fail(exc) from exc
                waited = await self._flush()
            if not waited:
                await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Close: our close_notify, really flushed (waiting for the socket to take it, at
        most `CLOSE_NOTIFY_TIMEOUT`), then the socket. If the flush times out, fails or is
        cancelled, the socket is reset instead, so the peer reads an error, never a clean
        end. A stream that is broken, cut off, already half-closed, or in the middle of
        another task's send closes at once, as `close_now` does."""
        if self._closed or not self._may_close_gracefully():
            self.close_now()
            await trio.lowlevel.checkpoint()
            return
        self._send_lock.acquire_nowait()  # free: `_may_close_gracefully` checked it
        flushed = waited = False
        try:
            self._eof_sent = True
            self._session.close_notify()
            out = self._session.outgoing()
            try:
                sent = self._sock.send(out)  # the socket nearly always takes it at once
            except BlockingIOError:
                sent = 0
            if sent < len(out):  # a cancel scope (and its deadline) only when it must wait
                with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                    waited = await _send_all(self._sock, out[sent:])
                    flushed = True
            else:
                flushed = True
        except (OSError, SessionError):
            pass
        finally:
            self._send_lock.release()
            if not flushed:
                self._cut_off = True  # the peer must not take a lost close_notify for EOF
            self._close(graceful=True)
        if not waited:
            await trio.lowlevel.checkpoint()

    def _may_close_gracefully(self) -> bool:
        return not (
            self._cut_off
            or self._broken is not None
            or self._eof_sent
            or self._sending
            or self._send_lock.locked()
        )

    def close_now(self) -> None:
        """`aclose` without its checkpoint, for a task that is about to end anyway."""
        self._close(graceful=True)

    def abort(self) -> None:
        """Close at once with a TCP reset and no close_notify, for work cut off part-way:
        the peer's stream breaks (`trio.BrokenResourceError`), it never reads as EOF."""
        self._close(graceful=False)

    def cut_off(self) -> None:
        """Mark this stream as cut off by its owner part-way (a node stopping with it still
        live): whoever closes it next resets it, so the peer never reads a clean end."""
        self._cut_off = True

    def reject(self, reason: str) -> None:
        """Mark a live connection as refused for `reason` by its owner (a node whose trust
        changed): it ends as ``rejected``, and whoever closes it next resets it, so the peer
        never takes the cut for a finished exchange. The owner cancels the handler itself,
        and logs the event: the connection's access line is then not written (one line
        per event)."""
        self.end, self.end_reason = "rejected", reason
        self.cut_off()
        if self.account is not None:
            self.account.reported = True

    def _close(self, *, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        graceful = graceful and not self._cut_off
        # Not while a send is under way: a close_notify in the middle of a record
        # would corrupt it, and after a cut-off send the peer must see an error.
        busy = self._sending or self._send_lock.locked()
        self._aborted = not graceful
        if not graceful:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        elif busy:
            pass
        elif self._broken is not None:
            self._send_pending()  # the fatal alert, if it is still queued
        elif not self._eof_sent:
            with contextlib.suppress(SessionError):
                self._session.close_notify()
            self._send_pending()
        trio.lowlevel.notify_closing(self._sock)  # wake tasks waiting on it
        self._sock.close()
        if self._watch is not None:
            self._watch[0].closed(self._watch[1])


def _broken_by(
    exc: SessionError, ours: OurRole, *, heard: bool = False
) -> trio.BrokenResourceError:
    """Map a post-handshake TLS failure to trio's error, with a reason when it was an alert.

    A connection cut without close_notify means a rejection only when we are the client
    (TLS 1.3 lets a client finish before the server judges it); a server sees a client
    that went away, and what it sent may be incomplete. `heard`: the client had read
    application data already, so the server had accepted it: the cut is a refusal of a
    live connection or a peer that went away, and the message says both.
    """
    if exc.truncated and ours == "server":
        return trio.BrokenResourceError(
            "the client closed the connection without close_notify (what it sent may be incomplete)"
        )
    if exc.truncated:
        return PeerRejectedError(
            "protocol_error",
            "the peer cut the connection without close_notify (it refused us after"
            " accepting us, or it went away; what it sent may be incomplete)"
            if heard
            else "the peer closed the connection without close_notify"
            " (a server that rejects our certificate does this)",
        )
    if exc.alert is not None:
        return PeerRejectedError(alert_reason(exc.alert), alert_words(exc.alert))
    return trio.BrokenResourceError(f"TLS failure: {exc}")


def _words(exc: BaseException, ours: OurRole) -> str:
    """What broke a stream, in words (our messages as they are, foreign ones described)."""
    if isinstance(exc, SessionError):
        return str(_broken_by(exc, ours))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # "connection reset by peer"
    return describe_error(exc)


# ---------------------------------------------------------------- verification


def _claimed_id(chain: list[bytes]) -> str | None:
    """The URI SAN the peer's leaf claims, for the log line; never trusted."""
    if not chain:
        return None
    try:
        with quiet():  # a peer's DER must not make cryptography warn (a negative serial)
            return str(leaf_spiffe_id(x509.load_der_x509_certificate(chain[0])))
    except Exception:  # whatever the peer sent: this is only for the log line
        return None


class _AuthorizerError(Exception):
    """The authorizer raised something other than a verdict (a bug): the cause is kept."""


def _load_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    with quiet():  # a peer's DER must not make cryptography warn (a negative serial)
        return [x509.load_der_x509_certificate(der) for der in chain]


class _HandshakeContext:
    """What one handshake needs: who we are, whom we trust, and the policy. It is the
    session's `PeerVerifier`: OpenSSL's verify callback asks it inside the handshake."""

    __slots__ = ("address", "authorize", "bundles", "clock", "policy", "revocation", "role")

    def __init__(
        self,
        *,
        address: str,
        bundles: BundleSet,
        policy: ValidationPolicy,
        authorize: Authorizer,
        clock: Clock,
        role: Role,
        revocation: RevocationView | None = None,
    ) -> None:
        self.address = address
        self.bundles = bundles
        self.policy = policy
        self.authorize = authorize
        self.clock = clock
        self.role = role  # the PEER's role
        self.revocation = revocation  # P-4's statuses (the cache only); None: none known

    def judge(self, chain: list[bytes], sent: SentChain) -> VerifiedPeer:
        """`verify_handshake_chain` on the chain OpenSSL verified, then the authorizer.

        Raises `VerificationError`; `Deferred` when P-4 must wait for a status (the stream
        waits after the handshake) or the verdict needs the peer's own chain, which a
        server cannot read yet; `_AuthorizerError` for an authorizer's bug.
        """
        try:
            count = len(sent)
        except Deferred:  # a server: counted after the handshake (`_establish`)
            count = 0
        try:
            peer = verify_handshake_chain(
                chain,
                self.bundles,
                policy=self.policy,
                now=self.clock(),
                role=self.role,
                sent=count,
                sent_chain=sent,
                revocation=self.revocation,
                # a server cannot read what the client sent yet: OpenSSL's chain decides
                # when the leaf alone fails; otherwise reading `sent` defers
                search_after_failure=self.role == "server",
            )
        except RevocationPendingError:
            raise Deferred("a revocation status is being fetched") from None
        self._authorize(peer)
        return peer

    def _authorize(self, peer: VerifiedPeer) -> None:
        try:
            self.authorize(peer)
        except VerificationError:
            raise
        except Exception as exc:  # fail closed (logged as a bug, with its traceback)
            raise _AuthorizerError(describe_error(exc)) from exc

    def diagnose(self, chain: list[bytes], sent: SentChain, message: str) -> VerificationError:
        """OpenSSL refused the peer's chain: our own verifier names the precise reason, from
        what the peer sent (a client reads it) or the chain OpenSSL built (a server)."""
        with contextlib.suppress(Deferred):
            chain = list(sent()) or chain
        if not chain:
            return VerificationError(_verify_reason(message), f"OpenSSL: {message}")
        try:
            certs = _load_chain(chain)
            # what OpenSSL refused is in the certificates: P-4 (off here) cannot name it
            policy = dataclasses.replace(self.policy, revocation="off")
            verify_svid(certs, self.bundles, policy=policy, now=self.clock(), role=self.role)
        except VerificationError as precise:
            return precise
        except Exception as unreadable:  # our verifier cannot read what OpenSSL refused
            return VerificationError(
                "malformed_certificate",
                f"OpenSSL: {message}; the chain is unreadable ({describe_error(unreadable)})",
            )
        return VerificationError(_verify_reason(message), f"OpenSSL: {message}")


async def _judge_chain(
    verified: list[bytes], session: TlsSession, ctx: _HandshakeContext
) -> VerifiedPeer:
    """The verdict the handshake deferred: `verify_handshake_chain` with the chain the peer
    sent, and P-4's one bounded wait: under hard-fail, a chain whose status is unknown
    waits (at most ``policy.hard_fail_wait``, inside the caller's handshake timeout) for
    the view's prefetcher, then is judged once more; still unknown, it is refused with
    ``revocation_unknown``. Raises `VerificationError`."""

    def judge() -> VerifiedPeer:
        return verify_handshake_chain(
            verified,
            ctx.bundles,
            policy=ctx.policy,
            now=ctx.clock(),
            role=ctx.role,
            sent=session.sent_chain_length(),
            sent_chain=session.unverified_chain,
            revocation=ctx.revocation,
        )

    try:
        return judge()
    except RevocationPendingError as pending:
        if ctx.revocation is None:  # cannot happen: without a view nothing is pending
            raise
        wait = ctx.policy.hard_fail_wait.total_seconds()
        await ctx.revocation.fetched(pending.targets, wait=wait)
        try:
            return judge()
        except RevocationPendingError as still:
            raise VerificationError(
                "revocation_unknown", f"{still.detail}, after waiting {wait:g}s", rule="P-4"
            ) from still


def _refused(
    exc: TlsError, ctx: _HandshakeContext, session: TlsSession
) -> tuple[HandshakeError, BaseException]:
    """The `HandshakeError` for a handshake that failed, and its cause: our verdict when we
    refused the peer (so that a verifier's or authorizer's bug is logged as one)."""
    claimed = _claimed_id(session.claimed_chain)
    verdict = exc.verdict
    if isinstance(verdict, _AuthorizerError) and verdict.__cause__ is not None:
        message = f"the authorizer failed ({verdict})"
        error = HandshakeError("unauthorized", message, peer=ctx.address, claimed_id=claimed)
        return error, verdict.__cause__
    error = HandshakeError(exc.reason, exc.detail, peer=ctx.address, claimed_id=claimed)
    return error, exc if verdict is None else verdict


async def _establish(
    sock: socket.socket,
    session: TlsSession,
    ctx: _HandshakeContext,
    *,
    connecting: bool = False,
    handshake: _Handshake | None = None,
    watch: tuple[Observer, OurRole] | None = None,
) -> MeshStream:
    """Handshake (the session judges and authorizes the peer inside it, through `ctx`),
    then the verdict the handshake deferred, if it deferred one. Closes nothing.

    Raises `HandshakeError` for any failure of any type while judging the peer, or
    OSError when `connecting` and the TCP connect failed. A verifier or authorizer that
    raises something else has a bug: the peer is refused (fail closed) and the traceback
    logged.
    """
    try:
        await _handshake(sock, session, connecting=connecting, progress=handshake)
    except TlsError as exc:
        error, cause = _refused(exc, ctx, session)
        raise error from cause
    peer = session.peer
    if isinstance(peer, VerifiedPeer) and not session.deferred:
        if ctx.role == "client" and session.sent_chain_length() > MAX_CHAIN_LENGTH:
            # a server learns how many certificates the client sent only now
            raise HandshakeError(
                "malformed_certificate",
                f"the peer sent {session.sent_chain_length()} certificates,"
                f" over {MAX_CHAIN_LENGTH}",
                peer=ctx.address,
                claimed_id=str(peer.spiffe_id),
            )
    else:
        peer = await _deferred_verdict(session, ctx)
    return MeshStream(
        sock, session, peer, watch, ours="server" if ctx.role == "client" else "client"
    )


async def _deferred_verdict(session: TlsSession, ctx: _HandshakeContext) -> VerifiedPeer:
    """Judge and authorize a peer after a handshake that could not (see `Deferred`).
    Raises `HandshakeError`; a refused peer gets no alert here, only a closed connection."""
    verified: list[bytes] = []
    try:
        verified = session.verified_chain()
        peer = await _judge_chain(verified, session, ctx)
    except VerificationError as exc:
        claimed = _claimed_id(verified)
        raise HandshakeError(exc.reason, exc.detail, peer=ctx.address, claimed_id=claimed) from exc
    except Exception as exc:  # the verifier could not judge this chain (logged as a bug)
        raise HandshakeError(
            "malformed_certificate",
            f"the certificate could not be judged ({describe_error(exc)})",
            peer=ctx.address,
            claimed_id=_claimed_id(verified),
        ) from exc
    claimed = str(peer.spiffe_id)
    try:
        ctx._authorize(peer)
    except VerificationError as exc:
        raise HandshakeError(exc.reason, exc.detail, peer=ctx.address, claimed_id=claimed) from exc
    except _AuthorizerError as exc:  # fail closed (logged as a bug, with its traceback)
        message = f"the authorizer failed ({exc})"
        error = HandshakeError("unauthorized", message, peer=ctx.address, claimed_id=claimed)
        raise error from exc.__cause__
    return peer


def _source(address: str) -> str:
    """The host of ``host:port`` (``[v6]:port`` too): the key a flood is limited by."""
    return address.rpartition(":")[0] or address


def _log_rejection(role: OurRole, exc: HandshakeError, seconds: float | None = None) -> None:
    """The one line for a refused peer: a warning, rate-limited per (reason, source).

    A verifier or authorizer that raised something other than a verdict has a bug: then
    the line is an error with the traceback (never a second line). A server names the
    client it refused as ``peer``; a client names the address it dialled as ``target``,
    so that a forward's ``peer`` stays its own plaintext client (from the log context).
    """
    far = {"peer": exc.peer} if role == "server" else {"target": exc.peer}
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, VerificationError | TlsError):
        event(
            logger,
            logging.ERROR,
            "peer refused: the verifier or authorizer failed",
            exc_info=cause,
            role=role,
            **far,
            claimed_id=exc.claimed_id,
            reason=exc.reason,
            detail=exc.detail,
        )
        return
    source = _source(exc.peer) if role == "server" else exc.peer
    throttled(
        logger,
        logging.WARNING,
        "handshake rejected",
        key=("reason", "source"),
        role=role,
        **far,
        claimed_id=exc.claimed_id,
        reason=exc.reason,
        detail=exc.detail,
        duration=None if seconds is None else round(seconds, 6),
        source=source,
    )


# ---------------------------------------------------------------- connect


def _literal_family(host: str) -> socket.AddressFamily | None:
    """AF_INET or AF_INET6 for a literal IP address, None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


async def _open_socket(host: str, port: int) -> tuple[socket.socket, bool]:
    """A nonblocking TCP socket to `host:port`, and whether its connect may still be under way.

    A literal IP is dialled directly and not waited for: the caller builds its ClientHello
    while the kernel completes the TCP handshake (`_send_first` settles it). A name goes
    through trio's happy eyeballs and is connected on return.
    """
    family = _literal_family(host)
    if family is None:
        stream = await trio.open_tcp_stream(host, port)
        sock = socket.socket(fileno=stream.socket.detach())
        _prepare(sock)
        return sock, False
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        _prepare(sock)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(code, f"connecting to {host}:{port}: {os.strerror(code)}")
    except BaseException:
        sock.close()
        raise
    return sock, code != 0


async def _send_first(sock: socket.socket, data: bytes) -> None:
    """Send on a socket whose connect may be under way. OSError if the connect failed."""
    while True:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code)) from None
            continue
        break
    if sent < len(data):
        await _send_all(sock, data[sent:])


async def connect(
    host: str,
    port: int,
    *,
    source: IdentitySource,
    authorize: Authorizer,
    policy: PolicyRead | None = None,
    clock: Clock | None = None,
    observer: Observer | None = None,
    revocation: RevocationView | None = None,
    groups: str | None = None,
) -> MeshStream:
    """Dial `host:port`, run TLS 1.3 mutual TLS, verify the server's SVID and authorize it.

    Returns a `MeshStream` only once the server passed every check; otherwise the
    connection is closed, one line is logged, and `HandshakeError` is raised with the
    reason. `OSError` is raised when the TCP connection itself fails.

    Where the server's verdict on *our* certificate shows up: TLS 1.3 lets the client
    finish first, so a server that rejects us closes the connection afterwards, and the
    first `receive_some` (or a later `send_all`) raises `PeerRejectedError`.

    `revocation` holds the statuses P-4 reads (see `_judge_chain`: under hard-fail an
    unknown status waits at most ``policy.hard_fail_wait``). `groups` are the key-exchange
    groups offered, OpenSSL names joined by ``:`` (default ``X25519MLKEM768:X25519``);
    ValueError if OpenSSL knows none of them. Timeouts belong to the caller: wrap the call
    in `trio.fail_after`.
    """
    contexts = source.identity().contexts(groups)
    started = trio.current_time()
    sock, connecting = await _open_socket(host, port)
    ctx = _HandshakeContext(
        address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        bundles=contexts.bundles,
        policy=_policy_reader(policy)(),
        authorize=authorize,
        clock=clock or _wall_clock,
        role="server",
        revocation=revocation,
    )
    watch: tuple[Observer, OurRole] | None = (observer, "client") if observer else None
    try:
        session = contexts.session(server_side=False, verifier=ctx)
        stream = await _establish(sock, session, ctx, connecting=connecting, watch=watch)
    except HandshakeError as exc:
        sock.close()
        _log_rejection("client", exc)
        if observer is not None:
            observer.handshake("client", seconds=trio.current_time() - started, error=exc)
        raise
    except OSError:
        sock.close()
        raise
    except Exception as exc:  # a bug: still no foreign type for the caller
        sock.close()
        event(logger, logging.ERROR, "connect failed", exc_info=exc, peer=ctx.address)
        error = HandshakeError(
            "protocol_error", f"internal error: {describe_error(exc)}", peer=ctx.address
        )
        if observer is not None:
            observer.handshake("client", seconds=trio.current_time() - started, error=error)
        raise error from exc
    except BaseException:
        sock.close()
        raise
    if observer is not None:
        observer.handshake("client", seconds=trio.current_time() - started, error=None)
    return stream


# ---------------------------------------------------------------- serve


class _Handshake:
    """One in-progress server handshake, as `_Handshakes` sees it."""

    __slots__ = ("alerted", "evicted", "host", "scope", "sequence", "waiting_since")

    def __init__(self, scope: trio.CancelScope, host: str, sequence: int) -> None:
        self.scope = scope
        self.host = host
        self.sequence = sequence  # arrival order: ties go against the older handshake
        self.waiting_since: float | None = None  # Trio time it began waiting on the peer
        self.evicted = False
        self.alerted = False  # we refused the peer with an alert (`_let_the_alert_land`)


class _Handshakes:
    """At most `limit` handshakes in progress, so a flood cannot exhaust memory.

    At the limit, a newcomer does not wait behind stalled peers: a handshake that is
    waiting on its peer is cancelled (evicted) and its place handed over. The victim
    comes from the address with the most stalled handshakes (so one flooding source
    cannot push out others), and within it, the one stalled longest. A peer that keeps
    its handshake moving is never evicted. Taking a free place is not a checkpoint.
    """

    __slots__ = ("_active", "_arrivals", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._active: set[_Handshake] = set()
        self._waiters = trio.lowlevel.ParkingLot()
        self._arrivals = 0

    def new(self, scope: trio.CancelScope, host: str) -> _Handshake:
        self._arrivals += 1
        return _Handshake(scope, host, self._arrivals)

    def _victim(self) -> _Handshake | None:
        stalled = [h for h in self._active if h.waiting_since is not None and not h.evicted]
        if not stalled:
            return None
        per_host: dict[str, int] = {}
        for handshake in stalled:
            per_host[handshake.host] = per_host.get(handshake.host, 0) + 1
        return min(stalled, key=lambda h: (-per_host[h.host], h.waiting_since or 0.0, h.sequence))

    async def acquire(self, handshake: _Handshake) -> None:
        while len(self._active) >= self._limit:
            victim = self._victim()
            if victim is not None:
                victim.evicted = True
                victim.scope.cancel()
            await self._waiters.park()
        self._active.add(handshake)

    def release(self, handshake: _Handshake) -> None:
        self._active.discard(handshake)
        self._waiters.unpark()


def _accept_ready(listener: socket.socket) -> list[tuple[socket.socket, str]]:
    """Every connection waiting in the backlog now, without blocking, with its peer's
    ``host:port`` (as accept gave it: no getpeername call)."""
    accepted: list[tuple[socket.socket, str]] = []
    while True:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return accepted
        except OSError as exc:
            if exc.errno in _ACCEPT_CAPACITY_ERRORS and not accepted:
                raise
            if exc.errno in _ACCEPT_CAPACITY_ERRORS:
                return accepted
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                continue  # the peer gave up before we got to it
            raise
        _prepare(sock)
        accepted.append((sock, _host_port(address)))


async def serve(
    handler: Callable[[MeshStream], Awaitable[object]],
    port: int,
    *,
    host: str | None = None,
    source: IdentitySource,
    authorize: Authorizer,
    policy: PolicyRead | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    clock: Clock | None = None,
    on_rejected: Callable[[HandshakeError], object] | None = None,
    observer: Observer | None = None,
    revocation: RevocationView | None = None,
    groups: str | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept mTLS connections on `port` and run ``handler(stream)`` for each verified peer.

    Use with ``await nursery.start(serve, handler, port, ...)``: ``started()`` gives the
    bound `trio.SocketListener`s (port 0 picks a free port). Accepting never waits on a
    peer: each connection's handshake runs in its own task under `handshake_timeout`.
    At most `max_handshakes` handshakes are in progress; a connection takes a place only
    once its first bytes arrive, and at the limit the handshake stalled longest on its
    peer is evicted for the newcomer, so neither idle nor stalled peers starve real ones.
    At most `max_connections` verified connections are open at once: a peer verified
    while the cap is reached is reset at once (`MeshStream.abort`) and logged; it sees
    a broken stream, and may retry.

    A rejected peer is closed and logged, `on_rejected` (if given) is called with the
    `HandshakeError`, and the handler never runs. `clock` gives the time that certificates
    are checked against (default: the wall clock). `revocation` holds the statuses P-4
    reads; a hard-fail wait for a fetch counts against `handshake_timeout`. The handler owns
    the stream; it is closed when the handler returns. An exception from a handler is
    logged with its traceback (a bug), resets the connection (`MeshStream.abort`: the
    peer sees an error, not an EOF) and does not stop the server; a
    `trio.BrokenResourceError` from the stream's own failure (the peer went away) is
    ordinary and logs nothing here. Runs until cancelled.

    Logs: each connection task runs in ``log_context(peer=...)`` (and ``spiffe_id`` once
    verified); rejection lines go through this listener's own `Throttle` (at most 5 per
    reason and source host per 10 s, then a summary). The observer gets an `Access` per
    accepted connection (`Observer.began`, `Observer.ended`).
    """
    if handshake_timeout <= 0:
        raise ValueError("handshake_timeout must be positive")
    if max_handshakes < 1:
        raise ValueError("max_handshakes must be >= 1")
    if max_connections < 1:
        raise ValueError("max_connections (a connection cap) must be >= 1")
    if groups is not None:
        validate_groups(groups)  # a list OpenSSL refuses fails here, once, not per connection
    connections = trio.CapacityLimiter(max_connections)
    listeners = await trio.open_tcp_listeners(port, host=host)
    handshakes = _Handshakes(max_handshakes)
    watch: tuple[Observer, OurRole] | None = (observer, "server") if observer else None
    current_policy = _policy_reader(policy)
    now = clock or _wall_clock
    throttle = Throttle()

    def rejected(exc: HandshakeError, seconds: float) -> None:
        """Tell `on_rejected` and the observer; their failure is logged, never raised."""
        try:
            if on_rejected is not None:
                on_rejected(exc)
            if observer is not None:
                observer.handshake("server", seconds=seconds, error=exc)
        except Exception as bug:
            event(logger, logging.ERROR, "on_rejected or the observer failed", exc_info=bug)

    async def serve_one(sock: socket.socket, address: str) -> None:
        with accounted("server", address, observer) as access:
            await judge_and_handle(sock, access)

    async def judge_and_handle(sock: socket.socket, access: Access) -> None:
        address = access.peer
        stream: MeshStream | None = None
        handshake: _Handshake | None = None
        started = access.started  # from accept: a slowloris's wait counts too
        try:
            with trio.move_on_after(handshake_timeout) as scope:
                try:
                    first, _ = await _recv(sock, RECEIVE_SIZE)  # idle peers hold no place
                except OSError as exc:
                    first = b""
                    why = f"reset before sending anything ({_words(exc, 'server')})"
                else:
                    why = "closed before sending anything"
                if not first:
                    raise HandshakeError("protocol_error", why, peer=address)
                contexts = source.identity().contexts(groups)
                ctx = _HandshakeContext(
                    address=address,
                    bundles=contexts.bundles,
                    policy=current_policy(),
                    authorize=authorize,
                    clock=now,
                    role="client",
                    revocation=revocation,
                )
                session = contexts.session(server_side=True, verifier=ctx)
                session.feed(first)
                handshake = handshakes.new(scope, _source(address))
                await handshakes.acquire(handshake)
                try:
                    stream = await _establish(sock, session, ctx, handshake=handshake, watch=watch)
                finally:
                    handshakes.release(handshake)
            if stream is None:
                evicted = handshake is not None and handshake.evicted
                raise HandshakeError(
                    "handshake_timeout",
                    f"evicted: {max_handshakes} handshakes in progress and this peer had"
                    " stalled longest"
                    if evicted
                    else f"no complete handshake within {handshake_timeout:g}s",
                    peer=address,
                )
        except HandshakeError as exc:
            seconds = trio.current_time() - started
            _log_rejection("server", exc, seconds)
            access.rejected(exc.reason)
            rejected(exc, seconds)
            try:
                if handshake is not None and handshake.alerted:
                    await _let_the_alert_land(sock)
            finally:
                sock.close()
            return
        except OSError as exc:
            sock.close()
            access.ended, access.error, access.reported = "reset", _words(exc, "server"), True
            throttled(
                logger,
                logging.INFO,
                "connection failed before the handshake",
                key=("reason", "source"),
                reason="reset",
                error=access.error,
                source=_source(address),
            )
            return
        except Exception as exc:  # a bug while judging this peer: it ends this connection only
            sock.close()
            event(logger, logging.ERROR, "connection failed while judging the peer", exc_info=exc)
            error = HandshakeError(
                "protocol_error", f"internal error: {describe_error(exc)}", peer=address
            )
            access.rejected(error.reason)
            rejected(error, trio.current_time() - started)
            return
        except BaseException:
            sock.close()
            raise
        if observer is not None:
            observer.handshake("server", seconds=trio.current_time() - started, error=None)
        access.spiffe_id = str(stream.peer.spiffe_id)
        with log_context(spiffe_id=access.spiffe_id):
            try:
                connections.acquire_nowait()
            except trio.WouldBlock:
                access.refused_at_cap(
                    "connection cap reached, resetting a verified peer", max_connections
                )
                stream.abort()
                return
            access.served = True
            stream.account = access
            try:
                await handler(stream)
            except trio.BrokenResourceError as exc:
                if not stream.broken:  # not the connection's failure: a bug in the handler
                    _handler_failed(exc, stream, access)
                # else the peer went away or cut the stream: ordinary, its access line says so
            except Exception as exc:
                _handler_failed(exc, stream, access)
            finally:
                stream.close_now()  # this task ends here: no checkpoint needed to close
                connections.release()
                _account(access, stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(throttle.run)
        with throttle.using():
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, nursery, serve_one)
        task_status.started(listeners)
    # Every listener was closed (a node's drain) and every connection has ended.
    await trio.sleep_forever()


#: How long a server that refused a client with an alert reads what the client sent after
#: it, so that closing does not reset the connection before the client reads the alert.
ALERT_LINGER: Final = 0.5


async def _let_the_alert_land(sock: socket.socket) -> None:
    """Half-close after our alert, then read (and drop) what the client still sends, until
    it closes, for at most `ALERT_LINGER` seconds and 64 KiB. Closing a socket with unread
    data sends a TCP reset, which can reach the client before it reads the alert: a TLS 1.3
    client finishes first and may have sent application data already."""
    budget = RECEIVE_SIZE
    with trio.move_on_after(ALERT_LINGER), contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while budget > 0:
            data, _ = await _recv(sock, budget)
            if not data:
                return
            budget -= len(data)


def _handler_failed(exc: Exception, stream: MeshStream, access: Access) -> None:
    """A handler raised: a bug. One error line with the traceback; the peer gets a reset."""
    stream.abort()  # the peer must not take a failed exchange for a finished one
    stream.end_error = f"the handler failed: {describe_error(exc)}"
    access.reported = True
    event(logger, logging.ERROR, "handler failed", exc_info=exc, error=stream.end_error)


def _account(access: Access, stream: MeshStream) -> None:
    """Fill in `access` from the stream that served it: bytes each way, how it ended."""
    access.received, access.sent = stream.bytes_received, stream.bytes_sent
    access.ended, access.reason, error = stream.ending()
    access.error = access.error or error


async def _accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    serve_one: Callable[[socket.socket, str], Awaitable[None]],
) -> None:
    """Accept in batches on the listener's socket; wait only when the backlog is empty.

    Returns once someone closes `listener` (a node that drains stops accepting this way);
    the connections already accepted run on in `nursery`.
    """
    async with listener:
        raw = socket.socket(fileno=listener.socket.fileno())
        raw.setblocking(False)
        try:
            while listener.socket.fileno() != -1:
                try:
                    ready = _accept_ready(raw)
                except OSError as exc:  # out of descriptors or memory: back off, keep serving
                    if listener.socket.fileno() == -1:
                        return
                    throttled(
                        logger,
                        logging.ERROR,
                        "accept failed, retrying in 100 ms",
                        key=("error",),
                        error=_words(exc, "client"),
                    )
                    await trio.sleep(0.1)
                    continue
                for sock, address in ready:
                    nursery.start_soon(serve_one, sock, address)
                # The backlog is drained, so this parks: a checkpoint that lets the new
                # tasks run before the next batch.
                try:
                    await trio.lowlevel.wait_readable(raw)
                except trio.ClosedResourceError:
                    return  # closed while we waited
        finally:
            raw.detach()  # the listener owns the descriptor
