"""Issue 9's "done when", end to end: a standalone node, a real ``openssl ocsp`` responder
and real TLS clients on 127.0.0.1 (P-4).

- Hard-fail, ``refresh_interval = "2s"``, an echo backend behind ``[[expose]]``: a client
  revoked at the responder while connected loses its connection within a few seconds (an
  error, never a clean end) and is refused on reconnect; another client keeps working;
  ``/metrics`` counts ``reason="revoked"``.
- Soft-fail with the responder down: the node keeps serving, and counts ``unknown``.
- A local CA node's ``meshtls ca revoke`` reaches live connections with no server at all.

These run on the wall clock: the responder is a real process with a real clock.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

import meshtls
from meshtls._bundle import BundleSet
from meshtls._ca import LocalCA
from meshtls._config import parse_config
from meshtls._node import Node, open_node
from meshtls._sources import StaticSource
from meshtls._spiffeid import SpiffeId
from meshtls._svid import X509Svid
from meshtls.testing import CA, IssuedCertificate

from .revocation_peers import OcspResponder, closed_port, needs_openssl
from .test_crl import make_crl
from .test_node import port, scrape

NODE_ID = "spiffe://example.org/node"


def node_toml(backend: int, mode: str) -> str:
    return f"""
[identity]
cert = "node.pem"
key = "node.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
handshake_timeout = "10s"

[revocation]
mode = "{mode}"
refresh_interval = "2s"
hard_fail_wait = "3s"

[authorize]
member_of = "example.org"

[[expose]]
listen = "127.0.0.1:0"
backend = "127.0.0.1:{backend}"
"""


async def _echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        async for data in stream:
            await stream.send_all(data)


@contextlib.asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        (listener, *_) = await nursery.start(
            functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
        )
        yield listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def expose_port(node: Node) -> int:
    return port(node, next(k for k in node.listeners if k.startswith("expose:")))


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")):
            series, _, value = line.rpartition(" ")
            got = series[len(name) :].strip("{}")
            if ",".join(sorted(got.split(","))) == wanted or (not labels and got == ""):
                return float(value)
    return 0.0


def write_node(directory: Path, ca: CA, ocsp_url: str | None) -> None:
    issued = ca.issue(NODE_ID, ttl=timedelta(minutes=30), ocsp_url=ocsp_url)
    (directory / "node.pem").write_bytes(issued.chain_pem)
    (directory / "node.key").write_bytes(issued.key_pem)
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)


async def dial(node: Node, ca: CA, client: IssuedCertificate) -> meshtls.MeshStream:
    return await meshtls.connect(
        "127.0.0.1",
        expose_port(node),
        source=StaticSource(client.svid(), ca.bundle_set()),
        authorize=meshtls.authorize_id(NODE_ID),
    )


async def round_trip(stream: meshtls.MeshStream, data: bytes) -> bytes:
    await stream.send_all(data)
    received = b""
    with trio.fail_after(5):
        while len(received) < len(data):
            chunk = await stream.receive_some(65536)
            assert chunk, "the tunnel ended"
            received += chunk
    return received


async def ends_in_error(stream: meshtls.MeshStream) -> None:
    """Read until `stream` breaks; a clean end fails the test (data is never lost quietly)."""
    while True:
        assert await stream.receive_some(100) != b"", "a closed connection read as a clean end"


async def echo_once(port: int, svid: X509Svid, bundles: BundleSet, data: bytes = b"x") -> None:
    """Dial `port` as `svid` and echo `data` once (raises if refused)."""
    stream = await meshtls.connect(
        "127.0.0.1",
        port,
        source=StaticSource(svid, bundles),
        authorize=meshtls.authorize_id(NODE_ID),
    )
    async with stream:
        assert await round_trip(stream, data) == data


@contextlib.contextmanager
def responder(directory: Path, ca: CA) -> Iterator[OcspResponder]:
    (directory / "ocsp").mkdir()
    with OcspResponder(directory / "ocsp", ca.certificate, ca.key, []) as running:
        yield running


@needs_openssl
async def test_P_4_hard_fail_node_closes_a_client_revoked_while_connected(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC) - timedelta(minutes=1))
    with responder(tmp_path, ca) as ocsp:
        write_node(tmp_path, ca, ocsp.url)
        alice = ca.issue("spiffe://example.org/alice", ttl=timedelta(minutes=30), ocsp_url=ocsp.url)
        bob = ca.issue("spiffe://example.org/bob", ttl=timedelta(minutes=30), ocsp_url=ocsp.url)
        ocsp.add(alice.leaf)
        ocsp.add(bob.leaf)
        async with echo_backend() as backend:
            config = parse_config(node_toml(backend, "hard-fail"), base_dir=tmp_path)
            async with open_node(config) as node:
                # First contact waits (bounded) for the prefetcher's OCSP answer: good.
                a = await dial(node, ca, alice)
                b = await dial(node, ca, bob)
                assert await round_trip(a, b"alice\n") == b"alice\n"
                assert await round_trip(b, b"bob\n") == b"bob\n"
                text = await scrape(node)
                assert sample(text, "meshtls_revocation_fetch_total", kind="ocsp", result="ok") >= 2

                ocsp.revoke(alice.leaf.serial_number, at=datetime.now(UTC), reason="keyCompromise")
                started = trio.current_time()
                with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                    await ends_in_error(a)  # within refresh_interval (2s) and the fetch
                await a.aclose()
                closed_after = trio.current_time() - started
                assert closed_after < 6  # 3x refresh_interval: the prefetcher's cadence

                assert await round_trip(b, b"still here\n") == b"still here\n"
                with pytest.raises((meshtls.HandshakeError, trio.BrokenResourceError)):
                    await echo_once(expose_port(node), alice.svid(), ca.bundle_set())
                text = await scrape(node)
                assert (
                    sample(text, "meshtls_peer_verification_failures_total", reason="revoked") >= 1
                )
                assert sample(text, "meshtls_revocation_checks_total", source="cache",
                              result="revoked") >= 1  # fmt: skip
                status = node.status()["revocation"]
                assert isinstance(status, dict)
                assert status["mode"] == "hard-fail"
                await b.aclose()


@needs_openssl
async def test_P_4_soft_fail_node_with_its_responder_down_keeps_serving(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC) - timedelta(minutes=1))
    with closed_port() as down:
        write_node(tmp_path, ca, down)
        alice = ca.issue("spiffe://example.org/alice", ttl=timedelta(minutes=30), ocsp_url=down)
        async with echo_backend() as backend:
            config = parse_config(node_toml(backend, "soft-fail"), base_dir=tmp_path)
            async with open_node(config) as node:
                for attempt in range(3):
                    stream = await dial(node, ca, alice)
                    async with stream:
                        assert await round_trip(stream, b"hi %d" % attempt) == b"hi %d" % attempt
                text = await scrape(node)
                assert sample(text, "meshtls_revocation_checks_total", source="cache",
                              result="unknown") >= 3  # fmt: skip
                with trio.fail_after(10):
                    while not sample(  # noqa: ASYNC110 - waits on a real process's effect
                        await scrape(node), "meshtls_revocation_fetch_total", kind="ocsp",
                        result="error"
                    ):  # fmt: skip
                        await trio.sleep(0.05)
                failing = node.status()["revocation"]
                assert isinstance(failing, dict)
                assert failing["failing_responders"]


async def test_P_4_local_ca_revoke_reaches_live_connections(tmp_path: Path) -> None:
    toml = f"""
[identity]
local_ca = "ca"
spiffe_id = "{NODE_ID}"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"

[revocation]
mode = "soft-fail"
refresh_interval = "1s"

[authorize]
member_of = "example.org"
"""

    async def hold(stream: meshtls.MeshStream) -> None:
        await _echo(stream)  # type: ignore[arg-type]

    config = parse_config(toml, base_dir=tmp_path)
    async with open_node(config, handler=hold) as node:
        ca = LocalCA.open(tmp_path / "ca")
        bundles = ca.bundle()
        svid = ca.issue(SpiffeId.parse("spiffe://example.org/alice"), ttl=timedelta(minutes=5))
        stream = await meshtls.connect(
            "127.0.0.1",
            port(node, "mesh"),
            source=StaticSource(svid, bundles),
            authorize=meshtls.authorize_id(NODE_ID),
        )
        assert await round_trip(stream, b"ping") == b"ping"
        ca.revoke(svid.leaf.serial_number)  # what `meshtls ca revoke` runs
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await ends_in_error(stream)
        await stream.aclose()
        with pytest.raises((meshtls.HandshakeError, trio.BrokenResourceError)):
            await echo_once(port(node, "mesh"), svid, bundles)
        text = await scrape(node)
        assert sample(text, "meshtls_peer_verification_failures_total", reason="revoked") >= 1


async def test_P_4_hard_fail_node_reads_its_crl_files(tmp_path: Path) -> None:
    """``crl_files``: a listed client is refused as revoked, an unlisted one is accepted at
    once (the file's CRL says good: no fetch, no URL at all)."""
    now = datetime.now(UTC)
    ca = CA("example.org", now=now - timedelta(minutes=1))
    write_node(tmp_path, ca, None)
    alice = ca.issue("spiffe://example.org/alice", ttl=timedelta(minutes=30))
    bob = ca.issue("spiffe://example.org/bob", ttl=timedelta(minutes=30))
    crl = make_crl(
        ca, [alice.leaf.serial_number], this_update=now - timedelta(minutes=1),
        next_update=now + timedelta(hours=1),
    )  # fmt: skip
    (tmp_path / "revoked.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    async with echo_backend() as backend:
        toml = node_toml(backend, "hard-fail").replace(
            'hard_fail_wait = "3s"', 'hard_fail_wait = "3s"\ncrl_files = ["revoked.pem"]'
        )
        config = parse_config(toml, base_dir=tmp_path)
        async with open_node(config) as node:
            with trio.fail_after(2):  # no wait on any fetch: the CRL is in the cache
                await echo_once(expose_port(node), bob.svid(), ca.bundle_set())
            with pytest.raises((meshtls.HandshakeError, trio.BrokenResourceError)):
                await echo_once(expose_port(node), alice.svid(), ca.bundle_set())
            text = await scrape(node)
            assert sample(text, "meshtls_peer_verification_failures_total", reason="revoked") == 1
            assert sample(text, "meshtls_revocation_fetch_total", kind="crl", result="ok") == 0
