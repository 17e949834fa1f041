"""Real, independent TLS peers for tests/test_interop.py: the openssl CLI and tlslite-ng.

- `write_identity`/`write_pem`: certificates and keys as the files the CLI reads.
- `s_client`: one ``openssl s_client`` run to completion, bounded by `PEER_TIMEOUT`.
- `openssl_s_server`: an ``openssl s_server`` on a free loopback port, killed on exit.
- `tlslite_client`: a blocking tlslite-ng TLS 1.3 client, to run in a thread.
- `Recorder`: a meshtls handler that echoes one line, and a rejection inbox.

tlslite-ng has no type hints: everything it returns is converted here, so no `Any`
leaves this module.
"""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

import trio
from cryptography.hazmat.primitives import serialization

import meshtls
from meshtls.testing import IssuedCertificate

try:
    with warnings.catch_warnings():
        # tlslite.api imports asyncore (deprecated in 3.11, gone in 3.12, where it is skipped).
        warnings.simplefilter("ignore", DeprecationWarning)
        import tlslite.api as tlslite_api  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError as exc:  # pragma: no cover - tlslite-ng belongs to the test group
    TLSLITE_MISSING: str | None = (
        f"tlslite-ng is not installed ({exc}); it belongs in the `test` dependency group"
    )
else:
    TLSLITE_MISSING = None

OPENSSL: Final = "openssl"
#: The bound on every wait for a peer: a process, a handshake, a rejection.
PEER_TIMEOUT: Final = 5.0
LOOPBACK: Final = "127.0.0.1"


# ---------------------------------------------------------------- PEM files


@dataclass(frozen=True, slots=True)
class PemIdentity:
    """A leaf, its intermediates and its key as files.

    ``openssl s_client -cert`` and ``s_server -cert`` send only the first certificate of
    the file; intermediates go in a separate ``-cert_chain`` file.
    """

    cert: Path
    key: Path
    chain: Path | None

    def args(self) -> list[str]:
        args = ["-cert", str(self.cert), "-key", str(self.key)]
        if self.chain is not None:
            args += ["-cert_chain", str(self.chain)]
        return args


def write_pem(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def write_identity(directory: Path, name: str, issued: IssuedCertificate) -> PemIdentity:
    """``NAME.pem`` (the leaf), ``NAME-chain.pem`` (intermediates, if any), ``NAME.key``."""
    leaf, *intermediates = (c.public_bytes(serialization.Encoding.PEM) for c in issued.chain)
    return PemIdentity(
        cert=write_pem(directory, f"{name}.pem", leaf),
        key=write_pem(directory, f"{name}.key", issued.key_pem),
        chain=write_pem(directory, f"{name}-chain.pem", b"".join(intermediates))
        if intermediates
        else None,
    )


# ---------------------------------------------------------------- meshtls side


@dataclass
class Recorder:
    """A meshtls `serve` handler that echoes one line, plus what `serve` rejected."""

    peers: list[str] = field(default_factory=list)
    _rejections: tuple[
        trio.MemorySendChannel[meshtls.HandshakeError],
        trio.MemoryReceiveChannel[meshtls.HandshakeError],
    ] = field(default_factory=lambda: trio.open_memory_channel[meshtls.HandshakeError](math.inf))

    async def echo_line(self, stream: meshtls.MeshStream) -> None:
        """Record the verified peer, echo bytes up to a newline, return (serve closes)."""
        self.peers.append(str(stream.peer.spiffe_id))
        received = b""
        while not received.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            received += chunk
        await stream.send_all(received)

    def on_rejected(self, exc: meshtls.HandshakeError) -> None:
        self._rejections[0].send_nowait(exc)

    async def next_rejection(self) -> meshtls.HandshakeError:
        with trio.fail_after(PEER_TIMEOUT):
            return await self._rejections[1].receive()

    def pending_rejections(self) -> list[meshtls.HandshakeError]:
        found: list[meshtls.HandshakeError] = []
        while True:
            try:
                found.append(self._rejections[1].receive_nowait())
            except trio.WouldBlock:
                return found


# ---------------------------------------------------------------- openssl s_client


async def s_client(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl s_client`` against 127.0.0.1:`port` until it exits (bounded).

    ``-ign_eof``: after stdin ends, keep reading until the server closes, so the
    output holds the server's reply or its alert. ``-brief`` prints the connection
    summary and errors on stderr; stdout carries only application data. On timeout
    trio kills the process.
    """
    command = [
        OPENSSL,
        "s_client",
        "-connect",
        f"{LOOPBACK}:{port}",
        "-noservername",
        "-brief",
        "-ign_eof",
        *args,
    ]
    with trio.fail_after(PEER_TIMEOUT):
        return await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )


# ---------------------------------------------------------------- openssl s_server


def free_port() -> int:
    """A loopback port that was free a moment ago (old s_server cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class OpensslServer:
    """A running ``openssl s_server``; `output` is its stdout and stderr, merged."""

    process: trio.Process
    port: int
    output: bytearray = field(default_factory=bytearray)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def _read_until(self, marker: bytes) -> bool:
        """Read output until `marker` appears (True) or the process closes it (False)."""
        stdout = self.process.stdout
        assert stdout is not None
        while marker not in self.output:
            chunk = await stdout.receive_some()
            if not chunk:
                return False
            self.output += chunk
        return True

    async def _read_to_eof(self) -> None:
        await self._read_until(b"\0")  # s_server prints text: only EOF ends this

    async def exited(self) -> str:
        """Wait (bounded) for s_server to exit on its own (``-naccept 1``); all its output."""
        with trio.fail_after(PEER_TIMEOUT):
            await self._read_to_eof()
            await self.process.wait()
        return self.text

    async def stop(self) -> None:
        """Kill the process, collect the rest of its output, close the pipe. Bounded."""
        with trio.move_on_after(PEER_TIMEOUT) as scope:
            scope.shield = True
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
            await self._read_to_eof()
        assert self.process.stdout is not None
        await self.process.stdout.aclose()


async def _launch_s_server(args: Sequence[str]) -> OpensslServer | None:
    """Start s_server on a free port and wait for ACCEPT; None if the port was taken."""
    port = free_port()
    command = [OPENSSL, "s_server", "-accept", f"{LOOPBACK}:{port}", *args]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    server = OpensslServer(process, port)
    try:
        with trio.fail_after(PEER_TIMEOUT):
            listening = await server._read_until(b"ACCEPT\n")
    except BaseException:
        await server.stop()
        raise
    if listening:
        return server
    await server.stop()
    if b"in use" in server.output:  # "Address already in use": someone took the port
        return None
    raise AssertionError(f"openssl s_server did not start: {command}\n{server.text}")


@contextlib.asynccontextmanager
async def openssl_s_server(*args: str) -> AsyncIterator[OpensslServer]:
    """``openssl s_server -accept 127.0.0.1:PORT ARGS...``, listening; killed on exit."""
    server = await _launch_s_server(args)
    if server is None:  # the probed port was taken before s_server bound it: once more
        server = await _launch_s_server(args)
    if server is None:
        raise AssertionError("openssl s_server found its port taken twice")
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------- tlslite-ng


@dataclass(frozen=True, slots=True)
class TlsliteOutcome:
    """What a tlslite-ng client saw.

    ``handshake``: whether tlslite completed its side of the handshake. ``received``:
    application data before the connection ended. ``ended``: how it ended:
    ``"close_notify"``, ``"alert:<description>"``, or the socket error's class name.
    """

    handshake: bool
    received: bytes
    ended: str


class _OneWritePerFlight:
    """A blocking socket whose writes wait for the next read, then go out as one.

    tlslite-ng writes each TLS 1.3 record of its second flight (Certificate,
    CertificateVerify, Finished) on its own. A server that refuses the Certificate alerts
    and closes while the rest is still arriving; unread data makes that close a reset,
    and tlslite's next write fails before it reads the alert. One write per flight lets
    the server read it all, so it closes cleanly and the alert is read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = bytearray()

    def send(self, data: bytes) -> int:
        self._pending += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._pending += data

    def flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        self.flush()
        return self._sock.recv(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def tlslite_client(
    port: int,
    payload: bytes,
    *,
    identity: IssuedCertificate | None,
    one_write_per_flight: bool = False,
) -> TlsliteOutcome:
    """Blocking: a tlslite-ng TLS 1.3-only client, with `identity` as its certificate.

    Sends `payload` (if any) after the handshake, then reads until the connection
    ends. Run it in a thread. Every socket operation times out after `PEER_TIMEOUT`.

    tlslite-ng 0.8.2 compresses its client Certificate (RFC 8879) whenever its *own*
    ClientHello offered certificate compression, although the server's
    CertificateRequest did not ask for it; OpenSSL 3.0 then fails the handshake with
    unexpected_message. So compression of what we send is switched off.
    """
    if TLSLITE_MISSING is not None:  # pragma: no cover - the tests skip first
        raise RuntimeError(TLSLITE_MISSING)
    settings = tlslite_api.HandshakeSettings()
    settings.minVersion = (3, 4)
    settings.maxVersion = (3, 4)
    settings.certificate_compression_send = []
    handshake = False
    received = b""
    with socket.create_connection((LOOPBACK, port), timeout=PEER_TIMEOUT) as sock:
        coalesced = _OneWritePerFlight(sock) if one_write_per_flight else None
        connection = tlslite_api.TLSConnection(coalesced or sock)
        try:
            if identity is None:
                connection.handshakeClientCert(settings=settings)
            else:
                chain = tlslite_api.X509CertChain()
                chain.parsePemList(identity.chain_pem.decode("ascii"))
                key = tlslite_api.parsePEMKey(identity.key_pem.decode("ascii"), private=True)
                connection.handshakeClientCert(chain, key, settings=settings)
            handshake = cast(tuple[int, int], connection.version) == (3, 4)
            if payload:
                connection.write(payload)
            if coalesced is not None:
                coalesced.flush()
            while True:
                chunk = bytes(cast(bytearray, connection.read()))
                if not chunk:
                    ended = "close_notify"
                    break
                received += chunk
        except tlslite_api.TLSRemoteAlert as alert:
            ended = f"alert:{alert}"
        except OSError as error:
            ended = type(error).__name__
        with contextlib.suppress(OSError, tlslite_api.TLSError):
            connection.close()
    return TlsliteOutcome(handshake, received, ended)


def tlslite_server(listener: socket.socket, identity: IssuedCertificate) -> TlsliteOutcome:
    """Blocking: accept one connection on `listener` and serve it as a tlslite-ng TLS 1.3
    server presenting `identity` (asking no client certificate); read until it ends.

    tlslite-ng parses certificates itself, so it presents what OpenSSL refuses to load
    (a duplicate extension). Run it in a thread; every wait times out after `PEER_TIMEOUT`.
    """
    if TLSLITE_MISSING is not None:  # pragma: no cover - the tests skip first
        raise RuntimeError(TLSLITE_MISSING)
    settings = tlslite_api.HandshakeSettings()
    settings.minVersion = (3, 4)
    settings.maxVersion = (3, 4)
    chain = tlslite_api.X509CertChain()
    chain.parsePemList(identity.chain_pem.decode("ascii"))
    key = tlslite_api.parsePEMKey(identity.key_pem.decode("ascii"), private=True)
    listener.settimeout(PEER_TIMEOUT)
    sock, _ = listener.accept()
    handshake = False
    received = b""
    with sock:
        sock.settimeout(PEER_TIMEOUT)
        connection = tlslite_api.TLSConnection(sock)
        try:
            connection.handshakeServer(certChain=chain, privateKey=key, settings=settings)
            handshake = True
            while chunk := bytes(cast(bytearray, connection.read())):
                received += chunk
            ended = "close_notify"
        except tlslite_api.TLSRemoteAlert as alert:
            ended = f"alert:{alert}"
        except (OSError, tlslite_api.TLSAbruptCloseError) as error:
            ended = type(error).__name__
        with contextlib.suppress(OSError, tlslite_api.TLSError):
            connection.close()
    return TlsliteOutcome(handshake, received, ended)
