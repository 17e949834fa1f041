"""`WorkloadApiSource` against a real gRPC Workload API server (tests/workload_server.py).

Rules: W-1 (security header), W-2 (addresses), W-3 (InvalidArgument is final, the rest
is retried with a bounded start-up), W-4 and B-7 (each message is the full state).
"""

from __future__ import annotations

import base64
import functools
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe._proto import workload_pb2, workload_pb2_grpc

import meshtls
from meshtls import _ossl
from meshtls._crl import judge_crl, load_crl
from meshtls._workload import WorkloadApiError, WorkloadApiSource, split_der, workload_api_target
from meshtls.testing import CA, IssuedCertificate

from .hostile_identity import curve_one_byte_off, duplicate_extension_leaf, version_34
from .workload_server import (
    WorkloadApiServer,
    der,
    logged,
    signed_crl,
    svid_message,
    x509_response,
)

NOW = datetime.now(UTC)  # the contexts are built from real-time certificates
WEB = "spiffe://example.org/web"
TD = meshtls.TrustDomain.parse("example.org")
OTHER_TD = meshtls.TrustDomain.parse("other.org")
SKEW = timedelta(seconds=30)
WAIT = 5.0  # seconds: the bound on every wait; each test takes well under one


@dataclass(frozen=True)
class Certs:
    ca: CA  # example.org, root 1
    ca2: CA  # example.org, root 2 (two roots in one bundle, as during a CA rotation)
    other: CA  # other.org, federated
    web: IssuedCertificate  # spiffe://example.org/web from root 1
    web2: IssuedCertificate  # the same id, rotated
    from_ca2: IssuedCertificate  # spiffe://example.org/api from root 2
    peer: IssuedCertificate  # spiffe://other.org/peer

    def state(
        self,
        issued: IssuedCertificate | None = None,
        *,
        roots: tuple[CA, ...] | None = None,
        federated: bool = True,
    ) -> workload_pb2.X509SVIDResponse:
        """Our SVID (`web` by default) with example.org's roots, and other.org federated."""
        bundle = [ca.certificate for ca in (roots or (self.ca,))]
        fed = {"spiffe://other.org": [self.other.certificate]} if federated else {}
        return x509_response([svid_message(issued or self.web, bundle)], fed)


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = CA("example.org", now=NOW)
    ca2 = CA("example.org", now=NOW, label="root 2")
    other = CA("other.org", now=NOW)
    return Certs(
        ca=ca,
        ca2=ca2,
        other=other,
        web=ca.issue(WEB),
        web2=ca.issue(WEB),
        from_ca2=ca2.issue("spiffe://example.org/api"),
        peer=other.issue("spiffe://other.org/peer"),
    )


@pytest.fixture
def server(tmp_path: Path, certs: Certs) -> Iterator[WorkloadApiServer]:
    """A started server whose state is `certs.state()`; stopped after the test."""
    with WorkloadApiServer(tmp_path / "agent.sock", certs.state()) as started:
        yield started


@asynccontextmanager
async def running(source: WorkloadApiSource) -> AsyncIterator[WorkloadApiSource]:
    """`source.run` started (first identity published), cancelled on exit."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            await nursery.start(source.run)
        yield source
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110 - it changes in grpc's threads, not in Trio
            await trio.sleep(0.01)


async def next_identity(source: WorkloadApiSource, generation: int) -> meshtls.X509Svid:
    with trio.fail_after(WAIT):
        new, contexts = await source.cell.wait_newer(generation)
    assert new == generation + 1
    return contexts.svid


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("meshtls-workload-api")]


# ---------------------------------------------------------------- streaming (W-4, B-7)


async def test_first_identity_is_published(server: WorkloadApiServer, certs: Certs) -> None:
    source = WorkloadApiSource(server.address)
    with pytest.raises(meshtls.MeshError, match="no identity yet"):
        source.contexts()
    async with running(source):
        assert source.cell.generation == 1
        contexts = source.contexts()
        assert str(contexts.svid.spiffe_id) == WEB
        assert contexts.svid.leaf == certs.web.leaf
        assert set(contexts.bundles) == {TD, OTHER_TD}
        meshtls.verify_svid(certs.peer.chain, contexts.bundles, now=NOW)


async def test_run_again_after_cancellation_starts_without_republishing(
    server: WorkloadApiServer,
) -> None:
    source = WorkloadApiSource(server.address)
    async with running(source):
        pass
    async with running(source):  # as a supervisor restarting it would
        assert source.cell.generation == 1  # the same state: nothing new to publish
    assert server.calls == 2


async def test_W_4_svid_rotation_publishes_a_new_generation(
    server: WorkloadApiServer, certs: Certs
) -> None:
    async with running(WorkloadApiSource(server.address)) as source:
        server.push(certs.state(certs.web2))
        svid = await next_identity(source, 1)
        assert svid.leaf == certs.web2.leaf
        assert source.contexts().svid is svid
        assert server.calls == 1  # the same stream


async def test_W_4_bundle_update_adds_a_root(server: WorkloadApiServer, certs: Certs) -> None:
    async with running(WorkloadApiSource(server.address)) as source:
        with pytest.raises(meshtls.VerificationError, match="untrusted_chain"):
            meshtls.verify_svid(certs.from_ca2.chain, source.contexts().bundles, now=NOW)
        server.push(certs.state(roots=(certs.ca, certs.ca2)))
        await next_identity(source, 1)
        bundles = source.contexts().bundles
        assert bundles[TD].authorities == (certs.ca.certificate, certs.ca2.certificate)
        meshtls.verify_svid(certs.from_ca2.chain, bundles, now=NOW)


async def test_B_7_a_root_dropped_from_the_bundle_is_no_longer_trusted(
    tmp_path: Path, certs: Certs
) -> None:
    both = certs.state(roots=(certs.ca, certs.ca2))
    with WorkloadApiServer(tmp_path / "agent.sock", both) as server:
        async with running(WorkloadApiSource(server.address)) as source:
            before = source.contexts()
            meshtls.verify_svid(certs.from_ca2.chain, before.bundles, now=NOW)
            assert _ossl.store_size(before.client) == 3  # 2 of example.org + other.org

            server.push(certs.state(roots=(certs.ca,)))
            await next_identity(source, 1)
            after = source.contexts()
            with pytest.raises(meshtls.VerificationError, match="untrusted_chain"):
                meshtls.verify_svid(certs.from_ca2.chain, after.bundles, now=NOW)
            assert _ossl.store_size(after.client) == 2  # gone from the TLS trust store too
            meshtls.verify_svid(certs.web.chain, after.bundles, now=NOW)


async def test_W_4_a_federated_bundle_removed_is_gone(
    server: WorkloadApiServer, certs: Certs
) -> None:
    async with running(WorkloadApiSource(server.address)) as source:
        meshtls.verify_svid(certs.peer.chain, source.contexts().bundles, now=NOW)
        server.push(certs.state(federated=False))
        await next_identity(source, 1)
        assert set(source.contexts().bundles) == {TD}
        with pytest.raises(meshtls.VerificationError, match="unknown_trust_domain"):
            meshtls.verify_svid(certs.peer.chain, source.contexts().bundles, now=NOW)


def _key_of(issued: IssuedCertificate) -> bytes:
    entry = svid_message(issued, [])
    return entry.x509_svid_key


def _fed(c: Certs) -> dict[str, list[x509.Certificate]]:
    """other.org federated, as in the current state: only the SVID differs."""
    return {"spiffe://other.org": [c.other.certificate]}


# name -> (the invalid message, the reason reported). Each carries the bundles the
# source already has, so nothing at all is new to publish.
INVALID: dict[str, tuple[Callable[[Certs], workload_pb2.X509SVIDResponse], str]] = {
    "key of another leaf": (
        lambda c: x509_response(
            [svid_message(c.web2, [c.ca.certificate], key=_key_of(c.web))], _fed(c)
        ),
        "malformed_certificate",
    ),
    "uppercase trust domain in the leaf (ID-5)": (
        lambda c: x509_response(
            [
                svid_message(
                    c.ca.issue(uris=["spiffe://Example.org/web"]), [c.ca.certificate], spiffe_id=WEB
                )
            ],
            _fed(c),
        ),
        "invalid_spiffe_id",
    ),
    "entry id other than the leaf's": (
        lambda c: x509_response(
            [svid_message(c.web2, [c.ca.certificate], spiffe_id="spiffe://example.org/db")],
            _fed(c),
        ),
        "invalid_spiffe_id",
    ),
    "entry id with a trailing newline (ID-13)": (
        lambda c: x509_response(
            [svid_message(c.web2, [c.ca.certificate], spiffe_id=WEB + "\n")], _fed(c)
        ),
        "invalid_spiffe_id",
    ),
    "federated key in uppercase (py-spiffe lowercases it)": (
        lambda c: x509_response(
            [svid_message(c.web2, [c.ca.certificate])],
            {"spiffe://Other.org": [c.other.certificate]},
        ),
        "invalid_spiffe_id",
    ),
    "leaf is a CA (L-4)": (
        lambda c: x509_response(
            [svid_message(c.ca.issue(WEB, is_ca=True), [c.ca.certificate])], _fed(c)
        ),
        "leaf_is_ca",
    ),
    "leaf not signed by our bundle (L-10)": (
        lambda c: x509_response([svid_message(c.from_ca2, [c.ca.certificate])], _fed(c)),
        "untrusted_chain",
    ),
    "no SVID": (lambda c: x509_response([], _fed(c)), "malformed_certificate"),
    "garbage DER chain": (
        lambda c: workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=WEB,
                    x509_svid=b"\x30\x03abc",
                    bundle=c.ca.certificate.public_bytes(Encoding.DER),
                )
            ],
            federated_bundles={
                "spiffe://other.org": c.other.certificate.public_bytes(Encoding.DER)
            },
        ),
        "malformed_certificate",
    ),
    "duplicate extension in the leaf": (
        lambda c: _with_leaf(c, _duplicate_extension(c)),
        "malformed_certificate",
    ),
    "version 34 in a root": (
        lambda c: _with_root(c, version_34(c.ca)),
        "malformed_certificate",
    ),
    "EC curve one byte off in a root": (
        lambda c: _with_root(c, curve_one_byte_off(c.ca)),
        "malformed_certificate",
    ),
}


def _with_root(c: Certs, root_pem: bytes) -> workload_pb2.X509SVIDResponse:
    """A good SVID, with `root_pem` as its trust domain's bundle."""
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=WEB,
                x509_svid=der(c.web2.chain),
                x509_svid_key=_key_of(c.web2),
                bundle=_der_of_pem(root_pem),
            )
        ],
    )


def _der_of_pem(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.splitlines()[1:-1]))


def _duplicate_extension(c: Certs) -> tuple[bytes, bytes]:
    made = duplicate_extension_leaf(c.ca)
    return _der_of_pem(made["cert"]), made["key"]


def _with_leaf(c: Certs, leaf_and_key: tuple[bytes, bytes]) -> workload_pb2.X509SVIDResponse:
    leaf, key_pem = leaf_and_key
    key = serialization.load_pem_private_key(key_pem, password=None)
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=WEB,
                x509_svid=leaf,
                x509_svid_key=key.private_bytes(
                    Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                bundle=c.ca.certificate.public_bytes(Encoding.DER),
            )
        ],
        federated_bundles={"spiffe://other.org": c.other.certificate.public_bytes(Encoding.DER)},
    )


@pytest.mark.parametrize("case", list(INVALID))
async def test_an_invalid_message_is_not_published(
    server: WorkloadApiServer, certs: Certs, case: str
) -> None:
    make, reason = INVALID[case]
    reported: list[tuple[str, str]] = []
    seen = trio.Event()

    def on_invalid(reason: str, detail: str) -> None:
        reported.append((reason, detail))
        seen.set()

    async with running(WorkloadApiSource(server.address, on_invalid=on_invalid)) as source:
        before = source.contexts()
        server.push(make(certs))
        with trio.fail_after(WAIT):
            await seen.wait()
        assert [r for r, _ in reported] == [reason]
        assert reason in meshtls.REASONS
        assert "\n" not in reported[0][1]  # one line
        assert source.cell.generation == 1
        assert source.contexts() is before
        # the stream goes on: the next good message is published
        server.push(certs.state(certs.web2))
        assert (await next_identity(source, 1)).leaf == certs.web2.leaf
        assert server.calls == 1


async def test_B_7_a_refused_svid_does_not_hold_back_the_bundles_beside_it(
    server: WorkloadApiServer, certs: Certs
) -> None:
    """One message: an SVID whose key is another leaf's, and other.org no longer federated.

    The SVID is refused (reported once), and the bundles are published beside the SVID
    the source had: a domain that left the bundle set is not kept trusted.
    """
    reported: list[str] = []
    source = WorkloadApiSource(server.address, on_invalid=lambda r, _: reported.append(r))
    async with running(source):
        before = source.identity()
        server.push(
            x509_response(
                [svid_message(certs.web2, [certs.ca.certificate], key=_key_of(certs.web))]
            )
        )
        svid = await next_identity(source, 1)
        assert svid is before.svid
        assert set(source.identity().bundles) == {TD}
        assert reported == ["malformed_certificate"]
        with pytest.raises(meshtls.VerificationError, match="unknown_trust_domain"):
            meshtls.verify_svid(certs.peer.chain, source.identity().bundles, now=NOW)


async def test_serve_without_a_node_follows_a_running_source(
    server: WorkloadApiServer, certs: Certs
) -> None:
    """`serve` takes the source as is: a rotation it publishes is used by the next handshake."""
    client = meshtls.StaticSource(
        certs.ca.issue("spiffe://example.org/client").svid(), certs.ca.bundle_set()
    )

    async def dial(port: int) -> x509.Certificate:
        with trio.fail_after(WAIT):
            stream = await meshtls.connect(
                "127.0.0.1", port, source=client, authorize=meshtls.authorize_id(WEB)
            )
        async with stream:
            return stream.peer.leaf

    async def drop(stream: meshtls.MeshStream) -> None:
        pass

    async with running(WorkloadApiSource(server.address)) as source, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                drop,
                0,
                host="127.0.0.1",
                source=source,
                authorize=meshtls.authorize_member_of("example.org"),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        assert await dial(port) == certs.web.leaf
        server.push(certs.state(certs.web2))
        await next_identity(source, 1)
        assert await dial(port) == certs.web2.leaf
        nursery.cancel_scope.cancel()


async def test_spiffe_id_selects_among_several_svids(tmp_path: Path, certs: Certs) -> None:
    db = certs.ca.issue("spiffe://example.org/db")
    both = x509_response(
        [svid_message(certs.web, [certs.ca.certificate]), svid_message(db, [certs.ca.certificate])]
    )
    with WorkloadApiServer(tmp_path / "agent.sock", both) as server:
        async with running(WorkloadApiSource(server.address)) as source:
            assert str(source.contexts().svid.spiffe_id) == WEB  # the default: the first
        chosen = WorkloadApiSource(server.address, spiffe_id="spiffe://example.org/db")
        async with running(chosen):
            assert chosen.contexts().svid.leaf == db.leaf
        missing = WorkloadApiSource(
            server.address, spiffe_id="spiffe://example.org/nope", startup_timeout=0.3
        )
        with trio.fail_after(WAIT), pytest.raises(WorkloadApiError, match="no SVID for"):
            await missing.run()


# ---------------------------------------------------------------- the protocol (W-1, W-3)


async def test_W_1_every_request_carries_the_security_header(
    server: WorkloadApiServer, certs: Certs
) -> None:
    server.fail_next(grpc.StatusCode.UNAVAILABLE)
    async with running(WorkloadApiSource(server.address)) as source:
        server.end_streams()  # as when the agent restarts: we reconnect
        await wait_until(lambda: server.calls >= 3)
        server.push(certs.state(certs.web2))  # after the resent state, on the same stream
        with trio.fail_after(WAIT):
            while source.identity().svid.leaf != certs.web2.leaf:
                await source.cell.wait_newer(source.cell.generation)
        assert source.cell.generation == 2  # the same state again published nothing
    assert server.calls >= 3
    assert all(m.get("workload.spiffe.io") == "true" for m in server.metadata)


def test_W_1_the_test_server_refuses_a_request_without_the_header(
    server: WorkloadApiServer,
) -> None:
    """As the SPIRE agent does: so every test above proves that we send it."""
    with grpc.insecure_channel(f"unix:{server.path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_W_3_invalid_argument_is_not_retried(server: WorkloadApiServer) -> None:
    server.fail_always = grpc.StatusCode.INVALID_ARGUMENT
    source = WorkloadApiSource(server.address)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT), pytest.raises(WorkloadApiError, match="InvalidArgument"):
            await nursery.start(source.run)
    assert server.calls == 1
    assert source.cell.generation == 0


async def test_W_3_invalid_argument_after_start_up_ends_run(server: WorkloadApiServer) -> None:
    source = WorkloadApiSource(server.address)
    with (
        trio.fail_after(WAIT),
        pytest.RaisesGroup(pytest.RaisesExc(WorkloadApiError, match="not retrying")),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            server.fail_next(grpc.StatusCode.INVALID_ARGUMENT)
            server.end_streams()
    assert server.calls == 2
    assert source.cell.generation == 1  # the identity stays readable


async def test_W_3_unavailable_is_retried_with_backoff(server: WorkloadApiServer) -> None:
    server.fail_next(*[grpc.StatusCode.UNAVAILABLE] * 3)
    source = WorkloadApiSource(server.address, rng=random.Random(7))
    start = trio.current_time()
    async with running(source):
        assert server.calls == 4
    # three waits of 0.05..0.1, 0.1..0.2 and 0.2..0.4 s
    assert 0.35 <= trio.current_time() - start < 2.0


def test_backoff_doubles_with_jitter_up_to_backoff_max(tmp_path: Path) -> None:
    source = WorkloadApiSource(f"unix://{tmp_path}/s", backoff_max=1.0, rng=random.Random(1))
    for attempt, step in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        assert step / 2 <= source.backoff(attempt) <= step
    assert source.backoff(10_000) <= 1.0


async def test_W_3_server_down_at_start_up_then_up(tmp_path: Path, certs: Certs) -> None:
    server = WorkloadApiServer(tmp_path / "agent.sock", certs.state())
    source = WorkloadApiSource(server.address, startup_timeout=WAIT)
    try:
        async with trio.open_nursery() as nursery:

            async def start_after_a_failed_attempt() -> None:
                with logged("reconnecting") as retrying:
                    await retrying.wait()
                server.start()

            nursery.start_soon(start_after_a_failed_attempt)
            with trio.fail_after(WAIT):
                await nursery.start(source.run)
            assert source.cell.generation == 1
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    assert server.calls == 1


async def test_W_3_never_up_fails_at_startup_timeout(tmp_path: Path) -> None:
    source = WorkloadApiSource(f"unix://{tmp_path}/agent.sock", startup_timeout=0.5)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        with (
            trio.fail_after(WAIT),
            pytest.raises(WorkloadApiError, match=r"no identity .* within 0\.5s .*UNAVAILABLE"),
        ):
            await nursery.start(source.run)
    assert 0.5 <= trio.current_time() - start < 1.5
    assert not reader_threads()


# ---------------------------------------------------------------- threads


async def test_cancelling_run_stops_every_thread(tmp_path: Path, certs: Certs) -> None:
    baseline = threading.active_count()
    with WorkloadApiServer(tmp_path / "agent.sock", certs.state()) as server:
        async with running(WorkloadApiSource(server.address)):
            assert len(reader_threads()) == 1  # blocked in grpc, waiting for a message
        assert not reader_threads()  # joined before run returned
        server.fail_always = grpc.StatusCode.UNAVAILABLE
        with trio.move_on_after(WAIT) as scope, logged("reconnecting") as backing_off:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(WorkloadApiSource(server.address).run)
                await backing_off.wait()
                nursery.cancel_scope.cancel()  # cancelled while backing off
        assert not scope.cancelled_caught
        assert not reader_threads()
    with WorkloadApiServer(tmp_path / "silent.sock") as silent:  # a stream that never speaks
        source = WorkloadApiSource(silent.address)
        with trio.move_on_after(0.3):
            await source.run()
        assert not reader_threads()
        assert silent.calls == 1
        assert source.cell.generation == 0
    await wait_until(lambda: threading.active_count() <= baseline)  # grpc's threads end too


# ---------------------------------------------------------------- addresses (W-2)


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("unix:///run/spire/agent.sock", "unix:/run/spire/agent.sock"),
        ("unix:///tmp/a b", None),
        ("tcp://127.0.0.1:8081", "ipv4:127.0.0.1:8081"),
        ("tcp://[::1]:8081", "ipv6:[::1]:8081"),
        ("tcp://[2001:db8::1]:65535", "ipv6:[2001:db8::1]:65535"),
        ("unix:/run/agent.sock", None),  # not unix:///
        ("unix://host/run/agent.sock", None),  # a host
        ("unix://relative.sock", None),
        ("unix:///run/agent.sock?x=1", None),
        ("unix:///run/agent.sock#f", None),
        ("unix:///run/agent%2Esock", None),
        ("unix:///run/spire/", None),
        ("unix:///" + "a" * 107, None),  # over sun_path
        ("/run/spire/agent.sock", None),  # no scheme
        ("UNIX:///run/agent.sock", None),
        ("tcp://localhost:8081", None),  # a name, not an IP
        ("tcp://127.0.0.1", None),  # no port
        ("tcp://127.0.0.1:0", None),
        ("tcp://127.0.0.1:65536", None),
        ("tcp://127.0.0.1:+80", None),
        ("tcp://127.0.0.1:8081/", None),  # a path
        ("tcp://user@127.0.0.1:8081", None),
        ("tcp://::1:8081", None),  # IPv6 without brackets
        ("tcp://[127.0.0.1]:8081", None),
        ("tcp://[fe80::1%eth0]:8081", None),
        ("http://127.0.0.1:8081", None),
        ("", None),
    ],
)
def test_W_2_addresses(address: str, target: str | None) -> None:
    if target is not None:
        assert workload_api_target(address) == target
        assert WorkloadApiSource(address).address == address
        return
    with pytest.raises(meshtls.ConfigError, match=r"W-2") as info:
        WorkloadApiSource(address)
    assert "\n" not in str(info.value)


def test_W_2_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///run/spire/agent.sock")
    assert WorkloadApiSource().address == "unix:///run/spire/agent.sock"
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "/run/spire/agent.sock")
    with pytest.raises(meshtls.ConfigError, match=r"^SPIFFE_ENDPOINT_SOCKET '/run"):
        WorkloadApiSource()
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET")
    with pytest.raises(meshtls.ConfigError, match="SPIFFE_ENDPOINT_SOCKET is not set"):
        WorkloadApiSource()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"startup_timeout": 0}, "startup_timeout"),
        ({"backoff_max": 0.01}, "backoff_max"),
        ({"spiffe_id": "spiffe://Example.org/x"}, "spiffe_id"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float | str], match: str) -> None:
    with pytest.raises(meshtls.ConfigError, match=match):
        WorkloadApiSource("unix:///run/agent.sock", **kwargs)  # type: ignore[arg-type]


def test_split_der(certs: Certs) -> None:
    from .workload_server import der

    chain = der([certs.web.leaf, certs.ca.certificate])
    assert [len(d) for d in split_der(chain, what="x")] == [
        len(der([certs.web.leaf])),
        len(der([certs.ca.certificate])),
    ]
    assert split_der(b"", what="x") == []
    for bad in (b"\x31\x00", b"\x30", b"\x30\x05ab", b"\x30\x80", b"\x30\x85\x00\x00\x00\x00\x01"):
        with pytest.raises(ValueError, match="x:"):
            split_der(bad, what="x")


# ---------------------------------------------------------------- CRLs (P-4)


async def test_P_4_workload_api_delivers_crls(server: WorkloadApiServer, certs: Certs) -> None:
    ours = signed_crl(certs.ca, [certs.web2.leaf.serial_number], now=NOW)
    theirs = signed_crl(certs.other, [], now=NOW)
    server.push(x509_response(certs.state().svids, {}, [ours, theirs]))
    async with running(WorkloadApiSource(server.address)) as source:
        await wait_until(lambda: source.identity().crls == (ours, theirs))
        judged = judge_crl(
            load_crl(source.identity().crls[0]), certs.ca.certificate, now=NOW, skew=SKEW
        )
        assert judged.revoked == {certs.web2.leaf.serial_number}
        # A new CRL alone is a new state: published beside the same SVID.
        generation = source.cell.generation
        newer = signed_crl(certs.ca, [certs.web.leaf.serial_number], now=NOW)
        server.push(x509_response(certs.state().svids, {}, [newer]))
        with trio.fail_after(WAIT):
            new, identity = await source.cell.wait_newer(generation)
        assert identity.crls == (newer,)
        assert identity.svid.leaf == certs.web.leaf
        server.push(x509_response(certs.state().svids, {}, []))
        with trio.fail_after(WAIT):
            _, identity = await source.cell.wait_newer(new)
        assert identity.crls == ()


async def test_P_4_workload_api_unreadable_crl_is_left_out_once(
    server: WorkloadApiServer, certs: Certs
) -> None:
    good = signed_crl(certs.ca, [], now=NOW)
    reported: list[tuple[str, str]] = []
    state = x509_response(certs.state().svids, {}, [b"\x30\x03junk", good, b""])
    server.push(state)
    source = WorkloadApiSource(server.address, on_invalid=lambda r, d: reported.append((r, d)))
    with logged("CRLs left out") as warned:
        async with running(source):
            assert warned.is_set()
            assert source.identity().crls == (good,)  # the update stands, less the bad CRLs
            assert str(source.identity().svid.spiffe_id) == WEB
            generation = source.cell.generation
            server.push(state)  # the same answer again: not reported again
            server.push(x509_response(certs.state().svids, {}, [good]))  # in order, after it
            with trio.fail_after(WAIT):
                _, identity = await source.cell.wait_newer(generation)
            assert identity.crls == (good,)
    ((reason, detail),) = reported
    assert reason == "malformed_certificate"
    assert "2 of 3 CRLs unreadable" in detail
    assert "crl[0]" in detail
    assert "crl[2]" in detail
