"""One error tree, rooted at `MeshError`.

Errors about a peer carry a machine-readable ``reason`` from `REASONS`; the same
string is the ``reason`` label of the metrics, so a log line, an exception and a
counter all name a failure the same way.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Reason = Literal[
    "malformed_certificate",
    "no_uri_san",
    "multiple_uri_sans",
    "invalid_spiffe_id",
    "root_path_id",
    "leaf_is_ca",
    "key_usage",
    "extended_key_usage",
    "bad_signing_certificate",
    "unknown_trust_domain",
    "untrusted_chain",
    "expired",
    "not_yet_valid",
    "ttl_exceeded",
    "age_exceeded",
    "revoked",
    "revocation_unknown",
    "unauthorized",
    "handshake_timeout",
    "protocol_error",
    "no_client_certificate",
]

#: The fixed set of failure reasons (API.md): error ``.reason`` values and metric labels.
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))


class MeshError(Exception):
    """Base of every error meshtls raises on purpose."""


class SpiffeIdError(MeshError, ValueError):
    """A SPIFFE ID or trust domain name broke a rule of the spec.

    ``rule`` is the id of the broken rule in SPIFFE-RULES.md, such as ``"ID-10"``.
    """

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(f"{message} ({rule})")
        self.rule = rule


class ConfigError(MeshError, ValueError):
    """A configuration value is wrong. The message names the setting."""


class BundleError(MeshError, ValueError):
    """A trust bundle could not be loaded or applied. ``rule`` names a B-* rule if one applies."""

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(f"{message} ({rule})" if rule else message)
        self.rule = rule


class VerificationError(MeshError):
    """A certificate (chain) failed verification, or its peer failed authorization.

    ``reason`` is one of `REASONS`; ``rule`` is the SPIFFE-RULES.md id when one applies.
    """

    def __init__(self, reason: Reason, message: str, *, rule: str | None = None) -> None:
        self.detail = message + (f" ({rule})" if rule else "")
        super().__init__(f"{reason}: {self.detail}")
        self.reason: Reason = reason
        self.rule = rule


class UnauthorizedPeerError(VerificationError):
    """A verified peer is not allowed by the authorizer. The message names the peer."""

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message)


class HandshakeError(MeshError):
    """Connecting or accepting failed before a verified stream existed.

    ``reason`` is one of `REASONS`; ``peer`` is the peer's address as ``host:port``;
    ``claimed_id`` is the SPIFFE ID the peer's certificate claimed, when one was readable
    (it was not necessarily verified). The cause is chained as ``__cause__``.
    """

    def __init__(
        self, reason: Reason, message: str, *, peer: str = "-", claimed_id: str | None = None
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.detail = message
        self.reason: Reason = reason
        self.peer = peer
        self.claimed_id = claimed_id


SendFailure = Literal["unknown_peer", "unavailable", "closed", "timeout", "too_large"]

#: Why a send was not confirmed: the ``reason`` of `SendError` and a metric label.
SEND_FAILURES: Final[frozenset[str]] = frozenset(get_args(SendFailure))


class SendError(MeshError):
    """A message send that the peer node did NOT confirm.

    ``reason`` is one of `SEND_FAILURES`: ``unknown_peer`` (no pooled peer and no inbound
    link of that id), ``unavailable`` (no link within the time left), ``closed`` (the link
    ended before the peer's acknowledgement), ``timeout`` (the caller's time ran out),
    ``too_large`` (refused before sending: over ``max_message_size``). ``peer`` is the
    SPIFFE ID as text. The message may or may not have arrived: a caller that retries gets
    at-least-once delivery. A send is never reported as done when it was not.
    """

    def __init__(self, reason: SendFailure, peer: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: sending to {peer}" + (f": {detail}" if detail else ""))
        self.reason: SendFailure = reason
        self.peer = peer
        self.detail = detail
