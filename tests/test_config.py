"""The node config: the TOML of API.md loads; every mistake is one line naming its key."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest

import meshtls
from meshtls import ConfigError, SpiffeId, TrustDomain
from meshtls._authorize import IdPattern, authorize_patterns
from meshtls._config import (
    AuthorizeSettings,
    ExposeSettings,
    FileIdentity,
    ForwardSettings,
    LocalCAIdentity,
    NodeConfig,
    NodeSettings,
    PeerSettings,
    RevocationSettings,
    WorkloadApiIdentity,
    default_config,
    default_state_dir,
    format_address,
    load_config,
    parse_config,
    with_flag_tunnels,
)
from meshtls.testing import CA

from .conftest import T

#: The example of API.md, "Node configuration", verbatim.
API_MD_TOML = """\
[identity]                       # exactly one of the three forms
cert = "svid.pem"                # FileSource: watched, reloaded on change
key = "svid.key"
bundle = "bundle.pem"
# local_ca = "ca-dir"  spiffe_id = "spiffe://example.org/node/a"  ttl = "10m"   # LocalCASource
# workload_api = "unix:///run/spire/agent.sock"                                 # WorkloadApiSource

[node]
listen = "127.0.0.1:8443"        # mesh listener (message channels)
metrics = "127.0.0.1:9464"       # /metrics, /healthz, /readyz
handshake_timeout = "10s"

[policy]
max_ttl = "1h"
max_age = "off"
clock_skew = "30s"

[revocation]
mode = "soft-fail"               # soft-fail | hard-fail | off
refresh_interval = "5m"          # the longest time between two refreshes of a cached status
ocsp_cache_ttl = "1h"
crl_cache_ttl = "6h"

[authorize]                      # who may connect to the mesh listener
member_of = "example.org"        # or: ids = ["spiffe://..."], or: path_prefix = "spiffe://example.org/ns/prod"

[[peers]]                        # the dialer pool keeps a connection to each
id = "spiffe://example.org/node/b"
address = "node-b.mesh.internal:8443"

[[expose]]                       # mTLS in on `listen`, plaintext out to `backend` (like ghostunnel server mode)
listen = "127.0.0.1:8600"
backend = "127.0.0.1:9000"
allow = ["spiffe://example.org/client"]     # optional; default: [authorize]

[[forward]]                      # plaintext in on `listen`, mTLS out to `peer` (like ghostunnel client mode)
listen = "127.0.0.1:7000"
peer = "node-b.mesh.internal:8600"
expect = "spiffe://example.org/server"
"""  # noqa: E501

FILES = '[identity]\ncert = "svid.pem"\nkey = "svid.key"\nbundle = "bundle.pem"\n'
LOCAL_CA = '[identity]\nlocal_ca = "ca-dir"\nspiffe_id = "spiffe://example.org/node/a"\n'
PEER = '[[peers]]\nid = "spiffe://example.org/node/b"\naddress = "node-b:8443"\n'
EXPOSE = '[[expose]]\nlisten = "127.0.0.1:8600"\nbackend = "127.0.0.1:9000"\n'
FORWARD = (
    '[[forward]]\nlisten = "127.0.0.1:7000"\npeer = "node-b:8600"\n'
    'expect = "spiffe://example.org/server"\n'
)


@pytest.fixture
def conf_dir(tmp_path: Path, ca: CA) -> Path:
    """A directory holding real SVID files, where the config's relative paths point."""
    issued = ca.issue("spiffe://example.org/node/a")
    (tmp_path / "svid.pem").write_bytes(issued.chain_pem)
    (tmp_path / "svid.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "certs").mkdir()
    return tmp_path


def parse(text: str, base_dir: Path) -> NodeConfig:
    return parse_config(text, base_dir=base_dir, source="node.toml")


def config_error(text: str, base_dir: Path) -> str:
    """The message of the ConfigError that `text` raises; it must be exactly one line."""
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    message = str(info.value)
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith("node.toml: ")
    return message


# ---------------------------------------------------------------- what loads


def test_api_md_example_loads(conf_dir: Path) -> None:
    path = conf_dir / "node.toml"
    path.write_text(API_MD_TOML)
    config = load_config(path)

    assert config.source == path
    assert config.notes == ()
    assert config.identity == FileIdentity(
        cert=conf_dir / "svid.pem", key=conf_dir / "svid.key", bundle=conf_dir / "bundle.pem"
    )
    assert config.node.listen == ("127.0.0.1", 8443)
    assert config.node.metrics == ("127.0.0.1", 9464)
    assert config.node.handshake_timeout == timedelta(seconds=10)
    assert config.policy == meshtls.ValidationPolicy(
        max_ttl=timedelta(hours=1),
        max_age=None,
        clock_skew=timedelta(seconds=30),
        revocation="soft-fail",
    )
    assert config.revocation == RevocationSettings(
        mode="soft-fail",
        refresh_interval=timedelta(minutes=5),
        ocsp_cache_ttl=timedelta(hours=1),
        crl_cache_ttl=timedelta(hours=6),
    )
    assert config.authorize == AuthorizeSettings(member_of=TrustDomain("example.org"))
    assert config.peers == (
        PeerSettings(
            id=SpiffeId.parse("spiffe://example.org/node/b"),
            address=("node-b.mesh.internal", 8443),
        ),
    )
    assert config.expose == (
        ExposeSettings(
            listen=("127.0.0.1", 8600),
            backend=("127.0.0.1", 9000),
            allow=(SpiffeId.parse("spiffe://example.org/client"),),
        ),
    )
    assert config.forward == (
        ForwardSettings(
            listen=("127.0.0.1", 7000),
            peer=("node-b.mesh.internal", 8600),
            expect=SpiffeId.parse("spiffe://example.org/server"),
        ),
    )


def test_api_md_example_identity_files_make_a_file_source(conf_dir: Path) -> None:
    config = parse(API_MD_TOML, conf_dir)
    assert isinstance(config.identity, FileIdentity)
    source = meshtls.FileSource(
        cert=config.identity.cert, key=config.identity.key, bundle=config.identity.bundle
    )
    assert str(source.contexts().svid.spiffe_id) == "spiffe://example.org/node/a"


def test_minimal_config_takes_the_defaults(conf_dir: Path) -> None:
    config = parse(FILES, conf_dir)
    assert config.source is None
    assert config.node == NodeSettings()
    assert config.node.listen == ("127.0.0.1", 8443)
    assert config.node.metrics == ("127.0.0.1", 9464)
    assert config.node.max_handshakes == 256
    assert config.node.shutdown_timeout == timedelta(seconds=10)
    assert config.policy == meshtls.ValidationPolicy()
    assert config.revocation == RevocationSettings()
    assert config.authorize == AuthorizeSettings()
    assert config.authorize.is_own_trust_domain
    assert (config.peers, config.expose, config.forward) == ((), (), ())


def test_every_setting_beyond_api_md(conf_dir: Path) -> None:
    text = (
        FILES
        + '[identity.federated]\n"other.org" = "certs/../bundle.pem"\n'
        + '[node]\nlisten = "[::1]:0"\nmetrics = "off"\nmax_handshakes = 16\n'
        + 'shutdown_timeout = "0s"\nhandshake_timeout = "2s500ms"\n'
        + '[policy]\nmax_ttl = "off"\nmax_age = "1d"\nclock_skew = "0s"\n'
        + '[revocation]\nmode = "hard-fail"\n'
        + EXPOSE
        + "max_connections = 7\n"
        + FORWARD
        + "max_connections = 3\n"
    )
    config = parse(text, conf_dir)
    assert isinstance(config.identity, FileIdentity)
    assert dict(config.identity.federated) == {"other.org": conf_dir / "certs/../bundle.pem"}
    assert config.node == NodeSettings(
        listen=("::1", 0),
        metrics=None,
        handshake_timeout=timedelta(seconds=2.5),
        max_handshakes=16,
        shutdown_timeout=timedelta(0),
    )
    assert config.policy == meshtls.ValidationPolicy(
        max_ttl=None, max_age=timedelta(days=1), clock_skew=timedelta(0), revocation="hard-fail"
    )
    assert config.revocation.mode == "hard-fail"
    assert config.expose[0].allow is None
    assert config.expose[0].max_connections == 7
    assert config.forward[0].max_connections == 3


def test_local_ca_form_does_not_create_its_directory(conf_dir: Path) -> None:
    config = parse(LOCAL_CA + 'ttl = "30m"\n', conf_dir)
    assert config.identity == LocalCAIdentity(
        directory=conf_dir / "ca-dir",
        spiffe_id=SpiffeId.parse("spiffe://example.org/node/a"),
        ttl=timedelta(minutes=30),
    )
    assert not (conf_dir / "ca-dir").exists()
    assert parse(LOCAL_CA.replace("ca-dir", "certs"), conf_dir).identity == LocalCAIdentity(
        directory=conf_dir / "certs", spiffe_id=SpiffeId.parse("spiffe://example.org/node/a")
    )


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ('"env"', None),
        ('"unix:///run/spire/agent.sock"', "unix:///run/spire/agent.sock"),
        ('"tcp://127.0.0.1:8081"', "tcp://127.0.0.1:8081"),
        ('"tcp://[::1]:8081"', "tcp://[::1]:8081"),
    ],
)
def test_W_2_workload_api_form(conf_dir: Path, value: str, address: str | None) -> None:
    config = parse(f"[identity]\nworkload_api = {value}\n", conf_dir)
    assert config.identity == WorkloadApiIdentity(address=address)


@pytest.mark.parametrize(
    "address",
    [
        "unix://relative/agent.sock",
        "unix:/run/agent.sock",
        "unix:///run/agent.sock?x=1",
        "tcp://spire-agent:8081",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:8081/path",
        "http://127.0.0.1:8081",
        "/run/spire/agent.sock",
    ],
)
def test_W_2_bad_workload_api_addresses(conf_dir: Path, address: str) -> None:
    message = config_error(f'[identity]\nworkload_api = "{address}"\n', conf_dir)
    assert message.startswith(
        f"node.toml: [identity] workload_api: bad Workload API address {address!r}: "
    )
    assert message.endswith("(W-2)")


# ---------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_file(
    conf_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    (conf_dir / "etc").mkdir()
    (conf_dir / "etc" / "node.toml").write_text(
        FILES.replace('"svid.pem"', '"../svid.pem"')
        .replace('"svid.key"', f'"{conf_dir / "svid.key"}"')
        .replace('"bundle.pem"', '"../certs/../bundle.pem"')
    )
    config = load_config(Path("..") / conf_dir / "etc" / "node.toml")
    assert config.identity == FileIdentity(
        cert=conf_dir / "etc" / ".." / "svid.pem",
        key=conf_dir / "svid.key",
        bundle=conf_dir / "etc" / ".." / "certs" / ".." / "bundle.pem",
    )
    assert config.source == conf_dir / "etc" / "node.toml"


def test_relative_config_path_is_made_absolute(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(conf_dir)
    (conf_dir / "node.toml").write_text(FILES)
    config = load_config("node.toml")
    assert config.source == conf_dir / "node.toml"
    assert isinstance(config.identity, FileIdentity)
    assert config.identity.cert == conf_dir / "svid.pem"


def test_home_is_expanded(conf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(conf_dir / "certs"))
    (conf_dir / "certs" / "mine.pem").write_bytes((conf_dir / "svid.pem").read_bytes())
    config = parse(FILES.replace('"svid.pem"', '"~/mine.pem"'), conf_dir)
    assert isinstance(config.identity, FileIdentity)
    assert config.identity.cert == conf_dir / "certs" / "mine.pem"


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert default_state_dir() == tmp_path / "xdg" / "meshtls"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "meshtls"


def test_state_dir_is_not_a_config_key(conf_dir: Path) -> None:
    """Nothing would read it: a config's local CA lives where [identity] local_ca says, and
    `meshtls node --state-dir` is for the embedded default only."""
    with pytest.raises(ConfigError, match=r"\[node\] state_dir: unknown key"):
        parse(FILES + '[node]\nstate_dir = "state"\n', conf_dir)


# ---------------------------------------------------------------- the default


def test_default_config(tmp_path: Path) -> None:
    config = default_config(tmp_path / "state")
    assert config.identity == LocalCAIdentity(
        directory=tmp_path / "state" / "ca",
        spiffe_id=SpiffeId.parse("spiffe://meshtls.local/node"),
        ttl=timedelta(minutes=10),
    )
    assert config.node.listen == ("127.0.0.1", 8443)
    assert config.node.metrics == ("127.0.0.1", 9464)
    assert config.authorize == AuthorizeSettings(member_of=TrustDomain("meshtls.local"))
    assert config.policy == meshtls.ValidationPolicy()
    assert config.policy.max_ttl is not None
    assert config.identity.ttl <= config.policy.max_ttl
    assert (config.peers, config.expose, config.forward, config.source) == ((), (), (), None)
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- ID-5: normalised, and said so


def test_ID_5_uppercase_trust_domains_in_config_are_lowercased_with_a_note(
    conf_dir: Path,
) -> None:
    text = (
        LOCAL_CA.replace("example.org", "Example.ORG")
        + '[authorize]\nmember_of = "EXAMPLE.org"\n'
        + PEER.replace("example.org/node/b", "Example.org/Node/B")
    )
    config = parse(text, conf_dir)
    assert isinstance(config.identity, LocalCAIdentity)
    assert str(config.identity.spiffe_id) == "spiffe://example.org/node/a"
    assert config.authorize.member_of == TrustDomain("example.org")
    assert str(config.peers[0].id) == "spiffe://example.org/Node/B"  # paths keep their case
    assert config.notes == (
        "node.toml: [identity] spiffe_id: 'spiffe://Example.ORG/node/a' read as"
        " 'spiffe://example.org/node/a': trust domains are lowercase (ID-5);"
        " paths are case-sensitive and kept",
        "node.toml: [authorize] member_of: trust domain 'EXAMPLE.org' read as 'example.org' (ID-5)",
        "node.toml: [[peers]] #1 id: 'spiffe://Example.org/Node/B' read as"
        " 'spiffe://example.org/Node/B': trust domains are lowercase (ID-5);"
        " paths are case-sensitive and kept",
    )


def test_ID_5_uppercase_does_not_rescue_an_otherwise_bad_id(conf_dir: Path) -> None:
    text = FILES + PEER.replace("example.org/node/b", "Exa%mple.org/node")
    message = config_error(text, conf_dir)
    assert "[[peers]] #1 id: bad SPIFFE ID 'spiffe://Exa%mple.org/node'" in message
    assert "ID-7" in message


# ---------------------------------------------------------------- one line per mistake


def test_bad_duration_is_one_line_naming_table_and_key(conf_dir: Path) -> None:
    assert config_error(FILES + '[policy]\nmax_ttl = "1x"\n', conf_dir) == (
        "node.toml: [policy] max_ttl: bad duration '1x': use whole numbers with the units"
        " d, h, m, s or ms, largest first, such as 30s, 10m, 1h, 2h30m or 365d"
    )


def test_unknown_key_suggests_the_closest(conf_dir: Path) -> None:
    assert config_error(FILES + '[node]\nlistn = "127.0.0.1:1"\n', conf_dir) == (
        "node.toml: [node] listn: unknown key; did you mean 'listen'? known keys: listen,"
        " metrics, handshake_timeout, max_handshakes, max_connections, shutdown_timeout,"
        " startup_timeout, access_log"
    )


def test_toml_syntax_error_names_the_line(conf_dir: Path) -> None:
    assert config_error(FILES + "[node]\nlisten = \n", conf_dir) == (
        "node.toml: line 6, column 10: bad TOML: Invalid value"
    )
    assert config_error(FILES + "[node\n", conf_dir).startswith("node.toml: line 5, column 6:")
    assert config_error(FILES + "[node]\nlisten = 'x\n", conf_dir).startswith(
        "node.toml: at the end (line 6): bad TOML:"
    )
    duplicate = config_error(FILES + "[node]\nmax_handshakes = 1\nmax_handshakes = 2\n", conf_dir)
    assert duplicate.startswith("node.toml: ")
    assert "bad TOML" in duplicate


def _cases() -> list[tuple[str, str, list[str]]]:
    """(case, TOML, what the one line must contain: the key first)."""
    with_files = [
        ("unknown table", "[nodes]\n", ["[nodes]", "unknown table", "did you mean [node]?"]),
        ("unknown table, no suggestion", "[zzz]\n", ["[zzz]", "known tables: [identity]"]),
        ("unknown key in an array", PEER + 'name = "b"\n', ["[[peers]] #1 name", "unknown"]),
        ("key in the wrong table", '[node]\nmax_ttl = "1h"\n', ["max_ttl", "in [policy]"]),
        ("table given a value", "[node]\nlisten = {}\n", ["listen", "expected a HOST:PORT"]),
        ("array written as a table", "[expose]\n", ["[expose]", "[[expose]]"]),
        (
            "duration as an integer",
            "[node]\nhandshake_timeout = 10\n",
            ["[node] handshake_timeout", 'such as "30s"', "not the integer 10"],
        ),
        (
            "integer as a string",
            '[node]\nmax_handshakes = "many"\n',
            ["max_handshakes", "a whole number"],
        ),
        ("integer as a boolean", "[node]\nmax_handshakes = true\n", ["max_handshakes", "boolean"]),
        ("integer as a float", "[node]\nmax_handshakes = 1.5\n", ["max_handshakes", "1.5"]),
        ("duration as a date", "[policy]\nmax_ttl = 2030-01-01\n", ["max_ttl", "date/time"]),
        ("zero duration", '[node]\nhandshake_timeout = "0s"\n', ["handshake_timeout", "0s"]),
        ("empty duration", '[policy]\nclock_skew = ""\n', ["clock_skew", "empty"]),
        ("duration off", '[policy]\nclock_skew = "off"\n', ["clock_skew", "cannot be off"]),
        ("negative duration", '[policy]\nmax_age = "-1h"\n', ["max_age", "'-1h'"]),
        ("skew over bound", '[policy]\nclock_skew = "2h"\n', ["clock_skew", "1h sanity bound"]),
        ("no port", '[node]\nlisten = "127.0.0.1"\n', ["[node] listen", "no port"]),
        ("bare IPv6", '[node]\nlisten = "::1:8443"\n', ["[node] listen", "[::1]:8443"]),
        ("bad IPv6", '[node]\nlisten = "[::g]:1"\n', ["listen", "not an IPv6 address"]),
        ("unclosed bracket", '[node]\nlisten = "[::1:1"\n', ["listen", "closing ']'"]),
        ("bracket, no port", '[node]\nlisten = "[::1]"\n', ["listen", "no ':PORT'"]),
        ("no host", '[node]\nmetrics = ":9464"\n', ["[node] metrics", "0.0.0.0:PORT"]),
        ("port too big", '[node]\nlisten = "127.0.0.1:65536"\n', ["listen", "0 to 65535"]),
        ("port not a number", '[node]\nlisten = "h:http"\n', ["listen", "'http'"]),
        ("bad IPv4", '[node]\nlisten = "300.1.1.1:80"\n', ["listen", "not an IPv4"]),
        ("bad host name", '[node]\nlisten = "a b:80"\n', ["listen", "not a host name"]),
        ("dial port 0", PEER.replace(":8443", ":0"), ["[[peers]] #1 address", "1 to 65535"]),
        ("zero limit", "[node]\nmax_handshakes = 0\n", ["max_handshakes", "at least 1"]),
        (
            "negative limit",
            EXPOSE + "max_connections = -5\n",
            ["[[expose]] #1 max_connections", "at least 1, not -5"],
        ),
        ("zero limit, forward", FORWARD + "max_connections = 0\n", ["[[forward]] #1 max_conn"]),
        ("bad mode", '[revocation]\nmode = "soft"\n', ["mode", "did you mean 'soft-fail'?"]),
        ("mode not a string", "[revocation]\nmode = false\n", ["mode", "soft-fail, hard-fail"]),
        (
            "refresh after the cache expires",
            '[revocation]\nrefresh_interval = "6h"\n',
            ["refresh_interval", "ocsp_cache_ttl 1h"],
        ),
        ("max_ttl not a duration", '[policy]\nmax_ttl = "soon"\n', ["max_ttl", "'soon'"]),
        ("max_age not off", '[policy]\nmax_age = "of"\n', ["max_age", "'of'"]),
        (
            "bad SPIFFE id",
            PEER.replace("node/b", "a//b"),
            ["[[peers]] #1 id", "bad SPIFFE ID", "ID-10"],
        ),
        ("not a SPIFFE id", PEER.replace("spiffe://", "https://"), ["id", "ID-1"]),
        (
            "expect a trust domain with a wildcard",
            FORWARD.replace("example.org/server", "example.org/*"),
            [
                "[[forward]] #1 expect",
                "for any member of a trust domain write 'spiffe://example.org'",
            ],
        ),
        ("duplicate peer", PEER + PEER, ["[[peers]] #2 id", "already listed"]),
        ("peer without address", PEER.replace("address", "#"), ["address", "missing"]),
        ("forward without expect", FORWARD.replace("expect", "#"), ["expect", "missing"]),
        ("expose without backend", EXPOSE.replace("backend", "#"), ["backend", "missing"]),
        (
            "allow not a list",
            EXPOSE + 'allow = "spiffe://example.org/client"\n',
            ["[[expose]] #1 allow", "an array of SPIFFE ID pattern strings"],
        ),
        ("allow of numbers", EXPOSE + "allow = [1]\n", ["allow", "item 1", "the integer 1"]),
        ("allow empty", EXPOSE + "allow = []\n", ["allow", "empty"]),
        ("allow a bad id", EXPOSE + 'allow = ["spiffe://x/a/"]\n', ["allow", "ID-12"]),
        (
            "two expose on one address",
            EXPOSE + EXPOSE,
            ["[[expose]] #2 listen", "clashes with [[expose]] #1 listen 127.0.0.1:8600"],
        ),
        (
            "expose and forward on one address",
            EXPOSE + FORWARD.replace("7000", "8600"),
            ["[[forward]] #1 listen", "[[expose]] #1 listen"],
        ),
        (
            "wildcard and loopback on one port",
            EXPOSE + FORWARD.replace("127.0.0.1:7000", "0.0.0.0:8600"),
            ["[[forward]] #1 listen: 0.0.0.0:8600"],
        ),
        (
            "expose on the mesh listener",
            EXPOSE.replace("8600", "8443"),
            ["[[expose]] #1 listen", "[node] listen 127.0.0.1:8443"],
        ),
        (
            "metrics on the mesh listener",
            '[node]\nlisten = "127.0.0.1:9000"\nmetrics = "127.0.0.1:9000"\n',
            ["[node] metrics", "[node] listen"],
        ),
        ("authorize empty", "[authorize]\n", ["[authorize]", "leave [authorize] out"]),
        (
            "authorize two forms",
            '[authorize]\nmember_of = "example.org"\nids = ["spiffe://example.org/a"]\n',
            ["[authorize]", "member_of and ids"],
        ),
        ("authorize ids empty", "[authorize]\nids = []\n", ["[authorize] ids", "empty"]),
        ("member_of bad", '[authorize]\nmember_of = "a b"\n', ["member_of", "ID-6"]),
        (
            "member_of an id",
            '[authorize]\nmember_of = "spiffe://example.org/ns"\n',
            ["member_of", "write the trust domain alone: 'example.org'"],
        ),
        (
            "path_prefix root",
            '[authorize]\npath_prefix = "spiffe://example.org"\n',
            ["path_prefix", 'member_of = "example.org"'],
        ),
        (
            "federated bundle missing",
            '[identity.federated]\n"other.org" = "nope.pem"\n',
            ["[identity.federated] 'other.org'", "no such file"],
        ),
        (
            "federated bundle not a path",
            '[identity.federated]\n"other.org" = 1\n',
            ["'other.org'", "bundle file"],
        ),
        (
            "federated bad trust domain",
            '[identity.federated]\n"a/b" = "bundle.pem"\n',
            ["'a/b'", "bad trust domain"],
        ),
        (
            "federated twice",
            '[identity.federated]\n"other.org" = "bundle.pem"\n"Other.org" = "bundle.pem"\n',
            ["'Other.org'", "listed twice"],
        ),
    ]
    top_level = [  # before [identity], or TOML would put them in it
        ("key at the top", 'listen = "127.0.0.1:1"\n', ["listen", "is a key of [node]"]),
        ("table as a string", 'node = "x"\n', ["[node]", "expected a table"]),
        ("array as a string", 'peers = "x"\n', ["[[peers]]", "not the string 'x'"]),
        ("array of non-tables", "peers = [1]\n", ["[[peers]] #1", "the integer 1"]),
        ("unknown key at the top", "nodes = 1\n", ["nodes", "did you mean [node]?"]),
    ]
    identities = [
        ("no identity", "", ["[identity]", "missing", "workload_api"]),
        ("empty identity", "[identity]\n", ["[identity]", "no identity"]),
        ("identity not a table", 'identity = "files"\n', ["[identity]", "expected a table"]),
        (
            "two identity forms",
            FILES + 'workload_api = "env"\n',
            ["[identity]", "more than one identity form (files and workload_api)"],
        ),
        (
            "three identity forms",
            FILES + 'workload_api = "env"\nlocal_ca = "d"\n',
            ["[identity]", "files and local_ca and workload_api"],
        ),
        (
            "local_ca without spiffe_id",
            '[identity]\nlocal_ca = "ca-dir"\n',
            ["[identity] spiffe_id", "missing", "local_ca needs"],
        ),
        (
            "spiffe_id without local_ca",
            '[identity]\nspiffe_id = "spiffe://example.org/a"\n',
            ["[identity] spiffe_id", 'add local_ca = "DIR"'],
        ),
        (
            "federated without files",
            '[identity]\n[identity.federated]\n"o.org" = "b.pem"\n',
            ["[identity] federated", "add cert, key and bundle"],
        ),
        (
            "key of another form",
            LOCAL_CA + '[identity.federated]\n"o.org" = "bundle.pem"\n',
            ["[identity] federated", "belongs to the files form, not the local_ca form"],
        ),
        ("files without key", FILES.replace("key =", "#"), ["[identity] key", "missing"]),
        ("cert missing", FILES.replace("svid.pem", "nope.pem"), ["[identity] cert", "nope.pem"]),
        ("cert is a directory", FILES.replace("svid.pem", "certs"), ["cert", "is a directory"]),
        ("cert empty", FILES.replace('"svid.pem"', '""'), ["[identity] cert", "empty"]),
        ("cert not a string", FILES.replace('"svid.pem"', "1"), ["[identity] cert", "integer"]),
        ("local_ca a file", LOCAL_CA.replace("ca-dir", "svid.pem"), ["local_ca", "a directory"]),
        ("local_ca bad id", LOCAL_CA.replace("node/a", "node/./a"), ["spiffe_id", "ID-11"]),
        ("local_ca root id", LOCAL_CA.replace("/node/a", ""), ["spiffe_id", "L-3"]),
        ("local_ca zero ttl", LOCAL_CA + 'ttl = "0s"\n', ["[identity] ttl", "0s"]),
        (
            "local_ca ttl over max_ttl",
            LOCAL_CA + 'ttl = "2h"\n',
            ["[identity] ttl", "over [policy] max_ttl 1h"],
        ),
        (
            "workload_api relative",
            '[identity]\nworkload_api = "unix://agent.sock"\n',
            ["[identity] workload_api", "W-2"],
        ),
        (
            "workload_api a boolean",
            "[identity]\nworkload_api = true\n",
            ["[identity] workload_api", '"env"', "boolean true"],
        ),
    ]
    return (
        [(case, FILES + text, needles) for case, text, needles in with_files]
        + [(case, text + FILES, needles) for case, text, needles in top_level]
        + identities
    )


@pytest.mark.parametrize(("case", "text", "needles"), _cases(), ids=[c[0] for c in _cases()])
def test_each_mistake_is_one_line_naming_the_key(
    conf_dir: Path, case: str, text: str, needles: list[str]
) -> None:
    message = config_error(text, conf_dir)
    for needle in needles:
        assert needle in message, case


def test_a_file_name_with_a_newline_stays_on_one_line(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[nodes]\n", base_dir=conf_dir, source="bad\nname.toml")
    assert str(info.value).startswith("bad\\nname.toml: [nodes]: unknown table")


def test_load_config_file_errors(conf_dir: Path) -> None:
    cases = {
        conf_dir / "missing.toml": "no such config file",
        conf_dir / "certs": "is a directory",
    }
    (conf_dir / "latin1.toml").write_bytes(b"# caf\xe9\n[identity]\n")
    cases[conf_dir / "latin1.toml"] = "not UTF-8 text (byte 5)"
    for path, needle in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ")
        assert needle in message
        assert "\n" not in message


def test_load_config_names_the_file_as_given(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(conf_dir)
    Path("node.toml").write_text(FILES + '[policy]\nmax_ttl = "1x"\n')
    with pytest.raises(ConfigError, match=r"^node\.toml: \[policy\] max_ttl: bad duration '1x'"):
        load_config("node.toml")


def test_load_config_accepts_a_byte_order_mark(conf_dir: Path) -> None:
    (conf_dir / "node.toml").write_bytes(b"\xef\xbb\xbf" + FILES.encode())
    assert isinstance(load_config(conf_dir / "node.toml").identity, FileIdentity)


# ---------------------------------------------------------------- listeners


def test_port_zero_listeners_may_share_a_host(conf_dir: Path) -> None:
    text = (
        FILES
        + '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
        + EXPOSE.replace("8600", "0")
        + EXPOSE.replace("8600", "0")
    )
    config = parse(text, conf_dir)
    assert [e.listen for e in config.expose] == [("127.0.0.1", 0), ("127.0.0.1", 0)]


def test_different_hosts_on_one_port_do_not_clash(conf_dir: Path) -> None:
    text = FILES + EXPOSE + FORWARD.replace("127.0.0.1:7000", "127.0.0.2:8600")
    text += FORWARD.replace("127.0.0.1:7000", "[::]:8600") + "unsafe_listen = true\n"
    config = parse(text, conf_dir)
    assert [f.listen for f in config.forward] == [("127.0.0.2", 8600), ("::", 8600)]


@pytest.mark.parametrize(
    ("address", "text"),
    [(("127.0.0.1", 8443), "127.0.0.1:8443"), (("::1", 0), "[::1]:0"), (("h", 1), "h:1")],
)
def test_format_address(address: tuple[str, int], text: str) -> None:
    assert format_address(address) == text


# ---------------------------------------------------------------- authorizers


@pytest.fixture(scope="module")
def peers(ca: CA, other_ca: CA, bundles: meshtls.BundleSet) -> dict[str, meshtls.VerifiedPeer]:
    ids = [
        "spiffe://example.org/ns/prod",
        "spiffe://example.org/ns/prod/web",
        "spiffe://example.org/ns/production",
        "spiffe://example.org/client",
    ]
    found = {sid: meshtls.verify_svid(ca.issue(sid).chain, bundles, now=T) for sid in ids}
    foreign = "spiffe://other.org/ns/prod"
    found[foreign] = meshtls.verify_svid(other_ca.issue(foreign).chain, bundles, now=T)
    return found


def allowed(authorizer: meshtls.Authorizer, peers: dict[str, meshtls.VerifiedPeer]) -> set[str]:
    accepted = set()
    for sid, peer in peers.items():
        try:
            authorizer(peer)
        except meshtls.UnauthorizedPeerError:
            continue
        accepted.add(sid.removeprefix("spiffe://"))
    return accepted


PROD, WEB, PRODUCTION, CLIENT = (
    "example.org/ns/prod",
    "example.org/ns/prod/web",
    "example.org/ns/production",
    "example.org/client",
)


@pytest.mark.parametrize(
    ("authorize", "expected"),
    [
        ('member_of = "example.org"', {PROD, WEB, PRODUCTION, CLIENT}),
        ('member_of = "other.org"', {"other.org/ns/prod"}),
        (
            'ids = ["spiffe://example.org/client", "spiffe://other.org/ns/prod"]',
            {CLIENT, "other.org/ns/prod"},
        ),
        ('path_prefix = "spiffe://example.org/ns/prod"', {PROD, WEB}),
        ('path_prefix = "spiffe://other.org/ns"', {"other.org/ns/prod"}),
    ],
)
def test_authorizer_for_each_form(
    conf_dir: Path,
    peers: dict[str, meshtls.VerifiedPeer],
    authorize: str,
    expected: set[str],
) -> None:
    settings = parse(f"{FILES}[authorize]\n{authorize}\n", conf_dir).authorize
    assert not settings.is_own_trust_domain
    assert allowed(settings.authorizer(), peers) == expected
    assert allowed(settings.authorizer(TrustDomain("other.org")), peers) == expected


def test_authorizer_default_is_our_own_trust_domain(
    conf_dir: Path, peers: dict[str, meshtls.VerifiedPeer]
) -> None:
    settings = parse(FILES, conf_dir).authorize
    assert settings == AuthorizeSettings()
    assert settings.is_own_trust_domain
    assert allowed(settings.authorizer(TrustDomain("example.org")), peers) == {
        PROD,
        WEB,
        PRODUCTION,
        CLIENT,
    }
    with pytest.raises(ConfigError, match="own_trust_domain"):
        settings.authorizer()


def test_tunnel_authorizers(conf_dir: Path, peers: dict[str, meshtls.VerifiedPeer]) -> None:
    text = FILES + EXPOSE + 'allow = ["spiffe://example.org/client"]\n'
    text += EXPOSE.replace("8600", "8601") + FORWARD.replace("/server", "/ns/prod")
    config = parse(text, conf_dir)
    default = config.authorize.authorizer(TrustDomain("other.org"))
    assert allowed(config.expose[0].authorizer(default), peers) == {CLIENT}
    assert allowed(config.expose[1].authorizer(default), peers) == {"other.org/ns/prod"}
    assert allowed(config.forward[0].authorizer(), peers) == {PROD}


# ---------------------------------------------------------------- values built by hand


def test_config_values_are_frozen(conf_dir: Path) -> None:
    config = parse(API_MD_TOML, conf_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node = NodeSettings()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.max_handshakes = 1  # type: ignore[misc]
    assert isinstance(config.identity, FileIdentity)
    with pytest.raises(TypeError):
        config.identity.federated["x.org"] = Path("x")  # type: ignore[index]


ROOT = SpiffeId.parse("spiffe://example.org")
NODE = SpiffeId.parse("spiffe://example.org/node")


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: NodeSettings(max_handshakes=0), "max_handshakes"),
        (lambda: NodeSettings(handshake_timeout=timedelta(0)), "handshake_timeout"),
        (lambda: NodeSettings(shutdown_timeout=timedelta(seconds=-1)), "shutdown_timeout"),
        (lambda: RevocationSettings(ocsp_cache_ttl=timedelta(0)), "ocsp_cache_ttl"),
        (lambda: RevocationSettings(mode="maybe"), "mode"),  # type: ignore[arg-type]
        (lambda: AuthorizeSettings(member_of=ROOT.trust_domain, ids=(NODE,)), "one of"),
        (lambda: AuthorizeSettings(path_prefix=ROOT), "path_prefix"),
        (lambda: ExposeSettings(listen=("h", 1), backend=("h", 2), allow=()), "allow"),
        (lambda: ExposeSettings(listen=("h", 1), backend=("h", 2), max_connections=0), "max_conn"),
        (
            lambda: ForwardSettings(
                listen=("h", 1), peer=("h", 2), expect=NODE, max_connections=True
            ),
            "max_conn",
        ),
        (lambda: LocalCAIdentity(directory=Path(), spiffe_id=ROOT), "spiffe_id"),
        (lambda: LocalCAIdentity(directory=Path(), spiffe_id=NODE, ttl=timedelta(0)), "ttl"),
        (
            lambda: NodeConfig(
                identity=WorkloadApiIdentity(),
                policy=meshtls.ValidationPolicy(revocation="hard-fail"),
            ),
            "disagree",
        ),
    ],
)
def test_values_built_by_hand_are_checked(build: object, needle: str) -> None:
    assert callable(build)
    with pytest.raises(ConfigError, match=needle):
        build()


def test_node_config_by_hand() -> None:
    config = NodeConfig(
        identity=WorkloadApiIdentity(),
        policy=meshtls.ValidationPolicy(revocation="off"),
        revocation=RevocationSettings(mode="off"),
    )
    assert config.authorize.is_own_trust_domain
    assert config.node.listen == ("127.0.0.1", 8443)


def test_local_ca_ttl_is_at_most_the_ca_lifetime(tmp_path: Path) -> None:
    """A leaf is cut to its CA's lifetime anyway; a larger ttl overflowed at start (issue 7)."""
    sid = SpiffeId.parse("spiffe://example.org/node")
    year = LocalCAIdentity(directory=tmp_path, spiffe_id=sid, ttl=timedelta(days=365))
    assert year.ttl == timedelta(days=365)
    with pytest.raises(ConfigError, match="366d is over 365d, the local CA's own lifetime"):
        LocalCAIdentity(directory=tmp_path, spiffe_id=sid, ttl=timedelta(days=366))
    text = '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://example.org/a"\nttl = "{}"\n'
    off = '[policy]\nmax_ttl = "off"\n'
    config = parse_config(text.format("365d") + off, base_dir=tmp_path)
    assert isinstance(config.identity, LocalCAIdentity)
    with pytest.raises(ConfigError, match=r"^<string>: \[identity\] ttl: 400d is over 365d"):
        parse_config(text.format("400d") + off, base_dir=tmp_path)


@pytest.mark.parametrize("key", ["cert", "bundle"])
def test_unusable_path_is_one_line_naming_the_key(tmp_path: Path, key: str) -> None:
    paths = {"cert": "c.pem", "key": "k.pem", "bundle": "b.pem"}
    for name in paths.values():
        (tmp_path / name).write_text("x")
    for bad, what in (("a\u0000b", "has a NUL character"), ("d" * 300, "File name too long")):
        lines = [f'{name} = "{bad if name == key else value}"' for name, value in paths.items()]
        text = "[identity]\n" + "\n".join(lines).replace("\u0000", "\\u0000") + "\n"
        with pytest.raises(ConfigError, match=rf"^<string>: \[identity\] {key}: .*{what}"):
            parse_config(text, base_dir=tmp_path)


# ---------------------------------------------------------------- safe listening (issue 8)

EVERY_IPV4 = "0.0.0.0"  # noqa: S104 - refused or checked, never bound


@pytest.mark.parametrize(
    ("listen", "refused"),
    [
        ("0.0.0.0:7000", True),
        ("[::]:7000", True),
        ("10.1.2.3:7000", True),
        ("node-a.internal:7000", True),  # a name other than localhost is not known to be loopback
        ("127.0.0.1:7000", False),
        ("127.9.9.9:7000", False),
        ("[::1]:7000", False),
        ("localhost:7000", False),
        ("LocalHost:7000", False),
    ],
)
def test_a_forward_off_loopback_needs_unsafe_listen(
    conf_dir: Path, listen: str, refused: bool
) -> None:
    text = FILES + FORWARD.replace("127.0.0.1:7000", listen)
    if refused:
        message = config_error(text, conf_dir)
        assert message.startswith(f"node.toml: [[forward]] #1 listen: {listen} ")
        assert "unsafe_listen = true" in message
        assert "host name, not known to be loopback" in message or "not a loopback" in message
        config = parse(text + "unsafe_listen = true\n", conf_dir)
        assert config.forward[0].unsafe_listen
    else:
        assert parse(text, conf_dir).forward[0].unsafe_listen is False


@pytest.mark.parametrize(
    ("backend", "refused"),
    [
        ("10.0.0.5:9000", True),
        ("0.0.0.0:9000", True),
        ("backend.internal:9000", True),
        ("[2001:db8::1]:9000", True),
        ("127.0.0.1:9000", False),
        ("[::1]:9000", False),
        ("localhost:9000", False),
    ],
)
def test_an_expose_to_a_backend_off_loopback_needs_unsafe_target(
    conf_dir: Path, backend: str, refused: bool
) -> None:
    text = FILES + EXPOSE.replace("127.0.0.1:9000", backend)
    if refused:
        message = config_error(text, conf_dir)
        assert message.startswith(f"node.toml: [[expose]] #1 backend: {backend} ")
        assert "unsafe_target = true" in message
        assert parse(text + "unsafe_target = true\n", conf_dir).expose[0].unsafe_target
    else:
        found = parse(text, conf_dir).expose[0].backend
        assert not isinstance(found, Path)
        assert found[0] in {"127.0.0.1", "::1", "localhost"}


def test_an_expose_may_listen_anywhere_its_peers_are_verified(conf_dir: Path) -> None:
    config = parse(FILES + EXPOSE.replace("127.0.0.1:8600", "[::]:8600"), conf_dir)
    assert config.expose[0].listen == ("::", 8600)


def test_settings_built_by_hand_keep_the_safe_listening_rules() -> None:
    with pytest.raises(ConfigError, match=r"forward listen 0\.0\.0\.0:7000 is not a loopback"):
        ForwardSettings(listen=(EVERY_IPV4, 7000), peer=("h", 1), expect=NODE)
    with pytest.raises(ConfigError, match=r"expose backend 10\.0\.0\.1:80 is not a loopback"):
        ExposeSettings(listen=("h", 1), backend=("10.0.0.1", 80))
    assert ExposeSettings(
        listen=("h", 1), backend=("10.0.0.1", 80), unsafe_target=True
    ).unsafe_target


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (FORWARD + "unsafe_listen = 1\n", "unsafe_listen: expected true or false, not the integer"),
        (EXPOSE + 'proxy_protocol = "yes"\n', "proxy_protocol: expected true or false"),
        (EXPOSE + "unsafe_listen = true\n", "unsafe_listen belongs in [[forward]]"),
        (FORWARD + "unsafe_target = true\n", "unsafe_target belongs in [[expose]]"),
        (FORWARD + "proxy_protocol = true\n", "proxy_protocol belongs in [[expose]]"),
    ],
)
def test_tunnel_switches_are_booleans_in_their_own_table(
    conf_dir: Path, text: str, needle: str
) -> None:
    assert needle in config_error(FILES + text, conf_dir).replace("'", "")


# ---------------------------------------------------------------- allow and expect patterns


def peer_of(spiffe_id: str) -> meshtls.VerifiedPeer:
    ca = CA("example.org", now=T)
    other = CA("other.org", now=T)
    issuer = ca if spiffe_id.startswith("spiffe://example.org") else other
    return meshtls.verify_svid(
        issuer.issue(spiffe_id).chain, ca.bundle_set(other), now=T + timedelta(minutes=1)
    )


def accepts(authorize: meshtls.Authorizer, spiffe_id: str) -> bool:
    try:
        authorize(peer_of(spiffe_id))
    except meshtls.UnauthorizedPeerError:
        return False
    return True


def test_allow_takes_ids_path_prefixes_and_trust_domains(conf_dir: Path) -> None:
    allow = (
        'allow = ["spiffe://example.org/client", "spiffe://example.org/ns/prod/*",'
        ' "spiffe://other.org"]\n'
    )
    config = parse(FILES + EXPOSE + allow, conf_dir)
    (item,) = config.expose
    assert item.allow is not None
    assert [str(p) for p in item.allow] == [
        "spiffe://example.org/client",
        "spiffe://example.org/ns/prod/*",
        "spiffe://other.org",
    ]
    authorize = item.authorizer(meshtls.authorize_any())
    for spiffe_id, expected in [
        ("spiffe://example.org/client", True),
        ("spiffe://example.org/ns/prod", True),  # the prefix itself, as [authorize] path_prefix
        ("spiffe://example.org/ns/prod/web", True),
        ("spiffe://example.org/ns/production", False),  # whole segments only
        ("spiffe://example.org/client/x", False),  # an exact id is exact
        ("spiffe://other.org/anything", True),
        ("spiffe://example.org/ns", False),
    ]:
        assert accepts(authorize, spiffe_id) is expected, spiffe_id


def test_expect_takes_a_pattern(conf_dir: Path) -> None:
    text = FILES + FORWARD.replace("example.org/server", "example.org/ns/prod/*")
    (item,) = parse(text, conf_dir).forward
    assert str(item.expect) == "spiffe://example.org/ns/prod/*"
    assert accepts(item.authorizer(), "spiffe://example.org/ns/prod/db")
    assert not accepts(item.authorizer(), "spiffe://example.org/ns/dev/db")
    member = parse(FILES + FORWARD.replace("example.org/server", "example.org"), conf_dir)
    assert accepts(member.forward[0].authorizer(), "spiffe://example.org/any/thing")
    assert not accepts(member.forward[0].authorizer(), "spiffe://other.org/x")


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("spiffe://example.org/*", "write 'spiffe://example.org', without '/*'"),
        ("spiffe://example.org/ns/prod*", "'*' goes only at the very end"),
        ("spiffe://example.org/ns/*/web", "'*' goes only at the very end"),
        ("spiffe://example.org/ns/**", "'*' goes only at the very end"),
        ("spiffe://*.example.org/web", "'*' goes only at the very end"),
        ("example.org", "for any member of a trust domain write spiffe://example.org"),
        ("/ns/prod/*", "is not a SPIFFE ID pattern"),
        ("spiffe://example.org/ns/", "ID-12"),
        ("spiffe://example.org//*", "ID-12"),
    ],
)
def test_ambiguous_patterns_are_refused(conf_dir: Path, pattern: str, needle: str) -> None:
    message = config_error(FILES + EXPOSE + f'allow = ["{pattern}"]\n', conf_dir)
    assert message.startswith("node.toml: [[expose]] #1 allow: ")
    assert needle in message
    with pytest.raises((ConfigError, meshtls.SpiffeIdError)):
        IdPattern.parse(pattern)


def test_a_pattern_trust_domain_is_lowercased_and_noted(conf_dir: Path) -> None:
    config = parse(FILES + EXPOSE + 'allow = ["spiffe://Example.ORG/ns/*"]\n', conf_dir)
    assert config.expose[0].allow is not None
    assert [str(p) for p in config.expose[0].allow] == ["spiffe://example.org/ns/*"]
    assert any("ID-5" in note for note in config.notes)


def test_plain_ids_still_refuse_as_before() -> None:
    authorize = authorize_patterns(IdPattern.parse("spiffe://example.org/a"), NODE)
    assert repr(authorize) == repr(meshtls.authorize_one_of("spiffe://example.org/a", NODE))
    assert ExposeSettings(
        listen=("h", 1), backend=("127.0.0.1", 2), allow=(NODE,)
    ) == ExposeSettings(listen=("h", 1), backend=("127.0.0.1", 2), allow=(IdPattern.of(NODE),))


# ---------------------------------------------------------------- tunnels from flags


def test_flags_add_tunnels_in_order_each_modifier_to_the_one_before(conf_dir: Path) -> None:
    base = parse(FILES + EXPOSE, conf_dir)
    config = with_flag_tunnels(
        base,
        [
            ("--expose", "0.0.0.0:8601=127.0.0.1:9001"),
            ("--allow", "spiffe://example.org/ns/prod/*"),
            ("--allow", "spiffe://example.org/client"),
            ("--proxy-protocol", None),
            ("--forward", "127.0.0.1:7001=node-b:8600"),
            ("--expect", "spiffe://example.org/server"),
            ("--expose", "[::]:8602=10.0.0.9:80"),
            ("--unsafe-target", None),
            ("--forward", "0.0.0.0:7002=node-c:8600"),
            ("--unsafe-listen", None),
            ("--expect", "spiffe://example.org"),
        ],
    )
    assert [e.listen for e in config.expose] == [
        ("127.0.0.1", 8600),  # the config's own come first
        (EVERY_IPV4, 8601),
        ("::", 8602),
    ]
    first, second = config.expose[1:]
    assert first.allow is not None
    assert [str(p) for p in first.allow] == [
        "spiffe://example.org/ns/prod/*",
        "spiffe://example.org/client",
    ]
    assert (first.proxy_protocol, first.unsafe_target) == (True, False)
    assert (second.allow, second.unsafe_target, second.proxy_protocol) == (None, True, False)
    assert [(f.peer, str(f.expect), f.unsafe_listen) for f in config.forward] == [
        (("node-b", 8600), "spiffe://example.org/server", False),
        (("node-c", 8600), "spiffe://example.org", True),
    ]
    assert with_flag_tunnels(base, []) is base


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            [("--allow", "spiffe://example.org/a")],
            "--allow spiffe://example.org/a: comes first, but it belongs to the --expose just"
            " before it; write it after its --expose",
        ),
        (
            [("--forward", "127.0.0.1:7001=h:1"), ("--allow", "spiffe://example.org/a")],
            "--allow spiffe://example.org/a: follows --forward 127.0.0.1:7001=h:1, but it belongs"
            " to the --expose just before it; write it after its --expose",
        ),
        (
            [("--expose", "127.0.0.1:1=127.0.0.1:2"), ("--unsafe-listen", None)],
            "--unsafe-listen: follows --expose 127.0.0.1:1=127.0.0.1:2, but it belongs to the"
            " --forward just before it; write it after its --forward",
        ),
        (
            [("--forward", "127.0.0.1:7001=h:1")],
            "--forward 127.0.0.1:7001=h:1: needs --expect ID|PATTERN after it",
        ),
        (
            [
                ("--forward", "127.0.0.1:7001=h:1"),
                ("--expect", "spiffe://example.org/a"),
                ("--expect", "spiffe://example.org/b"),
            ],
            "--expect spiffe://example.org/b: --forward 127.0.0.1:7001=h:1 already has --expect",
        ),
        (
            [("--forward", "0.0.0.0:7001=h:1"), ("--expect", "spiffe://example.org/a")],
            "--forward 0.0.0.0:7001=h:1: listen 0.0.0.0:7001 is not a loopback address",
        ),
        (
            [("--expose", "127.0.0.1:1=db:5432")],
            "or add --unsafe-target after it if that is what you mean",
        ),
        ([("--expose", "127.0.0.1:8600")], "expected LISTEN=BACKEND"),
        ([("--forward", "127.0.0.1:1=h")], "bad PEER 'h' has no port"),
        ([("--expose", ":1=127.0.0.1:2")], "bad LISTEN ':1' has no host"),
        (
            [("--expose", "127.0.0.1:1=127.0.0.1:2"), ("--allow", "spiffe://example.org/*")],
            "--allow 'spiffe://example.org/*': for any member",
        ),
        (
            [("--expose", "127.0.0.1:8600=127.0.0.1:2")],
            "--expose 127.0.0.1:8600=127.0.0.1:2: 127.0.0.1:8600 clashes with [[expose]] #1"
            " listen 127.0.0.1:8600",
        ),
        (
            [("--expose", "127.0.0.1:8443=127.0.0.1:2")],
            "clashes with [node] listen 127.0.0.1:8443",
        ),
    ],
)
def test_flag_mistakes_are_one_line_naming_the_flag(
    conf_dir: Path, flags: list[tuple[str, str | None]], message: str
) -> None:
    base = parse(FILES + EXPOSE, conf_dir)
    with pytest.raises(ConfigError) as info:
        with_flag_tunnels(base, flags)
    assert "\n" not in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allow", "spiffe://example.org/a"], "--allow spiffe://example.org/a: comes first"),
        (["--expose", "127.0.0.1:1=10.9.8.7:80"], "add --unsafe-target after it"),
        (["--forward", "127.0.0.1:1=h:1"], "needs --expect"),
    ],
)
def test_meshtls_node_tunnel_flag_mistakes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from meshtls._cli import main

    assert main(["node", "--state-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meshtls: error: ")
    assert message in err
    assert not list(tmp_path.iterdir())  # refused before anything was made


@hypothesis.settings(max_examples=300, derandomize=True, deadline=None)
@hypothesis.given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            "".join,
            st.lists(
                st.sampled_from(["spiffe://", "example.org", "/", "*", "ns", "prod", ".", "A"]),
                max_size=8,
            ),
        ),
    )
)
def test_any_pattern_text_parses_round_trip_or_is_one_clear_error(text: str) -> None:
    try:
        pattern = IdPattern.parse(text)
    except (ConfigError, meshtls.SpiffeIdError) as exc:
        assert "\n" not in str(exc)
        return
    assert IdPattern.parse(str(pattern)) == pattern
    assert str(pattern) == text  # strict parsing: only canonical text is accepted
    pattern.authorizer()
