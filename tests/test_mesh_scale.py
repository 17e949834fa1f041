"""Many dials at once (issue 10): each pool runs at most ``[mesh] max_dials`` dials, so a
mesh formed all at once makes each link with one dial, none lost to ``upgrade_timeout``.

Without the bound every dial of every node starts at once; all of them share one event
loop, each step of each upgrade waits behind every other link's handshake, and upgrades
miss their window and are redialled (docs/bench/mesh.md).
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import trio

from meshtls._bench_mesh import form_mesh
from meshtls._config import MeshSettings
from meshtls._node import open_node

from .test_mesh_pool import World, until


async def test_a_mesh_formed_all_at_once_dials_each_link_once(tmp_path: Path) -> None:
    # 16 nodes, 240 links, every add_peer at once, and an upgrade window of 0.25 s: unbounded
    # (max_dials 1024) this took 5 s and 691 handshakes here, with 437 failed dials; two
    # dials per pool form it in under a second with one handshake per link.
    nodes, links = 16, 16 * 15
    settings = MeshSettings(max_dials=2, upgrade_timeout=timedelta(seconds=0.25))
    result = await form_mesh(tmp_path, nodes, mesh_settings=settings)
    assert result.error is None
    assert result.dials == {"ok": links}  # no failed dial, so no redial
    assert result.links_ended == {}  # no upgrade_timeout, no broken link on either end
    assert (result.client_ok, result.server_ok, result.failed) == (links, links, 0)


async def test_a_pool_has_at_most_max_dials_dials_in_flight(tmp_path: Path) -> None:
    # Eight peers at one silent address: each dial hangs in its handshake until
    # dial_timeout. The pool holds three at a time, and a place is given back when a dial
    # fails, so the others get theirs in turn.
    open_now, most, accepted = 0, 0, 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal open_now, most, accepted
        open_now, accepted = open_now + 1, accepted + 1
        most = max(most, open_now)
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            open_now -= 1

    world = World(tmp_path)
    config = world.config(
        "a",
        "spiffe://example.org/node/a",
        mesh={
            "max_dials": "3",
            "dial_timeout": '"300ms"',
            "backoff_initial": '"1s"',
            "backoff_max": '"2s"',
        },
    )
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        address = f"127.0.0.1:{listener.socket.getsockname()[1]}"
        async with open_node(config) as node:
            for index in range(8):
                node.add_peer(f"spiffe://example.org/node/p{index}", address)
            await until(lambda: accepted >= 3)
            await trio.sleep(0.1)
            assert (open_now, accepted) == (3, 3)  # the other five wait for a place
            states = sorted(peer.state for peer in node.peers())
            assert states == ["connecting"] * 8
            await until(lambda: accepted >= 8)  # each got its turn as earlier dials failed
            assert most == 3
            failed = [p for p in node.peers() if p.last_error is not None]
            assert failed
            assert all("dial_timeout" in str(p.last_error) for p in failed)
        nursery.cancel_scope.cancel()
