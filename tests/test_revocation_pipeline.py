"""P-4 in the verification pipeline and the streams: real TLS 1.3 over 127.0.0.1.

The revocation view is `tests.revocation_view.CacheView` (a real `RevocationCache` read by
`chain_status`); the test plays the prefetcher, storing what a fetch would have learned.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

import meshtls
from meshtls._ca import IssuedCertificate
from meshtls._config import NodeConfig, parse_config
from meshtls._metrics import NodeMetrics
from meshtls._node import _live_changes, needs_restart
from meshtls._revocation import RevocationPendingError, RevocationTarget, chain_targets
from meshtls._rotation import Rotation
from meshtls._svid import check_svid_offline
from meshtls._tunnel import expose, forward
from meshtls.testing import CA

from .meshnet import Mesh
from .revocation_view import CacheView
from .test_crl import T as CONFIG_T
from .test_crl import make_crl

HARD = meshtls.ValidationPolicy(revocation="hard-fail", hard_fail_wait=timedelta(seconds=5))
SOFT = meshtls.ValidationPolicy(revocation="soft-fail")
OFF = meshtls.ValidationPolicy(revocation="off")


@dataclass
class Net:
    """A mesh whose client SVID comes through an intermediate, with the issued chains kept."""

    mesh: Mesh = field(default_factory=Mesh)
    client_cert: IssuedCertificate = field(init=False)
    server_cert: IssuedCertificate = field(init=False)

    def __post_init__(self) -> None:
        self.client_cert = self.mesh.ca.intermediate().issue("spiffe://example.org/client")
        self.server_cert = self.mesh.ca.issue("spiffe://example.org/server")

    def source(self, issued: IssuedCertificate) -> meshtls.StaticSource:
        return meshtls.StaticSource(issued.svid(), self.mesh.bundles)

    def full(self, issued: IssuedCertificate) -> tuple[x509.Certificate, ...]:
        return (*issued.chain, self.mesh.ca.certificate)

    def targets(self, issued: IssuedCertificate) -> tuple[RevocationTarget, ...]:
        return chain_targets(self.full(issued))


@asynccontextmanager
async def server(
    net: Net,
    *,
    policy: meshtls.ValidationPolicy = SOFT,
    view: CacheView | None = None,
    handshake_timeout: float = 10.0,
) -> AsyncIterator[tuple[int, list[meshtls.HandshakeError], list[meshtls.MeshStream]]]:
    """`serve` on 127.0.0.1:0 with `view`; yields its port, its rejections, its streams."""
    refused: list[meshtls.HandshakeError] = []
    served: list[meshtls.MeshStream] = []

    async def echo(stream: meshtls.MeshStream) -> None:
        served.append(stream)
        while data := await stream.receive_some():
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            meshtls.serve,
            echo,
            0,
            host="127.0.0.1",
            source=net.source(net.server_cert),
            authorize=meshtls.authorize_member_of("example.org"),
            policy=policy,
            revocation=view,
            handshake_timeout=handshake_timeout,
            on_rejected=refused.append,
        )
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        yield listeners[0].socket.getsockname()[1], refused, served
        nursery.cancel_scope.cancel()


async def dial(
    net: Net,
    port: int,
    *,
    policy: meshtls.ValidationPolicy = SOFT,
    view: CacheView | None = None,
) -> meshtls.MeshStream:
    return await meshtls.connect(
        "127.0.0.1",
        port,
        source=net.source(net.client_cert),
        authorize=meshtls.authorize_any(),
        policy=policy,
        revocation=view,
    )


async def echoes(stream: meshtls.MeshStream) -> bool:
    """Whether the server echoes: False when it refused us (an error, never a clean EOF)."""
    try:
        await stream.send_all(b"ping")
        return await stream.receive_some() == b"ping"
    except trio.BrokenResourceError:
        return False


async def read_to_end(stream: meshtls.MeshStream) -> None:
    """Read until a clean end (returns) or an error (raises)."""
    while await stream.receive_some():
        pass


async def refused_by_server(net: Net, port: int, **kwargs: object) -> None:
    stream = await dial(net, port, **kwargs)  # type: ignore[arg-type]
    async with stream:
        assert not await echoes(stream)


# ---------------------------------------------------------------- verify_svid, no network


def test_P_4_verify_svid_refuses_a_revoked_leaf_naming_it_its_source_and_reason() -> None:
    net = Net()
    view = CacheView()
    now = net.mesh.now
    view.good(net.full(net.client_cert), now)
    record = view.revoke(net.targets(net.client_cert)[0], now)
    chain = net.client_cert.chain
    with pytest.raises(meshtls.VerificationError) as caught:
        meshtls.verify_svid(chain, net.mesh.bundles, now=now, revocation=view)
    assert caught.value.reason == "revoked"
    assert caught.value.rule == "P-4"
    detail = caught.value.detail
    assert detail.startswith("leaf")
    assert f"{net.client_cert.leaf.serial_number:#x}" in detail
    assert "keyCompromise" in detail
    assert f"ocsp from {record.origin}" in detail


def test_P_4_without_a_view_hard_fail_refuses_and_soft_fail_accepts() -> None:
    net = Net()
    chain, bundles, now = net.client_cert.chain, net.mesh.bundles, net.mesh.now
    with pytest.raises(meshtls.VerificationError) as caught:
        meshtls.verify_svid(chain, bundles, now=now, policy=HARD)
    assert caught.value.reason == "revocation_unknown"
    assert not isinstance(caught.value, RevocationPendingError)  # nothing to wait for
    meshtls.verify_svid(chain, bundles, now=now, policy=SOFT)
    meshtls.verify_svid(chain, bundles, now=now, policy=OFF)


def test_P_4_with_a_view_unknown_is_pending_under_hard_fail_and_accepted_under_soft_fail() -> None:
    net = Net()
    view = CacheView()
    chain, bundles, now = net.client_cert.chain, net.mesh.bundles, net.mesh.now
    with pytest.raises(RevocationPendingError) as caught:
        meshtls.verify_svid(chain, bundles, now=now, policy=HARD, revocation=view)
    assert caught.value.reason == "revocation_unknown"
    assert caught.value.targets == net.targets(net.client_cert)  # leaf and intermediate
    peer = meshtls.verify_svid(chain, bundles, now=now, policy=SOFT, revocation=view)
    assert peer.spiffe_id == meshtls.SpiffeId.parse("spiffe://example.org/client")


def test_P_4_mode_off_does_not_look_and_own_svid_checks_never_do() -> None:
    net = Net()
    view = CacheView()
    now = net.mesh.now
    view.revoke(net.targets(net.client_cert)[0], now)
    chain = net.client_cert.chain
    meshtls.verify_svid(chain, net.mesh.bundles, now=now, policy=OFF, revocation=view)
    check_svid_offline(chain, now=now, policy=HARD)
    net.client_cert.svid().check(net.mesh.bundles, now=now, policy=HARD)
    assert view.lookups == 0


# ---------------------------------------------------------------- the handshake, both roles


async def test_P_4_a_revoked_client_leaf_is_refused_by_the_server() -> None:
    net = Net()
    view = CacheView()
    view.good(net.full(net.client_cert), net.mesh.now)
    view.revoke(net.targets(net.client_cert)[0], net.mesh.now)
    async with server(net, view=view) as (port, refused, _):
        await refused_by_server(net, port)
    assert [e.reason for e in refused] == ["revoked"]
    assert "leaf" in refused[0].detail


async def test_P_4_a_revoked_server_leaf_is_refused_by_the_client() -> None:
    net = Net()
    view = CacheView()
    view.revoke(net.targets(net.server_cert)[0], net.mesh.now)
    async with server(net) as (port, _, _):
        with pytest.raises(meshtls.HandshakeError) as caught:
            await dial(net, port, view=view)
    assert caught.value.reason == "revoked"


async def test_P_4_a_revoked_intermediate_refuses_the_leaf_under_it() -> None:
    net = Net()
    view = CacheView()
    now = net.mesh.now
    view.good(net.full(net.client_cert), now)
    view.revoke(net.targets(net.client_cert)[1], now)  # the intermediate
    async with server(net, view=view) as (port, refused, _):
        await refused_by_server(net, port)
    assert [e.reason for e in refused] == ["revoked"]
    assert refused[0].detail.startswith("certificate 1")


async def test_P_4_soft_fail_accepts_an_unknown_status_counts_it_and_queues_a_fetch() -> None:
    net = Net()
    metrics = NodeMetrics(CollectorRegistry(), clock=net.mesh.clock)
    view = CacheView(metrics)
    async with server(net, view=view) as (port, refused, _):
        stream = await dial(net, port)
        async with stream:
            assert await echoes(stream)
    assert refused == []
    counted = metrics.registry.get_sample_value(
        "meshtls_revocation_checks_total", {"source": "cache", "result": "unknown"}
    )
    assert counted == 1
    assert view.queued == list(net.targets(net.client_cert))
    assert view.waits == []  # soft-fail never waits


async def test_P_4_hard_fail_waits_hard_fail_wait_then_refuses_revocation_unknown(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.5  # jumps only while every task waits (the fetch)
    net = Net()
    view = CacheView()
    async with server(net, view=view, policy=HARD, handshake_timeout=30) as (port, refused, _):
        started = trio.current_time()
        await refused_by_server(net, port)
        waited = trio.current_time() - started
    assert [e.reason for e in refused] == ["revocation_unknown"]
    assert "after waiting 5s" in refused[0].detail
    assert view.waits == [5.0]
    assert 5 <= waited < 30  # bounded by hard_fail_wait, well inside the handshake timeout


async def test_P_4_hard_fail_accepts_when_the_status_arrives_during_the_wait() -> None:
    net = Net()
    view = CacheView()

    async with (
        server(net, view=view, policy=HARD) as (port, refused, _),
        trio.open_nursery() as nursery,
    ):

        async def prefetcher() -> None:
            await view.waiting.wait()
            view.good(net.full(net.client_cert), net.mesh.now)

        nursery.start_soon(prefetcher)
        stream = await dial(net, port)
        async with stream:
            assert await echoes(stream)
    assert refused == []
    assert view.waits == [5.0]


async def test_P_4_a_hard_fail_client_waits_too_and_accepts_what_arrives() -> None:
    net = Net()
    view = CacheView()
    async with server(net) as (port, _, _), trio.open_nursery() as nursery:

        async def prefetcher() -> None:
            await view.waiting.wait()
            view.good(net.full(net.server_cert), net.mesh.now)

        nursery.start_soon(prefetcher)
        stream = await dial(net, port, view=view, policy=HARD)
        async with stream:
            assert await echoes(stream)
    assert view.waits == [5.0]


async def test_P_4_the_hard_fail_wait_counts_against_the_handshake_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0.5
    net = Net()
    view = CacheView()
    async with server(net, view=view, policy=HARD, handshake_timeout=3) as (port, refused, _):
        started = trio.current_time()
        await refused_by_server(net, port)
        waited = trio.current_time() - started
    assert [e.reason for e in refused] == ["handshake_timeout"]
    assert 3 <= waited < 5


async def test_P_4_mode_off_skips_the_lookup_on_both_roles() -> None:
    net = Net()
    view = CacheView()
    view.revoke(net.targets(net.client_cert)[0], net.mesh.now)
    view.revoke(net.targets(net.server_cert)[0], net.mesh.now)
    async with server(net, view=view, policy=OFF) as (port, refused, _):
        stream = await dial(net, port, view=view, policy=OFF)
        async with stream:
            assert await echoes(stream)
    assert refused == []
    assert view.lookups == 0


async def test_P_4_the_leaf_facts_cache_never_skips_revocation() -> None:
    net = Net()
    view = CacheView()
    view.good(net.full(net.client_cert), net.mesh.now)
    async with server(net, view=view) as (port, refused, _):
        stream = await dial(net, port)
        async with stream:
            assert await echoes(stream)
        view.revoke(net.targets(net.client_cert)[0], net.mesh.now)  # same leaf, now revoked
        await refused_by_server(net, port)
    assert [e.reason for e in refused] == ["revoked"]


# ---------------------------------------------------------------- live connections


async def test_P_4_close_revoked_resets_the_revoked_peer_and_leaves_another_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = Net()
    other = net.mesh.ca.issue("spiffe://example.org/other")  # no intermediate
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, clock=net.mesh.clock)
    rotation = Rotation(policy=SOFT, metrics=metrics, clock=net.mesh.clock)
    rotation.begin(meshtls.Identity(net.server_cert.svid(), net.mesh.bundles))

    async def tracked_echo(stream: meshtls.MeshStream) -> None:
        with rotation.track(stream, "server", listener="mesh"):
            while data := await stream.receive_some():
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            meshtls.serve,
            tracked_echo,
            0,
            host="127.0.0.1",
            source=rotation,
            authorize=meshtls.authorize_member_of("example.org"),
        )
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        revoked = await dial(net, port)
        kept = await meshtls.connect(
            "127.0.0.1",
            port,
            source=net.source(other),
            authorize=meshtls.authorize_any(),
        )
        assert await echoes(revoked)
        assert await echoes(kept)
        chains = rotation.live_chains()
        assert sorted(len(c) for c in chains) == [2, 3]

        assert rotation.close_revoked(net.targets(other)[0]) == 1  # the leaf of `kept`
        with pytest.raises(trio.BrokenResourceError):  # a reset, never a clean EOF
            await read_to_end(kept)
        assert await echoes(revoked)  # the other connection is untouched
        # an intermediate: every connection through it goes
        assert rotation.close_revoked(net.targets(net.client_cert)[1]) == 1
        with pytest.raises(trio.BrokenResourceError):
            await read_to_end(revoked)
        assert rotation.close_revoked(net.targets(net.client_cert)[1]) == 0
        await revoked.aclose()
        await kept.aclose()
        nursery.cancel_scope.cancel()
    counted = registry.get_sample_value(
        "meshtls_peer_verification_failures_total", {"reason": "revoked"}
    )
    assert counted == 2
    lines = [r for r in caplog.records if "revoked" in r.getMessage()]
    assert len(lines) == 2


def test_P_4_rotation_never_looks_up_revocation_for_our_own_svid() -> None:
    net = Net()
    metrics = NodeMetrics(CollectorRegistry(), clock=net.mesh.clock)
    rotation = Rotation(policy=HARD, metrics=metrics, clock=net.mesh.clock)
    rotation.begin(meshtls.Identity(net.server_cert.svid(), net.mesh.bundles))  # no refusal
    assert rotation.svid_problem is None


# ---------------------------------------------------------------- config


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """Real SVID files and two CRL files (PEM and DER) where the config's paths point."""
    ca = CA("example.org", now=CONFIG_T)
    issued = ca.issue("spiffe://example.org/node/a")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    crl = make_crl(ca, [issued.leaf.serial_number])
    (tmp_path / "ca.crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(Encoding.DER))
    (tmp_path / "junk.crl").write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n")
    (tmp_path / "crls").mkdir()
    return tmp_path


FILES = '[identity]\ncert = "svid.pem"\nkey = "svid.key"\nbundle = "bundle.pem"\n'


def parse(revocation: str, base_dir: Path) -> NodeConfig:
    return parse_config(FILES + "[revocation]\n" + revocation, base_dir=base_dir, source="n.toml")


def test_P_4_config_hard_fail_wait_and_crl_files_parse(conf_dir: Path) -> None:
    config = parse(
        'mode = "hard-fail"\nhard_fail_wait = "500ms"\ncrl_files = ["ca.crl.pem", "ca.crl"]\n',
        conf_dir,
    )
    assert config.policy.hard_fail_wait == timedelta(milliseconds=500)
    assert config.revocation.hard_fail_wait == timedelta(milliseconds=500)
    assert config.revocation.crl_files == (conf_dir / "ca.crl.pem", conf_dir / "ca.crl")
    default = parse("", conf_dir)
    assert default.policy.hard_fail_wait == timedelta(seconds=2)
    assert default.revocation.crl_files == ()
    assert parse('hard_fail_wait = "0s"\n', conf_dir).policy.hard_fail_wait == timedelta(0)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('hard_fail_wait = "61s"', "[revocation] hard_fail_wait: 1m1s is over 1m"),
        ('hard_fail_wait = "soon"', "[revocation] hard_fail_wait:"),
        ("hard_fail_wait = 2", "[revocation] hard_fail_wait: expected a duration string"),
        ('crl_files = "ca.crl"', "[revocation] crl_files: expected an array of CRL file paths"),
        ("crl_files = [1]", "[revocation] crl_files: item 1: expected an array"),
        ('crl_files = ["absent.crl"]', "[revocation] crl_files: no such file:"),
        ('crl_files = ["crls"]', "[revocation] crl_files:"),
        ('crl_files = ["junk.crl"]', "[revocation] crl_files:"),
        ('crl_files = ["svid.pem"]', "[revocation] crl_files:"),
    ],
)
def test_P_4_config_refuses_bad_revocation_values(conf_dir: Path, line: str, words: str) -> None:
    with pytest.raises(meshtls.ConfigError) as caught:
        parse(line + "\n", conf_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"n.toml: {words}"), message


def test_P_4_hard_fail_wait_is_bounded_in_the_policy_and_must_agree_in_a_config() -> None:
    for bad in (timedelta(seconds=-1), timedelta(seconds=61)):
        with pytest.raises(meshtls.ConfigError, match="hard_fail_wait"):
            meshtls.ValidationPolicy(hard_fail_wait=bad)
    meshtls.ValidationPolicy(hard_fail_wait=timedelta(seconds=60))


def test_P_4_a_reload_applies_hard_fail_wait_and_needs_a_restart_for_crl_files(
    conf_dir: Path,
) -> None:
    old = parse("", conf_dir)
    waits = parse('hard_fail_wait = "5s"\n', conf_dir)
    files = parse('crl_files = ["ca.crl"]\n', conf_dir)
    assert needs_restart(old, waits) == []
    assert _live_changes(old, waits) == ["[revocation] hard_fail_wait"]
    assert needs_restart(old, files) == ["[revocation] crl_files"]


# ---------------------------------------------------------------- tunnels


class Verdicts:
    """An `Observer` that keeps each handshake's rejection reason (None: accepted)."""

    def __init__(self) -> None:
        self.reasons: list[str | None] = []

    def handshake(self, role: str, *, seconds: float, error: meshtls.HandshakeError | None) -> None:
        self.reasons.append(error.reason if error else None)

    def opened(self, role: str) -> None:
        pass

    def closed(self, role: str) -> None:
        pass

    def began(self, access: object) -> None:
        pass

    def ended(self, access: object) -> None:
        pass


class ObservedView(CacheView):
    """A view that also observes the handshakes of the tunnel it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.verdicts = Verdicts()


async def through_tunnels(net: Net, expose_view: ObservedView, forward_view: ObservedView) -> bytes:
    """Plaintext -> forward -> expose -> echo backend; what comes back for one ping."""

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        backend = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        exposed = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                ("127.0.0.1", backend[0].socket.getsockname()[1]),
                source=net.source(net.server_cert),
                authorize=meshtls.authorize_member_of("example.org"),
                revocation=expose_view,
                observer=expose_view.verdicts,
            )
        )
        forwarded = await nursery.start(
            functools.partial(
                forward,
                ("127.0.0.1", 0),
                ("127.0.0.1", exposed[0].socket.getsockname()[1]),
                source=net.source(net.client_cert),
                authorize=meshtls.authorize_member_of("example.org"),
                revocation=forward_view,
                observer=forward_view.verdicts,
            )
        )
        client = await trio.open_tcp_stream("127.0.0.1", forwarded[0].socket.getsockname()[1])
        got = b""
        async with client:
            try:  # a refused tunnel resets the plaintext client
                await client.send_all(b"ping")
                await client.send_eof()
                while data := await client.receive_some():
                    got += data
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    return got


async def test_P_4_expose_and_forward_pass_revocation_through() -> None:
    net = Net()
    good, bad_client, bad_server = ObservedView(), ObservedView(), ObservedView()
    for view in (good, bad_client, bad_server):
        view.good(net.full(net.client_cert), net.mesh.now)
        view.good(net.full(net.server_cert), net.mesh.now)
    bad_client.revoke(net.targets(net.client_cert)[0], net.mesh.now)
    bad_server.revoke(net.targets(net.server_cert)[0], net.mesh.now)
    assert await through_tunnels(net, good, good) == b"ping"
    assert await through_tunnels(net, bad_client, good) == b""  # expose refuses the client
    assert "revoked" in bad_client.verdicts.reasons
    assert await through_tunnels(net, good, bad_server) == b""  # forward refuses the server
    assert bad_server.verdicts.reasons == ["revoked"]
