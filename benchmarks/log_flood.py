"""Log flood: a real ``meshtls node`` under a slowloris flood; how much does it log?

    python benchmarks/log_flood.py [--seconds 45] [--connections 300]

Starts ``meshtls node`` as a subprocess (an embedded local CA in a temporary directory,
every listener on 127.0.0.1 port 0) and reads its bound mesh port from the ``node ready``
line. Then `--connections` slowloris workers, all from 127.0.0.1, work in a loop for
`--seconds`. Each one connects, sends the first two bytes of a TLS record and stalls
for up to 0.5 s. Then it either closes or keeps stalling, so the node sees connections
that close during the handshake and connections that hold a handshake place (evictions
at ``max_handshakes``). Then SIGTERM. Printed: the connections made, and the node's
stderr, as lines (each level counted) and bytes. Exits 1 if the node did not start or
did not stop cleanly.

The figure of issue 8 (one source, 45 s): 119,000 lines, 26 MB, before the rate limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

CONFIG = """
[identity]
local_ca = "ca"
spiffe_id = "spiffe://meshtls.local/node"
ttl = "10m"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
shutdown_timeout = "1s"
"""
#: Seconds to wait for the node to be ready, and to stop after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class Flood:
    """What one run saw."""

    seconds: float = 0.0
    connections: int = 0
    lines: int = 0
    bytes: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    exit_code: int | None = None
    port: int = 0  # the node's mesh port, from its ``node ready`` line


def _field(line: str, key: str) -> str:
    """The value of `key` in one logfmt line (quoted values decoded), or ""."""
    marker = f" {key}="
    at = line.find(marker)
    if at < 0:
        return ""
    rest = line[at + len(marker) :]
    if rest.startswith('"'):
        decoder = json.JSONDecoder()
        value, _ = decoder.raw_decode(rest)
        return str(value)
    return rest.split(" ", 1)[0]


async def _read_lines(stream: trio.abc.ReceiveStream, flood: Flood, ready: trio.Event) -> None:
    """Count the node's stderr; set `ready` once the ``node ready`` line gave the port."""
    buffer = b""
    async for chunk in stream:
        flood.bytes += len(chunk)
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            flood.lines += 1
            flood.levels[_field(line, "level")] += 1
            flood.messages[_field(line, "msg")] += 1
            if not ready.is_set() and _field(line, "msg") == "node ready":
                mesh = _field(line, "listen.mesh")  # older nodes: listen="mesh=...,..."
                if not mesh:
                    listen = _field(line, "listen").split(",")
                    mesh = next(part for part in listen if part.startswith("mesh="))
                flood.port = int(mesh.rpartition(":")[2])
                ready.set()


async def _slowloris(port: int, until: float, flood: Flood, rng: random.Random) -> None:
    """Connect, send two bytes of a TLS record, stall; again and again until `until`."""
    while trio.current_time() < until:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.01)
            continue
        flood.connections += 1
        try:
            with trio.move_on_after(max(0.0, until - trio.current_time())):
                await stream.send_all(b"\x16\x03")
                await trio.sleep(rng.uniform(0.0, 0.5))
                if rng.random() < 0.5:  # hold the handshake place until the node gives up
                    while await stream.receive_some():
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with contextlib.suppress(OSError):  # close with a reset: no TIME_WAIT pile-up
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            await stream.aclose()


async def run(seconds: float, connections: int, *, seed: int = 8) -> Flood:
    """Flood a fresh node for `seconds` with `connections` workers; count what it logged."""
    flood = Flood()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "node.toml").write_text(CONFIG)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meshtls", "node", "--config", "node.toml"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        ready = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_lines, process.stderr, flood, ready)
                with trio.fail_after(START_TIMEOUT):
                    await ready.wait()
                started = trio.current_time()
                until = started + seconds
                async with trio.open_nursery() as workers:
                    for _ in range(connections):
                        workers.start_soon(_slowloris, flood.port, until, flood, rng)
                flood.seconds = trio.current_time() - started
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(STOP_TIMEOUT):
                    flood.exit_code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return flood


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="how long to flood")
    parser.add_argument("--connections", type=int, default=300, help="slowloris workers")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    flood = trio.run(run, args.seconds, args.connections)
    print(f"flood: {flood.seconds:.1f} s, {flood.connections} connections from one source")
    print(f"node log: {flood.lines} lines, {flood.bytes} bytes")
    print("by level: " + ", ".join(f"{k}={v}" for k, v in sorted(flood.levels.items())))
    print(f"distinct messages: {len(flood.messages)}; the most common:")
    for message, count in flood.messages.most_common(10):
        print(f"  {count:6d}  {message[:120]}")
    print(f"node exit code: {flood.exit_code}; wall time {time.monotonic() - begun:.1f} s")
    return 0 if flood.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
