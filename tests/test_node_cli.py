"""`meshtls node` as a real subprocess: logs, health, metrics, signals, and start-up errors.

Every node listens on port 0 (never the default 8443/9464) and the tests read the bound
ports from its ``node ready`` log line. Every wait is bounded and every process is killed
and reaped on the way out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import meshtls
from meshtls._ca import LocalCA
from meshtls._config import parse_config
from meshtls._node import open_node
from meshtls.testing import CA

from .logfmt import PARSE
from .test_reload import is_open

NODE_ID: Final = "spiffe://meshtls.local/node"
CLIENT_ID: Final = "spiffe://meshtls.local/client"
WAIT: Final = 15.0  # seconds: the bound on any one wait for the node
SLACK: Final = 3.0  # seconds a node may take to exit beyond its shutdown timeout


def local_ca_toml(shutdown_timeout: str = "5s") -> str:
    """The embedded default's identity (a local CA in ./ca), on port 0 only."""
    return f"""
[identity]
local_ca = "ca"
spiffe_id = "{NODE_ID}"
ttl = "10m"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
shutdown_timeout = "{shutdown_timeout}"
"""


def node_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshtls", "node", *args]


def child_env() -> dict[str, str]:
    """Our environment without anything that could change what the node reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPIFFE_", "MESHTLS_"))}
    env.pop("PYTHONWARNINGS", None)
    return env


class Lines:
    """The lines of a child's stderr, read as they come; every line read is kept."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._eof = False
        self.seen: list[str] = []

    async def next(self) -> str | None:
        """The next line, or None at end of file."""
        while b"\n" not in self._buffer and not self._eof:
            chunk = await self._stream.receive_some()
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text

    async def until(self, wanted: Callable[[str], bool]) -> str:
        """Read up to and including the first line for which `wanted` is true."""
        while (line := await self.next()) is not None:
            if wanted(line):
                return line
        raise AssertionError(f"stderr ended without the line wanted; it said: {self.seen}")

    async def rest(self) -> list[str]:
        """Read to end of file; return every line read so far."""
        while await self.next() is not None:
            pass
        return self.seen


@asynccontextmanager
async def node_process(cwd: Path, *args: str) -> AsyncIterator[tuple[trio.Process, Lines]]:
    """`meshtls node ARGS` in `cwd`, with stderr piped; killed and reaped on the way out."""
    process = await trio.lowlevel.open_process(
        node_command(*args),
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        yield process, Lines(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stderr.aclose()


MESSAGE: Final = PARSE


def bound_ports(ready: dict[str, object]) -> dict[str, int]:
    """The listeners of a ``node ready`` event (``listen.mesh=127.0.0.1:P ...``), by name."""
    listen = ready["listen"]
    assert isinstance(listen, dict), ready
    ports: dict[str, int] = {}
    for name, address in listen.items():
        host, _, port = str(address).rpartition(":")
        assert host == "127.0.0.1", ready
        ports[str(name)] = int(port)
    return ports


def sample(text: str, name: str, **labels: str) -> float | None:
    """One series of a Prometheus text scrape, or None when it is not there."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def check_endpoints(metrics_port: int) -> None:
    """/readyz and /healthz answer 200; /metrics gives the expiry of the fresh 10m SVID."""
    base = f"http://127.0.0.1:{metrics_port}"
    async with httpx.AsyncClient(timeout=WAIT) as http:
        assert (await http.get(f"{base}/readyz")).status_code == 200
        assert (await http.get(f"{base}/healthz")).status_code == 200
        scrape = await http.get(f"{base}/metrics")
    assert scrape.status_code == 200
    expiry = sample(scrape.text, "meshtls_certificate_expiry_seconds")
    assert expiry is not None, "meshtls_certificate_expiry_seconds is not in /metrics"
    assert 9 * 60 < expiry <= 10 * 60


async def wait_for_server_handshakes(metrics_port: int, count: int) -> None:
    """Until the node has accepted `count` verified peers (so it tracks them as live)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=WAIT) as http:
        with trio.fail_after(WAIT):
            while True:
                text = (await http.get(url)).text
                if sample(text, "meshtls_handshakes_total", role="server", result="ok") == count:
                    return
                await trio.sleep(0.02)


async def client_stream(ca_dir: Path, port: int, spiffe_id: str = CLIENT_ID) -> meshtls.MeshStream:
    """A verified connection to the node's mesh listener, with an SVID from its local CA."""
    ca = LocalCA.open(ca_dir)
    svid = ca.issue(meshtls.SpiffeId.parse(spiffe_id), ttl=timedelta(minutes=5))
    with trio.fail_after(WAIT):
        return await meshtls.connect(
            "127.0.0.1",
            port,
            source=meshtls.StaticSource(svid, ca.bundle()),
            authorize=meshtls.authorize_id(NODE_ID),
        )


async def assert_closed(stream: meshtls.MeshStream) -> None:
    """The node's side is gone: end of stream, or a broken connection."""
    with trio.fail_after(WAIT):
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:
            return
    assert data == b""


# ---------------------------------------------------------------- running and stopping


@dataclass(frozen=True)
class Stop:
    signum: signal.Signals
    log_format: str
    client_leaves: bool  # the live client closes during the drain; else it outstays it
    shutdown_timeout: float


STOPS: Final = {
    "SIGTERM-text-drained": Stop(signal.SIGTERM, "text", client_leaves=True, shutdown_timeout=10),
    "SIGINT-text-timed-out": Stop(signal.SIGINT, "text", client_leaves=False, shutdown_timeout=0.5),
    "SIGTERM-json-timed-out": Stop(
        signal.SIGTERM, "json", client_leaves=False, shutdown_timeout=0.5
    ),
}


@pytest.mark.parametrize("case", list(STOPS))
async def test_node_runs_serves_and_drains_on_a_signal(tmp_path: Path, case: str) -> None:
    """Ready line, /readyz, /metrics, a live peer, then a graceful drain and exit 0.

    A drained case: the peer leaves during the drain, so the node exits long before its
    (10 s) shutdown timeout. A timed-out case: the peer stays, so the node waits its
    (0.5 s) shutdown timeout, then closes the connection and still exits 0.
    """
    stop = STOPS[case]
    config = tmp_path / "node.toml"
    config.write_text(local_ca_toml(f"{int(stop.shutdown_timeout * 1000)}ms"))
    message = MESSAGE[stop.log_format]
    args = ("--config", str(config), "--log-format", stop.log_format)
    async with node_process(tmp_path, *args) as (process, lines):
        with trio.fail_after(WAIT):
            ready = await lines.until(lambda line: message(line)["msg"] == "node ready")
        assert message(ready)["id"] == NODE_ID
        ports = bound_ports(message(ready))
        assert set(ports) == {"mesh", "metrics"}
        assert 0 not in ports.values()
        await check_endpoints(ports["metrics"])

        async with await client_stream(tmp_path / "ca", ports["mesh"]) as stream:
            assert str(stream.peer.spiffe_id) == NODE_ID
            await wait_for_server_handshakes(ports["metrics"], 1)
            signalled = trio.current_time()
            process.send_signal(stop.signum)
            with trio.fail_after(WAIT):
                shutting = await lines.until(lambda line: message(line)["msg"] == "shutting down")
            fields = message(shutting)
            assert fields["signal"] == stop.signum.name, shutting
            assert fields["drain"] == f"{stop.shutdown_timeout:g}s", shutting
            assert fields["live"] in (1, "1"), shutting
            if stop.client_leaves:
                await stream.send_eof()  # the node's handler reads to the end and returns
            with trio.fail_after(stop.shutdown_timeout + SLACK):
                code = await process.wait()
            elapsed = trio.current_time() - signalled
            if not stop.client_leaves:
                # Cut by the node when the drain timed out: a reset, never a clean end (the
                # handler was stopped part-way).
                with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
        with trio.fail_after(WAIT):
            logged = await lines.rest()

    assert code == 0, logged
    if stop.client_leaves:
        assert elapsed < stop.shutdown_timeout / 2, "the node did not exit once drained"
    else:
        assert elapsed >= stop.shutdown_timeout * 0.9, "the node did not wait for the drain"
        (cut,) = [message(line) for line in logged if message(line)["msg"] == "drain cut short"]
        assert cut["closing"] in (1, "1"), cut  # the operator learns connections were cut
    for line in logged:  # every line is one event in the chosen format; no traceback
        message(line)
    assert not any("Traceback" in line for line in logged)


# ---------------------------------------------------------------- start-up failures


async def run_node(cwd: Path, *args: str) -> tuple[int, str, str]:
    """`meshtls node ARGS` to its end: (exit code, stdout, stderr)."""
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            node_command(*args),
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def one_error_line(code: int, stdout: str, stderr: str, codes: set[int]) -> str:
    """Check the failure shape every error shares; return its one line."""
    assert code in codes, f"exit {code}; stderr: {stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {stderr}"
    assert stderr.endswith("\n")
    (line,) = lines
    assert line.startswith("meshtls: error: "), line
    assert stdout == ""
    return line


IDENTITY: Final = f'[identity]\nlocal_ca = "ca"\nspiffe_id = "{NODE_ID}"\n'
PORT_0: Final = '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
BASE: Final = IDENTITY + PORT_0  # were a case wrongly accepted, it would still use port 0


@dataclass(frozen=True)
class Bad:
    toml: str | None  # None: no config file is written
    names: tuple[str, ...]  # each must appear in the error line


CONFIG_ERRORS: Final = {
    "unknown key": Bad(
        BASE + '[policy]\nmax_tll = "1h"\n', ("node.toml", "[policy] max_tll", "max_ttl")
    ),
    "bad duration": Bad(
        IDENTITY + PORT_0 + 'handshake_timeout = "10 seconds"\n',
        ("[node] handshake_timeout", "10 seconds"),
    ),
    "missing cert file": Bad(
        '[identity]\ncert = "missing.pem"\nkey = "node.key"\nbundle = "bundle.pem"\n' + PORT_0,
        ("[identity] cert", "missing.pem"),
    ),
    "TOML syntax error": Bad(
        IDENTITY + "[node]\nlisten = 127.0.0.1:0\n", ("node.toml", "line 5", "bad TOML")
    ),
    "unknown table": Bad(
        BASE + '[nodes]\nlisten = "127.0.0.1:0"\n', ("[nodes]", "unknown table", "[node]")
    ),
    "missing config file": Bad(None, ("node.toml", "no such config file")),
}


async def test_config_errors_exit_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """Each case runs in its own directory; all run at once to keep the test fast."""
    results: dict[str, tuple[int, str, str]] = {}

    async def one(index: int, name: str) -> None:
        case = CONFIG_ERRORS[name]
        directory = tmp_path / f"case{index}"
        directory.mkdir()
        (directory / "node.key").write_text("unused")
        (directory / "bundle.pem").write_text("unused")
        if case.toml is not None:
            (directory / "node.toml").write_text(case.toml)
        results[name] = await run_node(directory, "--config", "node.toml")

    async with trio.open_nursery() as nursery:
        for index, name in enumerate(CONFIG_ERRORS):
            nursery.start_soon(one, index, name)

    for name, case in CONFIG_ERRORS.items():
        line = one_error_line(*results[name], codes={2})
        for part in case.names:
            assert part in line, f"{name}: {part!r} not in {line!r}"
    assert not any((tmp_path / f"case{i}" / "ca").exists() for i in range(len(CONFIG_ERRORS)))


async def test_own_svid_over_max_ttl_exits_1_with_ttl_exceeded(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node", ttl=timedelta(hours=2))
    (tmp_path / "node.pem").write_bytes(issued.chain_pem)
    (tmp_path / "node.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "node.toml").write_text(
        '[identity]\ncert = "node.pem"\nkey = "node.key"\nbundle = "bundle.pem"\n'
        '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
        '[policy]\nmax_ttl = "1h"\n'
    )
    line = one_error_line(*await run_node(tmp_path, "--config", "node.toml"), codes={1})
    assert "ttl_exceeded" in line
    assert "spiffe://example.org/node" in line


#: name -> (node.toml, a part of the one error line). Each loads, then fails at start.
START_FAILURES: Final[dict[str, tuple[str, str]]] = {
    "a local-CA ttl past year 9999": (  # refused as the config loads (exit 2)
        IDENTITY + 'ttl = "999999999d"\n' + PORT_0 + '[policy]\nmax_ttl = "off"\n',
        "999999999d is over 365d",
    ),
    "a NUL byte in the CA path": (  # refused as the config loads (exit 2)
        f'[identity]\nlocal_ca = "c\\u0000a"\nspiffe_id = "{NODE_ID}"\n' + PORT_0,
        "has a NUL character",
    ),
}


async def test_start_up_failures_exit_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """A config that loads but fails at start: one line, exit 1 (2 if a loader refuses it).

    test_node_more.py runs more such cases through `open_node`, in-process.
    """
    results: dict[str, tuple[int, str, str]] = {}

    async def one(index: int, name: str) -> None:
        directory = tmp_path / f"case{index}"
        directory.mkdir()
        (directory / "node.toml").write_text(START_FAILURES[name][0])
        results[name] = await run_node(directory, "--config", "node.toml")

    async with trio.open_nursery() as nursery:
        for index, name in enumerate(START_FAILURES):
            nursery.start_soon(one, index, name)

    for name, (_, part) in START_FAILURES.items():
        line = one_error_line(*results[name], codes={1, 2})
        assert part in line, f"{name}: {part!r} not in {line!r}"
        assert line.isprintable()


# ---------------------------------------------------------------- ports already taken


def taken_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket | None:
    """A listening socket on `host`:`port`, or None if someone else already has the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.listen(1)
    return sock


async def test_an_expose_port_already_bound_fails_with_one_line(tmp_path: Path) -> None:
    holder = taken_port()
    assert holder is not None
    with holder:
        port = holder.getsockname()[1]
        (tmp_path / "node.toml").write_text(
            local_ca_toml()
            + f'\n[[expose]]\nlisten = "127.0.0.1:{port}"\nbackend = "127.0.0.1:9"\n'
        )
        result = await run_node(tmp_path, "--config", "node.toml")
    line = one_error_line(*result, codes={1, 2})
    assert f"127.0.0.1:{port}" in line
    assert "expose" in line  # names the listener


# ---------------------------------------------------------------- signals: start-up and SIGHUP


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_stop_signal_during_start_up_exits_0_at_once(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The node waits for its first SVID from a Workload API that accepts the connection and
    never answers; a stop signal then ends it within a second or two: exit 0, one line
    saying so, no traceback."""
    agent = tmp_path / "agent.sock"
    (tmp_path / "node.toml").write_text(f'[identity]\nworkload_api = "unix://{agent}"\n' + PORT_0)
    message = MESSAGE["text"]
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        await silent.bind(str(agent))
        silent.listen(1)
        async with node_process(tmp_path, "--config", "node.toml") as (process, lines):
            with trio.fail_after(WAIT):
                held, _ = await silent.accept()  # the node is waiting for its first SVID
            with held:
                process.send_signal(signal.SIGHUP)  # kept for later: it must not kill
                signalled = trio.current_time()
                process.send_signal(signum)
                with trio.fail_after(WAIT):
                    code = await process.wait()
                elapsed = trio.current_time() - signalled
                with trio.fail_after(WAIT):
                    logged = await lines.rest()
    assert code == 0, logged
    assert elapsed < 2.0, f"took {elapsed:.1f}s to stop"
    stops = [message(line) for line in logged if "stopped during start-up" in line]
    assert [fields["signal"] for fields in stops] == [signum.name], logged
    assert not any("Traceback" in line for line in logged), logged
    for line in logged:
        message(line)


async def test_a_second_stop_signal_ends_the_drain_at_once(tmp_path: Path) -> None:
    """During the drain a new connection is refused while the live one goes on, and a
    SIGHUP is one line saying it is ignored; that live client would hold the drain for its
    10 s, and a second SIGTERM ends it: exit 0."""
    (tmp_path / "node.toml").write_text(local_ca_toml("10s"))
    message = MESSAGE["text"]
    async with node_process(tmp_path, "--config", "node.toml") as (process, lines):
        with trio.fail_after(WAIT):
            ready = await lines.until(lambda line: message(line)["msg"] == "node ready")
        ports = bound_ports(message(ready))
        async with await client_stream(tmp_path / "ca", ports["mesh"]) as stream:
            await wait_for_server_handshakes(ports["metrics"], 1)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await lines.until(lambda line: message(line)["msg"] == "shutting down")
            with pytest.raises(OSError, match=r"Connection refused|all attempts"):
                await trio.open_tcp_stream("127.0.0.1", ports["mesh"])  # draining: refused
            assert await is_open(stream)  # while the live one goes on
            process.send_signal(signal.SIGHUP)  # too late to reload: said, not silent
            with trio.fail_after(WAIT):
                ignored = await lines.until(lambda line: "reload" in str(message(line)["msg"]))
            assert message(ignored)["msg"] == "reload ignored: the node is draining"
            signalled = trio.current_time()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                code = await process.wait()
            elapsed = trio.current_time() - signalled
            await assert_closed(stream)
        with trio.fail_after(WAIT):
            logged = await lines.rest()
    assert code == 0, logged
    assert elapsed < 2.0, f"took {elapsed:.1f}s"
    assert any(message(line)["msg"] == "stopping at once" for line in logged), logged
    assert not any("Traceback" in line for line in logged), logged


CLIENT_A: Final = "spiffe://meshtls.local/client-a"
CLIENT_B: Final = "spiffe://meshtls.local/client-b"


async def test_sighup_reload_tightens_authorize_and_closes_one_of_two_live_connections(
    tmp_path: Path,
) -> None:
    """The closing note's scenario: `pytest -s -k sighup_reload` prints the node's log.

    Two clients are live on the mesh listener; [authorize] is tightened to one of them and
    the node gets SIGHUP: the other is closed, counted and logged, one summary line. Then a
    config that does not load, and one that moves the listener: each is one error line, and
    the node serves on under the config in force.
    """
    config = tmp_path / "node.toml"
    config.write_text(local_ca_toml())
    message = MESSAGE["text"]
    async with node_process(tmp_path, "--config", str(config)) as (process, lines):
        with trio.fail_after(WAIT):
            ready = await lines.until(lambda line: message(line)["msg"] == "node ready")
        ports = bound_ports(message(ready))
        a = await client_stream(tmp_path / "ca", ports["mesh"], CLIENT_A)
        b = await client_stream(tmp_path / "ca", ports["mesh"], CLIENT_B)
        b_address = f"127.0.0.1:{b.socket.getsockname()[1]}"
        await wait_for_server_handshakes(ports["metrics"], 2)

        tightened = local_ca_toml() + f'\n[authorize]\nids = ["{CLIENT_A}"]\n'
        config.write_text(tightened)
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(WAIT):
            summary = message(
                await lines.until(lambda line: message(line)["msg"] == "config reloaded")
            )
        assert summary["closed"] in (1, "1"), summary
        assert summary["changed"] == "[authorize] ids", summary
        (closed,) = [message(line) for line in lines.seen if "no longer passes" in line]
        assert closed["listener"] == "mesh"
        assert closed["spiffe_id"] == CLIENT_B
        assert closed["peer"] == b_address
        assert closed["reason"] == "unauthorized"
        await assert_closed(b)
        await b.aclose()
        assert await is_open(a)
        async with httpx.AsyncClient(timeout=WAIT) as http:
            text = (await http.get(f"http://127.0.0.1:{ports['metrics']}/metrics")).text
        assert sample(text, "meshtls_peer_verification_failures_total", reason="unauthorized") == 1

        for broken, part in (
            ("[node\n", "bad TOML"),
            (tightened.replace("listen", "listen = '127.0.0.1:1'\n#", 1), "[node] listen"),
        ):
            config.write_text(broken)
            process.send_signal(signal.SIGHUP)
            with trio.fail_after(WAIT):
                refused = message(
                    await lines.until(lambda line: message(line)["msg"] == "reload refused")
                )
            assert part in str(refused["error"]), refused
        async with await client_stream(tmp_path / "ca", ports["mesh"], CLIENT_A) as again:
            assert await is_open(again)  # still serving, under the tightened config
        assert await is_open(a)

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            stopping = message(
                await lines.until(lambda line: message(line)["msg"] == "shutting down")
            )
        assert stopping["live"] in (1, "1"), stopping  # `a` is draining
        await a.send_eof()
        with trio.fail_after(WAIT):
            code = await process.wait()
            logged = await lines.rest()
        await a.aclose()
    print("\n".join(logged))
    assert code == 0, logged
    assert not any("Traceback" in line for line in logged), logged


async def test_sighup_keeps_the_tunnels_given_as_flags(tmp_path: Path) -> None:
    """A node started with ``--config`` and ``--forward`` flags reloads the file *and* its
    flags: a SIGHUP that tightens [authorize] is applied, not refused as "forward removed"."""
    config = tmp_path / "node.toml"
    config.write_text(local_ca_toml())
    flags = ("--forward", "127.0.0.1:0=127.0.0.1:9", "--expect", NODE_ID)
    message = MESSAGE["text"]
    async with node_process(tmp_path, "--config", str(config), *flags) as (process, lines):
        with trio.fail_after(WAIT):
            await lines.until(lambda line: message(line)["msg"] == "node ready")
        config.write_text(local_ca_toml() + f'\n[authorize]\nids = ["{CLIENT_A}"]\n')
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(WAIT):
            answer = message(
                await lines.until(
                    lambda line: message(line)["msg"] in ("config reloaded", "reload refused")
                )
            )
        assert answer["msg"] == "config reloaded", answer
        assert answer["changed"] == "[authorize] ids", answer
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            assert await process.wait() == 0


async def test_a_standalone_node_reads_its_messages_so_its_peers_are_never_held_up(
    tmp_path: Path,
) -> None:
    """`meshtls node` with ``queue_size = 2`` takes 20 messages from an embedded node: every
    send is confirmed (nobody reads a standalone node's inbox but the node itself)."""
    config = tmp_path / "node.toml"
    config.write_text(local_ca_toml() + "\n[mesh]\nqueue_size = 2\n")
    async with node_process(tmp_path, "--config", str(config)) as (process, lines):
        with trio.fail_after(WAIT):
            ready = await lines.until(lambda line: MESSAGE["text"](line)["msg"] == "node ready")
        mesh = bound_ports(MESSAGE["text"](ready))["mesh"]
        sender = tmp_path / "sender"
        sender.mkdir()
        toml = (
            f'[identity]\nlocal_ca = "{tmp_path / "ca"}"\nspiffe_id = "{CLIENT_ID}"\nttl = "10m"\n'
            '[node]\nlisten = "127.0.0.1:0"\nmetrics = "off"\n'
            f'[[peers]]\nid = "{NODE_ID}"\naddress = "127.0.0.1:{mesh}"\n'
        )
        async with open_node(parse_config(toml, base_dir=sender)) as node:
            with trio.fail_after(WAIT):
                for number in range(20):
                    await node.send(NODE_ID, f"message {number}", timeout=WAIT)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            assert await process.wait() == 0
