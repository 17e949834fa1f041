"""``[[write]]``: our SVID on disk for other programs, rewritten on rotation, and ``on_rotate``.

The rotations are real: a `LocalCASource` renewing on Trio's MockClock, or a `FileSource`
whose files are replaced. The ``on_rotate`` tests run real child processes (a small Python
script that records what it saw on disk) on the real clock, bounded to a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from prometheus_client import CollectorRegistry

from meshtls._config import (
    FileIdentity,
    LocalCAIdentity,
    NodeConfig,
    NodeSettings,
    WriteSettings,
    parse_config,
)
from meshtls._errors import ConfigError
from meshtls._identity import Identity
from meshtls._logs import formatter, record_fields
from meshtls._node import open_node
from meshtls._spiffeid import SpiffeId
from meshtls._write import SvidWriter, WriteMetrics, render, write_atomically, write_files
from meshtls.testing import CA
from tests.logfmt import parse_text

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE_ID = SpiffeId.parse("spiffe://meshtls.local/node")


def cert_time() -> datetime:
    return T0 + timedelta(seconds=trio.current_time())


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def events(caplog: pytest.LogCaptureFixture, what: str) -> list[dict[str, object]]:
    """The fields of each `what` event, read back through the logfmt formatter."""
    text = formatter("text")
    found = []
    for record in caplog.records:
        if record.getMessage() == what:
            fields = parse_text(text.format(record))
            assert fields.items() >= {k: str(v) for k, v in record_fields(record).items()}.items()
            found.append(fields)
    return found


async def until(condition: Callable[[], bool], what: str, *, polls: int = 5000) -> None:
    """Poll `condition` on Trio's clock (the writer works in a thread)."""
    for _ in range(polls):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def matches(cert_pem: bytes, key_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    key = load_pem_private_key(key_pem, password=None)
    return bool(cert.public_key() == key.public_key())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- the config table


def parse(tmp_path: Path, write: str) -> NodeConfig:
    ca = CA("example.org", now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node/a")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "out").mkdir(exist_ok=True)
    text = f'[identity]\ncert = "svid.pem"\nkey = "svid.key"\nbundle = "bundle.pem"\n{write}'
    return parse_config(text, base_dir=tmp_path, source="node.toml")


def test_write_table_reads_paths_modes_and_command(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        '[[write]]\ncert = "out/a.pem"\nkey = "out/a.key"\nbundle = "out/b.pem"\n'
        'cert_mode = "0640"\nkey_mode = "0400"\nbundle_mode = "644"\n'
        'on_rotate = ["systemctl", "reload", "x"]\non_rotate_timeout = "3s"\n'
        '[[write]]\nbundle = "out/only-bundle.pem"\n',
    )
    first, second = config.write
    assert first == WriteSettings(
        cert=tmp_path / "out/a.pem",
        key=tmp_path / "out/a.key",
        bundle=tmp_path / "out/b.pem",
        cert_mode=0o640,
        key_mode=0o400,
        bundle_mode=0o644,
        on_rotate=("systemctl", "reload", "x"),
        on_rotate_timeout=timedelta(seconds=3),
    )
    assert second == WriteSettings(bundle=tmp_path / "out/only-bundle.pem")
    assert (second.key_mode, second.cert_mode, second.on_rotate) == (0o600, 0o644, ())


@pytest.mark.parametrize(
    ("write", "message"),
    [
        ("[[write]]\n", r"\[\[write\]\] #1: writes nothing: give at least one of cert, key"),
        (
            '[[write]]\ncert = "out/a.pem"\non_rotate = "systemctl reload x"\n',
            r"\[\[write\]\] #1 on_rotate: expected an array of strings.*runs none",
        ),
        ('[[write]]\ncert = "out/a.pem"\non_rotate = []\n', r"on_rotate: .* is empty"),
        ('[[write]]\ncert = "out/a.pem"\non_rotate = ["x", ""]\n', r"item 2: .*empty string"),
        ('[[write]]\ncert = "out/a.pem"\non_rotate = ["x", 1]\n', r"item 2: .*the integer 1"),
        ('[[write]]\ncert = "out/a.pem"\ncert_mode = "rw-r--r--"\n', r"cert_mode: .*octal"),
        ('[[write]]\ncert = "out/a.pem"\ncert_mode = "0800"\n', r"cert_mode: .*octal"),
        ('[[write]]\ncert = "out/a.pem"\ncert_mode = 644\n', r'cert_mode: expected .*"0644"'),
        ('[[write]]\ncert = "out/a.pem"\nkey_mode = "0600"\n', r"key_mode: without key nothing"),
        ('[[write]]\ncert = "out/a.pem"\non_rotate_timeout = "5s"\n', r"without on_rotate"),
        ('[[write]]\ncert = "nowhere/a.pem"\n', r"#1 cert: no such directory: .*nowhere"),
        ('[[write]]\ncert = "out"\n', r"cert: .*out.* is a directory"),
        ('[[write]]\ncert = "out/a.pem"\nkey = "out/a.pem"\n', r"key: is the same file as cert"),
        ('[[write]]\ncert = "svid.pem"\n', r"cert: is \[identity\] cert, which the node reads"),
        (
            '[[write]]\ncert = "out/a.pem"\n[[write]]\nbundle = "out/a.pem"\n',
            r"#2 bundle: is also written by \[\[write\]\] #1 cert",
        ),
        (
            '[[write]]\ncert = "out/a.pem"\nkey_mod = "0644"\n',
            r"unknown key; did you mean 'key_mode'",
        ),
        ('[write]\ncert = "out/a.pem"\n', r"expected \[\[write\]\]"),
    ],
)
def test_write_table_errors_are_one_line(tmp_path: Path, write: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse(tmp_path, write)
    assert str(caught.value).startswith("node.toml: ")
    assert "\n" not in str(caught.value)


def test_write_settings_built_by_hand_are_checked() -> None:
    with pytest.raises(ConfigError, match="at least one of cert, key or bundle"):
        WriteSettings()
    with pytest.raises(ConfigError, match="key_mode must be a permission mode"):
        WriteSettings(key=Path("/x"), key_mode=0o1777)
    with pytest.raises(ConfigError, match="on_rotate_timeout must be longer than 0s"):
        WriteSettings(key=Path("/x"), on_rotate=("x",), on_rotate_timeout=timedelta(0))


# ---------------------------------------------------------------- what is written, and how


def test_render_writes_chain_pkcs8_key_and_only_our_own_roots() -> None:
    ours, partner = CA("example.org", now=T0), CA("partner.org", now=T0)
    issuing = ours.intermediate()
    issued = issuing.issue("spiffe://example.org/node")
    files = render(Identity(issued.svid(), ours.bundle_set(partner)))
    assert x509.load_pem_x509_certificates(files.cert) == [issued.leaf, issuing.certificate]
    assert files.key.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert matches(files.cert, files.key)
    assert x509.load_pem_x509_certificates(files.bundle) == [ours.certificate]  # no partner.org


def test_write_atomically_sets_the_mode_and_a_failure_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "svid.key"
    write_atomically(target, b"one", 0o600)
    write_atomically(target, b"two", 0o640)
    assert (target.read_bytes(), mode(target)) == (b"two", 0o640)
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path / "dir", b"three", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "svid.key"]  # no temp left


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader spinning on the file while it is replaced 40 times sees old or new, whole."""
    target = tmp_path / "svid.pem"
    versions = [bytes([65 + i]) * 200_000 for i in range(4)]
    write_atomically(target, versions[0], 0o644)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(40):
            write_atomically(target, versions[index % 4], 0o644)
    finally:
        stop.set()
        reader.join()
    assert seen
    assert all(data in versions for data in seen), "a reader saw a partial file"


def test_a_reader_that_sees_the_new_cert_also_sees_its_key(tmp_path: Path) -> None:
    """Reading cert then key while 60 SVIDs replace each other: never a cert newer than its key.

    The writer replaces the key before the cert, so the only mismatch a reader can meet is
    an old cert beside a newer key (it reads again), never a new cert beside an old key.
    """
    ca = CA("example.org", now=T0)
    rendered = [
        render(Identity(ca.issue("spiffe://example.org/node").svid(), ca.bundle_set()))
        for _ in range(60)
    ]
    generation = {files.cert: index for index, files in enumerate(rendered)}
    generation.update({files.key: index for index, files in enumerate(rendered)})
    cert, key = tmp_path / "svid.pem", tmp_path / "svid.key"
    settings = WriteSettings(cert=cert, key=key)
    write_files(settings, rendered[0])
    pairs: list[tuple[int, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen_cert = cert.read_bytes()
            pairs.append((generation[seen_cert], generation[key.read_bytes()]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for files in rendered[1:]:
            write_files(settings, files)
    finally:
        stop.set()
        reader.join()
    assert len({c for c, _ in pairs}) > 10  # the reader met many generations
    newer_cert = [(c, k) for c, k in pairs if k < c]
    assert not newer_cert, f"a reader saw a new cert beside an old key {len(newer_cert)} times"


# ---------------------------------------------------------------- in the node, on rotation


def local_ca_config(tmp_path: Path, *write: WriteSettings) -> NodeConfig:
    return NodeConfig(
        identity=LocalCAIdentity(directory=tmp_path / "ca", spiffe_id=NODE_ID),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
        write=write,
    )


async def test_files_are_written_at_start_and_on_every_renewal(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The files follow the local CA's renewals (every ~5 min of a 10 min ttl) on MockClock.

    The writer writes in a worker thread, during which the autojump clock may already jump
    to the next renewal: so each step waits for the files to catch up with the node.
    """
    out = tmp_path / "out"
    out.mkdir()
    cert, key, bundle = out / "svid.pem", out / "svid.key", out / "b.pem"
    settings = WriteSettings(cert=cert, key=key, bundle=bundle)
    async with open_node(local_ca_config(tmp_path, settings), clock=cert_time) as node:
        count = node.registry.get_sample_value
        # written before the node was ready: the files are there (a renewal may be on its way)
        assert x509.load_pem_x509_certificates(cert.read_bytes())
        assert bundle.read_bytes() == render(node.identity()).bundle
        await until(lambda: matches(cert.read_bytes(), key.read_bytes()), "cert and key match")
        assert (mode(cert), mode(key), mode(bundle)) == (0o644, 0o600, 0o644)
        serials = set()
        for renewal in range(3):
            before = node.identity()
            while node.identity() is before:
                await node.changed()  # the local CA's renewal
            active = node.identity()
            written = render(active)
            await until(lambda: cert.read_bytes() == written.cert, f"renewal {renewal}")  # noqa: B023
            assert key.read_bytes() == written.key  # the key was replaced first
            assert matches(cert.read_bytes(), key.read_bytes())
            serials.add(active.svid.leaf.serial_number)
        assert len(serials) == 3
        await until(  # start + 3 renewals (counted once the worker thread returns)
            lambda: (count("meshtls_svid_writes_total", {"result": "ok"}) or 0) >= 4, "counted"
        )
        assert count("meshtls_svid_writes_total", {"result": "error"}) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b.pem", "svid.key", "svid.pem"]


async def test_a_new_bundle_alone_is_written_and_federated_roots_are_not(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """A FileSource whose bundle file is replaced (same SVID): the bundle file follows."""
    ca, partner, next_root = (
        CA(td, now=T0) for td in ("example.org", "partner.org", "example.org")
    )
    issued = ca.issue("spiffe://example.org/node", ttl=timedelta(minutes=50))
    ids, out = tmp_path / "id", tmp_path / "out"
    ids.mkdir()
    out.mkdir()
    (ids / "svid.pem").write_bytes(issued.chain_pem)
    (ids / "svid.key").write_bytes(issued.key_pem)
    (ids / "bundle.pem").write_bytes(ca.bundle_pem)
    (ids / "partner.pem").write_bytes(partner.bundle_pem)
    config = NodeConfig(
        identity=FileIdentity(
            cert=ids / "svid.pem",
            key=ids / "svid.key",
            bundle=ids / "bundle.pem",
            federated={"partner.org": ids / "partner.pem"},
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
        write=(WriteSettings(bundle=out / "bundle.pem", on_rotate=()),),
    )
    async with open_node(config, clock=cert_time) as node:
        assert (out / "bundle.pem").read_bytes() == ca.bundle_pem  # partner.org left out
        replace_file(ids / "bundle.pem", ca.bundle_pem + next_root.bundle_pem)  # a CA rollover
        await node.changed()
        count = node.registry.get_sample_value
        await until(lambda: count("meshtls_svid_writes_total", {"result": "ok"}) == 2, "written")
        assert (out / "bundle.pem").read_bytes() == ca.bundle_pem + next_root.bundle_pem
        assert node.identity().svid.leaf == issued.leaf  # the SVID did not change


async def test_a_write_failure_is_one_error_event_and_a_count_not_a_dead_node(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    missing = tmp_path / "gone"
    settings = WriteSettings(cert=missing / "svid.pem", key=missing / "svid.key")
    async with open_node(local_ca_config(tmp_path, settings), clock=cert_time) as node:
        count = node.registry.get_sample_value
        assert node.ready
        assert (count("meshtls_svid_writes_total", {"result": "error"}) or 0) >= 1
        failed = events(caplog, "SVID files not written")[0]
        assert failed["level"] == "error"
        assert failed["write"] == "1"
        assert failed["error"] == "No such file or directory"
        assert "traceback" not in failed
        missing.mkdir()
        await until(lambda: count("meshtls_svid_writes_total", {"result": "ok"}) == 1, "retry")
        assert matches((missing / "svid.pem").read_bytes(), (missing / "svid.key").read_bytes())
        assert node.ready


async def test_a_failed_write_is_retried_with_a_doubling_backoff(
    tmp_path: Path, clock: trio.testing.MockClock, fixed: Fixed
) -> None:
    missing = tmp_path / "later"
    settings = WriteSettings(key=missing / "svid.key")
    registry = CollectorRegistry()
    writer = SvidWriter(settings, fixed, WriteMetrics(registry, prefix="meshtls"), name="1")
    attempts: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        attempts.append(trio.current_time())
        for _ in range(4):
            await writer.settled()
            attempts.append(trio.current_time())
        missing.mkdir()
        await writer.settled()
        attempts.append(trio.current_time())
        nursery.cancel_scope.cancel()
    assert attempts == [0, 1, 3, 7, 15, 31]  # each failure waits twice as long as the last
    count = registry.get_sample_value
    assert count("meshtls_svid_writes_total", {"result": "error"}) == 5
    assert count("meshtls_svid_writes_total", {"result": "ok"}) == 1
    assert mode(missing / "svid.key") == 0o600


async def test_the_metric_families_follow_the_node_prefix(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    WriteMetrics(registry, prefix="mtls")
    names = {metric.name for metric in registry.collect()}
    assert names == {"mtls_svid_writes", "mtls_on_rotate"}


# ---------------------------------------------------------------- on_rotate, real processes

RECORDER = """
import json, os, stat, sys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
out, record = sys.argv[1], sys.argv[2]
cert = x509.load_pem_x509_certificates(open(os.path.join(out, "svid.pem"), "rb").read())[0]
key = load_pem_private_key(open(os.path.join(out, "svid.key"), "rb").read(), None)
seen = {
    "serial": cert.serial_number,
    "match": cert.public_key() == key.public_key(),
    "key_mode": stat.S_IMODE(os.stat(os.path.join(out, "svid.key")).st_mode),
    "stdin": sys.stdin.read(),
}
with open(record, "a") as f:
    f.write(json.dumps(seen) + "\\n")
"""


def records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def replace_file(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


async def test_on_rotate_runs_after_each_write_and_sees_a_matching_cert_and_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    ca = CA("example.org", now=datetime.now(UTC))
    first = ca.issue("spiffe://example.org/node/a")
    ids, out = tmp_path / "id", tmp_path / "out"
    ids.mkdir()
    out.mkdir()
    (ids / "svid.pem").write_bytes(first.chain_pem)
    (ids / "svid.key").write_bytes(first.key_pem)
    (ids / "bundle.pem").write_bytes(ca.bundle_pem)
    script, record = tmp_path / "recorder.py", tmp_path / "seen.jsonl"
    script.write_text(RECORDER)
    config = NodeConfig(
        identity=FileIdentity(
            cert=ids / "svid.pem", key=ids / "svid.key", bundle=ids / "bundle.pem"
        ),
        node=NodeSettings(listen=("127.0.0.1", 0), metrics=None),
        write=(
            WriteSettings(
                cert=out / "svid.pem",
                key=out / "svid.key",
                on_rotate=(sys.executable, str(script), str(out), str(record)),
            ),
        ),
    )
    with trio.fail_after(20):
        async with open_node(config) as node:
            await until(lambda: len(records(record)) == 1, "the command after the first write")
            assert node.ready
            second = ca.issue("spiffe://example.org/node/a")
            replace_file(ids / "svid.key", second.key_pem)
            replace_file(ids / "svid.pem", second.chain_pem)
            count = node.registry.get_sample_value
            await until(
                lambda: count("meshtls_on_rotate_total", {"result": "ok"}) == 2,
                "the command after the rotation",
            )
    assert records(record) == [
        {"serial": first.leaf.serial_number, "match": True, "key_mode": 0o600, "stdin": ""},
        {"serial": second.leaf.serial_number, "match": True, "key_mode": 0o600, "stdin": ""},
    ]
    finished = events(caplog, "on_rotate command finished")
    assert [(e["level"], e["exit"], e["command"]) for e in finished] == [
        ("info", "0", sys.executable)
    ] * 2


class Fixed:
    """One identity that never changes: a writer's source without a node."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def identity(self) -> Identity:
        return self._identity

    async def changed(self) -> NoReturn:
        await trio.sleep_forever()


@pytest.fixture
def fixed() -> Fixed:
    ca = CA("example.org", now=datetime.now(UTC))
    return Fixed(Identity(ca.issue("spiffe://example.org/node").svid(), ca.bundle_set()))


SLEEPER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(30)
"""


def gone(pid: int) -> bool:
    """The process has ended (a zombie left for an init that does not reap counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}


async def test_on_rotate_past_its_timeout_is_killed_with_its_children(
    tmp_path: Path, fixed: Fixed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    script, pid_file = tmp_path / "sleeper.py", tmp_path / "child.pid"
    script.write_text(SLEEPER)
    settings = WriteSettings(
        cert=tmp_path / "svid.pem",
        on_rotate=(sys.executable, str(script), str(pid_file)),
        on_rotate_timeout=timedelta(milliseconds=600),
    )
    registry = CollectorRegistry()
    writer = SvidWriter(settings, fixed, WriteMetrics(registry, prefix="meshtls"), name="1")
    started = time.monotonic()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.settled()
            nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 2
    assert registry.get_sample_value("meshtls_on_rotate_total", {"result": "timeout"}) == 1
    (timed_out,) = events(caplog, "on_rotate command timed out and was killed")
    assert (timed_out["level"], timed_out["timeout"]) == ("error", "0.6s")
    grandchild = int(pid_file.read_text())
    for _ in range(100):
        if gone(grandchild):
            break
        await trio.sleep(0.01)
    assert gone(grandchild), "the command's own child outlived the timeout"


async def test_on_rotate_failures_are_one_event_each(
    tmp_path: Path, fixed: Fixed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    registry = CollectorRegistry()
    metrics = WriteMetrics(registry, prefix="meshtls")
    for index, command in enumerate(
        [
            (sys.executable, "-c", "raise SystemExit(3)"),
            (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"),
            (str(tmp_path / "no-such-program"),),
        ]
    ):
        settings = WriteSettings(cert=tmp_path / f"svid{index}.pem", on_rotate=command)
        writer = SvidWriter(settings, fixed, metrics, name=str(index))
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                await writer.settled()
                nursery.cancel_scope.cancel()
    failed = events(caplog, "on_rotate command failed")
    assert [(e["level"], e.get("exit"), e.get("signal")) for e in failed] == [
        ("error", "3", None),
        ("error", None, "SIGTERM"),
    ]
    (missing,) = events(caplog, "on_rotate command could not start")
    assert missing["error"] == "No such file or directory"
    count = registry.get_sample_value
    assert count("meshtls_on_rotate_total", {"result": "failed"}) == 2
    assert count("meshtls_on_rotate_total", {"result": "error"}) == 1
    assert count("meshtls_svid_writes_total", {"result": "ok"}) == 3
