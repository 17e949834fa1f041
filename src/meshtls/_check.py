"""`meshtls check`: dial a peer, verify it, and wait for its verdict on us.

TLS 1.3 lets the client finish its handshake before the server has judged the
client's certificate, so a clean handshake alone proves nothing about whether the
server accepts us. `check_peer` therefore waits `wait` seconds after the handshake:
a TLS alert or an abrupt close in that time is the server rejecting us; application
data, a clean close_notify, or silence for the whole window is acceptance.

The key-exchange group the handshake settled on (``X25519MLKEM768``, or ``X25519`` with
a peer that has no ML-KEM) is part of the result, from `MeshStream.group`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from ._authorize import Authorizer
from ._errors import HandshakeError, Reason
from ._identity import IdentitySource
from ._policy import ValidationPolicy
from ._stream import PeerRejectedError, connect
from ._svid import VerifiedPeer


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What `check_peer` found. ``reason`` is None when the peer and its verdict were good.
    ``group`` is the key-exchange group negotiated, None when our side of the handshake
    did not finish."""

    peer: VerifiedPeer | None
    handshake_seconds: float
    reason: Reason | None
    detail: str
    group: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def time_left(self, now: datetime | None = None) -> timedelta | None:
        if self.peer is None:
            return None
        return self.peer.not_after - (now or datetime.now(UTC))


async def check_peer(
    host: str,
    port: int,
    *,
    source: IdentitySource,
    authorize: Authorizer,
    policy: ValidationPolicy | None = None,
    wait: float = 1.0,
    groups: str | None = None,
) -> CheckResult:
    """Connect, verify and authorize the peer, then wait for its verdict on us.

    `groups` are the key-exchange groups to offer (None: the engine's default).
    Raises OSError only when the TCP connection cannot be made.
    """
    start = time.perf_counter()
    try:
        stream = await connect(
            host, port, source=source, authorize=authorize, policy=policy, groups=groups
        )
    except HandshakeError as exc:
        return CheckResult(None, time.perf_counter() - start, exc.reason, exc.detail)
    elapsed = time.perf_counter() - start
    group = stream.group

    def result(reason: Reason | None, detail: str) -> CheckResult:
        return CheckResult(stream.peer, elapsed, reason, detail, group)

    async with stream:
        try:
            with trio.move_on_after(wait):
                data = await stream.receive_some()
                if data:
                    return result(None, "the peer sent data: it accepted us")
                return result(None, "the peer closed cleanly after accepting us")
        except PeerRejectedError as exc:
            return result(exc.reason, f"the peer rejected us: {exc}")
        except trio.BrokenResourceError as exc:
            return result("protocol_error", f"the connection broke: {exc}")
    return result(None, f"no rejection within {wait:g}s after the handshake")
