"""The node's bounds from its config: the mesh listener's connection cap, the tunnels' dial
deadlines, and the node's clock reaching its tunnels (issue 7, item 4).

`serve`, `expose` and `forward` take these as arguments (tests/test_stream.py and
tests/test_tunnel.py test them there); these tests check that `[node] max_connections`,
`[[expose]] connect_timeout` and `[[forward]] connect_timeout` reach them through a
running node, and that the node's injected clock judges its tunnels' peers.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls import ConfigError
from meshtls._config import (
    ExposeSettings,
    FileIdentity,
    ForwardSettings,
    NodeConfig,
    NodeSettings,
    parse_config,
)
from meshtls._spiffeid import SpiffeId
from meshtls.testing import CA

from .hostile_identity import Files, write_identity

NODE = "spiffe://example.org/node"
CLIENT = "spiffe://example.org/client"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def made_files(directory: Path, now: datetime) -> Files:
    directory.mkdir(exist_ok=True)
    files = Files(directory, CA("example.org", now=now), CA("other.org", now=now))
    write_identity(files, NODE)
    return files


def config(files: Files, *, max_connections: int = 1024) -> NodeConfig:
    return NodeConfig(
        identity=FileIdentity(cert=files.cert, key=files.key, bundle=files.bundle),
        node=NodeSettings(
            listen=("127.0.0.1", 0),
            metrics=None,
            max_connections=max_connections,
        ),
    )


def port_of(node: meshtls.Node, name: str) -> int:
    return int(node.listeners[name][0].socket.getsockname()[1])


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def read_until_end(stream: trio.abc.ReceiveStream) -> tuple[bytes, str]:
    """Everything until the stream ends, and how: "eof" (clean) or "reset"."""
    received = b""
    try:
        while data := await stream.receive_some():
            received += data
    except (trio.BrokenResourceError, OSError):
        return received, "reset"
    return received, "eof"


@asynccontextmanager
async def mesh_client(
    node: meshtls.Node, files: Files, *, now: datetime | None = None
) -> AsyncIterator[meshtls.MeshStream]:
    source = meshtls.StaticSource(files.ca.issue(CLIENT).svid(), node.contexts().bundles)
    stream = await meshtls.connect(
        "127.0.0.1",
        port_of(node, "mesh"),
        source=source,
        authorize=meshtls.authorize_id(NODE),
        clock=(lambda: now) if now is not None else None,
    )
    async with stream:
        yield stream


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port whose TCP connects never complete: backlog 0, already taken once."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


@asynccontextmanager
async def tcp_server(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        yield int(listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- the config keys


def test_the_bound_keys_parse(tmp_path: Path) -> None:
    text = """
[identity]
local_ca = "ca"
spiffe_id = "spiffe://example.org/node"

[node]
listen = "127.0.0.1:0"
metrics = "off"
max_connections = 7

[[expose]]
listen = "127.0.0.1:0"
backend = "127.0.0.1:9000"
connect_timeout = "3s"

[[forward]]
listen = "127.0.0.1:0"
peer = "127.0.0.1:8600"
expect = "spiffe://example.org/server"
connect_timeout = "250ms"
"""
    loaded = parse_config(text, base_dir=tmp_path)
    assert loaded.node.max_connections == 7
    assert loaded.expose[0].connect_timeout == timedelta(seconds=3)
    assert loaded.forward[0].connect_timeout == timedelta(milliseconds=250)
    defaults = parse_config(text.replace("max_connections = 7\n", ""), base_dir=tmp_path)
    assert defaults.node.max_connections == 1024


@pytest.mark.parametrize(
    ("table", "line", "fragment"),
    [
        ("[node]", "max_connections = 0", "max_connections"),
        ("[node]", 'max_connections = "many"', "max_connections"),
        ("[[expose]]", 'connect_timeout = "0s"', "connect_timeout"),
        ("[[forward]]", 'connect_timeout = "soon"', "connect_timeout"),
    ],
)
def test_bad_bounds_are_one_line_naming_the_key(
    tmp_path: Path, table: str, line: str, fragment: str
) -> None:
    tables = {
        "[node]": '[node]\nlisten = "127.0.0.1:0"\n',
        "[[expose]]": '[[expose]]\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:9000"\n',
        "[[forward]]": '[[forward]]\nlisten = "127.0.0.1:0"\npeer = "127.0.0.1:8600"\n'
        'expect = "spiffe://example.org/server"\n',
    }
    text = '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://example.org/node"\n'
    text += tables[table] + line + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, base_dir=tmp_path, source="node.toml")
    message = str(info.value)
    assert "\n" not in message
    assert table in message
    assert fragment in message


def test_bounds_built_by_hand_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        NodeSettings(max_connections=0)
    expect = SpiffeId.parse("spiffe://example.org/server")
    with pytest.raises(ConfigError, match="connect_timeout"):
        ForwardSettings(
            listen=("127.0.0.1", 0),
            peer=("127.0.0.1", 1),
            expect=expect,
            connect_timeout=timedelta(0),
        )
    with pytest.raises(ConfigError, match="connect_timeout"):
        ExposeSettings(
            listen=("127.0.0.1", 0),
            backend=("127.0.0.1", 1),
            connect_timeout=timedelta(seconds=-1),
        )


# ---------------------------------------------------------------- through a running node


async def test_node_max_connections_caps_the_mesh_listener(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """`[node] max_connections = 1`: a second peer, verified while the first is connected,
    is reset (never a clean EOF); once the first leaves, the next one is served."""
    files = made_files(tmp_path, datetime.now(UTC))
    async with (
        meshtls.open_node(config(files, max_connections=1), handler=echo) as node,
        mesh_client(node, files) as first,
    ):
        await first.send_all(b"one")
        assert await first.receive_some() == b"one"
        async with mesh_client(node, files) as second:
            with trio.fail_after(10):
                received, ended = await read_until_end(second)
        assert (received, ended) == (b"", "reset")
        await first.aclose()
        with trio.fail_after(10):
            while node.live_connections:  # until the first connection's handler has ended
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        async with mesh_client(node, files) as third:
            await third.send_all(b"three")
            assert await third.receive_some() == b"three"


async def test_expose_connect_timeout_comes_from_the_config(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """`[[expose]] connect_timeout = "3s"`: a backend that never accepts resets the mTLS
    client exactly 3 s (Trio time) after its handshake."""
    files = made_files(tmp_path, datetime.now(UTC))
    with black_hole() as backend:
        exposed = ExposeSettings(
            listen=("127.0.0.1", 0),
            backend=("127.0.0.1", backend),
            connect_timeout=timedelta(seconds=3),
        )
        settings = replace(config(files), expose=(exposed,))
        async with meshtls.open_node(settings) as node:
            name = next(n for n in node.listeners if n.startswith("expose:"))
            source = meshtls.StaticSource(files.ca.issue(CLIENT).svid(), node.contexts().bundles)
            stream = await meshtls.connect(
                "127.0.0.1",
                port_of(node, name),
                source=source,
                authorize=meshtls.authorize_id(NODE),
            )
            started = trio.current_time()
            async with stream:
                with trio.fail_after(60):
                    _, ended = await read_until_end(stream)
            waited = trio.current_time() - started
    assert ended == "reset"
    assert waited == pytest.approx(3.0, abs=0.1)


async def test_forward_connect_timeout_comes_from_the_config(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """`[[forward]] connect_timeout = "4s"`: a peer that accepts TCP and never answers the
    handshake gets the plaintext client reset exactly 4 s (Trio time) after it connected."""
    files = made_files(tmp_path, datetime.now(UTC))

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with tcp_server(silent) as peer:
        forwarded = ForwardSettings(
            listen=("127.0.0.1", 0),
            peer=("127.0.0.1", peer),
            expect=SpiffeId.parse("spiffe://example.org/server"),
            connect_timeout=timedelta(seconds=4),
        )
        settings = replace(config(files), forward=(forwarded,))
        async with meshtls.open_node(settings) as node:
            name = next(n for n in node.listeners if n.startswith("forward:"))
            client = await trio.open_tcp_stream("127.0.0.1", port_of(node, name))
            started = trio.current_time()
            async with client:
                with trio.fail_after(60):
                    _, ended = await read_until_end(client)
            waited = trio.current_time() - started
    assert ended == "reset"
    assert waited == pytest.approx(4.0, abs=0.1)


async def test_tunnels_judge_peers_on_the_node_clock(tmp_path: Path) -> None:
    """Two nodes living in 2030 (an injected clock), one exposing an echo backend, one
    forwarding to it: certificates valid only in 2030 work end to end, because both the
    forward's dial and the expose's listener judge them at the node's time."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    server_files = made_files(tmp_path / "server", now)
    client_files = Files(tmp_path / "client", server_files.ca, server_files.other)
    client_files.directory.mkdir()
    write_identity(client_files, CLIENT)
    async with tcp_server(echo) as backend:
        exposed = ExposeSettings(listen=("127.0.0.1", 0), backend=("127.0.0.1", backend))
        async with meshtls.open_node(
            replace(config(server_files), expose=(exposed,)), clock=lambda: now
        ) as server:
            expose_port = port_of(server, next(n for n in server.listeners if "expose" in n))
            forwarded = ForwardSettings(
                listen=("127.0.0.1", 0),
                peer=("127.0.0.1", expose_port),
                expect=SpiffeId.parse(NODE),
            )
            async with meshtls.open_node(
                replace(config(client_files), forward=(forwarded,)), clock=lambda: now
            ) as client_node:
                forward_port = port_of(
                    client_node, next(n for n in client_node.listeners if "forward" in n)
                )
                with trio.fail_after(10):
                    plain = await trio.open_tcp_stream("127.0.0.1", forward_port)
                    async with plain:
                        await plain.send_all(b"hello from 2030")
                        await plain.send_eof()
                        received, ended = await read_until_end(plain)
    assert (received, ended) == (b"hello from 2030", "eof")
