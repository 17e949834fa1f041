"""Identity sources: the cell, FileSource watching its files, LocalCASource renewing."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import meshtls
from meshtls._errors import ConfigError
from meshtls._sources import FileSource, IdentityCell, LocalCASource, NoIdentityError
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
    first = meshtls.StaticSource(ca.issue().svid(), ca.bundle_set()).contexts()
    second = meshtls.StaticSource(ca.issue().svid(), ca.bundle_set()).contexts()
    async with trio.open_nursery() as nursery:
        got: list[int] = []

        async def waiter() -> None:
            generation, contexts = await cell.wait_newer(0)
            got.append(generation)
            assert contexts is second  # only the latest is seen

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        cell.publish(first)
        cell.publish(second)
    assert got == [2]
    assert cell.current() is second


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic-replace", "in-place-rewrite"])
async def test_file_source_picks_up_new_files_within_a_second(
    tmp_path: Path, clock: trio.testing.MockClock, atomic: bool
) -> None:
    ca = CA(now=datetime.now(UTC))
    write_identity(tmp_path, ca, "spiffe://example.org/one")
    source = file_source(tmp_path)
    assert str(source.contexts().svid.spiffe_id) == "spiffe://example.org/one"
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        write_identity(tmp_path, ca, "spiffe://example.org/two", atomic=atomic)
        start = trio.current_time()
        with trio.fail_after(1):
            generation, contexts = await source.cell.wait_newer(1)
        assert trio.current_time() - start <= 1
        assert generation == 2
        assert str(contexts.svid.spiffe_id) == "spiffe://example.org/two"
        nursery.cancel_scope.cancel()


async def test_file_source_keeps_the_old_identity_on_a_half_written_file(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    ca = CA(now=datetime.now(UTC))
    write_identity(tmp_path, ca, "spiffe://example.org/one")
    failures: list[tuple[str, str]] = []
    source = file_source(tmp_path, on_invalid=lambda reason, text: failures.append((reason, text)))
    old = source.contexts()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        full = ca.issue("spiffe://example.org/two").chain_pem
        (tmp_path / "svid.pem").write_bytes(full[: len(full) // 2])  # a writer caught mid-way
        await trio.sleep(2)  # several polls
        assert source.contexts() is old
        assert [reason for reason, _ in failures] == ["malformed_certificate"]  # once, not per poll
        write_identity(tmp_path, ca, "spiffe://example.org/two")  # the writer finishes
        with trio.fail_after(1):
            _, contexts = await source.cell.wait_newer(1)
        assert str(contexts.svid.spiffe_id) == "spiffe://example.org/two"
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
    first = source.contexts().svid
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
    assert again.contexts().bundles == source.contexts().bundles


def test_local_ca_source_refuses_another_trust_domain(tmp_path: Path) -> None:
    LocalCASource(tmp_path / "ca", "spiffe://meshtls.local/node")
    with pytest.raises(ConfigError, match="cannot issue"):
        LocalCASource(tmp_path / "ca", "spiffe://other.org/node")
