"""The TLS engine: one context pair per identity, and sans-I/O sessions over memory BIOs.

Everything meshtls asks of a TLS library lives here, so another engine could be
plugged in behind `TlsContexts` and `TlsSession`. The engine today is CPython's
`ssl` module (OpenSSL). No sockets, no trio: the stream layer moves the bytes.

Context rules (issue 3, SPIFFE-RULES.md P-5):
- TLS 1.3 is both the minimum and the maximum version.
- Both sides require and verify a certificate; no hostname check (SPIFFE authenticates
  by URI SAN, checked after the handshake).
- No session tickets (``num_tickets = 0``, ``OP_NO_TICKET``): a resumed session has no
  peer chain to verify (CPython gh-160171), so there is never one.
- OpenSSL does not check validity times (``X509_V_FLAG_NO_CHECK_TIME``); meshtls checks
  them against the injected clock with the policy's skew.
- Bundle authorities are trust anchors even when not self-signed
  (``X509_V_FLAG_PARTIAL_CHAIN``), as the SPIFFE bundle spec and `verify_svid` treat them.
- The OpenSSL trust store holds the authorities of *every* trusted domain; binding a
  peer to its own domain's roots (L-10) happens after the handshake, on the verified chain.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization

from . import _compat
from ._bundle import BundleSet
from ._errors import MeshError, Reason
from ._svid import X509Svid

X509_V_FLAG_PARTIAL_CHAIN: Final = 0x80000
X509_V_FLAG_NO_CHECK_TIME: Final = 0x200000

# OpenSSL's verify messages (X509_verify_cert_error_string) and the reason each means:
# the reason `verify_svid` gives for the same defect (tests/test_handshake_verdicts.py).
# Matched by text: the numeric codes moved between releases (an invalid CA is 24 in
# OpenSSL 1.1 and 79 in 3.0), the messages did not. The first fragment found wins.
_VERIFY_REASONS: Final[tuple[tuple[str, Reason], ...]] = (
    ("unhandled critical extension", "malformed_certificate"),
    ("invalid or inconsistent certificate extension", "malformed_certificate"),
    ("proxy certificates not allowed", "malformed_certificate"),
    ("rfc 3779", "malformed_certificate"),
    ("invalid ca certificate", "bad_signing_certificate"),
    ("path length constraint exceeded", "bad_signing_certificate"),
    ("subtree violation", "bad_signing_certificate"),  # permitted / excluded
    ("name constraint", "bad_signing_certificate"),  # unsupported type, syntax, min/max
    ("name syntax", "bad_signing_certificate"),  # a name a constraint cannot be applied to
    ("certificate purpose", "extended_key_usage"),  # EKU, or key usage without digitalSignature
    ("key too weak", "untrusted_chain"),  # EE / CA certificate key too weak
    ("digest algorithm too weak", "untrusted_chain"),
    ("certificate has expired", "expired"),
    ("certificate is not yet valid", "not_yet_valid"),
)


def _verify_reason(message: str) -> Reason:
    text = message.lower()
    for fragment, reason in _VERIFY_REASONS:
        if fragment in text:
            return reason
    return "untrusted_chain"


class TlsError(MeshError):
    """The TLS layer failed a handshake. ``reason`` is one of `REASONS`.

    ``verify_code`` is OpenSSL's when OpenSSL rejected the peer's chain, else None.
    """

    def __init__(self, reason: Reason, message: str, *, verify_code: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.detail = message
        self.reason: Reason = reason
        self.verify_code = verify_code


# TLS alerts a peer sends when it refuses our certificate (OpenSSL's reason names), and
# the reason each gives us. Anything else is a protocol_error.
_ALERT_REASONS: Final[tuple[tuple[str, Reason], ...]] = (
    ("CERTIFICATE_REQUIRED", "no_client_certificate"),
    ("UNKNOWN_CA", "untrusted_chain"),
    ("CERTIFICATE_EXPIRED", "expired"),
    ("CERTIFICATE_REVOKED", "revoked"),
    ("ACCESS_DENIED", "unauthorized"),
    ("UNSUPPORTED_CERTIFICATE", "extended_key_usage"),
    ("BAD_CERTIFICATE", "untrusted_chain"),
    ("CERTIFICATE_UNKNOWN", "untrusted_chain"),
)


def alert_reason(name: str) -> Reason:
    """The reason a TLS alert from the peer names; ``protocol_error`` when it names none."""
    upper = name.upper()
    for fragment, reason in _ALERT_REASONS:
        if fragment in upper:
            return reason
    return "protocol_error"


def _reason_for(exc: ssl.SSLError) -> TlsError:
    """Map an `ssl.SSLError` from a handshake to a reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, message = exc.verify_code, exc.verify_message
        return TlsError(_verify_reason(message), f"OpenSSL: {message} ({code})", verify_code=code)
    name = (exc.reason or "").upper()
    if name == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TlsError("no_client_certificate", "the client sent no certificate")
    detail = exc.reason or str(exc)
    if "ALERT" in name:
        return TlsError(alert_reason(name), f"the peer refused the handshake ({detail})")
    return TlsError("protocol_error", f"not a TLS 1.3 handshake ({detail})")


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path whose contents are `data`, for `load_cert_chain`, which reads only files.

    On Linux an anonymous memfd: the key never touches a file system. Elsewhere a
    private temporary file, deleted at once.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("meshtls-svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="meshtls-") as directory:  # pragma: no cover
        path = os.path.join(directory, "svid.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        yield path


def _context(server_side: bool, svid: X509Svid, bundles: BundleSet) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME | X509_V_FLAG_PARTIAL_CHAIN
    context.options |= ssl.OP_NO_TICKET
    if server_side:
        context.num_tickets = 0
    roots = b"".join(bundle.pem for bundle in bundles.values())
    if roots:
        context.load_verify_locations(cadata=roots.decode("ascii"))
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.chain)
    with _pem_path(chain + key) as path:
        context.load_cert_chain(path)
    return context


@dataclass(frozen=True, eq=False, slots=True)
class TlsContexts:
    """The server and client contexts of one identity (our SVID + the bundles we trust).

    Built once per identity and shared by every handshake; rotation builds a new one.
    """

    svid: X509Svid
    bundles: BundleSet
    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def build(cls, svid: X509Svid, bundles: BundleSet) -> TlsContexts:
        return cls(svid, bundles, _context(True, svid, bundles), _context(False, svid, bundles))

    def session(self, *, server_side: bool) -> TlsSession:
        return TlsSession(self.server if server_side else self.client, server_side=server_side)


class TlsSession:
    """One connection's TLS state, sans I/O: feed it bytes, take bytes out.

    Owned by exactly one stream. Methods raise `TlsError` for handshake failures and
    `ssl.SSLError` afterwards (the stream maps those to trio's errors).

    Half-close, theory of operation. CPython has no call that sends close_notify and
    nothing else: `SSLObject.unwrap()` calls OpenSSL's ``SSL_shutdown`` a second time
    as soon as the first has queued our close_notify (``Modules/_ssl.c``,
    ``shutdown_seen_zero``). That second call tries to read the peer's close_notify
    (``ssl3_shutdown``), and OpenSSL's record layer (``ssl3_read_bytes`` in
    ``ssl/record/rec_layer_s3.c``) treats an application-data record found then as
    fatal, ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``: it discards the record and the
    session is dead. A record counts whether it is still in the incoming BIO or is the
    rest of one that `read` took only part of. So `close_notify` leaves that second
    call nothing to read: it takes the plaintext OpenSSL holds into ``_plain`` (served
    first by `read`), holds the unread bytes back out of the BIO, and puts them back
    after. For the same reason the transport's EOF is kept here (``_eof``) and given
    to OpenSSL only once it has read everything before it.
    """

    __slots__ = ("_eof", "_incoming", "_outgoing", "_plain", "_tls")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._plain = bytearray()  # application data taken out of OpenSSL by close_notify
        self._eof = False  # the transport ended; told to OpenSSL once it needs more

    def handshake(self) -> bool:
        """Advance the handshake with what has been fed. True once it is complete.

        On failure, an alert for the peer may be waiting in `outgoing()`; send it, then
        let the `TlsError` go.
        """
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise _reason_for(exc) from exc
        return True

    def feed(self, data: bytes) -> None:
        self._incoming.write(data)

    def feed_eof(self) -> None:
        """The transport ended. Nothing may be fed after this."""
        self._eof = True

    def has_output(self) -> bool:
        return self._outgoing.pending > 0

    def outgoing(self) -> bytes:
        """Bytes the engine wants sent, or b""."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def read(self, max_bytes: int) -> bytes | None:
        """Application data; None when more input is needed; b"" after the peer's close_notify.

        After `feed_eof`, never None: the rest of the data, then b"" or an `ssl.SSLError`
        (``SSLEOFError`` when the transport ended without close_notify: truncation).
        """
        if self._plain:
            data = bytes(self._plain[:max_bytes])
            del self._plain[:max_bytes]
            return data
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                if not self._eof:
                    return None
                if self._incoming.eof:  # OpenSSL saw the end and still wants more
                    raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "the transport ended") from None
                self._incoming.write_eof()  # OpenSSL has read all there was: now the end
            except ssl.SSLZeroReturnError:
                return b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def close_notify(self) -> None:
        """Queue our close_notify. Reading goes on, losing nothing: TLS 1.3 half-close.

        Raises `ssl.SSLError` only if the session had already failed.
        """
        held = self._incoming.read() if self._incoming.pending else b""
        try:
            while waiting := self._tls.pending():  # the rest of a record read in part
                self._plain += self._tls.read(waiting)
            with contextlib.suppress(ssl.SSLWantReadError):  # the second SSL_shutdown
                self._tls.unwrap()
        finally:
            if held:
                self._incoming.write(held)

    def verified_chain(self) -> list[bytes]:
        return _compat.verified_chain(self._tls)

    def unverified_chain(self) -> list[bytes]:
        return _compat.unverified_chain(self._tls)

    def sent_chain_length(self) -> int:
        """How many certificates the peer sent."""
        return _compat.unverified_chain_length(self._tls)

    @property
    def version(self) -> str | None:
        return self._tls.version()
