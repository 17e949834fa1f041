"""The dialer pool's decisions (`meshtls._pool`), table-driven, without I/O."""

from __future__ import annotations

import random

import pytest

from meshtls._pool import (
    REPLACE_LEAD,
    STABLE,
    Dial,
    Fail,
    PeerState,
    Sleep,
    Use,
    Wait,
    backoff,
    connected,
    decide,
    dial_failed,
    dial_started,
    keeper_step,
    link_ended,
    new_peer,
    replace_at,
    replacement_failed,
    replacement_started,
)

CONNECTING = PeerState("connecting", 0.0, dials=1)
CONNECTED = PeerState("connected", 0.0, dials=1, connected_total=1)
BACKING_OFF = PeerState("backing_off", 0.0, attempt=1, retry_at=10.0, last_error="refused")


@pytest.mark.parametrize(
    ("state", "inbound", "now", "deadline", "expected"),
    [
        # not pooled: an inbound link or nothing
        (None, False, 0.0, 5.0, Fail("unknown_peer")),
        (None, True, 0.0, 5.0, Use("inbound")),
        # pooled and connected: the pool's link, even with an inbound one
        (CONNECTED, False, 0.0, 5.0, Use("pool")),
        (CONNECTED, True, 0.0, 5.0, Use("pool")),
        # single-flight: a second requester waits on the dial in flight, never dials
        (CONNECTING, False, 1.0, 5.0, Wait(5.0)),
        # while the pool has no link, a live inbound link from that id serves
        (CONNECTING, True, 1.0, 5.0, Use("inbound")),
        (BACKING_OFF, True, 1.0, 5.0, Use("inbound")),
        # backing off: wait when the retry is due by the deadline, fail fast when after
        (BACKING_OFF, False, 1.0, 10.0, Wait(10.0)),
        (BACKING_OFF, False, 1.0, 20.0, Wait(20.0)),
        (BACKING_OFF, False, 1.0, 9.99, Fail("unavailable")),
        # the deadline has passed
        (CONNECTING, False, 5.0, 5.0, Fail("timeout")),
        (BACKING_OFF, False, 12.0, 11.0, Fail("timeout")),
    ],
)
def test_decide(
    state: PeerState | None,
    inbound: bool,
    now: float,
    deadline: float,
    expected: Use | Wait | Fail,
) -> None:
    assert decide(state, inbound=inbound, now=now, deadline=deadline) == expected


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        (new_peer(0.0), 0.0, Dial()),
        (BACKING_OFF, 5.0, Sleep(10.0)),
        (BACKING_OFF, 10.0, Dial()),  # the backoff is over
        (BACKING_OFF, 11.0, Dial()),
        (link_ended(CONNECTED, 3.0, "drained", 99.0), 3.0, Dial()),
    ],
)
def test_keeper_step(state: PeerState, now: float, expected: Dial | Sleep) -> None:
    assert keeper_step(state, now) == expected


def test_a_failed_dial_backs_off_and_counts() -> None:
    state = dial_started(new_peer(0.0), 0.0)
    assert (state.phase, state.dials, state.since) == ("connecting", 1, 0.0)
    state = dial_failed(state, 2.0, "unauthorized: wrong id", 1.5)
    assert state == PeerState(
        "backing_off",
        2.0,
        attempt=1,
        retry_at=3.5,
        last_error="unauthorized: wrong id",
        dials=1,
        failures=1,
    )
    assert keeper_step(state, 3.0) == Sleep(3.5)
    state = dial_failed(dial_started(state, 3.5), 4.0, "refused", 3.0)
    assert (state.attempt, state.failures, state.dials, state.retry_at) == (2, 2, 2, 7.0)
    assert state.since == 4.0


def test_connected_resets_the_backoff_and_keeps_the_last_error() -> None:
    state = connected(dial_started(BACKING_OFF, 10.0), 10.5)
    assert (state.phase, state.since, state.attempt, state.retry_at) == ("connected", 10.5, 0, None)
    assert state.connected_total == 1
    assert state.last_error == "refused"  # history for /status, until the next failure


@pytest.mark.parametrize("reason", ["drained", "revoked", "rejected", "closed", "replaced"])
def test_reconnect_now_after_a_drain_revocation_or_clean_close(reason: str) -> None:
    state = link_ended(CONNECTED, 7.0, reason, 3.0)
    assert (state.phase, state.since, state.retry_at) == ("connecting", 7.0, None)
    assert (state.attempt, state.failures) == (0, 0)
    assert keeper_step(state, 7.0) == Dial()


def test_a_link_that_ends_at_once_backs_off_whatever_the_reason() -> None:
    state = link_ended(connected(CONNECTING, 7.0), 7.0 + STABLE / 2, "closed", 0.5)
    assert (state.phase, state.retry_at) == ("backing_off", 7.0 + STABLE / 2 + 0.5)
    assert state.last_error == "link ended: closed"


@pytest.mark.parametrize("reason", ["broken", "keepalive_timeout", "internal_error"])
def test_backoff_after_a_broken_link(reason: str) -> None:
    state = link_ended(CONNECTED, 7.0, reason, 0.75)
    assert (state.phase, state.retry_at, state.attempt, state.failures) == (
        "backing_off",
        7.75,
        1,
        1,
    )
    assert state.last_error == f"link ended: {reason}"
    assert keeper_step(state, 7.5) == Sleep(7.75)


def test_backoff_grows_exponentially_to_its_cap_within_equal_jitter() -> None:
    rng = random.Random(7)
    for attempt, step in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]):
        draws = [backoff(attempt, initial=0.5, cap=10.0, rng=rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws), (attempt, min(draws), max(draws))
        # jitter spreads the draws over the upper half, not one value
        assert max(draws) - min(draws) > step / 4
    assert backoff(10_000, initial=0.5, cap=10.0, rng=rng) <= 10.0  # no overflow


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    first = [backoff(a, initial=1.0, cap=30.0, rng=random.Random(3)) for a in range(6)]
    again = [backoff(a, initial=1.0, cap=30.0, rng=random.Random(3)) for a in range(6)]
    assert first == again


@pytest.mark.parametrize(
    ("attempt", "initial", "cap"), [(-1, 1.0, 2.0), (0, 0.0, 2.0), (0, 3.0, 2.0)]
)
def test_backoff_refuses_bad_arguments(attempt: int, initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        backoff(attempt, initial=initial, cap=cap, rng=random.Random(0))


@pytest.mark.parametrize(
    ("connected_at", "closes_at", "expected"),
    [
        (0.0, 3600.0, 3600.0 - REPLACE_LEAD),  # a long link: REPLACE_LEAD ahead
        (0.0, 20.0, 15.0),  # a short one: a quarter of its life ahead
        (5.0, 5.0, 5.0),  # closes at once: never before it was made
    ],
)
def test_replace_at(connected_at: float, closes_at: float, expected: float) -> None:
    assert replace_at(connected_at, closes_at) == expected


def test_a_replacement_dial_counts_and_keeps_the_link_connected() -> None:
    state = replacement_started(CONNECTED)
    assert (state.phase, state.dials, state.since) == ("connected", 2, 0.0)
    state = replacement_failed(state, "refused")
    assert (state.phase, state.failures, state.last_error, state.attempt) == (
        "connected",
        1,
        "refused",
        0,
    )
