"""Message channels between two real nodes: backpressure reaches `node.send` as a timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import meshtls
from meshtls._node import open_node
from tests.test_mesh_pool import A, B, World, connected, receive, until
from tests.test_node import port


async def test_a_slow_consumer_makes_node_send_time_out_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """b holds one message and nobody reads it: a's third send cannot be acknowledged and
    raises SendError("timeout") at its deadline. Once b reads, every message arrives, the
    timed-out one too (at-least-once: the sender was told it is unconfirmed, not lost)."""
    world = World(tmp_path)
    with trio.fail_after(20):
        async with (
            open_node(world.config("b", B, mesh={"queue_size": "1"})) as b,
            open_node(world.config("a", A, peers={B: port(b, "mesh")})) as a,
        ):
            await until(connected(a, B))
            await a.send(B, b"1")  # queued in b's inbox
            await a.send(B, b"2")  # held by b's link, ahead of the full inbox
            started = trio.current_time()
            with pytest.raises(meshtls.SendError) as late:
                await a.send(B, b"3", timeout=0.3)
            assert late.value.reason == "timeout"
            assert 0.3 <= trio.current_time() - started < 2
            assert [str(p.id) for p in a.peers() if p.state == "connected"] == [B]
            got = [(await receive(b)).data for _ in range(3)]
            assert got == [b"1", b"2", b"3"]
            await a.send(B, b"4")  # the link survived the stall
            assert (await receive(b)).data == b"4"
