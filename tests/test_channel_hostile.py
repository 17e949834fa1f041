"""Hostile input to the server role of `run_link`: each ends that link with a reason the
observer gets, never an exception out of `run_link`, and the server serves the next peer."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import meshtls
from meshtls._channel import ChannelSettings, Inbox, UpgradeError, start_link
from tests.linknet import LinkServer, Recorder, start_link_server
from tests.meshnet import Mesh, start_server

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key


def upgrade_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: mesh\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def dial(mesh: Mesh, server: LinkServer) -> meshtls.MeshStream:
    return await meshtls.connect(
        "127.0.0.1", server.port, source=mesh.client, authorize=meshtls.authorize_any()
    )


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until a clean end (a reset raises)."""
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def good_exchange(mesh: Mesh, server: LinkServer) -> None:
    """A well-behaved client still gets through: the server is unharmed."""
    async with trio.open_nursery() as nursery:
        link = await start_link(
            nursery,
            await dial(mesh, server),
            role="client",
            inbox=Inbox(4),
            settings=ChannelSettings(),
        )
        await link.send(b"fine")
        assert (await anext(aiter(server.inbox.messages()))).data == b"fine"
        await link.aclose()


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert bad == []


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        pytest.param(
            b"GET /mesh HTTP/1.1\r\nHost: mesh\r\n\r\n", b"400", "not_websocket", id="http"
        ),
        pytest.param(upgrade_request("/other"), b"404", "wrong_path", id="wrong-path"),
        pytest.param(upgrade_request("/mesh/x"), b"404", "wrong_path", id="sub-path"),
        pytest.param(bytes(range(256)) * 4, b"400", "not_websocket", id="garbage"),
    ],
)
async def test_a_refused_request_is_answered_and_ends_that_link_only(
    caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: bytes, reason: str
) -> None:
    mesh = Mesh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            stream = await dial(mesh, server)
            await stream.send_all(request_bytes)
            answer = await read_all(stream)  # then a clean end: the peer was told why
            await stream.aclose()
            assert answer.startswith(b"HTTP/1.1 " + status)
            ends = await server.observer.wait_ends(1)
            assert [(role, end.reason, end.clean) for role, end in ends] == [
                ("server", reason, False)
            ]
            await good_exchange(mesh, server)
            assert len(server.handled) == 2
            nursery.cancel_scope.cancel()
    assert_no_errors_logged(caplog)


async def test_a_client_that_leaves_without_a_word_is_not_websocket() -> None:
    mesh = Mesh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            await (await dial(mesh, server)).aclose()
            ends = await server.observer.wait_ends(1)
            assert [end.reason for _, end in ends] == ["not_websocket"]
            nursery.cancel_scope.cancel()


async def test_a_slowloris_upgrade_ends_at_upgrade_timeout_with_a_reset(
    mock_clock: trio.testing.MockClock,
) -> None:
    mesh = Mesh()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(
                nursery, mesh, settings=ChannelSettings(upgrade_timeout=7)
            )
            stream = await dial(mesh, server)
            await stream.send_all(b"GET /mesh HTTP/1.1\r\nHost: me")  # and no more
            await server.wait_handled(1)
            started = trio.current_time()
            mock_clock.autojump_threshold = 0
            ends = await server.observer.wait_ends(1)
            assert trio.current_time() - started == pytest.approx(7)
            assert [(end.reason, end.clean) for _, end in ends] == [("upgrade_timeout", False)]
            with pytest.raises(trio.BrokenResourceError):
                await read_all(stream)  # a reset, never a clean end
            await stream.aclose()
            mock_clock.autojump_threshold = math.inf
            await good_exchange(mesh, server)
            nursery.cancel_scope.cancel()


async def test_a_frame_that_breaks_the_protocol_ends_the_link_with_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unmasked client frame (RFC 6455 5.1): the server fails the connection (wsproto:
    1002) and resets the stream, so the client never reads a clean end."""
    mesh = Mesh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            stream = await dial(mesh, server)
            await stream.send_all(upgrade_request("/mesh"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
            assert head.startswith(b"HTTP/1.1 101")
            await stream.send_all(b"\x82\x03abc")  # binary, FIN, NOT masked
            with pytest.raises(trio.BrokenResourceError):
                await read_all(stream)
            await stream.aclose()
            ends = await server.observer.wait_ends(1)
            assert [(end.reason, end.clean) for _, end in ends] == [("protocol_error", False)]
            assert server.inbox.queued == 0
            await good_exchange(mesh, server)
            nursery.cancel_scope.cancel()
    assert_no_errors_logged(caplog)


async def test_plaintext_http_without_tls_never_reaches_the_handler() -> None:
    mesh = Mesh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_link_server(nursery, mesh)
            sock = await trio.open_tcp_stream("127.0.0.1", server.port)
            await sock.send_all(upgrade_request("/mesh"))
            try:
                answer = await read_all(sock)
            except trio.BrokenResourceError:
                answer = b""  # reset
            assert answer[:1] in (b"", b"\x15")  # nothing, or a TLS alert: never HTTP
            await server.wait_rejected(1)
            assert [e.reason for e in server.rejected] == ["protocol_error"]
            assert server.handled == []
            assert server.observer.ends == []
            await sock.aclose()
            nursery.cancel_scope.cancel()


def test_recorder_is_a_channel_observer() -> None:
    from meshtls._channel import ChannelObserver

    observer: ChannelObserver = Recorder()
    assert observer is not None


# ---------------------------------------------------------------- the client role


async def refuse_with_404(stream: meshtls.MeshStream) -> None:
    await stream.receive_some()
    await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    await stream.aclose()


async def answer_garbage(stream: meshtls.MeshStream) -> None:
    await stream.receive_some()
    await stream.send_all(b"\x00\x01 not http at all\r\n\r\n")
    await trio.sleep_forever()


@pytest.mark.parametrize(
    ("peer", "reason"),
    [(refuse_with_404, "upgrade_rejected"), (answer_garbage, "not_websocket")],
)
async def test_a_dialer_whose_upgrade_fails_gets_upgrade_error_with_the_end(
    peer: Callable[[meshtls.MeshStream], Awaitable[None]], reason: str
) -> None:
    mesh = Mesh()
    observer = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, peer, source=mesh.server)
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            with pytest.raises(UpgradeError) as failed:
                await start_link(
                    nursery,
                    stream,
                    role="client",
                    inbox=Inbox(4),
                    settings=ChannelSettings(),
                    observer=observer,
                )
            assert failed.value.end.reason == reason
            assert observer.ends == [("client", failed.value.end)]
            nursery.cancel_scope.cancel()
