"""The TLS engine: one context pair per identity, and sans-I/O sessions over memory BIOs.

Everything meshtls asks of a TLS library lives here (and, for what pyOpenSSL does not
expose, in `_ossl`), so another engine could be plugged in behind `TlsContexts` and
`TlsSession`. The engine is OpenSSL 4 (the one the `cryptography` wheel bundles),
driven through pyOpenSSL. No sockets, no trio: the stream layer moves the bytes
(docs/decisions.md, "Engine": memory BIOs measured against pyOpenSSL on the socket).

Context rules (issue 3, issue 11, SPIFFE-RULES.md P-5):
- TLS 1.3 is both the minimum and the maximum version.
- Both sides require and verify a certificate; no hostname check (SPIFFE authenticates
  by URI SAN).
- No resumption (`_ossl.refuse_resumption`): a resumed session has no peer chain to
  verify, so there is never one.
- OpenSSL does not check validity times (``X509_V_FLAG_NO_CHECK_TIME``); meshtls checks
  them against the injected clock with the policy's skew.
- Bundle authorities are trust anchors even when not self-signed
  (``X509_V_FLAG_PARTIAL_CHAIN``), as the SPIFFE bundle spec and `verify_svid` treat them.
- No chain building beyond what the SVID source gave (``SSL_MODE_NO_AUTO_CHAIN``).
- One ``SSL_write`` takes a whole buffer (`_ossl.whole_writes`: partial writes off).
- Key exchange groups are explicit (`_ossl.DEFAULT_GROUPS`: hybrid ML-KEM first).
- The OpenSSL trust store holds the authorities of *every* trusted domain; binding a
  peer to its own domain's roots (L-10) is the `PeerVerifier`'s job.

Verification inside the handshake: OpenSSL calls the session's `PeerVerifier` from its
verify callback, after its own check of each certificate. A rejection aborts the
handshake with the TLS alert that names the reason best (`ALERT_FOR`), and the peer
maps the alert back (`alert_reason`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from OpenSSL import SSL, crypto

from . import _ossl
from ._bundle import BundleSet
from ._errors import MeshError, Reason, VerificationError
from ._svid import X509Svid

X509_V_FLAG_PARTIAL_CHAIN: Final = 0x80000
X509_V_FLAG_NO_CHECK_TIME: Final = 0x200000
SSL_MODE_NO_AUTO_CHAIN: Final = 0x8
DEFAULT_GROUPS: Final = _ossl.DEFAULT_GROUPS

# OpenSSL's verify messages (X509_verify_cert_error_string) and the reason each means:
# the reason `verify_svid` gives for the same defect, used when our own verifier cannot
# name what OpenSSL refused. Matched by text: the numeric codes moved between releases.
# The first fragment found wins.
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


# The alert each rejection reason is sent with, reachable through OpenSSL's own
# error-to-alert table (`_ossl.REJECT`). RFC 8446's access_denied is not reachable
# there, so an authorizer's refusal goes out as certificate_unknown (docs/decisions.md).
ALERT_FOR: Final[dict[Reason, str]] = {
    "expired": "certificate_expired",
    "revoked": "certificate_revoked",
    "untrusted_chain": "unknown_ca",
    "unknown_trust_domain": "unknown_ca",
    "bad_signing_certificate": "unknown_ca",
    "extended_key_usage": "unsupported_certificate",
    "key_usage": "unsupported_certificate",
    "unauthorized": "certificate_unknown",
    "revocation_unknown": "certificate_unknown",
}
#: The alert for every other certificate reason (the SPIFFE leaf rules, the policy).
DEFAULT_ALERT: Final = "bad_certificate"

# TLS alerts a peer sends when it refuses our certificate, and the reason each gives us:
# for an alert several reasons share, the one it stands for first. Anything else is a
# protocol_error.
_ALERT_REASONS: Final[dict[str, Reason]] = {
    "certificate_required": "no_client_certificate",
    "unknown_ca": "untrusted_chain",
    "certificate_expired": "expired",
    "certificate_revoked": "revoked",
    "access_denied": "unauthorized",
    "certificate_unknown": "unauthorized",
    "unsupported_certificate": "extended_key_usage",
    "bad_certificate": "malformed_certificate",
}


def alert_words(alert: str) -> str:
    """What the peer's alert says, for error messages: a refusal of our certificate or a
    TLS failure (``alert`` as `alert_reason` takes it)."""
    if alert_reason(alert) == "protocol_error":
        return f"the peer sent a TLS alert: {alert}"
    return f"the peer rejects our certificate (TLS alert {alert})"


def alert_reason(name: str) -> Reason:
    """The reason a TLS alert from the peer names (``certificate_expired``, or OpenSSL's
    ``SSLV3_ALERT_CERTIFICATE_EXPIRED``); ``protocol_error`` when it names none."""
    key = name.lower().replace(" ", "_")
    for prefix in ("sslv3_alert_", "tlsv1_alert_", "tlsv13_alert_", "tls_alert_"):
        key = key.removeprefix(prefix)
    return _ALERT_REASONS.get(key, "protocol_error")


class TlsError(MeshError):
    """The TLS layer failed a handshake. ``reason`` is one of `REASONS`.

    ``verdict`` is what our verifier raised when *we* rejected the peer (a
    `VerificationError`, or any exception from a verifier with a bug), else None.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        verdict: BaseException | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.detail = message
        self.reason: Reason = reason
        self.verdict = verdict


class GroupsError(MeshError, ValueError):
    """OpenSSL refused a key-exchange groups list (an unknown name, or none left)."""


class SessionError(Exception):
    """A session failed after its handshake (the stream maps it to trio's errors).

    ``alert`` names the fatal alert the peer sent (``bad_record_mac``), None if none;
    ``truncated``: the transport ended without the peer's close_notify.
    """

    def __init__(self, message: str, *, alert: str | None = None, truncated: bool = False) -> None:
        super().__init__(message)
        self.alert = alert
        self.truncated = truncated


class Deferred(MeshError):  # noqa: N818 (a signal, not an error; a MeshError so that the
    # verifier's boundary passes it through unchanged)
    """Raised by a `PeerVerifier` that cannot judge inside the handshake (a revocation
    status still being fetched, the peer's own chain needed but not readable yet): the
    handshake completes, and the stream judges the peer before any application byte."""


class SentChain(Protocol):
    """What the peer sent (DER, leaf first) when called, and how many certificates by
    `len`; both raise `Deferred` where OpenSSL cannot give them yet (a server)."""

    def __call__(self) -> Sequence[bytes]: ...

    def __len__(self) -> int: ...


class PeerVerifier(Protocol):
    """What a session asks while OpenSSL verifies the peer (called from the handshake).

    `judge` gets the chain OpenSSL verified (DER, leaf first) and, lazily, the chain the
    peer sent (`sent` raises `Deferred` where OpenSSL cannot give it yet). It returns the
    verified peer (any object; the stream reads it back) or raises `VerificationError` to
    reject, or `Deferred`. `diagnose` names what OpenSSL itself refused, from the chain
    it built so far and OpenSSL's message. Any other exception rejects the peer with
    ``internal_error`` and is kept as the `TlsError`'s verdict.
    """

    def judge(self, chain: list[bytes], sent: SentChain) -> object: ...

    def diagnose(self, chain: list[bytes], sent: SentChain, message: str) -> VerificationError: ...


def _context(server_side: bool, svid: X509Svid, bundles: BundleSet, groups: str) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD if server_side else SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.set_mode(SSL_MODE_NO_AUTO_CHAIN)
    _ossl.whole_writes(context)
    _ossl.refuse_resumption(context)
    try:
        _ossl.set_groups(context, groups)
    except ValueError as exc:
        raise GroupsError(str(exc)) from None
    context.use_certificate(svid.chain[0])
    for extra in svid.chain[1:]:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(svid.private_key)
    context.check_privatekey()
    store = context.get_cert_store()
    if store is None:  # pragma: no cover - a new context always has one
        raise RuntimeError("OpenSSL gave the context no certificate store")
    for bundle in bundles.values():
        for authority in bundle.authorities:
            store.add_cert(crypto.X509.from_cryptography(authority))
    store.set_flags(X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME)
    _ossl.set_verify(context, _verify, leaf_only=True)
    return context


@dataclass(frozen=True, eq=False, slots=True)
class TlsContexts:
    """The server and client contexts of one identity (our SVID + the bundles we trust),
    offering `groups` for key exchange.

    Built once per identity and shared by every handshake; rotation builds a new one.
    Raises whatever pyOpenSSL raises for an SVID, key or root OpenSSL refuses (the
    identity maps it), and `GroupsError` for a groups list OpenSSL refuses.
    """

    svid: X509Svid
    bundles: BundleSet
    server: SSL.Context
    client: SSL.Context
    groups: str = DEFAULT_GROUPS

    @classmethod
    def build(
        cls, svid: X509Svid, bundles: BundleSet, *, groups: str = DEFAULT_GROUPS
    ) -> TlsContexts:
        return cls(
            svid,
            bundles,
            _context(True, svid, bundles, groups),
            _context(False, svid, bundles, groups),
            groups,
        )

    def session(self, *, server_side: bool, verifier: PeerVerifier | None = None) -> TlsSession:
        """A session for one connection. Without a `verifier`, a peer is accepted once
        OpenSSL's own path validation passes (tests and tools only)."""
        context = self.server if server_side else self.client
        return TlsSession(context, server_side=server_side, verifier=verifier)


@dataclass(slots=True)
class _Judging:
    """One session's verification state, written by the verify callback. The connection
    holds it as its app data until the handshake ends (`TlsSession._judged`)."""

    verifier: PeerVerifier | None
    server_side: bool
    verdict: BaseException | None = None  # why we rejected the peer
    peer: object = None  # what `judge` returned
    judged: bool = False
    deferred: bool = False
    claimed: list[bytes] = field(default_factory=list)  # the chain as far as it was read


def _verify(
    connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
) -> int:
    """OpenSSL's verify callback for every meshtls context: see `PeerVerifier`."""
    state = connection.get_app_data()
    if not isinstance(state, _Judging):  # a connection meshtls did not make
        return _ossl.X509_V_OK if ok else error
    if not ok:
        state.judged = True
        built = state.claimed = chain()
        message = _ossl.error_string(error)
        if state.verifier is None:
            state.verdict = VerificationError(_verify_reason(message), f"OpenSSL: {message}")
            return error
        try:
            state.verdict = state.verifier.diagnose(built, _sent_reader(connection, state), message)
        except Exception as exc:  # a diagnosis that fails still rejects
            state.verdict = exc
        return _reject_with(state.verdict)
    if depth != 0 or state.judged or state.verifier is None:
        return _ossl.X509_V_OK
    state.judged = True
    built = state.claimed = chain()
    try:
        state.peer = state.verifier.judge(built, _sent_reader(connection, state))
    except Deferred:
        state.deferred = True
        return _ossl.X509_V_OK
    except BaseException as exc:  # a VerificationError, a verifier's bug, or KeyboardInterrupt
        state.verdict = exc  # rejected either way; `handshake` re-raises what is no Exception
        return _reject_with(exc)
    return _ossl.X509_V_OK


class _SentChain:
    """The chain the peer sent, as the verify callback may read it: a client holds the
    server's chain before verifying it; a server gets the client's only afterwards
    (reading it raises `Deferred`). Its length costs no copy; its DER is read once."""

    __slots__ = ("_connection", "_der", "_server_side")

    def __init__(self, connection: SSL.Connection, server_side: bool) -> None:
        self._connection = connection
        self._server_side = server_side
        self._der: list[bytes] | None = None

    def __len__(self) -> int:
        if self._server_side:
            raise Deferred("a server reads the client's chain only after the handshake")
        return _ossl.peer_chain_length(self._connection)

    def __call__(self) -> Sequence[bytes]:
        if self._server_side:
            raise Deferred("a server reads the client's chain only after the handshake")
        if self._der is None:
            self._der = _der(self._connection.get_peer_cert_chain())
        return self._der


def _sent_reader(connection: SSL.Connection, state: _Judging) -> _SentChain:
    return _SentChain(connection, state.server_side)


def _reject_with(verdict: BaseException) -> int:
    if isinstance(verdict, VerificationError):
        alert = ALERT_FOR.get(verdict.reason, DEFAULT_ALERT)
        return _ossl.REJECT.get(alert, _ossl.REJECT[DEFAULT_ALERT])
    return _ossl.REJECT["internal_error"]


def _der(certificates: Sequence[crypto.X509] | None) -> list[bytes]:
    if not certificates:
        return []
    return [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in certificates]


def _error_text(exc: SSL.Error) -> str:
    """The reason texts of a pyOpenSSL error (``"tlsv1 alert unknown ca"``), joined."""
    parts: list[str] = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(parts) or str(exc)


_ALERT_TEXT: Final = re.compile(r"\b(?:sslv3|tlsv1|tlsv13|tls) alert ([a-z0-9 ]+)")


def _alert_in(text: str) -> str | None:
    """The alert an OpenSSL error text says the peer sent (``"tls alert unknown ca"``:
    ``"unknown_ca"``), else None."""
    found = _ALERT_TEXT.search(text.lower())
    return None if found is None else found.group(1).strip().replace(" ", "_")


def _truncation(exc: SSL.Error) -> bool:
    if isinstance(exc, SSL.SysCallError):
        return True  # (-1, 'Unexpected EOF'): the transport ended inside the session
    return "unexpected eof" in _error_text(exc).lower()


class TlsSession:
    """One connection's TLS state, sans I/O: feed it bytes, take bytes out.

    Owned by exactly one stream. `handshake` raises `TlsError`; everything after it raises
    `SessionError` (the stream maps those to trio's errors).

    Half-close: `close_notify` is one ``SSL_shutdown``, which queues our close_notify and
    reads nothing, so the peer's data keeps arriving (TLS 1.3 half-close). The transport's
    EOF is given to OpenSSL at once (`feed_eof`); OpenSSL reaches it only after every
    byte fed before it.
    """

    __slots__ = ("_eof", "_judging", "_out", "_server_side", "_stopped", "_tls")

    def __init__(
        self, context: SSL.Context, *, server_side: bool, verifier: PeerVerifier | None = None
    ) -> None:
        self._judging = _Judging(verifier, server_side)
        self._tls = SSL.Connection(context, None)
        self._tls.set_app_data(self._judging)
        if server_side:
            self._tls.set_accept_state()
        else:
            self._tls.set_connect_state()
        self._server_side = server_side
        self._out = bytearray()
        self._stopped: SSL.Error | None = None  # what ended a read that had data to give
        self._eof = False  # the transport ended (`feed_eof`)

    # ------------------------------------------------------------ the handshake

    def handshake(self) -> bool:
        """Advance the handshake with what has been fed. True once it is complete.

        On failure, an alert for the peer may be waiting in `outgoing()`; send it, then
        let the `TlsError` go.
        """
        try:
            done = _ossl.handshake_step(self._tls)
        except SSL.Error as exc:
            self._raise_interrupt()
            failure = self._failure(exc)
            self._judged()
            try:
                raise failure from None
            finally:
                del failure  # this frame, kept by the traceback, must not keep the error
        if done:
            self._judged()
        return done

    def _raise_interrupt(self) -> None:
        """Re-raise a verdict that is no `Exception` (KeyboardInterrupt, SystemExit), which
        cffi would otherwise have printed and dropped: not the peer's fault."""
        verdict = self._judging.verdict
        if verdict is not None and not isinstance(verdict, Exception):
            self._judged()
            raise verdict

    def _judged(self) -> None:
        """The handshake is over: the connection lets go of the verification state, and the
        state of its verdict (now in the `TlsError`), so that no reference cycle through a
        verdict's traceback keeps the connection alive until the cyclic collector runs."""
        self._tls.set_app_data(None)
        self._judging.verdict = None

    def _failure(self, exc: SSL.Error) -> TlsError:
        verdict = self._judging.verdict
        if verdict is not None:
            if isinstance(verdict, VerificationError):
                return TlsError(verdict.reason, verdict.detail, verdict=verdict)
            return TlsError(
                "malformed_certificate",
                f"the certificate could not be judged ({type(verdict).__name__}: {verdict})",
                verdict=verdict,
            )
        if isinstance(exc, SSL.SysCallError):
            return TlsError("protocol_error", "the peer closed the connection during the handshake")
        text = _error_text(exc)
        alert = _alert_in(text)
        if alert is not None:
            return TlsError(alert_reason(alert), alert_words(alert))
        if "peer did not return a certificate" in text.lower():
            return TlsError("no_client_certificate", "the client sent no certificate")
        if "certificate verify failed" in text.lower():  # OpenSSL's own check, no callback
            code = _ossl.verify_result(self._tls)
            message = _ossl.error_string(code)
            return TlsError(_verify_reason(message), f"OpenSSL: {message} ({code})")
        return TlsError("protocol_error", f"not a TLS 1.3 handshake ({text})")

    @property
    def peer(self) -> object:
        """What the verifier's `judge` returned, or None (not judged, or deferred)."""
        return self._judging.peer

    @property
    def claimed_chain(self) -> list[bytes]:
        """The peer's chain as far as the verify callback read it (for log lines only)."""
        return self._judging.claimed

    @property
    def deferred(self) -> bool:
        """The verifier deferred its verdict: judge the peer before any application byte."""
        return self._judging.deferred

    # ------------------------------------------------------------ bytes in and out

    def feed(self, data: bytes) -> None:
        if data:
            self._tls.bio_write(data)

    def feed_eof(self) -> None:
        """The transport ended. Nothing may be fed after this."""
        self._tls.bio_shutdown()
        self._eof = True

    def has_output(self) -> bool:
        self._out += _ossl.drain(self._tls)
        return bool(self._out)

    def outgoing(self) -> bytes:
        """Bytes the engine wants sent, or b""."""
        out = _ossl.drain(self._tls)
        if self._out:
            out = bytes(self._out) + out
            self._out.clear()
        return out

    def read(self, max_bytes: int) -> bytes | None:
        """Application data; None when more input is needed; b"" after the peer's close_notify.

        After `feed_eof`, never None: the rest of the data, then b"" or a `SessionError`
        (``truncated`` when the transport ended without close_notify).
        """
        problem = self._stopped
        if problem is None:
            data, problem = _ossl.read_records(self._tls, max_bytes)
            if problem is None:
                if data or not self._eof:
                    return data or None
                # OpenSSL wants more input that can never come: a truncation, never a spin
                raise SessionError("the transport ended without close_notify", truncated=True)
            if data:  # give the data first; the next read reports what stopped it
                self._stopped = problem
                return data
        if isinstance(problem, SSL.ZeroReturnError):
            return b""  # and again on every later read, as OpenSSL does
        raise _session_error(problem) from None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._tls.sendall(data)
        except SSL.Error as exc:
            raise _session_error(exc) from None

    def close_notify(self) -> None:
        """Queue our close_notify. Reading goes on, losing nothing: TLS 1.3 half-close.

        Raises `SessionError` only if the session had already failed.
        """
        try:
            self._tls.shutdown()
        except SSL.Error as exc:
            raise _session_error(exc) from None

    # ------------------------------------------------------------ what was negotiated

    def verified_chain(self) -> list[bytes]:
        """DER of the chain OpenSSL verified for the peer, leaf first, root last."""
        return _der(self._tls.get_verified_chain())

    def unverified_chain(self) -> list[bytes]:
        """DER of the chain the peer sent, leaf first; [] if it sent none."""
        chain = _der(self._tls.get_peer_cert_chain())
        if self._server_side:  # a server's peer chain (OpenSSL's) leaves the client's leaf out
            leaf = self._tls.get_peer_certificate()
            if leaf is not None:
                chain.insert(0, crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf))
        return chain

    def sent_chain_length(self) -> int:
        """How many certificates the peer sent (counted without copying any)."""
        return _ossl.peer_chain_length(self._tls, server_side=self._server_side)

    @property
    def version(self) -> str | None:
        name = self._tls.get_protocol_version_name()
        return None if name == "Unknown" else name

    @property
    def group(self) -> str | None:
        """The key-exchange group the handshake used (``X25519MLKEM768``)."""
        return _ossl.negotiated_group(self._tls)

    @property
    def resumed(self) -> bool:
        return _ossl.session_reused(self._tls)


def _session_error(exc: SSL.Error) -> SessionError:
    if _truncation(exc):
        return SessionError("the transport ended without close_notify", truncated=True)
    text = _error_text(exc)
    return SessionError(text, alert=_alert_in(text))
