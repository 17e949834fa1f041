"""Key-exchange groups as a setting (issue 11, Deliver 4): the list, ``[tls] groups``, the
node's plumbing, ``meshtls check --groups`` and an OpenSSL 3.0 peer without ML-KEM.

The first part (the list, the config, what a reload needs) runs on any engine. The rest
drives real handshakes through the parameters the pyOpenSSL engine adds (``groups=`` on
`connect`, `serve`, `expose`, `forward`; `MeshStream.group`). OpenSSL names the classic
group ``x25519`` in lower case and the hybrid ``X25519MLKEM768``, so the tests compare
what a handshake gives as OpenSSL says it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls import ConfigError
from meshtls._cli import build_parser
from meshtls._config import NodeConfig, TlsSettings, parse_config
from meshtls._node import Node, ReloadError, needs_restart, open_node
from meshtls._ossl import DEFAULT_GROUPS, validate_groups

from .interop import s_client, write_identity, write_pem
from .meshnet import Mesh
from .test_check import ServerSide, run_check
from .test_check import write_identity as write_check_identity
from .test_mesh_pool import A, B, World, until
from .test_node import port

HYBRID = "X25519MLKEM768"
CLASSIC = "x25519"  # as OpenSSL names the negotiated group
WAIT = 5.0


# ---------------------------------------------------------------- the list


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        (DEFAULT_GROUPS, "X25519MLKEM768:X25519"),
        ("X25519", "X25519"),
        (" X25519MLKEM768 : X25519 ", "X25519MLKEM768:X25519"),  # spaces around names go
        ("x25519:P-256", "x25519:P-256"),  # OpenSSL's names are case-blind; kept as written
        ("SecP256r1MLKEM768:P-256:ffdhe2048", "SecP256r1MLKEM768:P-256:ffdhe2048"),
    ],
)
def test_a_good_list_is_kept_normalised(text: str, normalised: str) -> None:
    assert validate_groups(text) == normalised


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("X25519:nope", "unknown group 'nope' in 'X25519:nope'"),
        ("X2559", "unknown group 'X2559'; did you mean 'X25519'?"),
        ("secp224r1", "unknown group 'secp224r1'; known groups include X25519MLKEM768"),
        ("", "no groups in ''"),
        ("  ", "no groups in '  '"),
        ("X25519:", "name 2 of 2 is empty"),
        ("X25519::P-256", "name 2 of 3 is empty"),
        ("X25519:X25519", "'X25519' is listed twice"),
        ("X25519:x25519", "'x25519' (as 'X25519') is listed twice"),
        ("a:a", "unknown group 'a'"),  # checked before it could be listed twice
        ("X 25519", "'X 25519' is not a group name"),
        ("DEFAULT", "OpenSSL's list syntax"),
        ("?nope:X25519", "OpenSSL's list syntax"),  # '?' would hide the typo
        ("*X25519", "OpenSSL's list syntax"),
        ("-X25519", "OpenSSL's list syntax"),
        ("X25519/P-256", "OpenSSL's list syntax"),
        ("brainpoolP256r1", "cannot be used with TLS 1.3"),  # TLS 1.2 only
        ("X25519:brainpoolP256r1", "did you mean 'brainpoolP256r1tls13'?"),
    ],
)
def test_a_bad_list_is_one_config_error_naming_the_bad_group(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_groups(text)
    assert needle in str(error.value)
    assert isinstance(error.value, ValueError)  # what set_groups raises, too


def test_a_refused_list_leaves_no_openssl_error_behind() -> None:
    from cryptography.hazmat.bindings.openssl.binding import Binding

    with pytest.raises(ConfigError):
        validate_groups("brainpoolP256r1")
    assert Binding().lib.ERR_peek_error() == 0


# ---------------------------------------------------------------- [tls] groups


IDENTITY = '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://example.org/node"\n'


def config(tmp_path: Path, tls: str = "") -> NodeConfig:
    return parse_config(IDENTITY + tls, base_dir=tmp_path, source="node.toml")


def test_no_tls_table_offers_the_hybrid_then_x25519(tmp_path: Path) -> None:
    assert config(tmp_path).tls.groups == "X25519MLKEM768:X25519"
    assert config(tmp_path, "[tls]\n").tls.groups == DEFAULT_GROUPS


def test_tls_groups_is_read_and_normalised(tmp_path: Path) -> None:
    assert config(tmp_path, '[tls]\ngroups = "X25519"\n').tls.groups == "X25519"
    spaced = config(tmp_path, '[tls]\ngroups = "X25519MLKEM768 : X25519"\n')
    assert spaced.tls.groups == "X25519MLKEM768:X25519"


@pytest.mark.parametrize(
    ("tls", "needle"),
    [
        ('[tls]\ngroups = "X25519:nope"\n', "[tls] groups: unknown group 'nope'"),
        ('[tls]\ngroups = ""\n', "[tls] groups: is empty"),
        ('[tls]\ngroups = " "\n', "[tls] groups: no groups"),
        ("[tls]\ngroups = 25519\n", "[tls] groups: expected a string of OpenSSL group names"),
        ('[tls]\ngroups = ["X25519"]\n', "[tls] groups: expected a string"),
        ('[tls]\ngroup = "X25519"\n', "[tls] group: unknown key; did you mean 'groups'?"),
        ('[tls]\ncurves = "X25519"\n', "[tls] curves: unknown key"),
        ('groups = "X25519"\n', "[identity] groups: unknown key here; 'groups' belongs in [tls]"),
        (
            '[node]\ngroups = "X25519"\n',
            "[node] groups: unknown key here; 'groups' belongs in [tls]",
        ),
        ('[tls]\ngroups = "brainpoolP256r1"\n', "cannot be used with TLS 1.3"),
    ],
)
def test_each_tls_mistake_is_one_line_naming_the_key(tmp_path: Path, tls: str, needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(tmp_path, tls)
    message = str(error.value)
    assert message.startswith("node.toml: "), message
    assert needle in message, message
    assert "\n" not in message


def test_hand_built_tls_settings_are_checked_and_normalised_too() -> None:
    assert TlsSettings(groups=" X25519 ").groups == "X25519"
    with pytest.raises(ConfigError, match=r"tls groups: unknown group 'nope'"):
        TlsSettings(groups="nope")


def test_a_groups_change_needs_a_restart(tmp_path: Path) -> None:
    """The listeners and the pool are given their groups when they start, so a reload
    cannot change them: it names the key and changes nothing."""
    old = config(tmp_path)
    same = config(tmp_path, '[tls]\ngroups = "X25519MLKEM768:X25519"\n')
    assert needs_restart(old, same) == []
    new = config(tmp_path, '[tls]\ngroups = "X25519"\n')
    assert needs_restart(old, new) == ["[tls] groups"]
    assert needs_restart(new, dataclasses.replace(new, tls=TlsSettings())) == ["[tls] groups"]


def test_check_takes_groups_checked_as_the_config_is(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    base = ["check", "127.0.0.1:1", "--cert", "c", "--key", "k", "--bundle", "b"]
    assert parser.parse_args(base).groups == DEFAULT_GROUPS
    assert parser.parse_args([*base, "--groups", " X25519 "]).groups == "X25519"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([*base, "--groups", "X25519:nope"])
    assert exited.value.code == 2
    assert "--groups: unknown group 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- handshakes (the engine)


@dataclasses.dataclass
class Groups:
    """The negotiated group of each connection a node's handler was given."""

    seen: list[str | None] = dataclasses.field(default_factory=list)

    async def handler(self, stream: meshtls.MeshStream) -> None:
        self.seen.append(stream.group)

    async def first(self) -> str | None:
        await until(lambda: bool(self.seen), WAIT)
        return self.seen[0]


def node_config(
    world: World,
    name: str,
    spiffe_id: str | None,
    groups: str | None,
    peers: dict[str, int] | None = None,
) -> NodeConfig:
    """A node's config from `World`, with ``[tls] groups`` when `groups` is given."""
    extra = "" if groups is None else f'[tls]\ngroups = "{groups}"\n'
    return world.config(name, spiffe_id, extra=extra, peers=peers)


async def negotiated_between(
    tmp_path: Path, dialer_groups: str | None, listener_groups: str | None
) -> str | None:
    """Node a's pool dials node b's mesh listener; the group b's handler was given."""
    world = World(tmp_path)
    served = Groups()
    with trio.fail_after(20):
        async with open_node(
            node_config(world, "b", B, listener_groups), handler=served.handler
        ) as b:
            config = node_config(world, "a", A, dialer_groups, peers={B: port(b, "mesh")})
            async with open_node(config):
                return await served.first()


@pytest.mark.parametrize(
    ("dialer", "listener", "expected"),
    [
        pytest.param(None, None, HYBRID, id="default-pair"),
        pytest.param("X25519", None, CLASSIC, id="dialer-x25519"),
        pytest.param(None, "X25519", CLASSIC, id="listener-x25519"),
        # The dialer sends a key share for its first group only; a listener that accepts it
        # takes it rather than ask for another (OpenSSL 3.5+: no HelloRetryRequest).
        pytest.param("X25519:X25519MLKEM768", None, CLASSIC, id="dialer-order-wins"),
        pytest.param("X25519MLKEM768:X25519", "X25519:X25519MLKEM768", HYBRID, id="key-share"),
    ],
)
async def test_nodes_negotiate_the_group_their_configs_allow(
    tmp_path: Path, dialer: str | None, listener: str | None, expected: str
) -> None:
    assert await negotiated_between(tmp_path, dialer, listener) == expected


async def test_the_rotation_builds_contexts_for_the_configured_groups_only(tmp_path: Path) -> None:
    """Before any handshake the active identity holds contexts for ``[tls] groups`` (built
    by the rotation before the swap); the node's handshakes then build no other list."""
    world = World(tmp_path)
    served = Groups()
    with trio.fail_after(20):
        async with open_node(node_config(world, "b", B, "X25519"), handler=served.handler) as b:
            assert list(b.identity()._built) == ["X25519"]
            config = node_config(world, "a", A, "X25519", peers={B: port(b, "mesh")})
            async with open_node(config) as a:
                assert await served.first() == CLASSIC
                assert list(a.identity()._built) == ["X25519"]
            assert list(b.identity()._built) == ["X25519"]
            assert b.contexts() is b.identity()._built["X25519"]


async def test_nodes_with_no_group_in_common_fail_the_handshake_with_a_counted_reason(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    served = Groups()
    with trio.fail_after(20):
        async with open_node(
            node_config(world, "b", B, "X25519MLKEM768"), handler=served.handler
        ) as b:
            config = node_config(world, "a", A, "X25519", peers={B: port(b, "mesh")})
            async with open_node(config) as a:

                def failed(node: Node, role: str) -> float:
                    labels = {"role": role, "result": "failed"}
                    value = node.registry.get_sample_value("meshtls_handshakes_total", labels)
                    return value or 0.0

                await until(lambda: failed(b, "server") >= 1 and failed(a, "client") >= 1, 10)
                assert served.seen == []  # b's handler never ran
                for node in (a, b):
                    reasons = {
                        sample.labels["reason"]
                        for metric in node.registry.collect()
                        if metric.name == "meshtls_peer_verification_failures"
                        for sample in metric.samples
                        if sample.name.endswith("_total") and sample.value > 0
                    }
                    assert reasons == {"protocol_error"}, reasons
                (status,) = a.peers()
                assert status.state != "connected"


async def test_a_node_reload_refuses_a_groups_change(tmp_path: Path) -> None:
    world = World(tmp_path)
    with trio.fail_after(20):
        async with open_node(node_config(world, "b", B, None)) as b:
            running = b.config
            with pytest.raises(ReloadError, match=r"need a restart: \[tls\] groups"):
                b.reload(node_config(world, "b", None, "X25519"))
            assert b.config is running


async def test_expose_and_forward_use_the_configured_groups(tmp_path: Path) -> None:
    """b's [[expose]] offers X25519 only (a default client gets x25519); a's [[forward]]
    offers X25519 only to b's default mesh listener (b's handler sees x25519)."""
    world = World(tmp_path)
    served = Groups()
    async with trio.open_nursery() as backends:
        backends_up = await backends.start(
            functools.partial(trio.serve_tcp, _close, 0, host="127.0.0.1")
        )
        backend_port = backends_up[0].socket.getsockname()[1]
        expose = (
            f'[[expose]]\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:{backend_port}"\n'
            f'allow = ["{A}"]\n'
        )
        with trio.fail_after(20):
            b_config = world.config("b", B, extra=f'[tls]\ngroups = "X25519"\n{expose}')
            async with open_node(b_config) as b:
                (name,) = [n for n in b.listeners if n.startswith("expose:")]
                world.write("a", A)
                source = meshtls.FileSource(
                    cert=world.directory("a") / "svid.pem",
                    key=world.directory("a") / "svid.key",
                    bundle=world.directory("a") / "bundle.pem",
                )
                stream = await meshtls.connect(
                    "127.0.0.1",
                    port(b, name),
                    source=source,
                    authorize=meshtls.authorize_id(B),
                )
                async with stream:
                    assert stream.group == CLASSIC
            async with open_node(node_config(world, "b2", B, None), handler=served.handler) as b2:
                forward = (
                    f'[[forward]]\nlisten = "127.0.0.1:0"\npeer = "127.0.0.1:{port(b2, "mesh")}"\n'
                    f'expect = "{B}"\n'
                )
                a_config = world.config("a", A, extra=f'[tls]\ngroups = "X25519"\n{forward}')
                async with open_node(a_config) as a:
                    (name,) = [n for n in a.listeners if n.startswith("forward:")]
                    client = await trio.open_tcp_stream("127.0.0.1", port(a, name))
                    async with client:
                        assert await served.first() == CLASSIC
        backends.cancel_scope.cancel()


async def _close(stream: trio.SocketStream) -> None:
    await stream.aclose()


@pytest.mark.openssl
async def test_openssl_3_0_without_ml_kem_connects_to_serve_over_x25519(tmp_path: Path) -> None:
    """The system's openssl (3.0: no ML-KEM) offers X25519 among others; meshtls's serve,
    on its default list, takes X25519 and serves it."""
    version = await trio.run_process(["openssl", "version"], capture_stdout=True)
    mesh = Mesh()
    client = write_identity(tmp_path, "client", mesh.ca.issue("spiffe://example.org/client"))
    bundle = write_pem(tmp_path, "bundle.pem", mesh.ca.bundle_pem)
    served = Groups()
    line = b"over x25519\n"

    async def echo(stream: meshtls.MeshStream) -> None:
        served.seen.append(stream.group)
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
        await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                echo,
                0,
                host="127.0.0.1",
                source=mesh.server,
                authorize=meshtls.authorize_any(),
            )
        )
        done = await s_client(
            listeners[0].socket.getsockname()[1],
            "-tls1_3",
            "-CAfile",
            str(bundle),
            "-verify_return_error",
            *client.args(),
            stdin=line,
        )
        nursery.cancel_scope.cancel()
    report = done.stderr.decode(errors="replace")
    assert version.stdout.startswith(b"OpenSSL 3.0"), version.stdout  # the peer with no ML-KEM
    assert done.returncode == 0, report
    assert done.stdout == line, report
    assert "X25519" in report, report  # "Peer Temp Key: X25519, 253 bits"
    assert served.seen == [CLASSIC]


async def test_check_prints_the_negotiated_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = Mesh()
    identity = write_check_identity(tmp_path, "client", mesh.ca, "spiffe://example.org/client")
    server = ServerSide()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                server.handler,
                0,
                host="127.0.0.1",
                source=mesh.server,
                authorize=meshtls.authorize_any(),
            )
        )
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        flags = [*identity, "--wait", "100ms", "--no-revocation"]
        code, out, err = await run_check(capsys, address, *flags)
        assert code == 0, err
        assert f"group: {HYBRID}\n" in out
        code, out, err = await run_check(capsys, address, *flags, "--groups", "X25519")
        assert code == 0, err
        assert f"group: {CLASSIC}\n" in out
        nursery.cancel_scope.cancel()


async def test_check_against_a_server_with_no_group_in_common_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = Mesh()
    identity = write_check_identity(tmp_path, "client", mesh.ca, "spiffe://example.org/client")
    server = ServerSide()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                server.handler,
                0,
                host="127.0.0.1",
                source=mesh.server,
                authorize=meshtls.authorize_any(),
                on_rejected=server.rejected.append,
                groups="X25519MLKEM768",
            )
        )
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        code, out, _ = await run_check(
            capsys, address, *identity, "--no-revocation", "--groups", "X25519"
        )
        assert code == 1
        assert "verdict: rejected reason=protocol_error" in out
        assert "group:" not in out  # our side never finished
        assert [r.reason for r in server.rejected] == ["protocol_error"]
        assert server.served == []
        nursery.cancel_scope.cancel()
