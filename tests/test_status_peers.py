"""``/readyz`` detail and ``/status`` peers: pure functions of a `NodeState` with pooled peers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import meshtls
from meshtls._config import MeshSettings, parse_config
from meshtls._node import needs_restart
from meshtls._pool import PeerStatus
from meshtls._status import Readiness, readiness, status

from .test_health import T0, identity, state

__all__ = ["identity"]  # the fixture, imported for this module's tests

B = meshtls.SpiffeId.parse("spiffe://example.org/node/b")
C = meshtls.SpiffeId.parse("spiffe://example.org/node/c")


def peer(sid: meshtls.SpiffeId, phase: str, **changes: object) -> PeerStatus:
    base = PeerStatus(
        id=sid,
        address="10.0.0.2:8443",
        state="connected",
        since=T0,
        last_error=None,
        retry_at=None,
        dials=1,
        failures=0,
        connected_total=1,
    )
    return replace(base, state=phase, **changes)  # type: ignore[arg-type]


def test_readyz_names_connected_peers_and_readiness_ignores_them(
    identity: meshtls.Identity,
) -> None:
    now = T0 + timedelta(minutes=1)
    assert readiness(state(identity, now)) == Readiness(True)  # no peers: no detail
    down = (peer(B, "connected"), peer(C, "backing_off"))
    assert readiness(state(identity, now, peers=down)) == Readiness(
        True, None, "peers 1/2 connected"
    )
    none_up = (peer(B, "connecting"), peer(C, "backing_off"))
    assert readiness(state(identity, now, peers=none_up)).ready  # peers never decide it
    draining = readiness(state(identity, now, phase="draining", peers=down))
    assert (draining.ready, draining.detail) == (False, "peers 1/2 connected")


def test_status_lists_each_peer(identity: meshtls.Identity) -> None:
    now = T0 + timedelta(minutes=1)
    backing = peer(
        C,
        "backing_off",
        last_error="unauthorized: wrong id",
        retry_at=now + timedelta(seconds=2),
        dials=3,
        failures=3,
        connected_total=0,
    )
    document = status(state(identity, now, peers=(backing,)))
    assert document["peers"] == [
        {
            "id": str(C),
            "address": "10.0.0.2:8443",
            "state": "backing_off",
            "since": "2030-01-01T00:00:00Z",
            "last_error": "unauthorized: wrong id",
            "retry_at": "2030-01-01T00:01:02Z",
            "dials": 3,
            "failures": 3,
            "connected_total": 0,
        }
    ]
    assert status(state(identity, now))["peers"] == []


def test_a_mesh_change_needs_a_restart_and_peers_do_not(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    base = '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://example.org/node/a"\n'
    old = parse_config(base, base_dir=tmp_path)
    new = parse_config(
        base + '[mesh]\nqueue_size = 8\n[[peers]]\nid = "spiffe://example.org/node/b"\n'
        'address = "10.0.0.2:8443"\n',
        base_dir=tmp_path,
    )
    assert needs_restart(old, new) == ["[mesh] queue_size"]
    assert needs_restart(old, replace(new, mesh=MeshSettings())) == []
