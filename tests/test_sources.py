"""Identity sources: the cell, FileSource watching its files, LocalCASource renewing.

Sources publish `Identity` values (our SVID and the bundles) and build no TLS context.
"""

from __future__ import annotations

import functools
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls._ca import LocalCA
from meshtls._errors import ConfigError
from meshtls._identity import Identity
from meshtls._sources import FileSource, IdentityCell, LocalCASource, NoIdentityError
from meshtls._spiffeid import SpiffeId
from meshtls.testing import CA

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio time that jumps whenever every task is blocked: hours pass in milliseconds."""
    return trio.testing.MockClock(autojump_threshold=0)


def cert_time() -> datetime:
    """Certificate time that follows Trio's clock (MockClock starts at 0)."""
    return T0 + timedelta(seconds=trio.current_time())


def write_identity(directory: Path, ca: CA, spiffe_id: str, *, atomic: bool = True) -> None:
    issued = ca.issue(spiffe_id)
    for name, data in (("svid.pem", issued.chain_pem), ("svid.key", issued.key_pem)):
        target = directory / name
        if atomic:
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        else:
            target.write_bytes(data)
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)


def file_source(directory: Path, **options: object) -> FileSource:
    return FileSource(
        cert=directory / "svid.pem",
        key=directory / "svid.key",
        bundle=directory / "bundle.pem",
        **options,  # type: ignore[arg-type]
    )


async def test_identity_cell() -> None:
    cell = IdentityCell()
    with pytest.raises(NoIdentityError):
        cell.current()
    ca = CA(now=datetime.now(UTC))
    first = Identity(ca.issue().svid(), ca.bundle_set())
    second = Identity(ca.issue().svid(), ca.bundle_set())
    async with trio.open_nursery() as nursery:
        got: list[int] = []

        async def waiter() -> None:
            generation, identity = await cell.wait_newer(0)
            got.append(generation)
            assert identity is second  # only the latest is seen

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        cell.publish(first)
        cell.publish(second)
    assert got == [2]
    assert cell.current() is second
    assert not first._built  # publishing builds no TLS context
    assert not second._built


def test_static_source_contexts_are_built_once_on_first_use() -> None:
    ca = CA(now=datetime.now(UTC))
    source = meshtls.StaticSource(ca.issue().svid(), ca.bundle_set())
    identity = source.identity()
    assert not identity._built
    contexts = identity.contexts()
    assert source.identity().contexts() is contexts  # shared by every handshake
    assert contexts.svid is identity.svid


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-replace", "in-place-rewrite"])
async def test_file_source_picks_up_new_files_within_a_second(
    tmp_path: Path, clock: trio.testing.MockClock, atomic: bool
) -> None:
    ca = CA(now=datetime.now(UTC))
    write_identity(tmp_path, ca, "spiffe://example.org/one")
    source = file_source(tmp_path)
    assert str(source.identity().svid.spiffe_id) == "spiffe://example.org/one"
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        write_identity(tmp_path, ca, "spiffe://example.org/two", atomic=atomic)
        start = trio.current_time()
        with trio.fail_after(1):
            generation, identity = await source.cell.wait_newer(1)
        assert trio.current_time() - start <= 1
        assert generation == 2
        assert str(identity.svid.spiffe_id) == "spiffe://example.org/two"
        nursery.cancel_scope.cancel()


async def test_file_source_keeps_the_old_identity_on_a_half_written_file(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    ca = CA(now=datetime.now(UTC))
    write_identity(tmp_path, ca, "spiffe://example.org/one")
    failures: list[tuple[str, str]] = []
    source = file_source(tmp_path, on_invalid=lambda reason, text: failures.append((reason, text)))
    old = source.identity()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        full = ca.issue("spiffe://example.org/two").chain_pem
        (tmp_path / "svid.pem").write_bytes(full[: len(full) // 2])  # a writer caught mid-way
        await trio.sleep(2)  # several polls
        assert source.identity() is old
        assert [reason for reason, _ in failures] == ["malformed_certificate"]  # once, not per poll
        write_identity(tmp_path, ca, "spiffe://example.org/two")  # the writer finishes
        with trio.fail_after(1):
            _, identity = await source.cell.wait_newer(1)
        assert str(identity.svid.spiffe_id) == "spiffe://example.org/two"
        nursery.cancel_scope.cancel()


def test_file_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"svid\.pem"):
        file_source(tmp_path)


async def test_local_ca_source_renews_at_exactly_the_expected_time(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    ttl = timedelta(hours=1)
    source = LocalCASource(
        tmp_path / "ca", "spiffe://meshtls.local/node", ttl, clock=cert_time, rng=random.Random(7)
    )
    first = source.identity().svid
    assert first.not_after - first.not_before == ttl
    expected = 0.5 * 3600 + random.Random(7).uniform(-0.05, 0.05) * 3600
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        _, renewed = await source.cell.wait_newer(1)
        assert trio.current_time() == pytest.approx(expected, abs=1e-6)
        # X.509 times have one-second resolution: the new SVID starts in that second
        assert renewed.svid.not_before == first.not_before + timedelta(seconds=int(expected))
        assert renewed.svid.spiffe_id == first.spiffe_id
        nursery.cancel_scope.cancel()
    # the CA directory is reused, not re-created
    again = LocalCASource(tmp_path / "ca", "spiffe://meshtls.local/other", clock=cert_time)
    assert again.identity().bundles == source.identity().bundles


async def test_local_ca_source_renew_issues_now_and_the_next_renewal_counts_from_it(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """`renew` (a revoked SVID replaced early) publishes a new SVID at once, and `run`
    renews next at half of *that* SVID's lifetime, not at the old one's due time."""
    ttl = timedelta(hours=1)
    source = LocalCASource(
        tmp_path / "ca", "spiffe://meshtls.local/node", ttl, clock=cert_time, jitter=0.0
    )
    first = source.identity().svid
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await trio.sleep(600)
        early = source.renew().svid
        assert source.identity().svid is early
        assert early.leaf.serial_number != first.leaf.serial_number
        assert early.not_before == first.not_before + timedelta(seconds=600)
        _, renewed = await source.cell.wait_newer(source.cell.generation)
        assert trio.current_time() == pytest.approx(600 + 1800, abs=1e-6)  # not 1800
        assert renewed.svid.not_before == early.not_before + timedelta(seconds=1800)
        nursery.cancel_scope.cancel()


def test_local_ca_source_refuses_another_trust_domain(tmp_path: Path) -> None:
    LocalCASource(tmp_path / "ca", "spiffe://meshtls.local/node")
    with pytest.raises(ConfigError, match="cannot issue"):
        LocalCASource(tmp_path / "ca", "spiffe://other.org/node")


async def test_B_7_a_bad_svid_file_does_not_hold_back_the_bundle_beside_it(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The operator drops root 2 from the bundle while the new cert file is unusable."""
    root1 = CA("example.org", now=datetime.now(UTC))
    root2 = CA("example.org", now=datetime.now(UTC), label="root 2")
    write_identity(tmp_path, root1, "spiffe://example.org/one")
    (tmp_path / "bundle.pem").write_bytes(root1.bundle_pem + root2.bundle_pem)
    reported: list[str] = []
    source = file_source(tmp_path, on_invalid=lambda reason, _: reported.append(reason))
    before = source.contexts()
    assert len(before.bundles[root1.trust_domain].authorities) == 2
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        (tmp_path / "svid.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        (tmp_path / "bundle.pem").write_bytes(root1.bundle_pem)
        with trio.fail_after(1):
            _, after = await source.cell.wait_newer(1)
        assert after.svid is before.svid  # the unusable SVID file: the old SVID stays
        assert after.bundles[root1.trust_domain].authorities == (root1.certificate,)
        assert reported == ["malformed_certificate"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("renew_fraction", "jitter"),
    [(1.5, 0.05), (0.97, 0.05), (0.03, 0.05), (-0.5, 0.05), (0.5, -0.1), (float("nan"), 0.05)],
)
def test_local_ca_source_refuses_a_renewal_point_outside_the_lifetime(
    tmp_path: Path, renew_fraction: float, jitter: float
) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        LocalCASource(
            tmp_path / "ca",
            "spiffe://meshtls.local/node",
            renew_fraction=renew_fraction,
            jitter=jitter,
        )
    assert not (tmp_path / "ca").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("name", "ttl", "match"),
    [
        ("NUL byte in the CA path", timedelta(minutes=10), "null"),
        ("300-byte path component", timedelta(minutes=10), "too long"),
        ("a ttl past year 9999", timedelta(days=999_999_999), "cannot issue"),
    ],
)
def test_local_ca_source_failures_are_one_config_error(
    tmp_path: Path, name: str, ttl: timedelta, match: str
) -> None:
    directory = {
        "NUL byte in the CA path": tmp_path / "c\0a",
        "300-byte path component": tmp_path / ("a" * 300),
    }.get(name, tmp_path / "ca")
    with pytest.raises(ConfigError, match=match) as info:
        LocalCASource(directory, "spiffe://meshtls.local/node", ttl)
    assert "\n" not in str(info.value)


def test_file_source_hostile_paths_are_one_config_error(tmp_path: Path) -> None:
    for cert in (tmp_path / "c\0ert.pem", tmp_path / ("a" * 300)):
        with pytest.raises(ConfigError) as info:
            FileSource(cert=cert, key=tmp_path / "k", bundle=tmp_path / "b")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_file_source_refuses_a_poll_interval_that_is_not_positive(
    tmp_path: Path, interval: float
) -> None:
    ca = CA(now=datetime.now(UTC))
    write_identity(tmp_path, ca, "spiffe://example.org/one")
    with pytest.raises(ConfigError, match="poll_interval"):
        file_source(tmp_path, poll_interval=interval)


async def test_connect_and_serve_without_a_node_take_live_sources(tmp_path: Path) -> None:
    """A LocalCASource serves, a FileSource dials: each identity's contexts built once."""
    server_source = LocalCASource(tmp_path / "ca", "spiffe://meshtls.local/server")
    ca = LocalCA.open(tmp_path / "ca")
    client = ca.issue(SpiffeId.parse("spiffe://meshtls.local/client"), now=datetime.now(UTC))
    ca.write_svid(client, tmp_path / "client")
    client_source = FileSource(
        cert=tmp_path / "client.pem", key=tmp_path / "client.key", bundle=tmp_path / "ca/bundle.pem"
    )

    async def greet(stream: meshtls.MeshStream) -> None:
        await stream.send_all(str(stream.peer.spiffe_id).encode())

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                greet,
                0,
                host="127.0.0.1",
                source=server_source,
                authorize=meshtls.authorize_member_of("meshtls.local"),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        for _ in range(2):
            with trio.fail_after(10):
                stream = await meshtls.connect(
                    "127.0.0.1",
                    port,
                    source=client_source,
                    authorize=meshtls.authorize_id("spiffe://meshtls.local/server"),
                )
                async with stream:
                    assert await stream.receive_some() == b"spiffe://meshtls.local/client"
        nursery.cancel_scope.cancel()
    for source in (server_source, client_source):
        assert len(source.identity()._built) == 1  # one context pair for both handshakes
