"""The dialer pool and the node's message API (issue 10 §1, §2) with real nodes on 127.0.0.1.

Each node is `open_node` with a file identity from one test CA, its mesh listener on port 0,
and ``[[peers]]`` or `Node.add_peer` naming the others. Every wait is bounded by
`trio.fail_after`; backoffs are short so a test takes a second or two.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization

import meshtls
from meshtls._channel import Message
from meshtls._config import NodeConfig, parse_config
from meshtls._errors import SendError
from meshtls._node import Node, open_node
from meshtls.testing import CA

from .test_crl import make_crl
from .test_metrics import promtool
from .test_node import port, sample, scrape
from .test_reload import events

TD = "example.org"
A = f"spiffe://{TD}/node/a"
B = f"spiffe://{TD}/node/b"
C = f"spiffe://{TD}/node/c"


class World:
    """One test CA and a directory per node; `config` writes a node's files and TOML."""

    def __init__(self, root: Path, *, now: datetime | None = None) -> None:
        self.root = root
        self.now = now or datetime.now(UTC)
        self.ca = CA(TD, now=self.now - timedelta(minutes=1))

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def write(self, name: str, spiffe_id: str, **options: object) -> meshtls.X509Svid:
        issued = self.ca.issue(spiffe_id, **{"ttl": timedelta(minutes=50), **options})  # type: ignore[arg-type]
        directory = self.directory(name)
        for file, data in (
            ("svid.pem", issued.chain_pem),
            ("svid.key", issued.key_pem),
            ("bundle.pem", self.ca.bundle_pem),
        ):
            tmp = directory / f".{file}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, directory / file)
        svid: meshtls.X509Svid = issued.svid()
        return svid

    def config(
        self,
        name: str,
        spiffe_id: str | None,
        *,
        listen: int = 0,
        peers: dict[str, int] | None = None,
        mesh: dict[str, str] | None = None,
        extra: str = "",
    ) -> NodeConfig:
        if spiffe_id is not None:
            self.write(name, spiffe_id)
        listed = "".join(
            f'[[peers]]\nid = "{sid}"\naddress = "127.0.0.1:{number}"\n'
            for sid, number in (peers or {}).items()
        )
        chosen = {
            "backoff_initial": '"100ms"',
            "backoff_max": '"400ms"',
            "dial_timeout": '"2s"',
            "send_timeout": '"5s"',
            **(mesh or {}),
        }
        settings = "".join(f"{key} = {value}\n" for key, value in chosen.items())
        text = f"""
[identity]
cert = "svid.pem"
key = "svid.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:{listen}"
metrics = "127.0.0.1:0"
shutdown_timeout = "1s"

[mesh]
{settings}
{extra}
{listed}"""
        return parse_config(text, base_dir=self.directory(name))


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` on Trio's clock until it holds; fail after `seconds`."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - a poll: no event covers every condition
            await trio.sleep(0.01)


def state(node: Node, peer: str) -> meshtls.PeerStatus:
    (found,) = [p for p in node.peers() if str(p.id) == peer]
    return found


def connected(node: Node, peer: str) -> Callable[[], bool]:
    return lambda: state(node, peer).state == "connected"


async def receive(node: Node) -> Message:
    """The next message no channel claims, within 5 s."""
    messages = node.messages()
    try:
        with trio.fail_after(5):
            return await anext(messages)
    finally:
        aclose = getattr(messages, "aclose", None)
        if aclose is not None:
            await aclose()


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a node dialling it
    while nothing listens can never be given it as its own source port (a self-connect),
    so a peer can later bind it."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        number = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", number))
            except OSError:
                continue
            return number
    raise AssertionError("no free port below the ephemeral range")


@asynccontextmanager
async def pair(world: World) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b, each with the other as its only peer, both connected at the first dial."""
    async with open_node(world.config("b", B)) as b:
        config = world.config("a", A, peers={B: port(b, "mesh")})
        async with open_node(config) as a:
            b.add_peer(A, f"127.0.0.1:{port(a, 'mesh')}")
            await until(connected(a, B))
            await until(connected(b, A))
            yield a, b


# ---------------------------------------------------------------- messages both ways


async def test_two_nodes_peer_each_other_and_exchange_messages_both_ways(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with pair(world) as (a, b):
        await a.send(B, b"hello from a")
        got = await receive(b)
        assert (got.sender, got.data) == (meshtls.SpiffeId.parse(A), b"hello from a")
        await b.send(meshtls.SpiffeId.parse(A), "from b, as text")
        got = await receive(a)
        assert (str(got.sender), got.data) == (B, b"from b, as text")

        async with b.channel(A) as channel:  # a two-way channel claims a's messages
            assert channel.peer == meshtls.SpiffeId.parse(A)
            await a.send(B, b"on the channel")
            with trio.fail_after(5):
                message = await channel.__anext__()
            assert message.data == b"on the channel"
            await channel.send(b"reply")
            assert (await receive(a)).data == b"reply"
            with pytest.raises(trio.BusyResourceError):  # one channel per peer at a time
                async with b.channel(A):
                    pass
        await a.send(B, b"after the channel")
        assert (await receive(b)).data == b"after the channel"

        status = state(a, B)
        assert (status.state, status.dials, status.failures, status.connected_total) == (
            "connected",
            1,
            0,
            1,
        )
        assert status.address == f"127.0.0.1:{port(b, 'mesh')}"
        document = a.status()
        peers = document["peers"]
        assert isinstance(peers, list)
        assert len(peers) == 1
        (entry,) = peers
        assert isinstance(entry, dict)
        assert entry == {
            "id": B,
            "address": status.address,
            "state": "connected",
            "since": entry["since"],
            "last_error": None,
            "retry_at": None,
            "dials": 1,
            "failures": 0,
            "connected_total": 1,
        }
        async with httpx.AsyncClient() as client:
            readyz = await client.get(f"http://127.0.0.1:{port(a, 'metrics')}/readyz")
        assert (readyz.status_code, readyz.text) == (200, "ready; peers 1/1 connected\n")
        text = await scrape(a)
        assert sample(text, "meshtls_peer_connected", peer=B) == 1
        assert sample(text, "meshtls_peer_dials_total", peer=B, result="ok") == 1
        assert sample(text, "meshtls_messages_sent_total") == 3  # a sent three
        assert sample(text, "meshtls_messages_received_total") == 2
        await promtool(text)  # the mesh families pass `promtool check metrics` too


async def test_a_node_answers_a_peer_that_only_dialled_it(tmp_path: Path) -> None:
    """c pools a; a has no [[peers]], yet sends to c over c's inbound link."""
    world = World(tmp_path)
    async with open_node(world.config("a", A)) as a:
        config = world.config("c", C, peers={A: port(a, "mesh")})
        async with open_node(config) as c:
            await until(connected(c, A))
            await until(lambda: [str(p) for p in a.dialer.inbound_peers()] == [C])
            assert a.peers() == []
            await a.send(C, b"back to you")
            assert (await receive(c)).data == b"back to you"


async def test_send_to_an_unknown_peer_raises_at_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with open_node(world.config("a", A)) as a:
        with trio.fail_after(1), pytest.raises(SendError) as info:
            await a.send(B, b"x")
        assert info.value.reason == "unknown_peer"
        with pytest.raises(meshtls.SpiffeIdError):
            await a.send("not an id", b"x")
        text = await scrape(a)
        assert sample(text, "meshtls_message_send_failures_total", reason="unknown_peer") == 1


# ---------------------------------------------------------------- dials


async def test_concurrent_sends_to_a_peer_being_dialled_share_one_dial(tmp_path: Path) -> None:
    """A peer that accepts TCP and never answers the handshake: ten senders wait on one
    dial in flight, each gets SendError within its timeout, and the peer saw one connection."""
    world = World(tmp_path)
    accepted = 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
        )
        silent_port = listener.socket.getsockname()[1]
        config = world.config("a", A, peers={B: silent_port}, mesh={"dial_timeout": '"10s"'})
        async with open_node(config) as a:
            failures: list[str] = []
            started = trio.current_time()

            async def send() -> None:
                with pytest.raises(SendError) as info:
                    await a.send(B, b"x", timeout=0.5)
                failures.append(info.value.reason)

            async with trio.open_nursery() as senders:
                for _ in range(10):
                    senders.start_soon(send)
            assert trio.current_time() - started < 1.5
            assert failures == ["timeout"] * 10
            assert accepted == 1
            assert (state(a, B).state, state(a, B).dials) == ("connecting", 1)
        nursery.cancel_scope.cancel()


async def test_send_while_the_peer_is_down_raises_within_the_timeout(tmp_path: Path) -> None:
    world = World(tmp_path)
    config = world.config(
        "a", A, peers={B: free_port()}, mesh={"backoff_initial": '"5s"', "backoff_max": '"5s"'}
    )
    async with open_node(config) as a:
        await until(lambda: state(a, B).state == "backing_off")
        status = state(a, B)
        assert status.last_error is not None
        assert "connect failed" in status.last_error
        assert status.retry_at is not None
        assert status.retry_at > datetime.now(UTC)
        started = trio.current_time()
        with pytest.raises(SendError) as info:
            await a.send(B, b"x", timeout=1.0)
        assert info.value.reason == "unavailable"  # the retry is after the deadline: at once
        assert trio.current_time() - started < 0.5
        text = await scrape(a)
        assert sample(text, "meshtls_peer_dials_total", peer=B, result="failed") == 1
        assert sample(text, "meshtls_peer_connected", peer=B) == 0
        assert sample(text, "meshtls_message_send_failures_total", reason="unavailable") == 1
        async with httpx.AsyncClient() as client:
            readyz = await client.get(f"http://127.0.0.1:{port(a, 'metrics')}/readyz")
        assert (readyz.status_code, readyz.text) == (200, "ready; peers 0/1 connected\n")


async def test_a_peer_presenting_the_wrong_id_is_refused_and_backs_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """b's address answers with c's SVID: refused as unauthorized, counted, backing off;
    one warning line for the streak, not one per retry."""
    world = World(tmp_path)
    async with open_node(world.config("b", C)) as impostor:
        config = world.config("a", A, peers={B: port(impostor, "mesh")})
        async with open_node(config) as a:
            await until(lambda: state(a, B).failures >= 2)
            status = state(a, B)
            assert status.state in ("backing_off", "connecting")
            assert status.last_error is not None
            assert status.last_error.startswith("unauthorized:")
            assert status.connected_total == 0
            text = await scrape(a)
            assert (
                sample(text, "meshtls_peer_verification_failures_total", reason="unauthorized") >= 2
            )
            assert sample(text, "meshtls_peer_dials_total", peer=B, result="failed") >= 2
            (line,) = events(caplog, "peer unavailable, retrying with backoff")
            assert (line["peer"], line["address"]) == (B, status.address)
            assert str(line["error"]).startswith("unauthorized:")


# ---------------------------------------------------------------- reconnects


async def test_a_restarted_peer_is_reconnected_and_messages_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshtls")
    world = World(tmp_path)
    b_port = free_port()
    async with open_node(world.config("a", A, peers={B: b_port})) as a:
        b_config = world.config("b", B, listen=b_port)
        async with open_node(b_config) as b:
            await until(connected(a, B))
            await a.send(B, b"before")
            assert (await receive(b)).data == b"before"
        # b is gone: the link breaks, a backs off and redials
        await until(lambda: state(a, B).state != "connected")
        with pytest.raises(SendError):
            await a.send(B, b"while down", timeout=0.3)
        async with open_node(b_config) as b:
            await until(connected(a, B))
            await a.send(B, b"after")
            assert (await receive(b)).data == b"after"
        status = state(a, B)
        assert status.connected_total == 2
        assert status.failures >= 1
        connects = events(caplog, "peer connected")
        assert [line["peer"] for line in connects] == [B, B]
        assert int(str(connects[1]["after_failures"])) >= 1


async def test_a_link_drained_at_rotation_is_replaced_before_it_closes(tmp_path: Path) -> None:
    """Certificate time 10 s before both SVIDs expire: the link must close 5 s before
    that. Both nodes renew; a dials the replacement ahead of the close and moves to it."""
    world = World(tmp_path)
    a_svid = world.write("a", A)
    offset = a_svid.not_after - datetime.now(UTC) - timedelta(seconds=10)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    b_port = free_port()
    a_config = world.config("a", None, peers={B: b_port})
    b_config = world.config("b", B, listen=b_port)
    async with open_node(b_config, clock=clock) as b, open_node(a_config, clock=clock) as a:
        await until(connected(a, B))
        first = a.dialer._peers[meshtls.SpiffeId.parse(B)].link
        # renew both, as their sources would: 50 minutes more from now (certificate time)
        world.ca.now = clock() - timedelta(minutes=1)
        world.write("a", A)
        world.write("b", B)
        assert a.reload(a_config).rotated
        assert b.reload(b_config).rotated
        sent = 0
        received: list[int] = []

        stop = trio.Event()

        async def keep_sending() -> None:  # across the swap: every send confirmed
            nonlocal sent
            while not stop.is_set():
                await a.send(B, str(sent))
                sent += 1
                await trio.sleep(0.01)

        async def keep_reading() -> None:
            async for message in b.messages():
                received.append(int(message.data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_reading)
            async with trio.open_nursery() as senders:
                senders.start_soon(keep_sending)
                await until(lambda: state(a, B).connected_total == 2, seconds=8)
                assert first is not None
                with trio.fail_after(5):
                    await first.wait_closed()  # retired on purpose, a moment after the swap
                stop.set()  # the sender finishes its send in flight, then returns
            await until(lambda: len(received) == sent)
            nursery.cancel_scope.cancel()
        assert state(a, B).failures == 0  # never backing off: made before broken
        assert a.dialer._peers[meshtls.SpiffeId.parse(B)].link is not first
        assert first.end is not None
        assert first.end.clean
        assert state(a, B).state == "connected"
        assert sent > 50
        assert received == list(range(sent))  # none lost, none twice, in order
        text = await scrape(a)
        assert sample(text, "meshtls_message_send_failures_total", reason="closed") == 0


async def test_a_revoked_peer_is_closed_redialled_refused_and_back_once_renewed(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    now = datetime.now(UTC)
    b_svid = world.write("b", B)
    a_dir = world.directory("a")
    crl_path = a_dir / "revoked.pem"

    def write_crl(*serials: int) -> None:
        crl = make_crl(
            world.ca, serials, this_update=now - timedelta(minutes=1),
            next_update=now + timedelta(hours=1),
        )  # fmt: skip
        tmp = a_dir / ".revoked.tmp"
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, crl_path)

    write_crl()
    b_port = free_port()
    revocation = (
        '[revocation]\nmode = "hard-fail"\nrefresh_interval = "1s"\ncrl_files = ["revoked.pem"]'
    )
    a_config = world.config("a", A, peers={B: b_port}, extra=revocation)
    b_config = world.config("b", None, listen=b_port)
    async with open_node(b_config) as b, open_node(a_config) as a:
        await until(connected(a, B))
        write_crl(b_svid.leaf.serial_number)
        await until(lambda: state(a, B).state != "connected" or state(a, B).failures > 0)
        await until(lambda: (state(a, B).last_error or "").startswith("revoked:"), seconds=5)
        assert state(a, B).state in ("backing_off", "connecting")
        text = await scrape(a)
        assert (
            sample(text, "meshtls_channel_links_ended_total", reason="revoked", role="client") == 1
        )
        # b renews: its new SVID passes, and a's keeper is back without being told
        world.write("b", B)
        assert b.reload(b_config).rotated
        await until(connected(a, B))
        assert state(a, B).connected_total == 2
        await a.send(B, b"welcome back")
        assert (await receive(b)).data == b"welcome back"


# ---------------------------------------------------------------- run time changes


async def test_add_and_remove_peers_at_run_time_and_by_reload(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with open_node(world.config("b", B)) as b, open_node(world.config("a", A)) as a:
        a.add_peer(B, f"127.0.0.1:{port(b, 'mesh')}")
        with pytest.raises(ValueError, match="already"):
            a.add_peer(B, f"127.0.0.1:{port(b, 'mesh')}")
        with pytest.raises(ValueError, match="bad address"):
            a.add_peer(C, "nowhere")
        await until(connected(a, B))
        await a.send(B, b"added")
        assert (await receive(b)).data == b"added"
        a.remove_peer(B)
        assert a.peers() == []
        with pytest.raises(KeyError):
            a.remove_peer(B)
        await until(lambda: not b.dialer.inbound_peers())
        b_text = await scrape(b)  # a closed its link on purpose: b read a clean end
        assert (
            sample(b_text, "meshtls_channel_links_ended_total", reason="closed", role="server") == 1
        )
        await trio.sleep(0.2)
        assert "meshtls_peer_connected{" not in await scrape(a)  # its series are gone

        reloaded = world.config("a", None, peers={B: port(b, "mesh")})
        result = a.reload(reloaded)
        assert result.changed == (f"[[peers]] {B} added",)
        await until(connected(a, B))
        result = a.reload(world.config("a", None))
        assert result.changed == (f"[[peers]] {B} removed",)
        assert a.peers() == []


async def test_a_draining_node_closes_its_links_on_purpose_and_stops_dialling(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with pair(world) as (a, b):
        with trio.fail_after(3):
            await a.drain()  # not shutdown_timeout: its links were closed, not waited for
        await until(lambda: state(b, A).state != "connected")
        text = await scrape(b)
        assert (
            sample(text, "meshtls_channel_links_ended_total", reason="closed", role="client") == 1
        )
        assert (
            sample(text, "meshtls_channel_links_ended_total", reason="closed", role="server") == 1
        )
        dials = state(a, B).dials
        with pytest.raises(SendError) as info:
            await a.send(B, b"x", timeout=0.5)
        assert info.value.reason == "unavailable"
        await trio.sleep(0.3)
        assert state(a, B).dials == dials  # the pool stopped
        await until(lambda: state(b, A).failures >= 1)  # b's redial is refused: a drains


async def test_sends_waiting_for_a_peer_that_comes_up_share_its_one_good_dial(
    tmp_path: Path,
) -> None:
    """Ten sends wait while b is down (a backs off and redials); b comes up on its port; every
    send is confirmed, over one link made by one good dial."""
    world = World(tmp_path)
    b_port = free_port()
    b_config = world.config("b", B, listen=b_port)
    async with open_node(world.config("a", A, peers={B: b_port})) as a:
        await until(lambda: state(a, B).failures >= 1)
        done: list[int] = []

        async def send(number: int) -> None:
            await a.send(B, str(number), timeout=5)
            done.append(number)

        async with trio.open_nursery() as senders:
            for number in range(10):
                senders.start_soon(send, number)
            await trio.sleep(0.2)
            assert done == []  # all waiting on the keeper, none dialling
            b = await senders.start(_serve_node, b_config)
            with trio.fail_after(5):
                while len(done) < 10:  # noqa: ASYNC110 - a poll, bounded
                    await trio.sleep(0.01)
            received = sorted([int((await receive(b)).data) for _ in range(10)])
            senders.cancel_scope.cancel()  # b
        assert received == list(range(10))
        assert sorted(done) == list(range(10))
        status = state(a, B)
        assert status.connected_total == 1
        text = await scrape(a)
        assert sample(text, "meshtls_peer_dials_total", peer=B, result="ok") == 1
        assert sample(text, "meshtls_messages_sent_total") == 10


async def _serve_node(config: NodeConfig, *, task_status: trio.TaskStatus[Node]) -> None:
    """Run a node until cancelled (for `nursery.start`); started() gives the node."""
    async with open_node(config) as node:
        task_status.started(node)
        await trio.sleep_forever()


async def test_a_link_that_cannot_be_replaced_drains_at_its_deadline_and_is_redialled(
    tmp_path: Path,
) -> None:
    """No SVID is renewed: the replacement would close no later, so it is dropped; the link
    ends at its deadline (``drained``) and is redialled at once, which fails while both
    SVIDs are inside the drain margin (a backoff, no hot loop)."""
    world = World(tmp_path)
    a_svid = world.write("a", A)
    offset = a_svid.not_after - datetime.now(UTC) - timedelta(seconds=8)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    b_config = world.config("b", B)
    async with open_node(b_config, clock=clock) as b:
        a_config = world.config("a", None, peers={B: port(b, "mesh")})
        async with open_node(a_config, clock=clock) as a:
            await until(connected(a, B))
            await until(lambda: state(a, B).state != "connected", seconds=6)
            text = await scrape(a)
            assert (
                sample(text, "meshtls_channel_links_ended_total", reason="drained", role="client")
                == 1
            )
            assert state(a, B).connected_total == 1
            await until(lambda: state(a, B).state == "backing_off")
            assert state(a, B).dials <= 4  # backing off, not spinning


async def test_a_peer_that_does_not_speak_websocket_ends_its_own_connection_only(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with pair(world) as (a, b):
        stranger = world.write("c", C)
        stream = await meshtls.connect(
            "127.0.0.1",
            port(a, "mesh"),
            source=meshtls.StaticSource(stranger, world.ca.bundle_set()),
            authorize=meshtls.authorize_id(A),
        )
        with trio.fail_after(5):
            await stream.send_all(b"hello, this is not an HTTP upgrade\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 400")
        text = await scrape(a)
        assert (
            sample(text, "meshtls_channel_links_ended_total", reason="not_websocket", role="server")
            == 1
        )
        await b.send(A, b"still serving")  # the node and its other links go on
        assert (await receive(a)).data == b"still serving"


async def test_a_peer_that_refuses_our_certificate_is_a_failed_dial_saying_so(
    tmp_path: Path,
) -> None:
    """TLS 1.3 lets the client finish first: the refusal shows in the upgrade, and the pool
    counts it as a failed dial whose last_error says the peer rejected us."""
    world = World(tmp_path)
    strict = world.config("a", A, extra='[authorize]\nids = ["spiffe://example.org/node/z"]')
    async with open_node(strict) as a:
        config = world.config("b", B, peers={A: port(a, "mesh")})
        async with open_node(config) as b:
            await until(lambda: state(b, A).failures >= 2)
            status = state(b, A)
            assert status.connected_total == 0
            assert status.last_error is not None
            assert "rejects our certificate" in status.last_error
            text = await scrape(b)
            assert sample(text, "meshtls_peer_dials_total", peer=A, result="failed") >= 2
            assert sample(text, "meshtls_peer_dials_total", peer=A, result="ok") == 0


async def test_messages_end_once_the_node_has_stopped_and_they_were_read(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with pair(world) as (a, b):
        await a.send(B, b"last words")
    with trio.fail_after(5):  # without the inbox closed at the end, this never ends
        got = [message.data async for message in b.messages()]
    assert got == [b"last words"]


async def test_a_reload_that_moves_a_peer_redials_it_at_its_new_address(tmp_path: Path) -> None:
    world = World(tmp_path)
    old_b = world.config("b", B)
    new_b = world.config("b2", B)
    async with open_node(old_b) as b1, open_node(new_b) as b2:
        config = world.config("a", A, peers={B: port(b1, "mesh")})
        async with open_node(config) as a:
            await until(connected(a, B))
            moved = world.config("a", None, peers={B: port(b2, "mesh")})
            result = a.reload(moved)
            assert result.changed == (f"[[peers]] {B} moved to 127.0.0.1:{port(b2, 'mesh')}",)
            await until(lambda: state(a, B).address == f"127.0.0.1:{port(b2, 'mesh')}")
            await until(connected(a, B))
            await a.send(B, b"to the new address")
            assert (await receive(b2)).data == b"to the new address"
            await until(lambda: not b1.dialer.inbound_peers())  # the old link was closed


async def test_removing_a_peer_keeps_the_message_its_link_had_acknowledged(
    tmp_path: Path,
) -> None:
    """b's second send is confirmed while a's inbox is full: a's link holds it in its
    forwarder. Removing b from a's pool closes that link; the message must still reach
    a's inbox (it was acknowledged), not be cancelled away with the link's tasks."""
    world = World(tmp_path)
    async with open_node(world.config("b", B)) as b:
        config = world.config("a", A, peers={B: port(b, "mesh")}, mesh={"queue_size": "1"})
        async with open_node(config) as a:
            await until(connected(a, B))
            await until(lambda: bool(b.dialer.inbound_peers()))
            await b.send(A, b"1")  # queued in a's inbox (size 1)
            await b.send(A, b"2")  # acknowledged: held by a's forwarder
            a.remove_peer(B)
            await trio.sleep(0.5)  # the close completes while nobody reads a's inbox
            got: list[bytes] = []
            with trio.move_on_after(1):
                async for message in a.messages():
                    got.append(message.data)
                    if len(got) == 2:
                        break
            assert got == [b"1", b"2"]


async def test_adding_a_peer_after_the_node_stopped_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with open_node(world.config("a", A)) as a:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        a.add_peer(B, "127.0.0.1:9")
    assert a.peers() == []  # no peer without a keeper, shown as connecting for ever


async def test_a_reload_listing_a_peer_added_at_run_time_keeps_its_link(tmp_path: Path) -> None:
    world = World(tmp_path)
    async with open_node(world.config("b", B)) as b, open_node(world.config("a", A)) as a:
        a.add_peer(B, f"127.0.0.1:{port(b, 'mesh')}")
        await until(connected(a, B))
        before = state(a, B)
        result = a.reload(world.config("a", None, peers={B: port(b, "mesh")}))
        assert result.changed == (f"[[peers]] {B} added",)
        await trio.sleep(0.2)
        after = state(a, B)  # the same keeper and link: not closed and redialled
        assert (after.state, after.since, after.dials) == ("connected", before.since, before.dials)
        text = await scrape(b)  # and b saw no link of a's end
        assert "meshtls_channel_links_ended_total{" not in text or (
            sample(text, "meshtls_channel_links_ended_total", reason="closed", role="server") == 0
        )
