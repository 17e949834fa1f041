"""The OpenSSL-binding shim (meshtls._ossl), proved on real handshakes.

pyOpenSSL pairs over memory BIOs in this process, and ``openssl s_client`` from the
system's OpenSSL 3.0 (no ML-KEM) over 127.0.0.1. Every alert is read on the side that
received it, from its info callback and from its error text. The first test fails
loudly if cryptography's binding or pyOpenSSL drops anything the shim uses.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest
import trio
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from meshtls import _ossl
from meshtls.testing import CA, IssuedCertificate

X509_V_FLAG_PARTIAL_CHAIN = 0x80000
X509_V_FLAG_NO_CHECK_TIME = 0x200000
SSL_MODE_NO_AUTO_CHAIN = 0x8
TICKET = bytes([4])  # the NewSessionTicket handshake message type
CLIENT_HELLO = bytes([1])
WAIT = 5.0
Side = Literal["server", "client"]


@dataclass
class World:
    ca: CA
    server: IssuedCertificate
    client: IssuedCertificate


@pytest.fixture(scope="module")
def world() -> World:
    ca = CA("example.org", now=datetime.now(UTC))
    return World(
        ca, ca.issue("spiffe://example.org/server"), ca.issue("spiffe://example.org/client")
    )


def accept_what_openssl_accepts(
    connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
) -> int:
    return _ossl.X509_V_OK if ok else error


def context(
    world: World,
    side: Side,
    *,
    groups: str | None = _ossl.DEFAULT_GROUPS,
    resumable: bool = False,
) -> SSL.Context:
    """A context set up as meshtls's engine will be (issue 11, Deliver 3); `resumable`
    leaves OpenSSL's resumption defaults, as a control."""
    issued = world.server if side == "server" else world.client
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if side == "server" else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_mode(SSL_MODE_NO_AUTO_CHAIN)
    ctx.use_certificate(issued.leaf)
    ctx.use_privatekey(issued.private_key)
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(world.ca.certificate))
    store.set_flags(X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME)
    if resumable:
        ctx.set_session_id(b"control")  # OpenSSL resumes a verified peer only with one
    else:
        _ossl.refuse_resumption(ctx)
    if groups is not None:
        _ossl.set_groups(ctx, groups)
    _ossl.set_verify(ctx, accept_what_openssl_accepts)
    return ctx


@dataclass
class Outcome:
    errors: dict[Side, str] = field(default_factory=dict)
    alerts: dict[Side, list[str]] = field(default_factory=lambda: {"server": [], "client": []})
    connections: dict[Side, SSL.Connection] = field(default_factory=dict)
    echoed: bool = False


def _drain(connection: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += connection.bio_read(65536)
        except SSL.WantReadError:
            return out


def handshake(server_ctx: SSL.Context, client_ctx: SSL.Context) -> Outcome:
    """Run one pair over memory BIOs until both finish (and echo a byte) or both fail."""
    outcome = Outcome()

    def recorder(side: Side) -> Callable[[SSL.Connection, int, int], None]:
        def record(connection: SSL.Connection, where: int, value: int) -> None:
            if alert := _ossl.received_alert(where, value):
                outcome.alerts[side].append(alert)

        return record

    server_ctx.set_info_callback(recorder("server"))
    client_ctx.set_info_callback(recorder("client"))
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    outcome.connections = {"server": server, "client": client}
    peers: dict[Side, tuple[SSL.Connection, SSL.Connection]] = {
        "client": (client, server),
        "server": (server, client),
    }
    done: set[Side] = set()
    sides: tuple[Side, ...] = ("client", "server")
    for _ in range(8):
        for side in sides:
            conn, peer = peers[side]
            if side not in outcome.errors and side not in done:
                try:
                    conn.do_handshake()
                    if side == "client":
                        conn.send(b"x")
                    if conn.recv(1) == b"x":
                        done.add(side)
                        if side == "server":
                            conn.send(b"x")
                except SSL.WantReadError:
                    pass
                except SSL.Error as exc:
                    outcome.errors[side] = str(exc)
            data = _drain(conn)
            if data:
                peer.bio_write(data)
        if len(done | set(outcome.errors)) == 2:
            break
    outcome.echoed = done == {"server", "client"}
    return outcome


# ---------------------------------------------------------------- the binding itself


def test_every_binding_symbol_and_private_attribute_the_shim_uses_exists() -> None:
    lib = Binding().lib
    missing = [name for name in _ossl.SYMBOLS if not hasattr(lib, name)]
    assert not missing, f"cryptography's binding lost {missing}: rework meshtls/_ossl.py"
    ctx = SSL.Context(SSL.TLS_METHOD)
    assert "SSL_CTX *" in repr(ctx._context)
    conn = SSL.Connection(ctx, None)
    assert SSL.Connection._reverse_mapping[conn._ssl] is conn
    assert callable(conn._raise_ssl_error)  # read_records builds pyOpenSSL's own exception
    assert conn.get_group_name() is None  # pyOpenSSL's SSL_get0_group_name, before a handshake
    # The codes REJECT names are distinct, and none is "accept".
    assert len(set(_ossl.REJECT.values())) == len(_ossl.REJECT)
    assert _ossl.X509_V_OK not in _ossl.REJECT.values()
    version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    assert version.startswith("OpenSSL 4."), version  # ML-KEM hybrids need >= 3.5


def test_the_binding_still_lacks_num_tickets() -> None:
    """When cryptography adds SSL_CTX_set_num_tickets, `refuse_resumption` calls it and
    the ticket count after a HelloRetryRequest below becomes 0: update the docstrings
    and decisions.md then."""
    assert _ossl.HAS_NUM_TICKETS is False


# ---------------------------------------------------------------- alerts


@pytest.mark.parametrize("rejecter", ["server", "client"])
@pytest.mark.parametrize("alert", sorted(_ossl.REJECT))
def test_a_rejection_sends_the_alert_its_x509_error_maps_to(
    world: World, alert: str, rejecter: Side
) -> None:
    calls: list[tuple[bool, int]] = []

    def reject_leaf(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        calls.append((ok, depth))
        if not ok:
            return error
        return _ossl.REJECT[alert] if depth == 0 else _ossl.X509_V_OK

    server_ctx, client_ctx = context(world, "server"), context(world, "client")
    _ossl.set_verify(server_ctx if rejecter == "server" else client_ctx, reject_leaf)
    outcome = handshake(server_ctx, client_ctx)

    receiver: Side = "client" if rejecter == "server" else "server"
    assert outcome.alerts[receiver] == [alert]
    assert outcome.alerts[rejecter] == []
    assert "certificate verify failed" in outcome.errors[rejecter]
    assert alert.replace("_", " ") in outcome.errors[receiver]
    assert not outcome.echoed
    # OpenSSL's own checks passed for the root and the leaf; the leaf was refused by us.
    assert calls == [(True, 1), (True, 0)]


@pytest.mark.parametrize("rejecter", ["server", "client"])
def test_a_side_that_rejected_its_peer_still_holds_the_peers_chain(
    world: World, rejecter: Side
) -> None:
    """Issue 11: after a rejection in the verify callback the rejecting side can still
    read the chain OpenSSL built for the peer, so every reason can be computed from it."""

    def reject_leaf(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        return _ossl.REJECT["certificate_revoked"] if depth == 0 else _ossl.X509_V_OK

    server_ctx, client_ctx = context(world, "server"), context(world, "client")
    _ossl.set_verify(server_ctx if rejecter == "server" else client_ctx, reject_leaf)
    outcome = handshake(server_ctx, client_ctx)
    assert outcome.alerts["client" if rejecter == "server" else "server"] == ["certificate_revoked"]
    peer = world.client if rejecter == "server" else world.server
    conn = outcome.connections[rejecter]
    # The chain OpenSSL built (leaf to root) survives the failure on both sides; what the
    # peer sent survives only on the client (a server drops it with the session), so the
    # engine must read the former.
    assert conn.get_verified_chain(as_cryptography=True) == [peer.leaf, world.ca.certificate]
    sent = conn.get_peer_cert_chain(as_cryptography=True)
    assert sent == (None if rejecter == "server" else [peer.leaf])


def test_access_denied_is_not_reachable_from_the_verify_callback() -> None:
    assert "access_denied" not in _ossl.REJECT  # not in OpenSSL's ssl_x509err2alert table


def test_a_verifier_that_raises_sends_internal_error_and_keeps_the_exception(
    world: World,
) -> None:
    def broken(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        raise RuntimeError("the verifier broke")

    server_ctx, client_ctx = context(world, "server"), context(world, "client")
    _ossl.set_verify(server_ctx, broken)
    outcome = handshake(server_ctx, client_ctx)
    assert outcome.alerts["client"] == ["internal_error"]
    problem = _ossl.verify_problem(outcome.connections["server"])
    assert isinstance(problem, RuntimeError)
    assert str(problem) == "the verifier broke"
    assert _ossl.verify_problem(outcome.connections["client"]) is None


def _reaches(start: object, target: object) -> bool:
    """Whether `target` can be reached from `start` through object references."""
    seen: set[int] = set()
    pending = [start]
    while pending:
        item = pending.pop()
        if item is target:
            return True
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        pending.extend(gc.get_referents(item))
    return False


def test_a_kept_verifier_exception_does_not_keep_its_connection_alive(world: World) -> None:
    """`verify_problem` keys its exceptions by connection, weakly: the exception kept (and
    whatever it is chained to) must hold no frame, whose locals would hold the connection
    and keep its entry for good."""

    def inner(connection: SSL.Connection) -> None:
        raise ValueError(f"cannot read {connection!r}")

    def broken(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        try:
            inner(connection)
        except ValueError as exc:
            raise RuntimeError("the verifier broke") from exc
        return _ossl.X509_V_OK

    server_ctx, client_ctx = context(world, "server"), context(world, "client")
    _ossl.set_verify(server_ctx, broken)
    outcome = handshake(server_ctx, client_ctx)
    server = outcome.connections["server"]
    problem = _ossl.verify_problem(server)
    assert isinstance(problem, RuntimeError)
    assert isinstance(problem.__cause__, ValueError)  # the chain is kept, its frames are not
    assert not _reaches(problem, server)


def test_openssls_own_rejection_keeps_its_own_alert(world: World) -> None:
    """A client that trusts another CA: OpenSSL's own error passes through the verifier,
    so the server hears unknown_ca."""
    stranger_ca = CA("example.org", now=datetime.now(UTC))
    stranger = World(stranger_ca, world.server, stranger_ca.issue("spiffe://example.org/c"))
    outcome = handshake(context(world, "server"), context(stranger, "client"))
    assert outcome.alerts == {"server": ["unknown_ca"], "client": []}
    assert "certificate verify failed" in outcome.errors["client"]


def test_an_accepted_pair_echoes_with_no_alert(world: World) -> None:
    outcome = handshake(context(world, "server"), context(world, "client"))
    assert outcome.echoed
    assert outcome.errors == {}
    assert outcome.alerts == {"server": [], "client": []}


# ---------------------------------------------------------------- groups


def test_a_meshtls_pair_negotiates_the_hybrid_group_by_default(world: World) -> None:
    outcome = handshake(context(world, "server"), context(world, "client"))
    assert outcome.echoed
    for side in ("server", "client"):
        assert _ossl.negotiated_group(outcome.connections[side]) == "X25519MLKEM768"


def test_a_client_limited_to_x25519_gets_x25519(world: World) -> None:
    outcome = handshake(context(world, "server"), context(world, "client", groups="X25519"))
    assert outcome.echoed
    assert _ossl.negotiated_group(outcome.connections["server"]) == "x25519"


def test_bundled_defaults_would_also_pick_the_hybrid(world: World) -> None:
    outcome = handshake(context(world, "server", groups=None), context(world, "client"))
    assert _ossl.negotiated_group(outcome.connections["client"]) == "X25519MLKEM768"


def test_the_hybrid_key_share_makes_the_client_hello_1_2_kb_bigger(world: World) -> None:
    """X25519MLKEM768's key share is an ML-KEM-768 key (1,184 bytes) plus an X25519 one
    (32): 1,393 bytes of ClientHello against 207 with X25519 alone (OpenSSL 4.0.3), as
    issue 11's prototype measured."""
    sizes: dict[str, int] = {}
    for groups in (_ossl.DEFAULT_GROUPS, "X25519"):
        client = SSL.Connection(context(world, "client", groups=groups), None)
        client.set_connect_state()
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        sizes[groups] = len(_drain(client))
    # The hybrid share carries the ML-KEM key on top of the X25519 one; supported_groups
    # names one group more (2 bytes): 1,186 bytes in all.
    assert 1184 <= sizes[_ossl.DEFAULT_GROUPS] - sizes["X25519"] <= 1200, sizes
    assert sizes["X25519"] < 300, sizes


@pytest.mark.parametrize("groups", ["NoSuchGroup", "X25519:nope", "", "X25519\0"])
def test_a_bad_groups_list_is_refused_and_leaves_no_openssl_error(
    world: World, groups: str
) -> None:
    ctx = context(world, "client")
    with pytest.raises(ValueError, match="groups"):
        _ossl.set_groups(ctx, groups)
    # A stale error on OpenSSL's queue would fail the next handshake's error reporting.
    outcome = handshake(context(world, "server"), ctx)
    assert outcome.echoed
    assert _ossl.negotiated_group(outcome.connections["client"]) == "X25519MLKEM768"


# ---------------------------------------------------------------- tickets


@contextlib.contextmanager
def counting_tickets(ctx: SSL.Context) -> Iterator[list[int]]:
    """The size of each NewSessionTicket message the server writes, and a 0 for each
    ClientHello it reads (OpenSSL's msg callback)."""
    binding = Binding()
    sizes: list[int] = []

    def on_message(*args: object) -> None:
        write, _version, content, buf, length, _ssl, _arg = args
        assert isinstance(length, int)
        kind = binding.ffi.buffer(buf, length)[0:1] if content == 22 else b""
        if write and kind == TICKET:
            sizes.append(length)
        elif not write and kind == CLIENT_HELLO:
            sizes.append(0)

    callback = binding.ffi.callback(
        "void (*)(int, int, int, void *, size_t, SSL *, void *)", on_message
    )
    raw = ctx._context
    binding.lib.SSL_CTX_set_msg_callback(raw, callback)
    try:
        yield sizes
    finally:
        binding.lib.SSL_CTX_set_msg_callback(raw, binding.ffi.NULL)


@pytest.mark.parametrize(
    ("case", "client_groups"),
    [
        ("refused", _ossl.DEFAULT_GROUPS),
        ("refused", "P-256:X25519"),  # a P-256 key share only: the server asks again
        ("control", _ossl.DEFAULT_GROUPS),
    ],
    ids=["refused", "refused-after-hello-retry", "control"],
)
def test_no_session_can_resume_and_the_tickets_are_counted(
    world: World, case: str, client_groups: str
) -> None:
    """OpenSSL 4 via this binding cannot be told num_tickets=0; `refuse_resumption`
    stops its tickets from the servername callback instead, except after a
    HelloRetryRequest, when the server sends two stateful tickets that key a cache that
    is off. Either way an offered session is ignored and the peer is verified again in a
    full handshake. The control (OpenSSL's defaults on the server) shows that the client
    really offers a resumable session."""
    refused = case == "refused"
    retried = client_groups != _ossl.DEFAULT_GROUPS
    server_ctx = context(world, "server", resumable=not refused)
    verified: list[int] = []

    def counting(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        verified.append(depth)
        return accept_what_openssl_accepts(connection, ok, error, depth, chain)

    _ossl.set_verify(server_ctx, counting)
    client = context(world, "client", groups=client_groups)
    client.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)  # this client wants to resume
    with counting_tickets(server_ctx) as messages:
        first = handshake(server_ctx, client)
    assert first.echoed
    hellos = [size for size in messages if size == 0]
    tickets = [size for size in messages if size]
    assert len(hellos) == (2 if retried else 1)
    if refused and not retried:
        assert tickets == []
    elif refused:
        assert len(tickets) == 2
        # Each: a 4-byte header, lifetime, age_add, nonce and a 32-byte session id (57
        # bytes here), and on the wire a TLS 1.3 record's 22 more (header, type, AEAD tag).
        assert all(40 <= size <= 80 for size in tickets), tickets
    else:  # a stateless ticket carries the whole session, the client's chain included
        assert len(tickets) == 2
        assert all(size > 500 for size in tickets), tickets
    # Without a ticket (refused, no retry) the client has nothing to offer: the checks
    # below then hold trivially; the retry and the control are the cases that offer one.
    session = first.connections["client"].get_session()
    assert session is not None
    verified.clear()
    conn = SSL.Connection(client, None)
    conn.set_session(session)
    second = _handshake_with(server_ctx, conn)
    assert second.echoed
    assert _ossl.session_reused(second.connections["client"]) is not refused
    assert _ossl.session_reused(second.connections["server"]) is not refused
    assert verified == ([1, 0] if refused else [])  # refused: the chain was verified again


def test_a_stateless_ticket_of_the_same_context_resumes_nothing(world: World) -> None:
    """The backstop behind `refuse_resumption`'s callback: were a stateless ticket ever
    issued (the callback off, here by hand), offering it back resumes nothing, for the
    contexts have no session id context and OpenSSL then fails a handshake that would
    resume a verified peer. Never give them one (``set_session_id``)."""
    binding = Binding()
    server_ctx = context(world, "server")
    raw = server_ctx._context
    binding.lib.SSL_CTX_set_tlsext_servername_callback(raw, binding.ffi.NULL)
    client = context(world, "client")
    client.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    with counting_tickets(server_ctx) as messages:
        first = handshake(server_ctx, client)
    assert first.echoed
    assert [size for size in messages if size > 500]  # stateless: it carries the session
    session = first.connections["client"].get_session()
    assert session is not None
    binding.lib.SSL_CTX_set_tlsext_servername_callback(raw, _ossl._no_ticket)
    conn = SSL.Connection(client, None)
    conn.set_session(session)
    # The server refuses the resumption outright: the handshake fails, no peer gets in.
    with pytest.raises(SSL.Error, match="session id context uninitialized"):
        _handshake_with(server_ctx, conn)


def _handshake_with(server_ctx: SSL.Context, client: SSL.Connection) -> Outcome:
    """`handshake`, with a client connection made beforehand (to offer a session)."""
    client.set_connect_state()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    outcome = Outcome(connections={"server": server, "client": client})
    for _ in range(8):
        for conn, peer in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
            if data := _drain(conn):
                peer.bio_write(data)
    client.send(b"x")
    server.bio_write(_drain(client))
    outcome.echoed = server.recv(1) == b"x"
    return outcome


# ---------------------------------------------------------------- openssl 3.0 as the peer


async def _serve_once(
    listener: trio.SocketListener, ctx: SSL.Context, result: dict[str, object]
) -> None:
    """Accept one connection, handshake over memory BIOs, greet, close_notify, close."""
    stream = await listener.accept()
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    async with stream:
        while True:
            try:
                conn.do_handshake()
                finished = True
            except SSL.WantReadError:
                finished = False
            if data := _drain(conn):
                await stream.send_all(data)
            if finished:
                break
            data = await stream.receive_some(65536)
            if not data:
                raise AssertionError("the client left during the handshake")
            conn.bio_write(data)
        result["group"] = _ossl.negotiated_group(conn)
        conn.send(b"hello\n")
        conn.shutdown()
        await stream.send_all(_drain(conn))


def _write_pem(directory: Path, world: World) -> list[str]:
    cert, key, bundle = directory / "c.pem", directory / "c.key", directory / "bundle.pem"
    cert.write_bytes(world.client.chain_pem)
    key.write_bytes(world.client.key_pem)
    bundle.write_bytes(world.ca.bundle_pem)
    return ["-cert", str(cert), "-key", str(key), "-CAfile", str(bundle)]


@pytest.mark.openssl
@pytest.mark.parametrize("limit", [["-groups", "X25519"], []])
async def test_openssl_3_0_without_ml_kem_still_connects_over_x25519(
    world: World, tmp_path: Path, limit: list[str]
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    files = _write_pem(tmp_path, world)
    result: dict[str, object] = {}
    with trio.fail_after(WAIT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_once, listeners[0], context(world, "server"), result)
            argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-noservername"]
            argv += ["-brief", "-ign_eof", "-tls1_3", *limit, *files]
            done = await trio.run_process(
                argv, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
            )
        await listeners[0].aclose()
    assert result["group"] == "x25519"
    assert done.stdout == b"hello\n", done.stderr
    assert b"Verification: OK" in done.stderr
    assert b"X25519" in done.stderr  # "Peer Temp Key: X25519, 253 bits"


async def _s_client(
    listener: trio.SocketListener, ctx: SSL.Context, argv: list[str]
) -> tuple[dict[str, object], subprocess.CompletedProcess[bytes]]:
    result: dict[str, object] = {}
    port = listener.socket.getsockname()[1]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_once, listener, ctx, result)
            command = [*argv[:2], "-connect", f"127.0.0.1:{port}", *argv[2:]]
            done = await trio.run_process(
                command, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
            )
    return result, done


@pytest.mark.openssl
@pytest.mark.parametrize("refused", [True, False], ids=["refused", "control"])
async def test_openssl_offering_a_saved_session_gets_a_full_handshake(
    world: World, tmp_path: Path, refused: bool
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    saved = tmp_path / "session.pem"
    argv = [openssl, "s_client", "-noservername", "-ign_eof", "-tls1_3"]
    argv += _write_pem(tmp_path, world)
    if refused:  # the server sends tickets only after a HelloRetryRequest
        argv += ["-groups", "P-256:X25519"]
    ctx = context(world, "server", resumable=not refused)
    verified: list[int] = []

    def counting(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        verified.append(depth)
        return accept_what_openssl_accepts(connection, ok, error, depth, chain)

    _ossl.set_verify(ctx, counting)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        _, first = await _s_client(listeners[0], ctx, [*argv, "-sess_out", str(saved)])
        assert b"New, TLSv1.3" in first.stdout, first.stderr
        assert saved.exists()
        verified.clear()
        _, second = await _s_client(listeners[0], ctx, [*argv, "-sess_in", str(saved)])
    assert b"hello\n" in second.stdout
    if refused:
        assert b"New, TLSv1.3" in second.stdout
        assert verified == [1, 0]  # the client's chain was verified again
    else:
        assert b"Reused, TLSv1.3" in second.stdout
        assert verified == []


@pytest.mark.parametrize("leaf_only", [False, True])
def test_leaf_only_skips_the_accepted_certificates_above_the_leaf(
    world: World, leaf_only: bool
) -> None:
    """`leaf_only` (what meshtls's engine uses) still calls the verifier for the leaf, and
    would for any failure; the root OpenSSL accepted is not handed to Python."""
    server_ctx = context(world, "server")
    depths: list[int] = []

    def recording(
        connection: SSL.Connection, ok: bool, error: int, depth: int, chain: _ossl.Chain
    ) -> int:
        depths.append(depth)
        return accept_what_openssl_accepts(connection, ok, error, depth, chain)

    _ossl.set_verify(server_ctx, recording, leaf_only=leaf_only)
    outcome = handshake(server_ctx, context(world, "client"))
    assert outcome.echoed
    assert depths == ([0] if leaf_only else [1, 0])
