"""Half-close never loses a byte (issue 7, item 2): a property over a real MeshStream pair.

Both ends of a loopback `MeshStream` pair run a random script at once: a sender that
calls `send_all` with sizes from 0 bytes to 1 MiB and then ends its direction (with
`send_eof`, or with `aclose`, or with an `aclose` racing its sends from a third task),
and a receiver that calls `receive_some` with random sizes until EOF or an error. Random
checkpoints between the operations vary the interleaving.

For each direction X -> Y the property is:
- Y receives a prefix of what X meant to send: in order, nothing twice, nothing invented;
- Y reads EOF only after exactly the bytes of X's completed `send_all` calls, and only
  when X ended its direction on purpose (`send_eof` or `aclose`);
- when neither end closes on its own, nothing fails at all: every byte arrives, then
  EOF, at both ends. Otherwise a loss shows as an error, never as a clean EOF;
- the only exceptions are trio's `BrokenResourceError` and `ClosedResourceError` (the
  latter only at an end that closed itself); never a raw `ssl.SSLError`, never a hang.

`HALF_CLOSE_EXAMPLES` (default 25) sets the example budget; CI's default suite keeps
it to a few seconds. ``pytest --hypothesis-show-statistics`` reports the count.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Literal

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshtls

from .meshnet import Mesh, stream_pair

EXAMPLES = int(os.environ.get("HALF_CLOSE_EXAMPLES", "25"))
MiB = 1 << 20
SMALL_READS = 200  # reads of any size; after that, at least 16 KiB each

Ending = Literal["eof", "close", "close_during"]


@dataclass(frozen=True)
class Script:
    """What one end does. Lists of reads and pauses are cycled."""

    sends: tuple[int, ...]
    ending: Ending
    close_after: int  # "close_during": checkpoints before the racing aclose
    reads: tuple[int, ...]
    pauses: tuple[int, ...]


@dataclass
class Seen:
    """What happened at one end."""

    completed: bytearray = field(default_factory=bytearray)  # bytes of finished send_all
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False  # receive_some returned b""
    ended: bool = False  # send_eof returned, or aclose was called
    closed: bool = False  # this end called aclose: it gave up on the stream
    errors: list[BaseException] = field(default_factory=list)
    aborted: bool = False  # this end closed the stream because an operation failed


sizes = st.one_of(st.integers(0, 64), st.integers(65, 70_000), st.integers(70_001, MiB))
scripts = st.builds(
    Script,
    sends=st.lists(sizes, max_size=3).map(tuple),
    ending=st.sampled_from(["eof", "eof", "close", "close_during"]),
    close_after=st.integers(0, 30),
    reads=st.lists(
        st.one_of(st.sampled_from([16384, 1, 100, 65536, MiB]), st.integers(513, 70_000)),
        min_size=1,
        max_size=4,
    ).map(tuple),
    pauses=st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple),
)


@functools.cache
def mesh() -> Mesh:
    return Mesh()


def payload(side: str, length: int) -> bytes:
    """Bytes that never repeat within 1 MiB x 3, so a duplicate or a swap shows."""
    return hashlib.shake_256(side.encode()).digest(length)


async def checkpoints(count: int) -> None:
    for _ in range(count):
        await trio.lowlevel.checkpoint()


async def drive(stream: meshtls.MeshStream, script: Script, data: bytes, seen: Seen) -> None:
    """Run `script` on `stream`: a sender, a receiver and maybe a racing closer."""
    pause = iter(script.pauses * (len(script.sends) + 2))

    async def close() -> None:
        seen.closed = seen.ended = True
        await stream.aclose()

    async def failed(exc: Exception) -> None:
        """As an application would: an end whose stream failed closes it."""
        seen.errors.append(exc)
        seen.aborted = True
        await stream.aclose()

    async def send() -> None:
        offset = 0
        try:
            for size in script.sends:
                await checkpoints(next(pause))
                await stream.send_all(data[offset : offset + size])
                seen.completed += data[offset : offset + size]
                offset += size
            await checkpoints(next(pause))
            if script.ending == "eof":
                await stream.send_eof()
                seen.ended = True
            elif script.ending == "close":
                await close()
        except Exception as exc:
            await failed(exc)

    async def receive() -> None:
        turn = 0
        try:
            while True:
                await checkpoints(script.pauses[turn % len(script.pauses)])
                size = script.reads[turn % len(script.reads)]
                if turn >= SMALL_READS:  # bounded time: tiny reads of 1 MiB take seconds
                    size = max(size, 16384)
                chunk = await stream.receive_some(size)
                turn += 1
                if not chunk:
                    seen.eof = True
                    return
                seen.received += chunk
        except Exception as exc:
            await failed(exc)

    async def close_during() -> None:
        await checkpoints(script.close_after)
        await close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
        if script.ending == "close_during":
            nursery.start_soon(close_during)


def check_direction(sender: Seen, receiver: Seen, intended: bytes) -> None:
    """The property for one direction (see the module docstring)."""
    received = bytes(receiver.received)
    assert intended.startswith(received), "bytes arrived out of order, twice, or invented"
    if receiver.eof:
        assert sender.ended, "EOF although the sender never ended its direction"
        assert received == bytes(sender.completed), (
            f"clean EOF after {len(received)} of {len(sender.completed)} bytes sent: lost quietly"
        )


def check_errors(seen: Seen) -> None:
    for exc in seen.errors:
        if isinstance(exc, trio.ClosedResourceError):
            assert seen.closed or seen.aborted, f"ClosedResourceError at an open end: {exc!r}"
        else:
            assert isinstance(exc, trio.BrokenResourceError), f"not a trio error: {exc!r}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(client_script=scripts, server_script=scripts)
async def test_half_close_delivers_every_byte_or_fails_loudly(
    client_script: Script, server_script: Script
) -> None:
    client_data = payload("client", sum(client_script.sends))
    server_data = payload("server", sum(server_script.sends))
    client_seen, server_seen = Seen(), Seen()
    with trio.fail_after(15):  # a hang is a failure too
        async with stream_pair(mesh()) as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(drive, client, client_script, client_data, client_seen)
            nursery.start_soon(drive, server, server_script, server_data, server_seen)
    for seen in (client_seen, server_seen):
        check_errors(seen)
    check_direction(client_seen, server_seen, client_data)
    check_direction(server_seen, client_seen, server_data)
    if not client_seen.closed and not server_seen.closed:  # nobody gave up: nothing may fail
        assert client_seen.errors == [], client_seen.errors
        assert server_seen.errors == [], server_seen.errors
        assert bytes(server_seen.received) == client_data
        assert bytes(client_seen.received) == server_data
        assert client_seen.eof
        assert server_seen.eof
