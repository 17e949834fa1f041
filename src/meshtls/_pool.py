"""The dialer pool's decisions: plain functions over plain values, no I/O, no trio.

Theory of operation. The node keeps one *keeper* task per pooled peer (``[[peers]]`` and
`Node.add_peer`). The keeper alone dials that peer, so dialing is single-flight by
construction: a sender never dials, it asks `decide` what to do with the peer's
`PeerState` and either uses the link, waits for the keeper's next change, or fails at once.
As httpcore's connection pool does, every choice is made here and the I/O happens
afterwards, in `meshtls._node`:

- `keeper_step`: dial now, or sleep until the backoff ends.
- `dial_started`, `dial_failed`, `connected`, `link_ended`: the state after each event.
  A failed dial backs off (`backoff`: exponential, equal jitter, capped). A link that
  ends for a reason the peer's next connection will not repeat (drained at rotation,
  closed for a revoked certificate, closed cleanly) is redialled at once; a broken one
  backs off from the first step, as a restarting peer is not back yet.
- `decide`: what a sender does: `Use` the pooled (or inbound) link, `Wait` for the dial in
  flight or the retry due before its deadline, or `Fail` with the `SendError` reason
  (``unknown_peer``; ``unavailable`` when the next retry is after its deadline).
- `replace_at`: when a connected link's replacement is dialled (make-before-break at
  rotation), a little before the link must close.

Times are floats on one monotonic clock (Trio's, in the node); the node turns them into
dates for `/status`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from ._spiffeid import SpiffeId

Phase = Literal["connecting", "connected", "backing_off"]

#: The longest a connected link's replacement is dialled ahead of its close.
REPLACE_LEAD: Final = 10.0
#: Link-end reasons after which the peer is redialled at once: the next connection does not
#: meet the same fate (our or its certificate rotated; a revoked peer presents a new SVID).
RECONNECT_NOW: Final = frozenset({"drained", "revoked", "rejected", "closed", "replaced"})
#: A link that ends sooner than this after it was made backs off, whatever the reason: a
#: peer that accepts and at once closes cannot drive the keeper into a hot loop.
STABLE: Final = 1.0


@dataclass(frozen=True, slots=True)
class PeerState:
    """One pooled peer as the keeper last left it.

    `attempt` counts the failures since the last good link (the backoff's exponent);
    `retry_at` is set while backing off; `since` is when `phase` was entered.
    """

    phase: Phase
    since: float
    attempt: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    dials: int = 0
    failures: int = 0
    connected_total: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One pooled peer, as `Node.peers` and ``/status`` show it (dates on the node's clock).

    `state` and `since`: where the peer's keeper is and since when; `last_error`: the last
    dial or link failure, one line (kept after a reconnect, as history); `retry_at`: when
    the next dial is due, while backing off; `dials`, `failures` and `connected_total`
    count dials begun, failures (dials and broken links) and links made.
    """

    id: SpiffeId
    address: str
    state: Phase
    since: datetime
    last_error: str | None
    retry_at: datetime | None
    dials: int
    failures: int
    connected_total: int


def new_peer(now: float) -> PeerState:
    """A peer just added: its keeper dials at once."""
    return PeerState("connecting", now)


def backoff(attempt: int, *, initial: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first failure).

    Exponential (`initial` doubled per attempt) and capped at `cap`, then jittered with
    *equal jitter*: half the step plus a uniform draw over the other half, so a delay is
    never below half its step (no hot loop) and peers restarted together spread out.
    """
    if attempt < 0 or initial <= 0 or cap < initial:
        raise ValueError(f"bad backoff: attempt {attempt}, initial {initial}, cap {cap}")
    step = cap if attempt >= 64 else min(cap, initial * 2.0**attempt)
    half = step / 2
    return half + rng.uniform(0.0, half)


# ---------------------------------------------------------------- the keeper


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial the peer now."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Nothing to do before `until` (the end of the backoff)."""

    until: float


def keeper_step(state: PeerState, now: float) -> Dial | Sleep:
    """What the keeper does next: sleep while backing off, else dial."""
    if state.phase == "backing_off" and state.retry_at is not None and state.retry_at > now:
        return Sleep(state.retry_at)
    return Dial()


def dial_started(state: PeerState, now: float) -> PeerState:
    """A dial began: ``connecting`` (kept since the last phase change if already so)."""
    since = state.since if state.phase == "connecting" else now
    return replace(state, phase="connecting", since=since, retry_at=None, dials=state.dials + 1)


def dial_failed(state: PeerState, now: float, error: str, delay: float) -> PeerState:
    """A dial failed with `error` (one line): back off for `delay` seconds (from `backoff`
    at ``state.attempt``)."""
    return replace(
        state,
        phase="backing_off",
        since=now,
        retry_at=now + delay,
        attempt=state.attempt + 1,
        last_error=error,
        failures=state.failures + 1,
    )


def connected(state: PeerState, now: float) -> PeerState:
    """A link is up: the backoff starts afresh."""
    return replace(
        state,
        phase="connected",
        since=now,
        attempt=0,
        retry_at=None,
        connected_total=state.connected_total + 1,
    )


def link_ended(state: PeerState, now: float, reason: str, delay: float) -> PeerState:
    """The connected link ended for `reason`: redial now for a reason in `RECONNECT_NOW`
    once the link had lived `STABLE` seconds, else back off for `delay` (from `backoff` at
    ``state.attempt``) and keep the reason as the last error."""
    if reason in RECONNECT_NOW and now - state.since >= STABLE:
        return replace(state, phase="connecting", since=now, retry_at=None)
    return replace(
        state,
        phase="backing_off",
        since=now,
        retry_at=now + delay,
        attempt=state.attempt + 1,
        last_error=f"link ended: {reason}",
        failures=state.failures + 1,
    )


def replacement_started(state: PeerState) -> PeerState:
    """A replacement for the connected link is being dialled: a dial, no change of phase
    (a failed one is a failure that changes nothing else: the old link still serves)."""
    return replace(state, dials=state.dials + 1)


def replacement_failed(state: PeerState, error: str) -> PeerState:
    """The replacement dial failed with `error`: counted, kept as the last error."""
    return replace(state, failures=state.failures + 1, last_error=error)


def replace_at(connected_at: float, closes_at: float) -> float:
    """When to dial a link's replacement: `REPLACE_LEAD` before `closes_at`, or a quarter
    of the link's life before it for a short one; never before it was made."""
    lead = min(REPLACE_LEAD, (closes_at - connected_at) / 4)
    return max(connected_at, closes_at - lead)


# ---------------------------------------------------------------- a sender


@dataclass(frozen=True, slots=True)
class Use:
    """Send on the pooled link (``"pool"``) or on a live inbound link (``"inbound"``)."""

    via: Literal["pool", "inbound"]


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for the keeper's next change, at most until `until` (the sender's deadline)."""

    until: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise `SendError` with `reason` now."""

    reason: Literal["unknown_peer", "unavailable", "timeout"]


def decide(
    state: PeerState | None, *, inbound: bool, now: float, deadline: float
) -> Use | Wait | Fail:
    """What a sender to one peer does now.

    `state` is the peer's pool state (None: not pooled); `inbound` says a live link that
    peer dialled to us exists. A pooled link is preferred; a live inbound link is used
    while the pool has none. A sender waits for a dial in flight (single-flight: it never
    dials itself) and for a retry due by its `deadline`; it fails at once, ``unavailable``,
    when the next retry comes after the deadline, and ``timeout`` once the deadline passed.
    """
    if state is None:
        return Use("inbound") if inbound else Fail("unknown_peer")
    if state.phase == "connected":
        return Use("pool")
    if inbound:
        return Use("inbound")
    if now >= deadline:
        return Fail("timeout")
    if state.phase == "backing_off" and state.retry_at is not None and state.retry_at > deadline:
        return Fail("unavailable")
    return Wait(deadline)
