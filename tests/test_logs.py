"""Logs an operator can use (issue 8 §3, §4): fields as keys, context, no tracebacks for
ordinary events, one line per event, and bounded under floods.

Lines are written by meshtls's own formatters and read back with `tests/logfmt.py`, which
fails on anything a logfmt or JSON pipeline would misread. Real sockets and TLS throughout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing
from benchmarks import log_flood

import meshtls
from meshtls._config import parse_config
from meshtls._logs import SUPPRESSED, LogFormat, Throttle, event, formatter, throttled
from meshtls._node import Node, open_node
from meshtls.testing import CA

from .logfmt import PARSE
from .meshnet import Mesh, start_server

WAIT: Final = 10.0
FORMATS: Final = ("text", "json")
#: A URI SAN that would forge fields and break lines if it were written bare.
HOSTILE: Final = 'spiffe://example.org/x" level=error forged=1 msg=owned'


class Lines(logging.Handler):
    """Every record of the ``meshtls`` logger, as the formatter of `log_format` writes it."""

    def __init__(self, log_format: LogFormat) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter(log_format))
        self.parse = PARSE[log_format]
        self.records: list[logging.LogRecord] = []
        self.text: list[str] = []
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.text.append(self.format(record))
        self.changed.set()
        self.changed = trio.Event()

    def parsed(self) -> list[dict[str, object]]:
        """Each line read back strictly; each line is one line."""
        for line in self.text:
            assert "\n" not in line, line
        return [self.parse(line) for line in self.text]

    def where(self, **wanted: object) -> list[dict[str, object]]:
        return [f for f in self.parsed() if all(f.get(k) == v for k, v in wanted.items())]

    async def until(self, count: int = 1, **wanted: object) -> list[dict[str, object]]:
        """Wait (bounded) until `count` lines have all of `wanted`; return them."""
        with trio.fail_after(WAIT):
            while len(found := self.where(**wanted)) < count:
                await self.changed.wait()
        return found


@contextmanager
def lines(log_format: LogFormat = "text") -> Iterator[Lines]:
    handler = Lines(log_format)
    logger = logging.getLogger("meshtls")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def write_pem(directory: Path, name: str, chain: bytes, key: bytes) -> None:
    (directory / f"{name}.pem").write_bytes(chain)
    (directory / f"{name}.key").write_bytes(key)


def ssl_client(directory: Path, name: str) -> ssl.SSLContext:
    """A plain stdlib TLS client presenting `name`'s certificate (whatever it holds)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
    return context


def present(port: int, context: ssl.SSLContext, source: str = "127.0.0.1") -> None:
    """Handshake as `context`, wait for the server's verdict, close (in a thread)."""
    with (
        socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as raw,
        context.wrap_socket(raw) as tls,
        contextlib.suppress(ssl.SSLError, OSError),
    ):
        tls.recv(1)


async def idle(stream: meshtls.MeshStream) -> None:
    """A handler that does nothing (the stream is closed when it returns)."""


# ---------------------------------------------------------------- fields as keys


@pytest.mark.parametrize("log_format", FORMATS)
async def test_a_rejection_has_its_fields_as_keys_and_a_hostile_id_forges_none(
    tmp_path: Path, log_format: LogFormat
) -> None:
    mesh = Mesh()
    hostile = mesh.ca.issue(uris=[HOSTILE])
    write_pem(tmp_path, "hostile", hostile.chain_pem, hostile.key_pem)
    with lines(log_format) as log:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, idle, source=mesh.server)
            await trio.to_thread.run_sync(present, port, ssl_client(tmp_path, "hostile"))
            (line,) = await log.until(msg="handshake rejected")
            nursery.cancel_scope.cancel()
    assert line["level"] == "warning"
    assert line["reason"] == "invalid_spiffe_id"
    assert line["role"] == "server"
    assert str(line["peer"]).startswith("127.0.0.1:")
    assert "level=error forged=1 msg=owned" in str(line["detail"])
    assert "forged" not in line
    assert "traceback" not in line
    for parsed in log.parsed():  # no line packs key=value pairs into its message
        assert "=" not in str(parsed["msg"]), parsed


@pytest.mark.parametrize("log_format", FORMATS)
def test_event_values_stay_one_value_each(log_format: LogFormat) -> None:
    logger = logging.getLogger("meshtls.test")
    with lines(log_format) as log:
        event(
            logger,
            logging.INFO,
            "values",
            id=HOSTILE,
            detail="two\nlines and a \x1b[31m colour",
            listen={"mesh": "127.0.0.1:1"},
            error=OSError(111, "Connection refused"),
            msg="not the message",
        )
    (line,) = log.parsed()
    assert line["msg"] == "values"
    assert line["id"] == HOSTILE
    assert line["detail"] == "two\nlines and a \x1b[31m colour"
    assert line["field_msg"] == "not the message"
    assert "OSError(" not in str(line["error"])
    assert "forged" not in line


def test_a_mapping_is_one_key_per_entry_never_a_nested_equals_sign() -> None:
    """logfmt-safe means no ``=`` inside a value: a mapping field (the listeners of
    ``node ready``) is written as ``listen.mesh=... listen.metrics=...`` in text, and stays
    one object in JSON."""
    logger = logging.getLogger("meshtls.test")
    listen = {"mesh": "127.0.0.1:8443", "metrics": "127.0.0.1:9464"}
    with lines("text") as text, lines("json") as json_lines:
        event(logger, logging.INFO, "node ready", listen=listen)
    (line,) = text.text
    assert line.endswith(
        ' msg="node ready" listen.mesh=127.0.0.1:8443 listen.metrics=127.0.0.1:9464'
    )
    (entry,) = json_lines.parsed()
    assert entry["listen"] == listen


# ---------------------------------------------------------------- a node's lines


NODE: Final = "spiffe://example.org/node"
CLIENT: Final = "spiffe://example.org/client"


def node_files(directory: Path) -> CA:
    ca = CA("example.org", now=datetime.now(UTC) - timedelta(minutes=1))
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)
    for name, spiffe_id in (("node", NODE), ("client", CLIENT)):
        issued = ca.issue(spiffe_id, ttl=timedelta(minutes=30))
        write_pem(directory, name, issued.chain_pem, issued.key_pem)
    return ca


def node_config(directory: Path, extra: str = "") -> str:
    return f"""
[identity]
cert = "node.pem"
key = "node.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:0"
metrics = "off"
{extra}
"""


async def read_and_drop(stream: meshtls.MeshStream) -> None:
    """A plain stream handler: these tests are about connections, not message links."""
    while await stream.receive_some():
        pass


@asynccontextmanager
async def running(directory: Path, toml: str) -> AsyncIterator[Node]:
    config = parse_config(toml, base_dir=directory)
    async with open_node(config, handler=read_and_drop) as node:
        yield node


def listen_port(node: Node, name: str) -> int:
    number: int = node.listeners[name][0].socket.getsockname()[1]
    return number


def client_source(directory: Path) -> meshtls.FileSource:
    return meshtls.FileSource(
        cert=directory / "client.pem", key=directory / "client.key", bundle=directory / "bundle.pem"
    )


async def test_every_connection_line_names_listener_peer_and_id(tmp_path: Path) -> None:
    node_files(tmp_path)
    stranger = CA("other.org", now=datetime.now(UTC)).issue("spiffe://other.org/stranger")
    write_pem(tmp_path, "stranger", stranger.chain_pem, stranger.key_pem)
    with lines("json") as log:
        async with running(tmp_path, node_config(tmp_path)) as node:
            port = listen_port(node, "mesh")
            stream = await meshtls.connect(
                "127.0.0.1",
                port,
                source=client_source(tmp_path),
                authorize=meshtls.authorize_id(NODE),
            )
            address = f"127.0.0.1:{stream.socket.getsockname()[1]}"
            async with stream:
                await stream.send_all(b"hello")
            (closed,) = await log.until(msg="connection closed")
            await trio.to_thread.run_sync(present, port, ssl_client(tmp_path, "stranger"))
            (refused,) = await log.until(msg="handshake rejected", role="server")
    assert closed["listener"] == "mesh"
    assert closed["peer"] == address
    assert closed["spiffe_id"] == CLIENT
    assert refused["listener"] == "mesh"
    assert str(refused["peer"]).startswith("127.0.0.1:")
    for line in log.parsed():  # errors are words, never reprs
        assert not any("Error(" in str(value) for value in line.values()), line


async def test_a_client_gone_without_close_notify_is_one_info_line_without_traceback(
    tmp_path: Path,
) -> None:
    """The mesh listener's peer ends TCP with no close_notify: ordinary, info, one line."""
    node_files(tmp_path)
    with lines() as log:
        async with running(tmp_path, node_config(tmp_path)) as node:
            stream = await meshtls.connect(
                "127.0.0.1",
                listen_port(node, "mesh"),
                source=client_source(tmp_path),
                authorize=meshtls.authorize_id(NODE),
            )
            await stream.send_all(b"part of a message")
            stream.socket.shutdown(socket.SHUT_WR)  # a FIN, and no close_notify before it
            (line,) = await log.until(peer=f"127.0.0.1:{stream.socket.getsockname()[1]}")
            stream.abort()
    assert not any(record.exc_info for record in log.records), log.text
    assert line["level"] == "info"
    assert line["msg"] == "connection closed"
    assert line["ended"] == "reset"
    assert line["received_bytes"] == str(len(b"part of a message"))
    assert "client closed the connection without close_notify" in str(line["error"])
    assert "rejects our certificate" not in " ".join(log.text)


# ---------------------------------------------------------------- one line per event


async def test_a_forward_refused_by_its_peer_is_one_line(tmp_path: Path) -> None:
    """The forward's peer is not the id it expects: the handshake line, and nothing more."""
    mesh = Mesh()
    (tmp_path / "bundle.pem").write_bytes(mesh.ca.bundle_pem)
    issued = mesh.ca.issue(NODE)
    write_pem(tmp_path, "node", issued.chain_pem, issued.key_pem)
    with lines() as log:
        async with trio.open_nursery() as nursery:
            peer = await start_server(nursery, idle, source=mesh.server)
            extra = (
                f'\n[[forward]]\nlisten = "127.0.0.1:0"\npeer = "127.0.0.1:{peer}"\n'
                'expect = "spiffe://example.org/someone-else"\n'
            )
            async with running(tmp_path, node_config(tmp_path) + extra) as node:
                name = next(k for k in node.listeners if k.startswith("forward:"))
                client = await trio.open_tcp_stream("127.0.0.1", listen_port(node, name))
                ours = f"127.0.0.1:{client.socket.getsockname()[1]}"
                with trio.fail_after(WAIT):
                    with pytest.raises(trio.BrokenResourceError):  # noqa: PT012 - read to the end
                        while await client.receive_some():
                            pass
                await client.aclose()
            nursery.cancel_scope.cancel()
    about = [f for f in log.parsed() if f.get("listener") == name]
    assert [f["msg"] for f in about] == ["handshake rejected"], log.text
    assert about[0]["role"] == "client"
    assert about[0]["reason"] == "unauthorized"
    # as on the forward's other lines: `peer` is its plaintext client, `target` the far end
    assert (about[0]["peer"], about[0]["target"]) == (ours, f"127.0.0.1:{peer}"), log.text


def _buggy(peer: meshtls.VerifiedPeer) -> None:
    raise RuntimeError("authorizer bug")


async def test_a_buggy_authorizer_is_one_error_line_with_its_traceback() -> None:
    mesh = Mesh()
    with lines() as log:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, idle, source=mesh.server, authorize=_buggy)
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            async with stream:
                with trio.fail_after(WAIT), pytest.raises(meshtls.PeerRejectedError):
                    await stream.receive_some()
            await log.until(level="error")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    server_lines = [f for f in log.parsed() if f.get("role") != "client"]
    assert len(server_lines) == 1, log.text
    (line,) = server_lines
    assert line["level"] == "error"
    assert line["reason"] == "unauthorized"
    assert "RuntimeError: authorizer bug" in str(line["traceback"])


# ---------------------------------------------------------------- floods

FLOOD: Final = 300


def knock(port: int, source: str) -> None:
    """Connect from `source` and close at once (the server logs a rejection)."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)):
        pass


async def test_a_flood_of_rejections_from_one_source_is_bounded_with_an_exact_summary(
    mock_clock: trio.testing.MockClock,
) -> None:
    """FLOOD rejections from 127.0.0.1: 5 lines, then one summary with the exact count when
    the 10 s window ends; a rejection from 127.0.0.2 still gets its line."""
    mesh = Mesh()
    seen: list[meshtls.HandshakeError] = []
    with lines() as log:
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, idle, source=mesh.server, on_rejected=seen.append)

            def flood() -> None:
                for _ in range(FLOOD):
                    knock(port, "127.0.0.1")

            await trio.to_thread.run_sync(flood)
            with trio.fail_after(WAIT):
                while len(seen) < FLOOD:
                    await trio.testing.wait_all_tasks_blocked(0.01)
            assert len(log.where(msg="handshake rejected")) == 5
            await trio.to_thread.run_sync(knock, port, "127.0.0.2")
            await log.until(msg="handshake rejected", source="127.0.0.2")
            assert not log.where(msg=SUPPRESSED)
            mock_clock.jump(10)
            (summary,) = await log.until(msg=SUPPRESSED)
            nursery.cancel_scope.cancel()
    assert summary["suppressed"] == str(FLOOD - 5)
    assert summary["source"] == "127.0.0.1"
    assert summary["reason"] == "protocol_error"
    assert summary["event"] == "handshake rejected"
    assert len(log.text) == 5 + 1 + 1


async def test_a_throttle_bounds_its_keys_and_summarizes_without_its_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = Throttle(burst=1, window=10.0, max_keys=2)
    logger = logging.getLogger("meshtls.test")
    log_line = functools.partial(throttled, logger, logging.WARNING, "refused", key=("source",))
    with lines() as log, throttle.using():
        for source in ("a", "b", "c", "d", "a", "a"):
            log_line(source=source)
        assert [f["source"] for f in log.parsed()] == ["a", "b", "(other)"]
        await trio.sleep(10)
        log_line(source="a")  # its window ended: the summary first, then the new line
    summaries = log.where(msg=SUPPRESSED)
    assert [(f["source"], f["suppressed"]) for f in summaries] == [("a", "2"), ("(other)", "1")]
    assert log.parsed()[-1]["msg"] == "refused"


async def test_a_throttle_stopped_mid_window_still_writes_its_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node that stops while a window is open (SIGTERM in a flood) loses no count."""
    throttle = Throttle(burst=1, window=10.0)
    logger = logging.getLogger("meshtls.test")
    with lines() as log:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(throttle.run)
            with throttle.using():
                for _ in range(4):
                    throttled(logger, logging.WARNING, "refused", key=("source",), source="a")
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 3
    (summary,) = log.where(msg=SUPPRESSED)
    assert (summary["source"], summary["suppressed"]) == ("a", "3")


async def test_a_flood_small_budget_a_real_node_logs_a_bounded_number_of_lines() -> None:
    """benchmarks/log_flood.py for 2 s (the 45 s run is in the closing note)."""
    flood = await log_flood.run(2.0, 100)
    assert flood.exit_code == 0
    assert flood.connections > 100  # the workers really flooded
    # per reason (at most three kinds from one source): 5 lines each, one summary each,
    # plus the node's own lines (ready, shutting down)
    assert flood.messages["handshake rejected"] <= 3 * 5, flood.messages
    assert flood.lines <= 3 * 6 + 2, flood.messages
