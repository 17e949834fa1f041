"""`Node.reload` and `Node.drain` in-process (issue 8 §2), with live connections on real sockets.

Each test starts a node from TOML on 127.0.0.1:0, opens real mTLS connections to it, and
then reloads a changed config (or drains): new handshakes use the new rules at once, live
connections whose peer no longer passes are closed, counted and logged, and a change that
needs a restart changes nothing at all.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing

import meshtls
from meshtls._config import parse_config
from meshtls._logs import record_fields
from meshtls._node import Node, ReloadError, needs_restart, open_node
from meshtls.testing import CA

from .test_health import FakeClock
from .test_node import write_svid

TD: Final = "example.org"
NODE: Final = f"spiffe://{TD}/node"
A: Final = f"spiffe://{TD}/client-a"
B: Final = f"spiffe://{TD}/client-b"
TARGET: Final = f"spiffe://{TD}/target"
WAIT: Final = 10.0


def toml(
    *,
    authorize: str = f'member_of = "{TD}"',
    policy: str = 'max_ttl = "1h"',
    node: str = "",
    expose: Mapping[int, str] | None = None,
    forward: Mapping[int, str] | None = None,
) -> str:
    """A node config on port 0: `expose` maps a backend port to its ``allow`` line,
    `forward` a peer port to its ``expect`` line."""
    text = f"""
[identity]
cert = "node.pem"
key = "node.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:0"
metrics = "off"
{node}

[policy]
{policy}

[authorize]
{authorize}
"""
    for backend, allow in (expose or {}).items():
        text += f'\n[[expose]]\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:{backend}"\n{allow}\n'
    for peer, expect in (forward or {}).items():
        text += f'\n[[forward]]\nlisten = "127.0.0.1:0"\npeer = "127.0.0.1:{peer}"\n{expect}\n'
    return text


class World:
    """One CA, the node's files in `directory`, and client identities."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = CA(TD, now=datetime.now(UTC) - timedelta(minutes=1))
        (directory / "bundle.pem").write_bytes(self.ca.bundle_pem)
        write_svid(directory, self.ca, "node", NODE, ttl=timedelta(minutes=10))

    def config(self, text: str) -> meshtls.NodeConfig:
        return parse_config(text, base_dir=self.directory)

    def source(
        self, spiffe_id: str, ttl: timedelta = timedelta(minutes=20)
    ) -> meshtls.StaticSource:
        return meshtls.StaticSource(self.ca.issue(spiffe_id, ttl=ttl).svid(), self.ca.bundle_set())


def port(node: Node, prefix: str) -> int:
    (name,) = (name for name in node.listeners if name.startswith(prefix))
    number: int = node.listeners[name][0].socket.getsockname()[1]
    return number


async def dial(
    world: World, port: int, spiffe_id: str, ttl: timedelta = timedelta(minutes=20)
) -> meshtls.MeshStream:
    with trio.fail_after(WAIT):
        return await meshtls.connect(
            "127.0.0.1",
            port,
            source=world.source(spiffe_id, ttl),
            authorize=meshtls.authorize_id(NODE),
        )


async def live(node: Node, count: int) -> None:
    """Until the node tracks `count` live connections (the server side runs in its own task)."""
    with trio.fail_after(WAIT):
        while node.live_connections != count:  # noqa: ASYNC110 - another task's socket I/O
            await trio.sleep(0.005)


async def echoes(stream: trio.abc.Stream, data: bytes = b"ping") -> None:
    """`stream` is alive: what we send comes back (through an echo backend or target)."""
    with trio.fail_after(WAIT):
        await stream.send_all(data)
        got = b""
        while len(got) < len(data):
            chunk = await stream.receive_some()
            assert chunk, "closed"
            got += chunk
    assert got == data


async def is_open(stream: meshtls.MeshStream) -> bool:
    """Whether the node keeps `stream` open (nothing arrives for a short while)."""
    with trio.move_on_after(0.2):
        try:
            await stream.receive_some()
        except trio.BrokenResourceError:
            return False
        return False
    return True


async def is_closed(stream: trio.abc.ReceiveStream) -> bool:
    with trio.fail_after(WAIT):
        try:
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:
            return True


def failures(node: Node, reason: str) -> float:
    value = node.registry.get_sample_value(
        "meshtls_peer_verification_failures_total", {"reason": reason}
    )
    return value or 0.0


def events(caplog: pytest.LogCaptureFixture, message: str) -> list[Mapping[str, object]]:
    return [record_fields(r) for r in caplog.records if r.getMessage() == message]


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A plaintext backend that echoes until its client closes."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some():
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def mesh_target(world: World) -> AsyncIterator[int]:
    """A `meshtls.serve` peer with id `TARGET` that echoes, for the node's forwards to reach."""

    async def echo(stream: meshtls.MeshStream) -> None:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                echo,
                0,
                host="127.0.0.1",
                source=world.source(TARGET),
                authorize=meshtls.authorize_id(NODE),
            )
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- [authorize]


async def test_reload_tightened_authorize_closes_the_live_peer_it_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    world = World(tmp_path)
    async with open_node(world.config(toml())) as node:
        mesh = port(node, "mesh")
        a, b = await dial(world, mesh, A), await dial(world, mesh, B)
        b_address = f"127.0.0.1:{b.socket.getsockname()[1]}"
        await live(node, 2)

        result = node.reload(world.config(toml(authorize=f'ids = ["{A}"]')))

        assert [(c.listener, c.spiffe_id, c.reason) for c in result.closed] == [
            ("mesh", B, "unauthorized")
        ]
        assert result.changed == ("[authorize] member_of", "[authorize] ids")
        assert await is_closed(b)
        await b.aclose()
        assert await is_open(a)
        await live(node, 1)
        assert failures(node, "unauthorized") == 1
        (closed,) = events(caplog, "closing a live connection whose peer no longer passes")
        assert closed["listener"] == "mesh"
        assert closed["spiffe_id"] == B
        assert closed["peer"] == b_address
        (summary,) = events(caplog, "config reloaded")
        assert summary["closed"] == 1
        assert summary["changed"] == "[authorize] member_of, [authorize] ids"

        again = await dial(world, mesh, B)  # a new handshake meets the new rule at once
        async with again:
            with pytest.raises(meshtls.PeerRejectedError):
                await again.receive_some()
        assert failures(node, "unauthorized") == 2
        await a.aclose()


async def test_a_live_peer_closed_by_a_reload_sees_its_stream_break_not_a_clean_end(
    tmp_path: Path,
) -> None:
    """A peer cut off for trust reasons must not take the end for a finished exchange:
    its stream breaks (a reset, no close_notify), as for any connection cut part-way."""
    world = World(tmp_path)
    async with open_node(world.config(toml())) as node:
        b = await dial(world, port(node, "mesh"), B)
        await live(node, 1)
        node.reload(world.config(toml(authorize=f'ids = ["{A}"]')))
        with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
            await b.receive_some()  # the node sent nothing before: the first read is the cut
        await b.aclose()


# ---------------------------------------------------------------- expose allow, forward expect


async def test_reload_expose_allow_and_forward_expect_apply_to_live_tunnels(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with echo_server() as backend, mesh_target(world) as target:
        before = toml(
            expose={backend: f'allow = ["{A}", "{B}"]'}, forward={target: f'expect = "{TARGET}"'}
        )
        after = toml(
            expose={backend: f'allow = ["{A}"]'},
            forward={target: f'expect = "spiffe://{TD}/someone-else"'},
        )
        async with open_node(world.config(before)) as node:
            expose, forward = port(node, "expose:"), port(node, "forward:")
            a, b = await dial(world, expose, A), await dial(world, expose, B)
            plain = await trio.open_tcp_stream("127.0.0.1", forward)
            for stream in (a, b, plain):
                await echoes(stream)
            await live(node, 3)

            result = node.reload(world.config(after))

            assert sorted((c.listener.split(":")[0], c.spiffe_id) for c in result.closed) == [
                ("expose", B),
                ("forward", TARGET),
            ]
            assert {c.reason for c in result.closed} == {"unauthorized"}
            assert await is_closed(b)
            assert await is_closed(plain)
            await b.aclose()
            await plain.aclose()
            await echoes(a)  # still allowed: the tunnel goes on
            assert failures(node, "unauthorized") == 2

            refused = await trio.open_tcp_stream("127.0.0.1", forward)  # new: new expect
            assert await is_closed(refused)
            await refused.aclose()
            await a.aclose()


# ---------------------------------------------------------------- [policy]


async def test_P_1_reload_tightened_max_ttl_closes_a_live_peer_over_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with open_node(world.config(toml())) as node:
        mesh = port(node, "mesh")
        short = await dial(world, mesh, A, ttl=timedelta(minutes=15))
        long = await dial(world, mesh, B, ttl=timedelta(minutes=50))
        await live(node, 2)

        result = node.reload(world.config(toml(policy='max_ttl = "30m"')))

        assert [(c.spiffe_id, c.reason) for c in result.closed] == [(B, "ttl_exceeded")]
        assert result.changed == ("[policy] max_ttl",)
        assert await is_closed(long)
        await long.aclose()
        assert await is_open(short)
        assert failures(node, "ttl_exceeded") == 1
        assert node.rotation.policy.max_ttl == timedelta(minutes=30)
        await short.aclose()


async def test_P_1_reload_refused_when_our_own_svid_fails_the_new_policy(tmp_path: Path) -> None:
    """All or nothing: the [authorize] change beside it is not applied either."""
    world = World(tmp_path)
    original = world.config(toml())
    async with open_node(original) as node:
        mesh = port(node, "mesh")
        b = await dial(world, mesh, B, ttl=timedelta(minutes=3))
        await live(node, 1)
        with pytest.raises(
            ReloadError, match=r"our SVID .*/node would fail the new \[policy\]: ttl_exceeded"
        ):
            node.reload(world.config(toml(policy='max_ttl = "5m"', authorize=f'ids = ["{A}"]')))
        assert node.config is original
        assert await is_open(b)
        await (await dial(world, mesh, B, ttl=timedelta(minutes=3))).aclose()  # old rule
        assert failures(node, "unauthorized") == 0
        await b.aclose()


async def test_L_9_reload_while_our_svid_has_expired_tightens_authorize_and_rereads_files(
    tmp_path: Path,
) -> None:
    """Our SVID expired 40 s ago (past the skew) and nothing renewed it: the node is not
    ready, and a SIGHUP is how the operator acts. The unchanged [policy] is not what fails
    our SVID, so the tighter [authorize] applies to the live peers, and the new identity
    files the operator put in place are read at once."""
    world = World(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    async with open_node(world.config(toml()), clock=clock) as node:
        mesh = port(node, "mesh")
        a, b = await dial(world, mesh, A), await dial(world, mesh, B)
        await live(node, 2)
        clock.now = node.identity().svid.not_after + timedelta(seconds=40)
        assert not node.readiness().ready

        result = node.reload(world.config(toml(authorize=f'ids = ["{A}"]')))

        assert [(c.spiffe_id, c.reason) for c in result.closed] == [(B, "unauthorized")]
        assert await is_closed(b)
        await b.aclose()
        write_svid(tmp_path, world.ca, "node", NODE, ttl=timedelta(minutes=30))
        assert node.reload(world.config(toml(authorize=f'ids = ["{A}"]'))).rotated
        assert node.readiness().ready  # the renewal came in with the reload
        assert await is_open(a)
        await a.aclose()


# ---------------------------------------------------------------- what needs a restart


async def test_reload_refuses_changes_that_need_a_restart_and_changes_nothing(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    original = world.config(toml())
    async with echo_server() as backend, open_node(original) as node:
        mesh = port(node, "mesh")
        b = await dial(world, mesh, B)
        await live(node, 1)
        wanted = toml(
            authorize=f'ids = ["{A}"]',
            node='handshake_timeout = "3s"',
            expose={backend: f'allow = ["{A}"]'},
        ).replace('listen = "127.0.0.1:0"\nmetrics', 'listen = "127.0.0.2:0"\nmetrics')
        with pytest.raises(ReloadError) as refused:
            node.reload(world.config(wanted))
        message = str(refused.value)
        for part in ("[node] listen", "[node] handshake_timeout", "[[expose]] 127.0.0.1:0 added"):
            assert part in message
        assert "[authorize]" not in message  # that one could be applied live, but is not
        assert "the running config stays in force" in message
        assert node.config is original
        assert await is_open(b)
        await (await dial(world, mesh, B)).aclose()  # the old [authorize] still rules
        await b.aclose()


def test_needs_restart_names_each_change_that_cannot_be_applied_live(tmp_path: Path) -> None:
    world = World(tmp_path)
    base = world.config(
        toml(expose={9: 'allow = ["spiffe://example.org/x"]'}, forward={7: f'expect = "{A}"'})
    )
    same_but_live = world.config(
        toml(
            authorize=f'ids = ["{A}"]',
            policy='max_ttl = "30m"',
            node='shutdown_timeout = "1s"',
            expose={9: f'allow = ["{B}"]'},
            forward={7: f'expect = "{B}"'},
        )
    )
    assert needs_restart(base, same_but_live) == []
    workload = parse_config(
        '[identity]\nworkload_api = "unix:///run/spire/agent.sock"\n', base_dir=tmp_path
    )
    assert needs_restart(base, workload)[0] == "[identity] form (files -> workload_api)"
    moved = world.config(
        toml(expose={10: 'allow = ["spiffe://example.org/x"]'}, forward={7: f'expect = "{A}"'})
    )
    assert needs_restart(base, moved) == ["[[expose]] 127.0.0.1:0 backend"]
    (tmp_path / "other.key").write_bytes((tmp_path / "node.key").read_bytes())
    other_key = world.config(toml().replace('key = "node.key"', 'key = "other.key"'))
    assert needs_restart(world.config(toml()), other_key) == ["[identity] key"]


# ---------------------------------------------------------------- identity files


async def test_reload_rereads_the_identity_files_at_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    config = world.config(toml())
    async with open_node(config) as node:
        old = node.identity().svid.leaf.serial_number
        write_svid(tmp_path, world.ca, "node", NODE, ttl=timedelta(minutes=10))
        result = node.reload(config)  # no checkpoint: the FileSource's poll has not run
        assert result.rotated
        assert result.changed == ()
        assert node.identity().svid.leaf.serial_number != old


# ---------------------------------------------------------------- drain


async def test_drain_refuses_new_connections_on_every_listener_while_a_live_one_finishes(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with echo_server() as backend, mesh_target(world) as target:
        config = world.config(
            toml(expose={backend: f'allow = ["{A}"]'}, forward={target: f'expect = "{TARGET}"'})
        )
        async with open_node(config) as node:
            ports = {name: port(node, name) for name in ("mesh", "expose:", "forward:")}
            a = await dial(world, ports["expose:"], A)
            await echoes(a)
            await live(node, 1)
            drained = trio.Event()

            async def drain() -> None:
                await node.drain()
                drained.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await trio.testing.wait_all_tasks_blocked()  # the drain waits: listeners closed
                assert not node.ready
                for number in ports.values():
                    with pytest.raises(OSError, match=r"Connection refused|all attempts"):
                        await trio.open_tcp_stream("127.0.0.1", number)  # not left hanging
                await echoes(a)  # the live tunnel goes on during the drain
                assert not drained.is_set()
                await a.send_eof()
                assert await is_closed(a)
                await a.aclose()
                with trio.fail_after(WAIT):
                    await drained.wait()
