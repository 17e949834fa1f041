"""A mesh node that sends numbered messages to every peer and records what happened.

Run as ``python -m tests.mesh_agent CONFIG --record FILE`` (or by path). It opens a node
with the node config file CONFIG and, for each ``[[peers]]`` entry, sends
``b"INCARNATION SEQ"`` with `Node.send`, waiting ``--interval`` seconds after each, SEQ
counting from 1 (a failed send's SEQ is not reused).
It records, per peer:

- ``sent``: each confirmed send as ``[seq, t]`` (``send`` returned: the peer node queued it);
- ``failed``: each `SendError` as ``[seq, reason, t]`` (the sender was told);
- ``received``: per sender id and its incarnation, every SEQ taken from `Node.messages`;

and ``peers``, the pool's view (`Node.peers`). Times ``t`` are `time.monotonic`, one clock
for every process on the machine, so a test can order them against its own instants.

The record is written as JSON to FILE (atomically: a reader never sees half a file) every
``--flush`` seconds, when told to stop sending (SIGUSR1: ``"stopped": true`` once no send is
in flight), and on SIGTERM, after which it exits 0. On SIGTERM it stops sending, and keeps
taking messages until none came for ``--drain`` seconds (at most 5 s): once every agent
has stopped sending, a message whose send was confirmed sits in its receiver's inbox, so
the receiver's last record holds it. It also ends that way when its parent process goes
away. A node that cannot start exits 2 with one line. The node logs to stderr
(``--log-level``, default info).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

import meshtls
from meshtls import _logs


@dataclass
class Record:
    """What one agent saw; `snapshot` is its JSON form."""

    me: str
    incarnation: int
    started: float = field(default_factory=time.monotonic)
    ready: float | None = None
    stopped: bool = False
    sent: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, list[tuple[int, str, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    received: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    unreadable: int = 0
    last_message: float = field(default_factory=time.monotonic)

    def take(self, message: meshtls.Message) -> None:
        self.last_message = time.monotonic()
        try:
            incarnation, seq = message.data.split()
            self.received[str(message.sender)][incarnation.decode()].append(int(seq))
        except ValueError:
            self.unreadable += 1

    def snapshot(self, peers: list[meshtls.PeerStatus]) -> str:
        return json.dumps(
            {
                "id": self.me,
                "incarnation": self.incarnation,
                "pid": os.getpid(),
                "started": self.started,
                "ready": self.ready,
                "written": time.monotonic(),
                "stopped": self.stopped,
                "peers": [
                    {
                        "id": str(peer.id),
                        "state": peer.state,
                        "last_error": peer.last_error,
                        "dials": peer.dials,
                        "failures": peer.failures,
                        "connected_total": peer.connected_total,
                    }
                    for peer in peers
                ],
                "sent": self.sent,
                "failed": self.failed,
                "received": self.received,
                "unreadable": self.unreadable,
            }
        )


def _write(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


async def _save(node: meshtls.Node, record: Record, path: Path, lock: trio.Lock) -> None:
    """Write the record now; the lock keeps an older snapshot from landing after a newer."""
    async with lock:
        text = record.snapshot(node.peers())
        await trio.to_thread.run_sync(_write, path, text)


async def _send_to(
    node: meshtls.Node, record: Record, peer: meshtls.SpiffeId, interval: float, stop: trio.Event
) -> None:
    """Send to `peer` until `stop`; a send in flight is finished, never cancelled (that
    would close the link)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        try:
            await node.send(peer, b"%d %d" % (record.incarnation, seq))
        except meshtls.SendError as exc:
            record.failed[str(peer)].append((seq, exc.reason, time.monotonic()))
        else:
            record.sent[str(peer)].append((seq, time.monotonic()))
        with trio.move_on_after(interval):
            await stop.wait()


async def _orphaned() -> None:
    """Return once this process's parent is gone (it was re-parented)."""
    parent = os.getppid()
    while True:
        await trio.sleep(0.5)
        if os.getppid() != parent:
            return


async def _until_told(signals: AsyncIterator[int], stop: trio.Event) -> None:
    """Return at SIGTERM; SIGUSR1 only stops the senders."""
    async for signum in signals:
        if signum == signal.SIGTERM:
            return
        stop.set()


async def run(args: argparse.Namespace) -> int:
    """Run the node and its senders until SIGTERM (or orphaned); write the last record."""
    config = meshtls.load_config(args.config)
    record = Record(
        me=str(getattr(config.identity, "spiffe_id", "?")), incarnation=args.incarnation
    )
    path = Path(args.record)
    lock = trio.Lock()
    stop = trio.Event()
    done_sending = trio.Event()

    async def consume(node: meshtls.Node) -> None:
        async for message in node.messages():
            record.take(message)

    async def flush(node: meshtls.Node) -> None:
        while True:
            await _save(node, record, path, lock)
            await trio.sleep(args.flush)

    async def send_all(node: meshtls.Node) -> None:
        async with trio.open_nursery() as senders:
            for peer in config.peers:
                senders.start_soon(_send_to, node, record, peer.id, args.interval, stop)
        record.stopped = True
        done_sending.set()
        await _save(node, record, path, lock)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as signals:
        async with meshtls.open_node(config) as node, trio.open_nursery() as nursery:
            record.ready = time.monotonic()
            nursery.start_soon(consume, node)
            nursery.start_soon(flush, node)
            nursery.start_soon(send_all, node)
            async with trio.open_nursery() as waiting:
                for wait in (functools.partial(_until_told, signals, stop), _orphaned):
                    waiting.start_soon(_first, wait, waiting.cancel_scope)
            stop.set()
            await done_sending.wait()
            with trio.move_on_after(5):
                while True:
                    idle = time.monotonic() - record.last_message
                    if idle >= args.drain:
                        break
                    await trio.sleep(args.drain - idle)
            await _save(node, record, path, lock)
            nursery.cancel_scope.cancel()
    return 0


async def _first(wait: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mesh_agent", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the node config (TOML)")
    parser.add_argument("--record", required=True, help="where to write the JSON record")
    parser.add_argument("--incarnation", type=int, default=1, help="tags every message sent")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between sends")
    parser.add_argument("--flush", type=float, default=0.2, help="seconds between writes")
    parser.add_argument("--drain", type=float, default=0.3, help="idle seconds ending SIGTERM")
    parser.add_argument("--log-level", default="info", help="the meshtls logger's level")
    args = parser.parse_args(argv)
    _logs.configure("text", getattr(logging, args.log_level.upper()))
    try:
        return trio.run(run, args)
    except meshtls.MeshError as exc:
        print(f"mesh_agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
