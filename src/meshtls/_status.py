"""What ``/readyz`` and ``/status`` say about a node: pure functions of a `NodeState`.

Theory of operation. The node takes a `NodeState` snapshot when a probe asks (its clock,
its phase, the active identity, its listeners and live connections, its last rotation);
`readiness` and `status` read only that snapshot, so they are tested without sockets,
tasks or a node. Nothing here does I/O or reads a clock.

Readiness is the truth a peer would see: a node is ready only while it runs (started,
not draining) *and* holds an SVID it can present. From our SVID's ``not_after`` on, no
peer accepts it, so ``/readyz`` is 503 from that instant, whatever the rotation says, and
200 again as soon as a valid SVID is swapped in. Likewise while our SVID no longer
verifies against our own bundles (a root that left them: the rotation keeps the SVID, as
there is no other, and says why in ``svid_problem``). `lifetime_marks` gives the two moments
the node logs about: 80 % of the lifetime (warning) and expiry (error).

The status document names public facts only: ids, serial numbers, SHA-256 fingerprints
and dates of certificates, listener addresses and counts. No private key, no key
material, no PEM.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ._boundary import clamp_time
from ._duration import format_duration, format_time
from ._identity import Identity
from ._pool import PeerStatus
from ._svid import X509Svid

__all__ = [
    "WARN_FRACTION",
    "Json",
    "LastRotation",
    "NodeState",
    "Phase",
    "Readiness",
    "lifetime_marks",
    "readiness",
    "status",
]

#: A JSON value, as `json.dumps` takes it.
Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]

#: Where the node is in its life: waiting for its identity and binding its listeners,
#: serving, or draining on its way out.
Phase = Literal["starting", "running", "draining"]

#: The share of our SVID's lifetime after which, still not renewed, it is warned about.
WARN_FRACTION: Final = 0.8


@dataclass(frozen=True, slots=True)
class LastRotation:
    """The last identity swap after the first: when, and whether the SVID and bundles changed."""

    time: datetime
    svid_changed: bool
    bundles_changed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeState:
    """A snapshot of what a node's health depends on, taken by the node at each probe.

    ``waiting_for`` names the identity source while the first identity is awaited;
    ``identity`` is None until then. ``svid_problem`` says why peers holding our bundles
    would refuse our SVID for a reason other than its dates (None while it verifies);
    ``max_age`` is the policy's (our peers refuse our SVID once older).
    ``listeners`` maps each listener's name to its bound address; ``connections`` maps
    the names of the listeners that carry verified connections to how many are live now.
    """

    now: datetime
    phase: Phase
    waiting_for: str | None
    identity: Identity | None
    listeners: Mapping[str, str]
    connections: Mapping[str, int]
    rotations: int
    last_rotation: LastRotation | None
    svid_problem: str | None = None
    max_age: timedelta | None = None
    peers: Sequence[PeerStatus] = ()


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the node should get traffic; ``reason`` says why not (None when ready).
    ``detail`` adds what does not decide readiness: how many pooled peers are connected."""

    ready: bool
    reason: str | None = None
    detail: str | None = None


def readiness(state: NodeState) -> Readiness:
    """Ready only while running with an SVID that has not expired; else the reason. The
    pooled peers do not decide it (a peer being down is no reason to refuse traffic); the
    detail names how many are connected."""
    verdict = _readiness(state)
    if not state.peers:
        return verdict
    up = sum(1 for peer in state.peers if peer.state == "connected")
    return Readiness(verdict.ready, verdict.reason, f"peers {up}/{len(state.peers)} connected")


def _readiness(state: NodeState) -> Readiness:
    if state.phase == "draining":
        return Readiness(False, "draining: the node is shutting down")
    if state.identity is None:
        source = state.waiting_for or "its identity source"
        return Readiness(False, f"waiting for the first identity from {source}")
    svid = state.identity.svid
    if state.now >= svid.not_after:
        ago = seconds_expired(svid, state.now)
        return Readiness(
            False,
            f"our SVID {svid.spiffe_id} expired at {format_time(svid.not_after)} ({ago}s ago) and"
            " no renewal came: no valid SVID to present",
        )
    if state.max_age is not None and state.now - svid.not_before > state.max_age:
        return Readiness(
            False,
            f"our SVID {svid.spiffe_id} is older than [policy] max_age"
            f" ({format_duration(state.max_age)}): peers that hold that policy refuse it",
        )
    if state.svid_problem is not None:
        return Readiness(
            False,
            f"our SVID {svid.spiffe_id} does not verify against our bundles"
            f" ({state.svid_problem}): peers that hold them refuse it",
        )
    if state.phase == "starting":
        return Readiness(False, "starting: opening the listeners")
    return Readiness(True)


def lifetime_marks(svid: X509Svid, max_age: timedelta | None = None) -> tuple[datetime, datetime]:
    """When our SVID passes `WARN_FRACTION` of its usable life, and when that ends: its
    ``not_after``, or ``not_before + max_age`` when the policy's `max_age` ends it sooner."""
    not_before, end = svid.not_before, svid.not_after
    if max_age is not None and max_age < end - not_before:
        end = not_before + max_age
    return not_before + (end - not_before) * WARN_FRACTION, end


def seconds_left(svid: X509Svid, now: datetime) -> int:
    """Whole seconds until `svid` expires at `now` (negative once expired)."""
    return math.floor((svid.not_after - now).total_seconds())


def seconds_expired(svid: X509Svid, now: datetime) -> int:
    """Whole seconds since `svid` expired, at `now` (negative before)."""
    return math.floor((now - svid.not_after).total_seconds())


def status(state: NodeState) -> dict[str, Json]:
    """The ``/status`` document (README "Health and status" describes every key)."""
    verdict = readiness(state)
    identity = state.identity
    return {
        "ready": verdict.ready,
        "reason": verdict.reason,
        "phase": state.phase,
        "time": format_time(state.now),
        "svid": None if identity is None else _svid(identity.svid, state.now),
        "bundles": {} if identity is None else _bundles(identity),
        "listeners": dict(state.listeners),
        "connections": dict(state.connections),
        "rotations": state.rotations,
        "last_rotation": _rotation(state.last_rotation),
        "peers": [_peer(peer) for peer in state.peers],
    }


def _peer(peer: PeerStatus) -> dict[str, Json]:
    return {
        "id": str(peer.id),
        "address": peer.address,
        "state": peer.state,
        "since": format_time(peer.since),
        "last_error": peer.last_error,
        "retry_at": None if peer.retry_at is None else format_time(peer.retry_at),
        "dials": peer.dials,
        "failures": peer.failures,
        "connected_total": peer.connected_total,
    }


def _svid(svid: X509Svid, now: datetime) -> dict[str, Json]:
    leaf = svid.leaf
    return {
        "spiffe_id": str(svid.spiffe_id),
        "serial": format(leaf.serial_number, "x"),
        "sha256": _fingerprint(leaf),
        "not_before": format_time(svid.not_before),
        "not_after": format_time(svid.not_after),
        "seconds_left": seconds_left(svid, now),
    }


def _bundles(identity: Identity) -> dict[str, Json]:
    return {
        str(trust_domain): [_root(root) for root in bundle.authorities]
        for trust_domain, bundle in identity.bundles.items()
    }


def _root(root: x509.Certificate) -> dict[str, Json]:
    try:
        subject = root.subject.rfc4514_string()
    except Exception:  # a name cryptography cannot render: say so, keep the rest
        subject = "(unreadable)"
    return {
        "subject": subject,
        "sha256": _fingerprint(root),
        "not_after": format_time(clamp_time(root.not_valid_after_utc)),
    }


def _rotation(last: LastRotation | None) -> Json:
    if last is None:
        return None
    return {
        "time": format_time(last.time),
        "svid": "new" if last.svid_changed else "kept",
        "bundles": "changed" if last.bundles_changed else "kept",
    }


def _fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
