"""Both ends name the same reason (issue 11): a meshtls side that refuses its meshtls peer
inside the handshake sends the alert for its reason (`ALERT_FOR`), and the refused side
reads the reason back from it (`alert_reason`), on both roles. A server judges what
OpenSSL's own chain shows inside the handshake too (`search_after_failure`), so a leaf
that is expired or too long-lived gets its alert instead of a silent close."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import trio

import meshtls
from meshtls._errors import Reason
from meshtls._tls import ALERT_FOR, DEFAULT_ALERT, alert_reason

from .meshnet import Mesh, start_server

WAIT = 5.0


def _expired(mesh: Mesh, spiffe_id: str) -> meshtls.StaticSource:
    issued = mesh.ca.issue(
        spiffe_id,
        not_before=mesh.now - timedelta(minutes=90),
        not_after=mesh.now - timedelta(minutes=60),
    )
    return meshtls.StaticSource(issued.svid(), mesh.bundles)


def _two_hours(mesh: Mesh, spiffe_id: str) -> meshtls.StaticSource:
    issued = mesh.ca.issue(spiffe_id, not_before=mesh.now, ttl=timedelta(hours=2))
    return meshtls.StaticSource(issued.svid(), mesh.bundles)


def _outsider(mesh: Mesh, spiffe_id: str) -> meshtls.StaticSource:
    evil = meshtls.testing.CA("evil.org", now=mesh.now)
    issued = evil.issue(spiffe_id.replace("example.org", "evil.org"))
    return meshtls.StaticSource(issued.svid(), mesh.bundles)


DEFECTS: dict[str, tuple[Callable[[Mesh, str], meshtls.StaticSource], Reason]] = {
    "expired": (_expired, "expired"),
    "ttl_exceeded": (_two_hours, "ttl_exceeded"),
    "unknown_trust_domain": (_outsider, "unknown_trust_domain"),
}


def read_back(reason: Reason) -> str:
    """The reason the refused side names: its alert's representative reason."""
    return alert_reason(ALERT_FOR.get(reason, DEFAULT_ALERT))


@pytest.mark.parametrize("defect", list(DEFECTS))
async def test_a_server_refusing_a_client_sends_the_alert_the_client_reads_back(
    defect: str,
) -> None:
    mesh = Mesh()
    make, reason = DEFECTS[defect]
    refused: list[meshtls.HandshakeError] = []
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, _never, source=mesh.server, on_rejected=refused.append)
        with trio.fail_after(WAIT):
            stream = await meshtls.connect(
                "127.0.0.1",
                port,
                source=make(mesh, "spiffe://example.org/client"),
                authorize=meshtls.authorize_any(),
            )
            with pytest.raises(meshtls.PeerRejectedError) as raised:
                await stream.receive_some()
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert [e.reason for e in refused] == [reason]
    assert raised.value.reason == read_back(reason)
    assert f"TLS alert {ALERT_FOR.get(reason, DEFAULT_ALERT)}" in str(raised.value)


@pytest.mark.parametrize("defect", list(DEFECTS))
async def test_a_client_refusing_a_server_sends_the_alert_the_server_reads_back(
    defect: str,
) -> None:
    mesh = Mesh()
    make, reason = DEFECTS[defect]
    refused: list[meshtls.HandshakeError] = []
    counted = trio.Event()

    def on_rejected(error: meshtls.HandshakeError) -> None:
        refused.append(error)
        counted.set()

    async with trio.open_nursery() as nursery:
        server = make(mesh, "spiffe://example.org/server")
        port = await start_server(nursery, _never, source=server, on_rejected=on_rejected)
        with trio.fail_after(WAIT), pytest.raises(meshtls.HandshakeError) as raised:
            await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
            )
        with trio.fail_after(WAIT):
            await counted.wait()
        nursery.cancel_scope.cancel()
    assert raised.value.reason == reason
    assert [e.reason for e in refused] == [read_back(reason)]


async def test_an_authorizer_refusal_reads_back_as_unauthorized_on_both_sides() -> None:
    mesh = Mesh()
    refused: list[meshtls.HandshakeError] = []
    async with trio.open_nursery() as nursery:
        port = await start_server(
            nursery,
            _never,
            source=mesh.server,
            authorize=meshtls.authorize_id("spiffe://example.org/someone-else"),
            on_rejected=refused.append,
        )
        with trio.fail_after(WAIT):
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_any()
            )
            with pytest.raises(meshtls.PeerRejectedError) as raised:
                await stream.receive_some()
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert [e.reason for e in refused] == ["unauthorized"]
    assert raised.value.reason == "unauthorized"


async def _never(stream: meshtls.MeshStream) -> None:
    raise AssertionError(f"a refused peer reached the handler: {stream.peer}")


async def test_a_refused_client_that_already_sent_data_still_reads_the_alert() -> None:
    """TLS 1.3 lets the client send application data right after its Finished, and keep
    sending. The server that refuses it reads and drops that data before closing
    (`_let_the_alert_land`), so its close is a FIN, not a TCP reset that could fail the
    client's next send or overtake the alert: the client reads the reason. Without the
    linger, data reaching the closed socket draws a reset and a later send fails (seen:
    "sending failed: broken pipe")."""
    mesh = Mesh()
    expired = _expired(mesh, "spiffe://example.org/client")
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, _never, source=mesh.server)
        for _ in range(10):
            with trio.fail_after(WAIT):
                stream = await meshtls.connect(
                    "127.0.0.1", port, source=expired, authorize=meshtls.authorize_any()
                )
                await stream.send_all(b"x" * 20000)
                for _ in range(3):  # the server refused us long ago; it still reads and drops
                    await trio.sleep(0.05)
                    await stream.send_all(b"y" * 20000)  # after a reset, one of these fails
                with pytest.raises(meshtls.PeerRejectedError) as raised:
                    await stream.receive_some()
                await stream.aclose()
            assert raised.value.reason == "expired", raised.value
        nursery.cancel_scope.cancel()


async def test_serve_refuses_a_groups_list_openssl_refuses_before_listening() -> None:
    """Not per connection (a bug line on every accept), but once, at the start."""
    mesh = Mesh()
    with pytest.raises(ValueError, match="NoSuchGroup"):
        await meshtls.serve(
            _never,
            0,
            host="127.0.0.1",
            source=mesh.server,
            authorize=meshtls.authorize_any(),
            groups="X25519:NoSuchGroup",
        )
