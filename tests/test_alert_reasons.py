"""Every reason that refuses a certificate has a TLS alert OpenSSL can send, and the other
side reads a reason back from it (issue 11, Deliver 2).

The mapping is many-to-one: nine alerts at most for eighteen certificate reasons. For each
alert one reason is its representative (`_tls._ALERT_REASONS`): the reason a peer names
when it receives that alert. A representative round-trips exactly; any other reason
reads back as the representative of its alert. `ALERT_TABLE` pins the mapping, and the
same table is in README.md and docs/decisions.md (checked here, so the docs cannot drift).
The round trip is proved on the wire: two meshtls sessions over memory BIOs, one refusing
the other from its verify callback with each reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, cast

import pytest

from meshtls import REASONS, VerificationError, _ossl
from meshtls._errors import Reason
from meshtls._svid import Role
from meshtls._tls import (
    _ALERT_REASONS,
    ALERT_FOR,
    DEFAULT_ALERT,
    SentChain,
    SessionError,
    TlsContexts,
    TlsError,
    TlsSession,
    alert_reason,
)

from .conftest import World

ROOT: Final = Path(__file__).resolve().parent.parent

#: Reasons no certificate verdict gives: a timeout and a broken handshake are not a
#: rejection of a certificate, and a missing client certificate is refused by OpenSSL
#: itself (alert certificate_required), before any verify callback runs.
NOT_A_CERTIFICATE_VERDICT: Final = frozenset(
    {"handshake_timeout", "protocol_error", "no_client_certificate"}
)
CERTIFICATE_REASONS: Final = sorted(REASONS - NOT_A_CERTIFICATE_VERDICT)

#: alert -> (the reason a peer reads back from it, every reason sent with it)
ALERT_TABLE: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "certificate_expired": ("expired", ("expired",)),
    "certificate_revoked": ("revoked", ("revoked",)),
    "unknown_ca": (
        "untrusted_chain",
        ("bad_signing_certificate", "unknown_trust_domain", "untrusted_chain"),
    ),
    "unsupported_certificate": ("extended_key_usage", ("extended_key_usage", "key_usage")),
    "certificate_unknown": ("unauthorized", ("revocation_unknown", "unauthorized")),
    "bad_certificate": (
        "malformed_certificate",
        (
            "age_exceeded",
            "invalid_spiffe_id",
            "leaf_is_ca",
            "malformed_certificate",
            "multiple_uri_sans",
            "no_uri_san",
            "not_yet_valid",
            "root_path_id",
            "ttl_exceeded",
        ),
    ),
}


def alert_for(reason: str) -> str:
    return ALERT_FOR.get(cast(Reason, reason), DEFAULT_ALERT)


def test_the_table_is_alert_for() -> None:
    sent = {
        alert: tuple(r for r in CERTIFICATE_REASONS if alert_for(r) == alert)
        for alert in ALERT_TABLE
    }
    assert sent == {alert: reasons for alert, (_, reasons) in ALERT_TABLE.items()}
    assert sorted(r for _, reasons in ALERT_TABLE.values() for r in reasons) == CERTIFICATE_REASONS
    assert set(ALERT_FOR) <= set(CERTIFICATE_REASONS), "ALERT_FOR names a reason no verdict gives"


@pytest.mark.parametrize("reason", CERTIFICATE_REASONS)
def test_every_certificate_reason_has_an_alert_openssl_can_send(reason: str) -> None:
    alert = alert_for(reason)
    assert alert in _ossl.REJECT
    assert _ossl.REJECT[alert] != _ossl.REJECT["internal_error"]
    read_back = alert_reason(alert)
    assert read_back == ALERT_TABLE[alert][0]
    # the representative is sent with the same alert, so the peer's reason is never one
    # that a different alert would carry
    assert alert_for(read_back) == alert


def test_each_alert_has_exactly_one_representative() -> None:
    for alert, (representative, reasons) in ALERT_TABLE.items():
        assert [r for r in reasons if alert_reason(alert) == r] == [representative]
    # and every certificate alert a peer can read back is one we send, or OpenSSL's own
    received = {a for a, r in _ALERT_REASONS.items() if r != "protocol_error"}
    assert received - set(ALERT_TABLE) == {"access_denied", "certificate_required"}
    assert alert_reason("certificate_required") == "no_client_certificate"


# --------------------------------------------------------------------------- on the wire


class Refuse:
    """A `PeerVerifier` that refuses every peer OpenSSL accepted, with `reason`."""

    def __init__(self, reason: str) -> None:
        self.reason = cast(Reason, reason)

    def judge(self, chain: list[bytes], sent: SentChain) -> object:
        raise VerificationError(self.reason, "refused by the test")

    def diagnose(self, chain: list[bytes], sent: SentChain, message: str) -> VerificationError:
        raise AssertionError(f"OpenSSL refused a good peer: {message}")


_BUILT: dict[int, tuple[TlsContexts, TlsContexts]] = {}


def _contexts(world: World) -> tuple[TlsContexts, TlsContexts]:
    if id(world) not in _BUILT:
        _BUILT[id(world)] = (
            TlsContexts.build(world.ca.issue("spiffe://example.org/server").svid(), world.bundles),
            TlsContexts.build(world.ca.issue("spiffe://example.org/client").svid(), world.bundles),
        )
    return _BUILT[id(world)]


def read_back(world: World, reason: str, rejecter: Role) -> tuple[str, str]:
    """One handshake where `rejecter` refuses its peer with `reason`: (the rejecter's own
    reason, the reason the refused side reads from the alert it received)."""
    server_contexts, client_contexts = _contexts(world)
    server = server_contexts.session(
        server_side=True, verifier=Refuse(reason) if rejecter == "server" else None
    )
    client = client_contexts.session(
        server_side=False, verifier=Refuse(reason) if rejecter == "client" else None
    )
    sessions: dict[Role, TlsSession] = {"server": server, "client": client}
    seen: dict[Role, str] = {}
    for _ in range(6):
        for side, peer in (("client", "server"), ("server", "client")):
            session = sessions[side]  # type: ignore[index]
            if side not in seen:
                try:
                    if session.handshake():
                        data = session.read(100)  # TLS 1.3: a server's refusal comes after
                        assert not data, "application data from a refused handshake"
                except TlsError as exc:
                    seen[side] = exc.reason  # type: ignore[index]
                except SessionError as exc:
                    assert exc.alert is not None, exc
                    seen[side] = alert_reason(exc.alert)  # type: ignore[index]
            sessions[peer].feed(session.outgoing())  # type: ignore[index]
        if len(seen) == 2:
            break
    refused: Role = "client" if rejecter == "server" else "server"
    return seen[rejecter], seen[refused]


@pytest.mark.parametrize("rejecter", ["server", "client"])
@pytest.mark.parametrize("reason", CERTIFICATE_REASONS)
def test_the_refused_side_reads_back_the_reason_or_its_representative(
    world: World, reason: str, rejecter: Role
) -> None:
    ours, theirs = read_back(world, reason, rejecter)
    assert ours == reason
    assert theirs == ALERT_TABLE[alert_for(reason)][0]
    if alert_reason(alert_for(reason)) == reason:  # a representative: exactly
        assert theirs == reason


# --------------------------------------------------------------------------- the docs


def markdown_rows() -> list[str]:
    """The table as README.md and docs/decisions.md give it, one row per alert."""
    return [
        f"| `{alert}` | `{representative}` | " + ", ".join(f"`{r}`" for r in reasons) + " |"
        for alert, (representative, reasons) in ALERT_TABLE.items()
    ]


@pytest.mark.parametrize("document", ["README.md", "docs/decisions.md"])
def test_the_documents_give_the_same_table(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    missing = [row for row in markdown_rows() if row not in text]
    assert missing == [], f"{document} lacks these rows of the alert table"
