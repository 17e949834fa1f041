"""The node (issue 4): started from TOML, served to openssl s_client, scraped, rotated."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio

import meshtls
from meshtls._config import parse_config
from meshtls._node import Node, NodeError, open_node
from meshtls.testing import CA

REQUIRED_METRICS = [
    "meshtls_certificate_rotations_total",
    "meshtls_certificate_expiry_seconds",
    "meshtls_certificate_age_seconds",
    "meshtls_certificate_validation_failures_total",
    "meshtls_peer_verification_failures_total",
    "meshtls_handshakes_total",
    "meshtls_handshake_duration_seconds",
    "meshtls_connections_active",
    "meshtls_revocation_checks_total",
    "meshtls_revocation_fetch_total",
]


def write_svid(directory: Path, ca: CA, name: str, spiffe_id: str, **options: object) -> None:
    issued = ca.issue(spiffe_id, **options)  # type: ignore[arg-type]
    for suffix, data in ((".pem", issued.chain_pem), (".key", issued.key_pem)):
        tmp = directory / f".{name}{suffix}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / f"{name}{suffix}")  # atomic, as a rotating agent does


@asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    async def echo(stream: trio.SocketStream) -> None:
        """Echo one chunk, then close: the tunnel passes the close on as close_notify."""
        async with stream:
            if data := await stream.receive_some():
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def node_toml(directory: Path, backend: int) -> str:
    return f"""
[identity]
cert = "node.pem"
key = "node.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
handshake_timeout = "10s"

[policy]
max_ttl = "1h"
max_age = "off"
clock_skew = "30s"

[revocation]
mode = "soft-fail"

[authorize]
member_of = "example.org"

[[expose]]
listen = "127.0.0.1:0"
backend = "127.0.0.1:{backend}"
allow = ["spiffe://example.org/client"]
"""


def port(node: Node, name: str) -> int:
    (listener, *_) = node.listeners[name]
    number: int = listener.socket.getsockname()[1]
    return number


async def s_client(
    port: int, directory: Path, name: str, line: bytes = b"ping\n"
) -> subprocess.CompletedProcess[bytes]:
    """openssl s_client with our client certificate; sends `line`, returns what came back."""
    command = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_3",
        "-brief",
        "-ign_eof",
        "-cert",
        str(directory / f"{name}.pem"),
        "-key",
        str(directory / f"{name}.key"),
        "-CAfile",
        str(directory / "bundle.pem"),
        "-verify_return_error",
    ]
    with trio.fail_after(10):
        return await trio.run_process(
            command, stdin=line, capture_stdout=True, capture_stderr=True, check=False
        )


async def scrape(node: Node) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port(node, 'metrics')}/metrics")
    assert response.status_code == 200
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$"
        if labels
        else rf"^{re.escape(name)} (\S+)$"
    )
    match = re.search(pattern, text, re.M)
    assert match, f"{name} {labels} not in the scrape"
    return float(match.group(1))


@pytest.mark.openssl
async def test_node_from_toml_serves_openssl_rotates_and_is_scraped(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC))
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    write_svid(tmp_path, ca, "node", "spiffe://example.org/node")
    write_svid(tmp_path, ca, "client", "spiffe://example.org/client")
    write_svid(tmp_path, ca, "stranger", "spiffe://example.org/stranger")
    async with echo_backend() as backend:
        config = parse_config(node_toml(tmp_path, backend), base_dir=tmp_path)
        async with open_node(config) as node:
            assert node.ready
            expose = port(node, next(k for k in node.listeners if k.startswith("expose:")))

            served = await s_client(expose, tmp_path, "client")
            assert served.stdout == b"ping\n", served.stderr
            refused = await s_client(expose, tmp_path, "stranger")
            assert refused.stdout == b""

            text = await scrape(node)
            for name in REQUIRED_METRICS:
                assert f"# TYPE {name} " in text
            series = [
                line.split(" ")[0]
                for line in text.splitlines()
                if line and not line.startswith("#")
            ]
            assert len(series) == len(set(series)), "duplicate series"
            check = await trio.run_process(
                ["promtool", "check", "metrics"],
                stdin=text.encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
            assert (
                sample(text, "meshtls_peer_verification_failures_total", reason="unauthorized") == 1
            )
            assert sample(text, "meshtls_certificate_rotations_total") == 0

            # rotation: replace the node's files; new handshakes present the new certificate
            old_serial = node.contexts().svid.leaf.serial_number
            write_svid(tmp_path, ca, "node", "spiffe://example.org/node")
            with trio.fail_after(2):
                while node.contexts().svid.leaf.serial_number == old_serial:
                    await node.changed()
            peer = await meshtls.connect(
                "127.0.0.1",
                expose,
                source=meshtls.FileSource(
                    cert=tmp_path / "client.pem",
                    key=tmp_path / "client.key",
                    bundle=tmp_path / "bundle.pem",
                ),
                authorize=meshtls.authorize_id("spiffe://example.org/node"),
            )
            async with peer:
                assert peer.peer.leaf.serial_number != old_serial
            assert sample(await scrape(node), "meshtls_certificate_rotations_total") == 1


async def test_own_svid_over_max_ttl_is_refused(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC))
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    write_svid(tmp_path, ca, "node", "spiffe://example.org/node", ttl=timedelta(hours=2))
    config = parse_config(node_toml(tmp_path, 9), base_dir=tmp_path)
    with pytest.raises(NodeError, match="ttl_exceeded"):
        async with open_node(config):
            pass


async def test_a_refused_rotation_keeps_the_old_svid_and_counts(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC))
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    write_svid(tmp_path, ca, "node", "spiffe://example.org/node")
    config = parse_config(node_toml(tmp_path, 9), base_dir=tmp_path)
    async with open_node(config) as node:
        before = node.contexts()
        write_svid(tmp_path, ca, "node", "spiffe://example.org/node", ttl=timedelta(hours=3))
        with trio.fail_after(2):
            await node.changed()
        text = await scrape(node)
        assert (
            sample(text, "meshtls_certificate_validation_failures_total", reason="ttl_exceeded")
            == 1
        )
        assert node.contexts() is before
