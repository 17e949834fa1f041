"""The access line of each served connection, and the per-listener metrics (issue 8 §4, §7).

A real node (in-process, real sockets and TLS) exposes an echo backend and forwards to its
own expose; every served connection ends with one access line, every refused one with its
rejection line instead, and each listener's series count the same story.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import meshtls
from meshtls._ca import LocalCA
from meshtls._config import parse_config
from meshtls._errors import ConfigError
from meshtls._metrics import NodeMetrics
from meshtls._node import DRAIN_MARGIN, Node, open_node
from meshtls._spiffeid import SpiffeId
from meshtls.testing import CA

from .meshnet import start_server
from .test_logs import (
    CLIENT,
    NODE,
    WAIT,
    client_source,
    lines,
    listen_port,
    node_config,
    node_files,
    present,
    running,
    ssl_client,
    write_pem,
)
from .test_node import echo_backend
from .test_node_time import T0, cert_time, config

PING: Final = b"ping"


def closed_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def tunnels(backend: int, dead: int, *, access_log: bool = True) -> str:
    """An expose to `backend`, one to the `dead` port, and a forward to the first expose."""
    return f"""
access_log = {str(access_log).lower()}

[[expose]]
listen = "127.0.0.1:0"
backend = "127.0.0.1:{backend}"
allow = ["{CLIENT}"]

[[expose]]
listen = "127.0.0.2:0"
backend = "127.0.0.1:{dead}"
allow = ["{CLIENT}"]
"""


def named(node: Node, prefix: str) -> str:
    return next(name for name in node.listeners if name.startswith(prefix))


ECHO: Final = "spiffe://example.org/echo"


async def echo_mesh(stream: meshtls.MeshStream) -> None:
    """The forward's far end: echo one chunk, then close (close_notify)."""
    if data := await stream.receive_some():
        await stream.send_all(data)


@asynccontextmanager
async def far_end(ca: CA) -> AsyncIterator[int]:
    """A mesh server for the forward to reach, with an id from the node's own CA."""
    source = meshtls.StaticSource(ca.issue(ECHO).svid(), ca.bundle_set())
    async with trio.open_nursery() as nursery:
        yield await start_server(nursery, echo_mesh, source=source)
        nursery.cancel_scope.cancel()


def with_forward(
    directory: Path, backend: int, dead: int, far: int, access_log: bool = True
) -> str:
    forward = (
        f'\n[[forward]]\nlisten = "127.0.0.1:0"\npeer = "127.0.0.1:{far}"\nexpect = "{ECHO}"\n'
    )
    return node_config(directory, tunnels(backend, dead, access_log=access_log)) + forward


async def exchange(node: Node, directory: Path) -> tuple[str, str]:
    """One ping through the expose (as the client) and one through the forward (plain)."""
    stream = await meshtls.connect(
        "127.0.0.1",
        listen_port(node, named(node, "expose:127.0.0.1")),
        source=client_source(directory),
        authorize=meshtls.authorize_id(NODE),
    )
    async with stream:
        expose_peer = f"127.0.0.1:{stream.socket.getsockname()[1]}"
        await stream.send_all(PING)
        with trio.fail_after(WAIT):
            assert await stream.receive_some() == PING
            assert await stream.receive_some() == b""
    plain = await trio.open_tcp_stream("127.0.0.1", listen_port(node, named(node, "forward:")))
    async with plain:
        forward_peer = f"127.0.0.1:{plain.socket.getsockname()[1]}"
        await plain.send_all(PING)
        with trio.fail_after(WAIT):
            assert await plain.receive_some() == PING
            assert await plain.receive_some() == b""
    return expose_peer, forward_peer


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def settled(node: Node) -> None:
    """Wait (bounded) until no listener holds a connection: every account is closed."""
    with trio.fail_after(WAIT):
        while True:
            held = samples(node.registry).items()
            if not any(v for (name, _), v in held if name == "meshtls_listener_connections_open"):
                return
            await trio.sleep(0.01)


async def test_each_served_connection_ends_with_one_access_line(tmp_path: Path) -> None:
    ca = node_files(tmp_path)
    async with echo_backend() as backend, far_end(ca) as far:
        toml = with_forward(tmp_path, backend, closed_port(), far)
        with lines("json") as log:
            async with running(tmp_path, toml) as node:
                expose = named(node, "expose:127.0.0.1")
                forward = named(node, "forward:")
                expose_peer, forward_peer = await exchange(node, tmp_path)
                await log.until(2, msg="connection closed")
    by_peer = {line["peer"]: line for line in log.where(msg="connection closed")}
    client_line = by_peer[expose_peer]
    assert client_line["level"] == "info"
    assert client_line["listener"] == expose
    assert client_line["spiffe_id"] == CLIENT
    assert (client_line["received_bytes"], client_line["sent_bytes"]) == (4, 4)
    assert client_line["ended"] == "closed"
    assert isinstance(client_line["duration"], float)
    forward_line = by_peer[forward_peer]
    assert forward_line["listener"] == forward
    assert forward_line["spiffe_id"] == ECHO  # the far end the forward verified
    assert (forward_line["received_bytes"], forward_line["sent_bytes"]) == (4, 4)
    assert forward_line["ended"] == "closed"
    assert len(by_peer) == 2


async def test_access_log_false_writes_no_access_line_and_metrics_still_count(
    tmp_path: Path,
) -> None:
    ca = node_files(tmp_path)
    async with echo_backend() as backend, far_end(ca) as far:
        toml = with_forward(tmp_path, backend, closed_port(), far, access_log=False)
        with lines() as log:
            async with running(tmp_path, toml) as node:
                await exchange(node, tmp_path)
                expose = named(node, "expose:127.0.0.1")
                key = (
                    "meshtls_listener_connection_duration_seconds_count",
                    (("listener", expose),),
                )
                await settled(node)
                assert samples(node.registry)[key] == 1
    assert not log.where(msg="connection closed")


def test_access_log_must_be_a_boolean(tmp_path: Path) -> None:
    node_files(tmp_path)
    with pytest.raises(ConfigError, match=r"\[node\] access_log: expected true or false"):
        parse_config(node_config(tmp_path, 'access_log = "yes"'), base_dir=tmp_path)


async def test_per_listener_metrics_count_accepted_open_refused_bytes_failures_and_time(
    tmp_path: Path,
) -> None:
    ca = node_files(tmp_path)
    stranger = CA("other.org", now=datetime.now(UTC)).issue("spiffe://other.org/stranger")
    write_pem(tmp_path, "stranger", stranger.chain_pem, stranger.key_pem)
    async with echo_backend() as backend, far_end(ca) as far:
        toml = with_forward(tmp_path, backend, closed_port(), far)
        with lines() as log:
            async with running(tmp_path, toml) as node:
                await exchange(node, tmp_path)
                mesh = listen_port(node, "mesh")
                await trio.to_thread.run_sync(present, mesh, ssl_client(tmp_path, "stranger"))
                (refused,) = await log.until(msg="handshake rejected", listener="mesh")
                dead = named(node, "expose:127.0.0.2")
                stream = await meshtls.connect(
                    "127.0.0.2",
                    listen_port(node, dead),
                    source=client_source(tmp_path),
                    authorize=meshtls.authorize_id(NODE),
                )
                async with stream:
                    with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
                        await stream.receive_some()
                await log.until(msg="expose backend unreachable")
                await settled(node)
                got = samples(node.registry)
                text = generate_latest(node.registry)
                expose, forward = named(node, "expose:127.0.0.1"), named(node, "forward:")

    def value(name: str, **labels: str) -> float:
        return got[(f"meshtls_listener_{name}", tuple(sorted(labels.items())))]

    assert value("connections_accepted_total", listener="mesh") == 1
    assert value("connections_refused_total", listener="mesh", reason=str(refused["reason"])) == 1
    assert value("connections_refused_total", listener="mesh", reason="connection_limit") == 0
    assert value("connections_accepted_total", listener=expose) == 1
    assert value("received_bytes_total", listener=expose) == 4
    assert value("sent_bytes_total", listener=expose) == 4
    assert value("connection_duration_seconds_count", listener=expose) == 1
    assert value("received_bytes_total", listener=forward) == 4
    assert value("sent_bytes_total", listener=forward) == 4
    assert value("backend_dial_failures_total", listener=dead) == 1
    assert value("backend_dial_failures_total", listener=expose) == 0
    for name in ("mesh", expose, forward, dead):
        assert value("connections_open", listener=name) == 0
    # the refused and the failed connection have their one line each, and no access line
    assert not [f for f in log.where(msg="connection closed") if f["listener"] in ("mesh", dead)]
    check = await trio.run_process(
        ["promtool", "check", "metrics"], stdin=text, capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


async def test_listener_families_take_the_metric_prefix() -> None:
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, clock=lambda: datetime.now(UTC), prefix="mtls")
    metrics.listener("mesh").began()
    text = generate_latest(registry)
    assert b'mtls_listener_connections_open{listener="mesh"} 1.0' in text
    assert b"meshtls_" not in text
    check = await trio.run_process(
        ["promtool", "check", "metrics"], stdin=text, capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


@pytest.fixture
def deadline_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_connection_closed_at_its_deadline_ends_as_timeout_in_one_line(
    tmp_path: Path, deadline_clock: trio.testing.MockClock
) -> None:
    """The node closes a connection 5 s before the client's certificate expires: the
    access line says ``ended=timeout reason=deadline``, with the exact duration."""

    async def handler(stream: meshtls.MeshStream) -> None:
        await trio.sleep_forever()

    with lines() as log:
        async with open_node(config(tmp_path), handler=handler, clock=cert_time) as node:
            ca = LocalCA.open(tmp_path / "ca")
            client = ca.issue(
                SpiffeId.parse("spiffe://meshtls.local/client"),
                ttl=timedelta(minutes=20),
                now=cert_time(),
            )
            stream = await meshtls.connect(
                "127.0.0.1",
                listen_port(node, "mesh"),
                source=meshtls.StaticSource(client, ca.bundle()),
                authorize=meshtls.authorize_any(),
                clock=cert_time,
            )
            async with stream:
                assert await stream.receive_some() == b""
            (line,) = await log.until(msg="connection closed")
    deadline = (client.not_after - T0 - DRAIN_MARGIN).total_seconds()
    assert (line["ended"], line["reason"]) == ("timeout", "deadline")
    assert float(str(line["duration"])) == pytest.approx(deadline, abs=1e-3)
    assert not log.where(msg="connection closed at its deadline")


async def test_B_7_a_connection_closed_when_its_root_leaves_says_so_in_its_lines(
    tmp_path: Path,
) -> None:
    """The client's root leaves the bundle file: the node's warning names the listener,
    the peer and the id, and the access line ends ``rejected`` for ``untrusted_chain``."""
    now = datetime.now(UTC)
    kept, leaving = CA("example.org", now=now), CA("example.org", now=now)
    (tmp_path / "bundle.pem").write_bytes(kept.bundle_pem + leaving.bundle_pem)
    for name, ca, spiffe_id in (("node", kept, NODE), ("client", leaving, CLIENT)):
        issued = ca.issue(spiffe_id)
        write_pem(tmp_path, name, issued.chain_pem, issued.key_pem)
    with lines() as log:
        async with running(tmp_path, node_config(tmp_path)) as node:
            stream = await meshtls.connect(
                "127.0.0.1",
                listen_port(node, "mesh"),
                source=client_source(tmp_path),
                authorize=meshtls.authorize_id(NODE),
            )
            peer = f"127.0.0.1:{stream.socket.getsockname()[1]}"
            async with stream:
                await stream.send_all(PING)
                with trio.fail_after(WAIT):  # the node has read it (its live stream counts it)
                    while not any(  # noqa: ASYNC110 - the node's task reads the socket
                        live.stream.bytes_received == len(PING) for live in node.rotation._live
                    ):
                        await trio.sleep(0.005)
                (tmp_path / "bundle.pem").write_bytes(kept.bundle_pem)
                with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()  # cut off by the node: a reset, not an end
                (warning,) = await log.until(msg="closing a connection whose root left the bundle")
    # One line for one event: the warning carries the access line's fields, and no access
    # line follows for that connection.
    assert (warning["listener"], warning["peer"], warning["spiffe_id"]) == ("mesh", peer, CLIENT)
    assert (warning["reason"], warning["received_bytes"]) == ("untrusted_chain", str(len(PING)))
    assert not log.where(msg="connection closed")


def reset_after_echo(port: int, context: ssl.SSLContext) -> None:
    """Send PING, read its echo, then reset TCP (SO_LINGER 0) with no close_notify."""
    raw = socket.create_connection(("127.0.0.1", port))
    tls = context.wrap_socket(raw)
    tls.sendall(PING)
    assert tls.recv(len(PING)) == PING
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket(fileno=tls.detach()).close()


async def test_a_tunnel_cut_off_by_its_client_says_why_in_words(tmp_path: Path) -> None:
    """A client of an expose that resets its TCP connection: the access line's ``error``
    is words, as on the mesh listener, not ``BrokenResourceError: ... [Errno 104] ...``."""
    node_files(tmp_path)
    async with echo_backend() as backend:
        with lines("json") as log:
            async with running(tmp_path, node_config(tmp_path, tunnels(backend, 1))) as node:
                port = listen_port(node, named(node, "expose:127.0.0.1"))
                await trio.to_thread.run_sync(
                    reset_after_echo, port, ssl_client(tmp_path, "client")
                )
                (line,) = await log.until(msg="connection closed")
    assert line["ended"] == "reset"
    error = str(line["error"])
    assert error.startswith("tunnel cut off: "), error
    for foreign in ("Error:", "Errno", "Error("):
        assert foreign not in error, error


async def test_an_unreachable_backend_is_named_in_words(tmp_path: Path) -> None:
    """trio's ``OSError: all attempts to connect ... failed`` hides why: the line says it."""
    node_files(tmp_path)
    dead = closed_port()
    with lines("json") as log:
        async with running(tmp_path, node_config(tmp_path, tunnels(dead, dead))) as node:
            stream = await meshtls.connect(
                "127.0.0.1",
                listen_port(node, named(node, "expose:127.0.0.1")),
                source=client_source(tmp_path),
                authorize=meshtls.authorize_id(NODE),
            )
            async with stream:
                with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
            (line,) = await log.until(msg="expose backend unreachable")
    assert (
        line["error"] == f"all attempts to connect to 127.0.0.1:{dead} failed: connection refused"
    )
