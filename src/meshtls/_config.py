"""The node's configuration: a TOML file (API.md, "Node configuration") read into frozen values.

Theory of operation: `parse_config` walks the TOML document one table at a time. Each
table is wrapped in a `_Table` that knows its own name (``[policy]``, ``[[expose]] #2``)
and the keys it accepts. It rejects unknown keys first, with a difflib suggestion, and
then hands out typed values through small readers (`_Table.string`, `_Table.duration`,
`_Table.address`, ...). Every reader raises `ConfigError` with one line that names the
file, the table and the key, what is wrong and what to write instead. tomllib's
``dict[str, Any]`` never leaves this module untyped.

Loading reads and checks; it does not create directories or build sources. The node turns
these values into identity sources, listeners and authorizers. Relative paths resolve
against the directory of the config file, never the working directory, and symlinks are
not resolved, so a Kubernetes-style ``..data`` swap keeps working.

Choices a reader of a config file should know:

- ``[identity]`` takes exactly one of three forms: files (``cert``, ``key``, ``bundle`` and
  an optional ``[identity.federated]`` table of ``"trust.domain" = "bundle.pem"``), a local
  CA (``local_ca``, ``spiffe_id``, ``ttl``) or the Workload API (``workload_api =
  "unix:///path"``, ``"tcp://IP:port"``, or ``"env"`` for ``SPIFFE_ENDPOINT_SOCKET``).
- With no ``[authorize]`` table, `AuthorizeSettings` is empty, which means "members of
  our own trust domain"; the node passes that trust domain, from its first SVID, to
  `AuthorizeSettings.authorizer`.
- A trust domain written with uppercase letters is lowercased (ID-5 allows config input to
  be normalised) and a line saying so is kept in `NodeConfig.notes` for the node to log.
  Paths are case-sensitive (ID-15) and are never changed.
- Tunnels are safe by default: a ``[[forward]]`` listens and an ``[[expose]]`` sends
  plaintext on loopback only (a loopback IP or ``localhost``; any other name counts as off
  loopback) unless ``unsafe_listen`` / ``unsafe_target`` says otherwise. ``allow`` and
  ``expect`` take `IdPattern` strings. `with_flag_tunnels` adds ``meshtls node``'s tunnel
  flags under the same rules.
- ``[tls] groups`` is checked against the OpenSSL that meshtls's engine uses
  (`meshtls._ossl.validate_groups`: each name known and usable with TLS 1.3, none twice)
  and kept normalised (no spaces around the names).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, TypeVar

from ._authorize import (
    Authorizer,
    IdPattern,
    authorize_member_of,
    authorize_one_of,
    authorize_path_prefix,
    authorize_patterns,
    split_pattern,
)
from ._boundary import describe_error, mapped, shown
from ._ca import DEFAULT_CA_TTL
from ._crl import CrlError, load_crl
from ._duration import format_duration, parse_duration
from ._errors import ConfigError, SpiffeIdError
from ._ossl import DEFAULT_GROUPS, validate_groups
from ._policy import MAX_HARD_FAIL_WAIT, REVOCATION_MODES, RevocationMode, ValidationPolicy
from ._spiffeid import SCHEME_PREFIX, SpiffeId, TrustDomain

Address = tuple[str, int]
"""A ``(host, port)`` pair. IPv6 hosts are kept without their brackets."""
Backend = Address | Path
"""Where an expose sends plaintext: a TCP address, or the path of a Unix socket."""
#: How a Unix socket backend is written: ``unix:PATH`` (as ghostunnel's targets).
UNIX_PREFIX: Final = "unix:"

DEFAULT_TRUST_DOMAIN: Final = TrustDomain("meshtls.local")
DEFAULT_SPIFFE_ID: Final = SpiffeId(DEFAULT_TRUST_DOMAIN, "/node")
DEFAULT_LISTEN: Final[Address] = ("127.0.0.1", 8443)
DEFAULT_METRICS: Final[Address] = ("127.0.0.1", 9464)
DEFAULT_LOCAL_CA_TTL: Final = timedelta(minutes=10)
#: The longest ``ttl`` a local CA may be asked for: its own lifetime, past which a leaf
#: would be cut anyway (and ``now + ttl`` could overflow a datetime).
MAX_LOCAL_CA_TTL: Final = DEFAULT_CA_TTL
DEFAULT_HANDSHAKE_TIMEOUT: Final = timedelta(seconds=10)
DEFAULT_MAX_HANDSHAKES: Final = 256
DEFAULT_SHUTDOWN_TIMEOUT: Final = timedelta(seconds=10)
#: How long a node waits for its first identity before it gives up (``[node] startup_timeout``).
DEFAULT_STARTUP_TIMEOUT: Final = timedelta(seconds=30)
#: The first word of every metric name (``[metrics] prefix``).
DEFAULT_METRICS_PREFIX: Final = "meshtls"
_METRICS_PREFIX_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_CONNECT_TIMEOUT: Final = timedelta(seconds=10)
DEFAULT_ON_ROTATE_TIMEOUT: Final = timedelta(seconds=10)
#: ``[[write]]`` file modes: the key readable by its owner alone unless the config says.
DEFAULT_CERT_MODE: Final = 0o644
DEFAULT_KEY_MODE: Final = 0o600
DEFAULT_BUNDLE_MODE: Final = 0o644
MAX_CLOCK_SKEW: Final = timedelta(hours=1)
#: ``[mesh] max_message_size``: the most a size may be (a message is held whole in memory).
MAX_MESSAGE_SIZE: Final = 1 << 30
#: ``[mesh] queue_size``: the most messages one inbox or channel may buffer.
MAX_QUEUE_SIZE: Final = 1 << 16
#: ``[mesh] max_dials``: the most dials one node's pool may have in flight.
MAX_DIALS: Final = 1024
_SIZE_UNITS: Final = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_RE: Final = re.compile(r"([0-9]{1,10})\s*(B|KiB|MiB|GiB)?")


def default_state_dir() -> Path:
    """Where a node keeps its state when neither the config nor the caller says.

    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first entry), else
    ``$XDG_STATE_HOME/meshtls``, else ``~/.local/state/meshtls``, else ``./.meshtls``.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if xdg:
        return Path(xdg) / "meshtls"
    try:
        return Path.home() / ".local" / "state" / "meshtls"
    except RuntimeError:  # no HOME and no password entry
        return Path.cwd() / ".meshtls"


# ---------------------------------------------------------------- values


def _at_least(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{owner} {name} must be a whole number, at least {minimum}, not {value!r}"
        )


def _longer_than_zero(owner: str, name: str, value: object, *, zero_ok: bool = False) -> None:
    if not isinstance(value, timedelta):
        raise ConfigError(f"{owner} {name} must be a timedelta, not {value!r}")
    if value < timedelta(0) or (value == timedelta(0) and not zero_ok):
        least = "0s or more" if zero_ok else "longer than 0s"
        raise ConfigError(f"{owner} {name} must be {least}, not {format_duration(value)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileIdentity:
    """Our SVID from files (`meshtls.FileSource`): watched, and reloaded when they change.

    ``federated`` maps other trust domains to their bundle files; it is read-only.
    """

    cert: Path
    key: Path
    bundle: Path
    federated: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalCAIdentity:
    """Our SVID issued by a local development CA in ``directory`` (created when missing)."""

    directory: Path
    spiffe_id: SpiffeId
    ttl: timedelta = DEFAULT_LOCAL_CA_TTL

    def __post_init__(self) -> None:
        _longer_than_zero("local_ca", "ttl", self.ttl)
        if self.ttl > MAX_LOCAL_CA_TTL:
            raise ConfigError(f"local_ca ttl {_over_ca_lifetime(self.ttl)}")
        if self.spiffe_id.is_root:
            raise ConfigError(f"local_ca spiffe_id {self.spiffe_id} has no path (L-3)")


def _over_ca_lifetime(ttl: timedelta) -> str:
    return (
        f"{format_duration(ttl)} is over {format_duration(MAX_LOCAL_CA_TTL)}, the local CA's"
        " own lifetime: no leaf can outlive its CA"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadApiIdentity:
    """Our SVID and bundles from a SPIFFE Workload API.

    ``address`` is ``unix:///absolute/path`` or ``tcp://IP:port`` (W-2); None means the
    source reads ``SPIFFE_ENDPOINT_SOCKET`` when it starts. `parse_config` checks the
    address; one built by hand is checked when the source is made.
    """

    address: str | None = None


Identity = FileIdentity | LocalCAIdentity | WorkloadApiIdentity


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """``[node]``: the mesh listener, the metrics endpoint and the node's own limits.

    ``metrics`` is None when ``metrics = "off"``. Port 0 in a listen address asks the
    kernel for a free port. ``shutdown_timeout`` may be 0s (close at once).
    ``max_connections`` caps the mesh listener's verified connections (a peer verified at
    the cap is reset at once); ``max_handshakes`` caps its handshakes in progress.
    ``startup_timeout`` bounds the wait for the first identity (the health endpoint
    answers meanwhile, ``/readyz`` 503).
    ``access_log`` writes one info line per served connection when it ends.
    """

    listen: Address = DEFAULT_LISTEN
    metrics: Address | None = DEFAULT_METRICS
    handshake_timeout: timedelta = DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    shutdown_timeout: timedelta = DEFAULT_SHUTDOWN_TIMEOUT
    startup_timeout: timedelta = DEFAULT_STARTUP_TIMEOUT
    access_log: bool = True

    def __post_init__(self) -> None:
        _longer_than_zero("node", "handshake_timeout", self.handshake_timeout)
        _at_least("node", "max_handshakes", self.max_handshakes, 1)
        _at_least("node", "max_connections", self.max_connections, 1)
        _longer_than_zero("node", "shutdown_timeout", self.shutdown_timeout, zero_ok=True)
        _longer_than_zero("node", "startup_timeout", self.startup_timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    """``[metrics]``: ``prefix`` is the first word of every meshtls metric name
    (``"mtls"`` gives the names of the system meshtls replaces)."""

    prefix: str = DEFAULT_METRICS_PREFIX

    def __post_init__(self) -> None:
        if not _METRICS_PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"metrics prefix {self.prefix!r} is not a Prometheus name"
                " (a letter or _, then letters, digits or _)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationSettings:
    """``[revocation]``: the mode and hard-fail wait (also in `ValidationPolicy`), the cache
    timings, and CRL files (each checked to exist and parse when the config is read; the
    node judges them against their issuer when it loads them)."""

    mode: RevocationMode = "soft-fail"
    refresh_interval: timedelta = timedelta(minutes=5)
    ocsp_cache_ttl: timedelta = timedelta(hours=1)
    crl_cache_ttl: timedelta = timedelta(hours=6)
    hard_fail_wait: timedelta = timedelta(seconds=2)
    crl_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in REVOCATION_MODES:
            raise ConfigError(
                f"revocation mode must be one of {', '.join(REVOCATION_MODES)}, not {self.mode!r}"
            )
        for name in ("refresh_interval", "ocsp_cache_ttl", "crl_cache_ttl"):
            _longer_than_zero("revocation", name, getattr(self, name))
        if not timedelta(0) <= self.hard_fail_wait <= MAX_HARD_FAIL_WAIT:
            raise ConfigError(
                f"revocation hard_fail_wait must be between 0s and 60s, not {self.hard_fail_wait}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizeSettings:
    """``[authorize]``: who may connect to the mesh listener. At most one form is set.

    - ``member_of``: any id in that trust domain;
    - ``ids``: exactly these ids;
    - ``path_prefix``: ids in its trust domain whose path is its path or lies below it.

    All empty (the default, and what a config without ``[authorize]`` gives) means
    members of *our own* trust domain, which only the node knows once its first SVID is
    loaded: it passes that to `authorizer`.
    """

    member_of: TrustDomain | None = None
    ids: tuple[SpiffeId, ...] = ()
    path_prefix: SpiffeId | None = None

    def __post_init__(self) -> None:
        forms = [
            name
            for name, value in (
                ("member_of", self.member_of),
                ("ids", self.ids),
                ("path_prefix", self.path_prefix),
            )
            if value
        ]
        if len(forms) > 1:
            raise ConfigError(f"authorize takes one of member_of, ids or path_prefix, not {forms}")
        if self.path_prefix is not None and self.path_prefix.is_root:
            raise ConfigError(
                f"authorize path_prefix {self.path_prefix} has no path; use member_of"
            )

    @property
    def is_own_trust_domain(self) -> bool:
        """True when no form is set: members of our own trust domain are allowed."""
        return self.member_of is None and not self.ids and self.path_prefix is None

    def authorizer(self, own_trust_domain: TrustDomain | None = None) -> Authorizer:
        """The authorizer for this setting.

        `own_trust_domain` is required only when `is_own_trust_domain`; a set form ignores
        it. Raises `ConfigError` when it is required and missing.
        """
        if self.member_of is not None:
            return authorize_member_of(self.member_of)
        if self.ids:
            return authorize_one_of(*self.ids)
        if self.path_prefix is not None:
            return authorize_path_prefix(self.path_prefix.trust_domain, self.path_prefix.path)
        if own_trust_domain is None:
            raise ConfigError(
                "authorize: no form is set, so it means our own trust domain;"
                " pass it as authorizer(own_trust_domain)"
            )
        return authorize_member_of(own_trust_domain)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSettings:
    """``[mesh]``: the message channels' bounds and the dialer pool's timings.

    ``max_message_size`` (bytes) and ``queue_size`` (messages per inbox or channel) bound
    memory; ``send_timeout`` bounds one `Node.send` (a connection plus the peer's ack);
    ``keepalive_interval`` and ``keepalive_timeout`` detect a dead peer; ``upgrade_timeout``
    bounds the WebSocket upgrade; ``dial_timeout`` bounds one dial (TCP and handshake);
    failed dials back off from ``backoff_initial``, doubling, to ``backoff_max``;
    ``max_dials`` bounds the pool's dials in flight (TCP connect to WebSocket upgrade).
    """

    max_message_size: int = 1 << 20
    queue_size: int = 64
    send_timeout: timedelta = timedelta(seconds=10)
    keepalive_interval: timedelta = timedelta(seconds=15)
    keepalive_timeout: timedelta = timedelta(seconds=10)
    upgrade_timeout: timedelta = timedelta(seconds=10)
    dial_timeout: timedelta = timedelta(seconds=10)
    backoff_initial: timedelta = timedelta(milliseconds=500)
    backoff_max: timedelta = timedelta(seconds=30)
    max_dials: int = 16

    def __post_init__(self) -> None:
        _at_least("mesh", "max_message_size", self.max_message_size, 1)
        _at_least("mesh", "queue_size", self.queue_size, 1)
        _at_least("mesh", "max_dials", self.max_dials, 1)
        if self.max_dials > MAX_DIALS:
            raise ConfigError(f"mesh max_dials must be at most {MAX_DIALS}, not {self.max_dials}")
        if self.max_message_size > MAX_MESSAGE_SIZE:
            raise ConfigError(
                f"mesh max_message_size must be at most 1GiB, not {self.max_message_size}"
            )
        if self.queue_size > MAX_QUEUE_SIZE:
            raise ConfigError(
                f"mesh queue_size must be at most {MAX_QUEUE_SIZE}, not {self.queue_size}"
            )
        for name in (
            "send_timeout",
            "keepalive_interval",
            "keepalive_timeout",
            "upgrade_timeout",
            "dial_timeout",
            "backoff_initial",
            "backoff_max",
        ):
            _longer_than_zero("mesh", name, getattr(self, name))
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                f"mesh backoff_max {format_duration(self.backoff_max)} is shorter than"
                f" backoff_initial {format_duration(self.backoff_initial)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """``[tls]``: ``groups`` are the key-exchange groups every connection of the node
    offers and accepts (mesh listener, dialer pool, expose and forward): OpenSSL names
    joined by ``:``, most preferred first; the default puts the hybrid post-quantum
    ``X25519MLKEM768`` before ``X25519``. Checked and normalised by
    `meshtls._ossl.validate_groups` (a `ConfigError` naming the bad group). A change
    needs a restart.
    """

    groups: str = DEFAULT_GROUPS

    def __post_init__(self) -> None:
        try:
            groups = validate_groups(self.groups)
        except ConfigError as exc:
            raise ConfigError(f"tls groups: {exc}") from None
        object.__setattr__(self, "groups", groups)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSettings:
    """``[[peers]]``: a node the dialer pool keeps a connection to."""

    id: SpiffeId
    address: Address


def is_loopback(host: str) -> bool:
    """Whether `host` is known to be this machine: a loopback IP, or the name ``localhost``.

    Any other name might resolve anywhere, so it is not known to be loopback.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped_v4 = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped_v4 is not None and mapped_v4.is_loopback)


def _not_loopback(address: Address, remedy: str, why: str) -> str | None:
    """What is wrong with `address` off loopback (None if it is loopback), with `remedy`."""
    host = address[0]
    if is_loopback(host):
        return None
    what = (
        "is not a loopback address" if _is_ip(host) else "is a host name, not known to be loopback"
    )
    return (
        f"{format_address(address)} {what}: {why}; use 127.0.0.1, [::1] or localhost,"
        f" or {remedy} if that is what you mean"
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _as_pattern(value: IdPattern | SpiffeId) -> IdPattern:
    return IdPattern.of(value) if isinstance(value, SpiffeId) else value


_EXPOSE_TARGET_WHY: Final = "the plaintext to the backend would cross a network"
_FORWARD_LISTEN_WHY: Final = (
    "a forward takes plaintext from whoever reaches it and speaks for us to the peer"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExposeSettings:
    """``[[expose]]``: mTLS in on ``listen``, plaintext out to ``backend``.

    ``allow`` None means: whoever ``[authorize]`` allows; otherwise any of its patterns
    (`IdPattern`; a `SpiffeId` is its exact pattern). ``backend`` is a TCP address or a
    Unix socket's path (``unix:PATH`` in the file); ``connect_timeout`` bounds the connect
    to it. A TCP ``backend`` that is not loopback is refused unless ``unsafe_target``.
    ``proxy_protocol`` sends the backend a PROXY protocol v2 header carrying the peer's
    verified SPIFFE id before any byte of the peer's.
    """

    listen: Address
    backend: Backend
    allow: tuple[IdPattern | SpiffeId, ...] | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connect_timeout: timedelta = DEFAULT_CONNECT_TIMEOUT
    unsafe_target: bool = False
    proxy_protocol: bool = False

    def __post_init__(self) -> None:
        _at_least("expose", "max_connections", self.max_connections, 1)
        _longer_than_zero("expose", "connect_timeout", self.connect_timeout)
        if self.allow is not None and not self.allow:
            raise ConfigError("expose allow must list at least one SPIFFE ID, or be None")
        if self.allow is not None:  # one form for equal settings: a SpiffeId is its pattern
            object.__setattr__(self, "allow", tuple(map(_as_pattern, self.allow)))
        problem = None if self.unsafe_target else expose_target_problem(self.backend)
        if problem is not None:
            raise ConfigError(f"expose backend {problem}")

    def authorizer(self, default: Authorizer) -> Authorizer:
        """``allow`` as an authorizer, or `default` (the node's ``[authorize]``) without it."""
        return default if self.allow is None else authorize_patterns(*self.allow)


def expose_target_problem(backend: Backend, remedy: str = "set unsafe_target = true") -> str | None:
    """Why an expose may not send plaintext to `backend` without ``unsafe_target``, or None
    (a Unix socket never leaves the machine)."""
    if isinstance(backend, Path):
        return None
    return _not_loopback(backend, remedy, _EXPOSE_TARGET_WHY)


def format_backend(backend: Backend) -> str:
    """``host:port``, or ``unix:PATH``: the inverse of the config's parsing."""
    return f"{UNIX_PREFIX}{backend}" if isinstance(backend, Path) else format_address(backend)


def forward_listen_problem(listen: Address, remedy: str = "set unsafe_listen = true") -> str | None:
    """Why a forward may not listen on `listen` without ``unsafe_listen``, or None."""
    return _not_loopback(listen, remedy, _FORWARD_LISTEN_WHY)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardSettings:
    """``[[forward]]``: plaintext in on ``listen``, mTLS out to ``peer``, who must match
    ``expect`` (`IdPattern`; a `SpiffeId` is its exact pattern).

    ``connect_timeout`` bounds the TCP connect to ``peer`` and the handshake with it. A
    ``listen`` that is not loopback is refused unless ``unsafe_listen``.
    """

    listen: Address
    peer: Address
    expect: IdPattern | SpiffeId
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connect_timeout: timedelta = DEFAULT_CONNECT_TIMEOUT
    unsafe_listen: bool = False

    def __post_init__(self) -> None:
        _at_least("forward", "max_connections", self.max_connections, 1)
        _longer_than_zero("forward", "connect_timeout", self.connect_timeout)
        object.__setattr__(self, "expect", _as_pattern(self.expect))
        problem = None if self.unsafe_listen else forward_listen_problem(self.listen)
        if problem is not None:
            raise ConfigError(f"forward listen {problem}")

    def authorizer(self) -> Authorizer:
        """Accept the peers ``expect`` matches."""
        return authorize_patterns(self.expect)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteSettings:
    """``[[write]]``: our SVID on disk for other programs, rewritten on every rotation.

    ``cert`` gets our leaf then its intermediates, ``key`` its PKCS#8 key, ``bundle`` the
    roots of our own trust domain (all PEM); at least one is set. Each file gets its mode
    (``key_mode`` 0600 unless said). ``on_rotate`` is a command (argv, never a shell) run
    after each write, killed after ``on_rotate_timeout``. `meshtls._write` does the work.
    """

    cert: Path | None = None
    key: Path | None = None
    bundle: Path | None = None
    cert_mode: int = DEFAULT_CERT_MODE
    key_mode: int = DEFAULT_KEY_MODE
    bundle_mode: int = DEFAULT_BUNDLE_MODE
    on_rotate: tuple[str, ...] = ()
    on_rotate_timeout: timedelta = DEFAULT_ON_ROTATE_TIMEOUT

    def __post_init__(self) -> None:
        paths = [path for path in (self.cert, self.key, self.bundle) if path is not None]
        if not paths:
            raise ConfigError("write needs at least one of cert, key or bundle")
        if len(set(paths)) != len(paths):
            raise ConfigError("write cert, key and bundle must be different files")
        for name in ("cert_mode", "key_mode", "bundle_mode"):
            mode = getattr(self, name)
            if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
                raise ConfigError(f"write {name} must be a permission mode 0o000..0o777")
        if any(not arg or "\0" in arg for arg in self.on_rotate):
            raise ConfigError("write on_rotate must be non-empty strings without NUL")
        _longer_than_zero("write", "on_rotate_timeout", self.on_rotate_timeout)

    @property
    def files(self) -> tuple[Path, ...]:
        """The paths this table writes."""
        return tuple(path for path in (self.cert, self.key, self.bundle) if path is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything `meshtls.open_node` needs. Built by `load_config`, `parse_config`,
    `default_config`, or by hand.

    ``policy.revocation`` and ``revocation.mode`` must agree (both come from
    ``[revocation] mode``), and so must their ``hard_fail_wait``. ``source`` is the file
    the config was read from, if any.
    ``notes`` are lines the node should log at start, such as a normalised trust domain.
    """

    identity: Identity
    node: NodeSettings = field(default_factory=NodeSettings)
    policy: ValidationPolicy = field(default_factory=ValidationPolicy)
    revocation: RevocationSettings = field(default_factory=RevocationSettings)
    authorize: AuthorizeSettings = field(default_factory=AuthorizeSettings)
    peers: tuple[PeerSettings, ...] = ()
    mesh: MeshSettings = field(default_factory=MeshSettings)
    expose: tuple[ExposeSettings, ...] = ()
    forward: tuple[ForwardSettings, ...] = ()
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    write: tuple[WriteSettings, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    source: Path | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.policy.revocation != self.revocation.mode:
            raise ConfigError(
                f"policy revocation {self.policy.revocation!r} and revocation mode"
                f" {self.revocation.mode!r} disagree; set both to the same mode"
            )
        if self.policy.hard_fail_wait != self.revocation.hard_fail_wait:
            raise ConfigError(
                f"policy hard_fail_wait {format_duration(self.policy.hard_fail_wait)} and"
                f" revocation hard_fail_wait {format_duration(self.revocation.hard_fail_wait)}"
                " disagree; set both to the same duration"
            )


def default_config(state_dir: Path) -> NodeConfig:
    """The embedded default that ``meshtls node`` runs without ``--config``.

    A local CA in ``state_dir/ca`` for trust domain ``meshtls.local`` issues our id
    ``spiffe://meshtls.local/node`` for 10 minutes at a time; the mesh listens on
    127.0.0.1:8443 and the metrics on 127.0.0.1:9464; members of ``meshtls.local`` may
    connect. Nothing is created here.
    """
    return NodeConfig(
        identity=LocalCAIdentity(
            directory=state_dir / "ca", spiffe_id=DEFAULT_SPIFFE_ID, ttl=DEFAULT_LOCAL_CA_TTL
        ),
        node=NodeSettings(),
        authorize=AuthorizeSettings(member_of=DEFAULT_TRUST_DOMAIN),
    )


# ---------------------------------------------------------------- addresses

_HOST_NAME_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_ADDRESS_HINT: Final = (
    "expected HOST:PORT, such as 127.0.0.1:8443, node-b.mesh.internal:8443 or [::1]:8443"
)


_MAX_MESSAGE: Final = 600
_PATTERN_EXAMPLES: Final = (
    '"spiffe://example.org/web" (one id), "spiffe://example.org/ns/prod/*" (that path and'
    ' below) or "spiffe://example.org" (any member)'
)


def _cut(text: str, limit: int = 60) -> str:
    """`text` as it is, or cut to about `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def _address_error(text: str, *, listen: bool) -> tuple[Address | None, str]:
    """Parse ``host:port`` or ``[v6]:port``; return the address, or None and what is wrong."""
    quoted = shown(text)
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            return None, f"{quoted} has no closing ']': {_ADDRESS_HINT}"
        if not rest.startswith(":"):
            return None, f"{quoted} has no ':PORT' after ']': {_ADDRESS_HINT}"
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None, f"{shown(host)} in brackets is not an IPv6 address: {_ADDRESS_HINT}"
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            return None, f"{quoted} has no port: {_ADDRESS_HINT}"
        if ":" in host:
            return None, f"{quoted}: an IPv6 address goes in brackets, such as [::1]:8443"
        if not host:
            every = " (to listen on every interface, write 0.0.0.0:PORT or [::]:PORT)"
            return None, f"{quoted} has no host: {_ADDRESS_HINT}{every if listen else ''}"
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return None, f"{shown(host)} is not an IPv4 address: {_ADDRESS_HINT}"
        elif len(host) > 253 or not _HOST_NAME_RE.fullmatch(host) or ".." in host:
            return None, f"{shown(host)} is not a host name or IP address: {_ADDRESS_HINT}"
    lowest = 0 if listen else 1
    if (
        not (port.isascii() and port.isdigit())
        or len(port) > 5  # before int(), which refuses over 4,300 digits with a ValueError
        or not lowest <= int(port) <= 65535
    ):
        return None, f"{quoted} has a bad port {shown(port)}: use {lowest} to 65535"
    return (host, int(port)), ""


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` as a peer's address; `ConfigError` saying what is wrong."""
    address, problem = _address_error(text, listen=False)
    if address is None:
        raise ConfigError(f"bad address {problem}")
    return address


def format_address(address: Address) -> str:
    """``host:port``, with an IPv6 host in brackets: the inverse of the config's parsing."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _conflicts(a: Address, b: Address) -> bool:
    """Whether two listeners cannot both bind: same port, and the same or a wildcard host."""
    if a[1] != b[1] or a[1] == 0:
        return False
    hosts = {a[0].lower(), b[0].lower()}
    if len(hosts) == 1:
        return True
    families = set()
    for host in hosts:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            return False
    return len(families) == 1 and bool(hosts & {"0.0.0.0", "::"})  # noqa: S104


# ---------------------------------------------------------------- reading TOML

T = TypeVar("T")

_TABLES: Final[dict[str, tuple[str, ...]]] = {
    "identity": (
        "cert",
        "key",
        "bundle",
        "federated",
        "local_ca",
        "spiffe_id",
        "ttl",
        "workload_api",
    ),
    "node": (
        "listen",
        "metrics",
        "handshake_timeout",
        "max_handshakes",
        "max_connections",
        "shutdown_timeout",
        "startup_timeout",
        "access_log",
    ),
    "metrics": ("prefix",),
    "policy": ("max_ttl", "max_age", "clock_skew"),
    "revocation": (
        "mode",
        "refresh_interval",
        "ocsp_cache_ttl",
        "crl_cache_ttl",
        "hard_fail_wait",
        "crl_files",
    ),
    "authorize": ("member_of", "ids", "path_prefix"),
    "peers": ("id", "address"),
    "mesh": tuple(f.name for f in fields(MeshSettings)),  # one key per setting
    "tls": ("groups",),
    "expose": (
        "listen",
        "backend",
        "allow",
        "max_connections",
        "connect_timeout",
        "unsafe_target",
        "proxy_protocol",
    ),
    "forward": ("listen", "peer", "expect", "max_connections", "connect_timeout", "unsafe_listen"),
    "write": (
        "cert",
        "key",
        "bundle",
        "cert_mode",
        "key_mode",
        "bundle_mode",
        "on_rotate",
        "on_rotate_timeout",
    ),
}
_ARRAYS: Final = frozenset({"peers", "expose", "forward", "write"})


def _label(table: str) -> str:
    return f"[[{table}]]" if table in _ARRAYS else f"[{table}]"


def _describe(value: object) -> str:
    """A TOML value as a reader would name it: ``the integer 10``, ``an array``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return f"the date/time {value.isoformat()}"
    return repr(value)  # pragma: no cover - tomllib gives nothing else


def _unknown_key(key: str, known: Sequence[str], table: str) -> str:
    homes = [_label(name) for name, keys in _TABLES.items() if key in keys and name != table]
    if homes:
        return f"unknown key here; {shown(key)} belongs in {' or '.join(homes)}"
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}known keys: {', '.join(known)}"


def _mapping(value: object) -> dict[str, object] | None:
    if not isinstance(value, dict):
        return None
    return {str(key): item for key, item in value.items()}


def _lower_ascii(text: str) -> str:
    return "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in text)


class _Reader:
    """What every table shares: the file's name for messages, its directory, the notes."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.notes: list[str] = []

    def error(self, where: str, what: str) -> ConfigError:
        """One line: the file, where in it, what is wrong. Any lone surrogate is escaped, so
        that the line can always be printed."""
        message = f"{self.source}: {where}: {what}".replace("\r", "\\r").replace("\n", "\\n")
        if len(message) > _MAX_MESSAGE:  # a hostile key or value: keep the line readable
            message = message[: _MAX_MESSAGE - 3] + "..."
        return ConfigError(message.encode("utf-8", "backslashreplace").decode("utf-8"))

    def table(self, name: str, label: str, value: object, known: Sequence[str] | None) -> _Table:
        data = _mapping(value)
        if data is None:
            raise self.error(label, f"expected a table, not {_describe(value)}")
        return _Table(self, label, data, known, name)


class _Table:
    """One TOML table with a name for messages and typed, checked readers for its keys."""

    def __init__(
        self,
        reader: _Reader,
        label: str,
        data: Mapping[str, object],
        known: Sequence[str] | None,
        name: str,
    ) -> None:
        self.reader, self.label, self.data = reader, label, data
        if known is not None:
            for key in data:
                if key not in known:
                    raise self.error(key, _unknown_key(key, known, name))

    def error(self, key: str, what: str) -> ConfigError:
        return self.reader.error(f"{self.label} {_cut(key)}", what)

    def note(self, key: str, what: str) -> None:
        self.reader.notes.append(f"{self.reader.source}: {self.label} {key}: {what}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _typed(self, key: str, kind: type[T], expected: str) -> T | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {expected}, not {_describe(value)}")
        return value

    def required(self, key: str, value: T | None, what: str) -> T:
        if value is None:
            raise self.error(key, f"missing: {what}")
        return value

    def string(self, key: str, expected: str = "a string") -> str | None:
        value = self._typed(key, str, expected)
        if value is not None and not value:
            raise self.error(key, f"is empty: expected {expected}")
        return value

    def array(self, key: str, expected: str) -> list[object] | None:
        """An array, its items unchecked (None when the key is absent)."""
        return self._typed(key, list, expected)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true or false")
        return default if value is None else value

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self._typed(key, int, "a whole number")
        if value is None:
            return default
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def size(self, key: str, default: int, *, maximum: int) -> int:
        """A size in bytes: a whole number, or a string such as ``"64KiB"`` or ``"1MiB"``
        (binary units B, KiB, MiB, GiB); at least 1, at most `maximum`."""
        expected = 'a size such as 65536, "64KiB" or "1MiB"'
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            match = _SIZE_RE.fullmatch(value.strip())
            if match is None:
                raise self.error(key, f"{shown(value)} is not {expected} (units B, KiB, MiB, GiB)")
            size = int(match[1]) * _SIZE_UNITS[match[2] or ""]
        elif isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            raise self.error(key, f"expected {expected}, not {_describe(value)}")
        if not 1 <= size <= maximum:
            raise self.error(key, f"must be between 1 byte and {maximum} bytes, not {size}")
        return size

    def _duration_text(self, key: str) -> str | None:
        return self.string(key, 'a duration string such as "30s", "10m" or "1h"')

    def _parse_duration(self, key: str, text: str, *, zero_ok: bool) -> timedelta:
        if text == "off":
            raise self.error(key, "cannot be off: give a duration such as 30s, 10m or 1h")
        try:
            value = parse_duration(text)
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None
        if value == timedelta(0) and not zero_ok:
            raise self.error(key, f"must be longer than 0s, not {shown(text)}")
        return value

    def duration(self, key: str, default: timedelta, *, zero_ok: bool = False) -> timedelta:
        text = self._duration_text(key)
        return default if text is None else self._parse_duration(key, text, zero_ok=zero_ok)

    def optional_duration(self, key: str, default: timedelta | None) -> timedelta | None:
        """A duration, or ``"off"`` for None."""
        text = self._duration_text(key)
        if text is None:
            return default
        return None if text == "off" else self._parse_duration(key, text, zero_ok=False)

    def address(self, key: str, *, listen: bool) -> Address | None:
        text = self.string(key, "a HOST:PORT string")
        if text is None:
            return None
        address, problem = _address_error(text, listen=listen)
        if address is None:
            raise self.error(key, f"bad address {problem}")
        return address

    def backend(self, key: str) -> Backend | None:
        """``HOST:PORT``, or ``unix:PATH`` (relative to the config's directory)."""
        text = self.string(key, 'a HOST:PORT or "unix:PATH" string')
        if text is None:
            return None
        if text.startswith(UNIX_PREFIX):
            where = text.removeprefix(UNIX_PREFIX)
            if not where:
                raise self.error(key, f"{shown(text)} has an empty path: write unix:PATH")
            return self.path(key, where)
        address, problem = _address_error(text, listen=False)
        if address is None:
            raise self.error(key, f"bad address {problem}; or unix:PATH for a Unix socket")
        return address

    def path(self, key: str, text: str | None = None) -> Path | None:
        text = text if text is not None else self.string(key, "a path string")
        if text is None:
            return None
        if "\0" in text:
            raise self.error(key, f"{shown(text)} has a NUL character; no path can")
        try:
            path = Path(text).expanduser()
        except RuntimeError:
            raise self.error(
                key, f"cannot expand '~' in {shown(text)}: no home directory"
            ) from None
        return self.reader.base_dir / path

    def _mode(self, key: str, path: Path) -> int | None:
        """The file type bits of `path`, None if it does not exist; `ConfigError` if it
        cannot be looked at (a name too long, no permission)."""
        try:
            return path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self.error(key, f"cannot use {shown(str(path))}: {exc.strerror}") from None

    def file(self, key: str, missing: str, text: str | None = None) -> Path:
        """A path that must name an existing file."""
        path = self.required(key, self.path(key, text), missing)
        mode = self._mode(key, path)
        if mode is None:
            raise self.error(key, f"no such file: {shown(str(path), 200)}")
        if stat.S_ISDIR(mode):
            raise self.error(key, f"{shown(str(path), 200)} is a directory; expected a file")
        return path

    def directory(self, key: str, missing: str) -> Path:
        """A path that may not exist yet, but if it does, is a directory."""
        path = self.required(key, self.path(key), missing)
        mode = self._mode(key, path)
        if mode is not None and not stat.S_ISDIR(mode):
            raise self.error(key, f"{shown(str(path), 200)} is a file; expected a directory")
        return path

    def trust_domain(self, key: str, text: str) -> TrustDomain:
        """A bare trust domain name; uppercase is lowercased and noted (ID-5)."""
        if text.startswith(SCHEME_PREFIX):
            name = text.removeprefix(SCHEME_PREFIX).partition("/")[0]
            raise self.error(
                key, f"{shown(text)} is a SPIFFE ID; write the trust domain alone: {shown(name)}"
            )
        try:
            return TrustDomain(text)
        except SpiffeIdError as exc:
            lowered = _lower_ascii(text)
            if lowered != text:
                try:
                    td = TrustDomain(lowered)
                except SpiffeIdError:
                    pass
                else:
                    self.note(key, f"trust domain {shown(text)} read as {str(td)!r} (ID-5)")
                    return td
            raise self.error(key, f"bad trust domain {shown(text)}: {exc}") from None

    def _spiffe_id(self, key: str, text: str, *, root_ok: bool = False) -> SpiffeId:
        try:
            sid = SpiffeId.parse(text)
        except SpiffeIdError as exc:
            sid = self._normalised(key, text, exc)
        if sid.is_root and not root_ok:
            raise self.error(
                key,
                f"{shown(text)} has no path: no workload may hold a trust domain's root id (L-3)",
            )
        return sid

    def _normalised(self, key: str, text: str, error: SpiffeIdError) -> SpiffeId:
        """`text` with its trust domain lowercased (ID-5 lets config do this), noted."""
        if text.startswith(SCHEME_PREFIX):
            name, slash, path = text.removeprefix(SCHEME_PREFIX).partition("/")
            lowered = _lower_ascii(name)
            if lowered != name:
                try:
                    sid = SpiffeId.parse(f"{SCHEME_PREFIX}{lowered}{slash}{path}")
                except SpiffeIdError as exc:
                    error = exc
                else:
                    self.note(
                        key,
                        f"{shown(text)} read as {str(sid)!r}: trust domains are lowercase (ID-5);"
                        " paths are case-sensitive and kept",
                    )
                    return sid
        raise self.error(key, f"bad SPIFFE ID {shown(text)}: {error}")

    def spiffe_id(self, key: str, *, root_ok: bool = False) -> SpiffeId | None:
        text = self.string(key, 'a SPIFFE ID string such as "spiffe://example.org/node"')
        return None if text is None else self._spiffe_id(key, text, root_ok=root_ok)

    def _pattern(self, key: str, text: str) -> IdPattern:
        try:
            base, subtree = split_pattern(text)
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None
        return IdPattern.of(self._spiffe_id(key, base, root_ok=True), subtree=subtree)

    def pattern(self, key: str) -> IdPattern | None:
        """One `IdPattern` string (an id, ``spiffe://td/path/*`` or ``spiffe://td``)."""
        text = self.string(key, f"a SPIFFE ID pattern string such as {_PATTERN_EXAMPLES}")
        return None if text is None else self._pattern(key, text)

    def patterns(self, key: str) -> tuple[IdPattern, ...] | None:
        """A non-empty array of `IdPattern` strings."""
        expected = f"an array of SPIFFE ID pattern strings such as {_PATTERN_EXAMPLES}"
        items = self._typed(key, list, expected)
        if items is None:
            return None
        if not items:
            raise self.error(key, f"is empty: expected {expected}")
        patterns: list[IdPattern] = []
        for index, item in enumerate(items, 1):
            if not isinstance(item, str):
                raise self.error(key, f"item {index}: expected {expected}, not {_describe(item)}")
            patterns.append(self._pattern(key, item))
        return tuple(patterns)

    def spiffe_ids(self, key: str) -> tuple[SpiffeId, ...] | None:
        expected = 'an array of SPIFFE ID strings, such as ["spiffe://example.org/client"]'
        items = self._typed(key, list, expected)
        if items is None:
            return None
        if not items:
            raise self.error(key, f"is empty: expected {expected}")
        ids: list[SpiffeId] = []
        for index, item in enumerate(items, 1):
            if not isinstance(item, str):
                raise self.error(key, f"item {index}: expected {expected}, not {_describe(item)}")
            ids.append(self._spiffe_id(key, item))
        return tuple(ids)


# ---------------------------------------------------------------- the tables


def _policy(table: _Table, revocation: RevocationSettings) -> ValidationPolicy:
    max_ttl = table.optional_duration("max_ttl", timedelta(hours=1))
    max_age = table.optional_duration("max_age", None)
    clock_skew = table.duration("clock_skew", timedelta(seconds=30), zero_ok=True)
    if clock_skew > MAX_CLOCK_SKEW:
        raise table.error(
            "clock_skew",
            f"{format_duration(clock_skew)} is over the {format_duration(MAX_CLOCK_SKEW)}"
            " sanity bound; fix the clocks (NTP) instead",
        )
    try:
        return ValidationPolicy(
            max_ttl=max_ttl,
            max_age=max_age,
            clock_skew=clock_skew,
            revocation=revocation.mode,
            hard_fail_wait=revocation.hard_fail_wait,
        )
    except ConfigError as exc:  # pragma: no cover - every case is caught above
        raise table.reader.error(table.label, str(exc)) from None


_MODES_TEXT: Final = ", ".join(REVOCATION_MODES[:-1]) + f" or {REVOCATION_MODES[-1]}"
_MODES: Final[dict[str, RevocationMode]] = {
    "soft-fail": "soft-fail",
    "hard-fail": "hard-fail",
    "off": "off",
}


def _revocation(table: _Table) -> RevocationSettings:
    text = table.string("mode", f"one of {_MODES_TEXT}")
    mode = _MODES.get(text or "soft-fail")
    if mode is None:
        close = difflib.get_close_matches(text or "", REVOCATION_MODES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise table.error(
            "mode", f"{shown(text or '')} is not a revocation mode; {hint}use one of {_MODES_TEXT}"
        )
    settings = RevocationSettings(
        mode=mode,
        refresh_interval=table.duration("refresh_interval", timedelta(minutes=5)),
        ocsp_cache_ttl=table.duration("ocsp_cache_ttl", timedelta(hours=1)),
        crl_cache_ttl=table.duration("crl_cache_ttl", timedelta(hours=6)),
        hard_fail_wait=_hard_fail_wait(table),
        crl_files=_crl_files(table),
    )
    for name, ttl in (
        ("ocsp_cache_ttl", settings.ocsp_cache_ttl),
        ("crl_cache_ttl", settings.crl_cache_ttl),
    ):
        if settings.refresh_interval >= ttl:
            raise table.error(
                "refresh_interval",
                f"{format_duration(settings.refresh_interval)} is not shorter than {name}"
                f" {format_duration(ttl)}: cached statuses would expire before a refresh",
            )
    return settings


def _hard_fail_wait(table: _Table) -> timedelta:
    wait = table.duration("hard_fail_wait", timedelta(seconds=2), zero_ok=True)
    if wait > MAX_HARD_FAIL_WAIT:
        raise table.error(
            "hard_fail_wait",
            f"{format_duration(wait)} is over {format_duration(MAX_HARD_FAIL_WAIT)}:"
            " a handshake must not wait that long for a revocation fetch",
        )
    return wait


#: The largest CRL file read at load time.
MAX_CRL_FILE: Final = 16 * 1024 * 1024


def _crl_files(table: _Table) -> tuple[Path, ...]:
    """``crl_files``: an array of paths (relative to the config's directory), each an
    existing file holding one CRL (PEM or DER) that parses."""
    key, expected = "crl_files", 'an array of CRL file paths, such as ["ca.crl.pem"]'
    items = table.array(key, expected)
    if items is None:
        return ()
    paths: list[Path] = []
    for index, item in enumerate(items, 1):
        if not isinstance(item, str) or not item:
            raise table.error(key, f"item {index}: expected {expected}, not {_describe(item)}")
        path = table.file(key, expected, item)
        shown_path = shown(str(path), 200)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_CRL_FILE + 1)
        except OSError as exc:
            raise table.error(key, f"cannot read {shown_path}: {exc.strerror}") from None
        if len(data) > MAX_CRL_FILE:
            raise table.error(key, f"{shown_path} is over {MAX_CRL_FILE} bytes; not a CRL")
        try:
            load_crl(data)
        except CrlError as exc:
            raise table.error(
                key, f"{shown_path} is not a CRL (PEM or DER): {exc.detail}"
            ) from None
        paths.append(path)
    return tuple(paths)


_FILE_FORM: Final = ("cert", "key", "bundle")
_FORM_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "files": ("cert", "key", "bundle", "federated"),
    "local_ca": ("local_ca", "spiffe_id", "ttl"),
    "workload_api": ("workload_api",),
}
_FORM_ADD: Final = {
    "files": "add cert, key and bundle",
    "local_ca": 'add local_ca = "DIR", the directory of the local CA',
    "workload_api": "add workload_api",
}
_FORMS_HINT: Final = (
    "give exactly one of: cert, key and bundle (files); local_ca and spiffe_id (a local CA);"
    " or workload_api"
)


def _identity(table: _Table, policy: ValidationPolicy) -> Identity:
    forms = [
        form
        for form, present in (
            ("files", any(table.has(key) for key in _FILE_FORM)),
            ("local_ca", table.has("local_ca")),
            ("workload_api", table.has("workload_api")),
        )
        if present
    ]
    if len(forms) > 1:
        raise table.reader.error(
            table.label, f"more than one identity form ({' and '.join(forms)}): {_FORMS_HINT}"
        )
    if not forms:
        for key in table.data:  # only secondary keys are here: say which form they need
            form = next(form for form, keys in _FORM_KEYS.items() if key in keys)
            raise table.error(key, f"belongs to the {form} form: {_FORM_ADD[form]}")
        raise table.reader.error(table.label, f"no identity: {_FORMS_HINT}")
    (form,) = forms
    for key in table.data:
        if key not in _FORM_KEYS[form]:
            owner = next(other for other, keys in _FORM_KEYS.items() if key in keys)
            raise table.error(key, f"belongs to the {owner} form, not the {form} form")
    if form == "files":
        return _file_identity(table)
    if form == "local_ca":
        return _local_ca_identity(table, policy)
    text = table.string(
        "workload_api", 'a string: "unix:///absolute/path", "tcp://IP:port" or "env"'
    )
    if text is None or text == "env":
        return WorkloadApiIdentity(address=None)
    # The W-2 check lives with the source; imported here only, as it loads grpc.
    from ._workload import workload_api_target  # noqa: PLC0415

    try:
        workload_api_target(text, setting="bad Workload API address")
    except ConfigError as exc:
        raise table.error("workload_api", str(exc)) from None
    return WorkloadApiIdentity(address=text)


def _file_identity(table: _Table) -> FileIdentity:
    missing = "the files form needs cert, key and bundle"
    cert, key, bundle = (table.file(name, missing) for name in _FILE_FORM)
    federated: dict[str, Path] = {}
    if table.has("federated"):
        bundles = table.reader.table(
            "federated", "[identity.federated]", table.data["federated"], None
        )
        for name, value in bundles.data.items():
            if not isinstance(value, str):
                raise bundles.error(
                    repr(name), f"expected the path of a bundle file, not {_describe(value)}"
                )
            td = str(bundles.trust_domain(repr(name), name))
            if td in federated:
                raise bundles.error(repr(name), f"trust domain {td} is listed twice")
            federated[td] = bundles.file(repr(name), "", value)
    return FileIdentity(cert=cert, key=key, bundle=bundle, federated=MappingProxyType(federated))


def _local_ca_identity(table: _Table, policy: ValidationPolicy) -> LocalCAIdentity:
    directory = table.directory("local_ca", "")
    spiffe_id = table.required(
        "spiffe_id",
        table.spiffe_id("spiffe_id"),
        'local_ca needs the id to issue, such as spiffe_id = "spiffe://example.org/node"',
    )
    ttl = table.duration("ttl", DEFAULT_LOCAL_CA_TTL)
    if policy.max_ttl is not None and ttl > policy.max_ttl:
        raise table.error(
            "ttl",
            f"{format_duration(ttl)} is over [policy] max_ttl {format_duration(policy.max_ttl)}:"
            " our own SVID must pass our own policy",
        )
    if ttl > MAX_LOCAL_CA_TTL:
        raise table.error("ttl", _over_ca_lifetime(ttl))
    return LocalCAIdentity(directory=directory, spiffe_id=spiffe_id, ttl=ttl)


def _node(table: _Table) -> NodeSettings:
    metrics: Address | None = DEFAULT_METRICS
    if table.data.get("metrics") == "off":
        metrics = None
    elif table.has("metrics"):
        metrics = table.address("metrics", listen=True)
    return NodeSettings(
        listen=table.address("listen", listen=True) or DEFAULT_LISTEN,
        metrics=metrics,
        handshake_timeout=table.duration("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
        max_handshakes=table.integer("max_handshakes", DEFAULT_MAX_HANDSHAKES),
        max_connections=table.integer("max_connections", DEFAULT_MAX_CONNECTIONS),
        shutdown_timeout=table.duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, zero_ok=True),
        startup_timeout=table.duration("startup_timeout", DEFAULT_STARTUP_TIMEOUT),
        access_log=table.boolean("access_log", True),
    )


def _metrics(table: _Table) -> MetricsSettings:
    expected = 'a metric name prefix such as "mtls"'
    prefix = table.string("prefix", expected)
    if prefix is None:
        return MetricsSettings()
    if not _METRICS_PREFIX_RE.fullmatch(prefix):
        raise table.error(
            "prefix",
            f"{shown(prefix)} is not a Prometheus name: start with a letter or _, then use"
            f" letters, digits or _ ({expected})",
        )
    return MetricsSettings(prefix=prefix)


def _authorize(table: _Table) -> AuthorizeSettings:
    forms = [key for key in ("member_of", "ids", "path_prefix") if table.has(key)]
    if len(forms) > 1:
        raise table.reader.error(
            table.label,
            f"{' and '.join(forms)} are both set: give exactly one of member_of, ids or"
            " path_prefix",
        )
    if not forms:
        raise table.reader.error(
            table.label,
            "empty: give one of member_of, ids or path_prefix (or leave [authorize] out to"
            " allow members of our own trust domain)",
        )
    member_of = table.string("member_of", 'a trust domain string such as "example.org"')
    prefix = table.spiffe_id("path_prefix", root_ok=True)
    if prefix is not None and prefix.is_root:
        raise table.error(
            "path_prefix",
            f"{str(prefix)!r} has no path; to allow a whole trust domain, write"
            f' member_of = "{prefix.trust_domain}"',
        )
    return AuthorizeSettings(
        member_of=None if member_of is None else table.trust_domain("member_of", member_of),
        ids=table.spiffe_ids("ids") or (),
        path_prefix=prefix,
    )


def _mesh(table: _Table) -> MeshSettings:
    d = MeshSettings()
    initial = table.duration("backoff_initial", d.backoff_initial)
    most = table.duration("backoff_max", d.backoff_max)
    if most < initial:
        raise table.error(
            "backoff_max",
            f"{format_duration(most)} is shorter than backoff_initial {format_duration(initial)}",
        )
    queue_size = table.integer("queue_size", d.queue_size)
    if queue_size > MAX_QUEUE_SIZE:
        raise table.error("queue_size", f"must be at most {MAX_QUEUE_SIZE}, not {queue_size}")
    max_dials = table.integer("max_dials", d.max_dials)
    if max_dials > MAX_DIALS:
        raise table.error("max_dials", f"must be at most {MAX_DIALS}, not {max_dials}")
    return MeshSettings(
        max_message_size=table.size(
            "max_message_size", d.max_message_size, maximum=MAX_MESSAGE_SIZE
        ),
        queue_size=queue_size,
        send_timeout=table.duration("send_timeout", d.send_timeout),
        keepalive_interval=table.duration("keepalive_interval", d.keepalive_interval),
        keepalive_timeout=table.duration("keepalive_timeout", d.keepalive_timeout),
        upgrade_timeout=table.duration("upgrade_timeout", d.upgrade_timeout),
        dial_timeout=table.duration("dial_timeout", d.dial_timeout),
        backoff_initial=initial,
        backoff_max=most,
        max_dials=max_dials,
    )


def _tls(table: _Table) -> TlsSettings:
    text = table.string("groups", 'a string of OpenSSL group names such as "X25519MLKEM768:X25519"')
    if text is None:
        return TlsSettings()
    try:
        return TlsSettings(groups=validate_groups(text))
    except ConfigError as exc:
        raise table.error("groups", str(exc)) from None


def _peer(table: _Table) -> PeerSettings:
    return PeerSettings(
        id=table.required(
            "id",
            table.spiffe_id("id"),
            'the peer\'s SPIFFE ID, such as id = "spiffe://example.org/node/b"',
        ),
        address=table.required(
            "address", table.address("address", listen=False), "the peer's HOST:PORT"
        ),
    )


def _expose(table: _Table) -> ExposeSettings:
    backend = table.backend("backend")
    if backend is None:
        raise table.error(
            "backend", "missing: the plaintext HOST:PORT (or unix:PATH) to pass connections to"
        )
    unsafe_target = table.boolean("unsafe_target", False)
    problem = None if unsafe_target else expose_target_problem(backend)
    if problem is not None:
        raise table.error("backend", problem)
    return ExposeSettings(
        listen=table.required(
            "listen", table.address("listen", listen=True), "the HOST:PORT to accept mTLS on"
        ),
        backend=backend,
        allow=table.patterns("allow"),
        max_connections=table.integer("max_connections", DEFAULT_MAX_CONNECTIONS),
        connect_timeout=table.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        unsafe_target=unsafe_target,
        proxy_protocol=table.boolean("proxy_protocol", False),
    )


def _forward(table: _Table) -> ForwardSettings:
    listen = table.required(
        "listen", table.address("listen", listen=True), "the plaintext HOST:PORT to accept on"
    )
    unsafe_listen = table.boolean("unsafe_listen", False)
    problem = None if unsafe_listen else forward_listen_problem(listen)
    if problem is not None:
        raise table.error("listen", problem)
    return ForwardSettings(
        listen=listen,
        peer=table.required(
            "peer", table.address("peer", listen=False), "the HOST:PORT to dial with mTLS"
        ),
        expect=table.required(
            "expect", table.pattern("expect"), "the SPIFFE ID (or pattern) the peer must match"
        ),
        max_connections=table.integer("max_connections", DEFAULT_MAX_CONNECTIONS),
        connect_timeout=table.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        unsafe_listen=unsafe_listen,
    )


_MODE_RE: Final = re.compile(r"0?[0-7]{3}")
_WRITE_FILES: Final = ("cert", "key", "bundle")


def _write(table: _Table) -> WriteSettings:
    paths: dict[str, Path] = {}
    for name in _WRITE_FILES:
        path = table.path(name)
        if path is None:
            continue
        mode = table._mode(name, path)
        if mode is not None and stat.S_ISDIR(mode):
            raise table.error(name, f"{shown(str(path), 200)} is a directory; expected a file")
        parent = table._mode(name, path.parent)
        if parent is None or not stat.S_ISDIR(parent):
            raise table.error(
                name, f"no such directory: {shown(str(path.parent), 200)}; create it first"
            )
        for other, seen in paths.items():
            if seen == path:
                raise table.error(name, f"is the same file as {other}; give each its own path")
        paths[name] = path
    if not paths:
        raise table.reader.error(
            table.label, "writes nothing: give at least one of cert, key or bundle"
        )
    defaults = {"cert": DEFAULT_CERT_MODE, "key": DEFAULT_KEY_MODE, "bundle": DEFAULT_BUNDLE_MODE}
    modes = {name: _file_mode(table, name, name in paths, defaults[name]) for name in _WRITE_FILES}
    command = _command(table)
    if table.has("on_rotate_timeout") and not command:
        raise table.error(
            "on_rotate_timeout", "without on_rotate nothing reads it: add on_rotate or remove it"
        )
    return WriteSettings(
        cert=paths.get("cert"),
        key=paths.get("key"),
        bundle=paths.get("bundle"),
        cert_mode=modes["cert"],
        key_mode=modes["key"],
        bundle_mode=modes["bundle"],
        on_rotate=command,
        on_rotate_timeout=table.duration("on_rotate_timeout", DEFAULT_ON_ROTATE_TIMEOUT),
    )


def _file_mode(table: _Table, file: str, written: bool, default: int) -> int:
    """``<file>_mode`` as an int, `default` when not given; refused without its file."""
    key = f"{file}_mode"
    text = table.string(key, 'an octal mode string such as "0644"')
    if text is None:
        return default
    if not written:
        raise table.error(key, f"without {file} nothing reads it: add {file} or remove {key}")
    if not _MODE_RE.fullmatch(text):
        raise table.error(
            key, f'{shown(text)} is not an octal permission mode: write it as "0644" or "0600"'
        )
    return int(text, 8)


def _command(table: _Table) -> tuple[str, ...]:
    value = table.data.get("on_rotate")
    expected = 'an array of strings, the command and its arguments: ["systemctl", "reload", "x"]'
    if value is None:
        return ()
    if isinstance(value, str):
        raise table.error(
            "on_rotate", f"expected {expected}; a string would need a shell, and meshtls runs none"
        )
    if not isinstance(value, list) or not value:
        what = "is empty" if isinstance(value, list) else f"not {_describe(value)}"
        raise table.error("on_rotate", f"expected {expected}, {what}")
    for index, item in enumerate(value, 1):
        if not isinstance(item, str) or not item or "\0" in item:
            bad = "an empty string" if item == "" else _describe(item)
            raise table.error("on_rotate", f"item {index}: expected a non-empty string, not {bad}")
    return tuple(value)


def _check_written_files(identity: Identity, write: list[tuple[_Table, WriteSettings]]) -> None:
    """No file is written twice, and none is a file the node reads its identity from."""
    read: dict[Path, str] = {}
    if isinstance(identity, FileIdentity):
        read = {identity.cert: "[identity] cert", identity.key: "[identity] key"}
        read[identity.bundle] = "[identity] bundle"
        read.update({path: f"[identity.federated] {td}" for td, path in identity.federated.items()})
    written: dict[Path, str] = {}
    for table, item in write:
        for name in _WRITE_FILES:
            path = getattr(item, name)
            if path is None:
                continue
            if path in read:
                raise table.error(
                    name, f"is {read[path]}, which the node reads: write to another path"
                )
            if path in written:
                raise table.error(name, f"is also written by {written[path]}")
            written[path] = f"{table.label} {name}"


def _array(
    reader: _Reader, document: Mapping[str, object], name: str, build: Callable[[_Table], T]
) -> list[tuple[_Table, T]]:
    items = document.get(name, [])
    if not isinstance(items, list):
        raise reader.error(
            _label(name), f"expected an array of tables, written [[{name}]], not {_describe(items)}"
        )
    result = []
    for index, item in enumerate(items, 1):
        table = reader.table(name, f"[[{name}]] #{index}", item, _TABLES[name])
        result.append((table, build(table)))
    return result


def _check_listeners(
    reader: _Reader,
    node: NodeSettings,
    expose: list[tuple[_Table, ExposeSettings]],
    forward: list[tuple[_Table, ForwardSettings]],
) -> None:
    """No two listeners on one address (port 0 excepted: the kernel picks)."""
    listeners = _node_listeners(node)
    listeners += [(f"{table.label} listen", item.listen) for table, item in expose]
    listeners += [(f"{table.label} listen", item.listen) for table, item in forward]
    clash = _clash(listeners)
    if clash is not None:
        raise reader.error(*clash)


def _node_listeners(node: NodeSettings) -> list[tuple[str, Address]]:
    listeners = [("[node] listen", node.listen)]
    if node.metrics is not None:
        listeners.append(("[node] metrics", node.metrics))
    return listeners


def _clash(listeners: Sequence[tuple[str, Address]]) -> tuple[str, str] | None:
    """The first listener whose address clashes with an earlier one: (where, what)."""
    for index, (where, address) in enumerate(listeners):
        for owner, other in listeners[:index]:
            if _conflicts(address, other):
                return where, (
                    f"{format_address(address)} clashes with {owner} {format_address(other)};"
                    " each listener needs its own address"
                )
    return None


# ---------------------------------------------------------------- tunnels from flags

#: ``meshtls node``'s tunnel flags, in the order given: (flag, value or None).
TunnelFlags = Sequence[tuple[str, str | None]]

_FLAG_OWNER: Final = {
    "--allow": "--expose",
    "--unsafe-target": "--expose",
    "--proxy-protocol": "--expose",
    "--expect": "--forward",
    "--unsafe-listen": "--forward",
}


@dataclass(kw_only=True)
class _FlagTunnel:
    """One ``--expose``/``--forward`` and the flags after it, while they are read."""

    flag: str
    listen: Address
    far: Backend  # a Path only for --expose (unix:PATH)
    patterns: list[IdPattern] = field(default_factory=list)
    unsafe: bool = False
    proxy_protocol: bool = False

    @property
    def label(self) -> str:
        return f"{self.flag} {format_address(self.listen)}={format_backend(self.far)}"


def _flag_pattern(flag: str, text: str) -> IdPattern:
    try:
        return IdPattern.parse(text)
    except (ConfigError, SpiffeIdError) as exc:
        message = str(exc)
        named = message if message.startswith(shown(text)) else f"{shown(text)}: {message}"
        raise ConfigError(f"{flag} {named}") from None


def _flag_addresses(flag: str, text: str) -> tuple[Address, Backend]:
    far_name = "BACKEND" if flag == "--expose" else "PEER"
    listen_text, equals, far_text = text.partition("=")
    if not equals:
        raise ConfigError(
            f"{flag} {shown(text)}: expected LISTEN={far_name}, such as"
            f" 127.0.0.1:8600=127.0.0.1:9000"
        )
    listen, problem = _address_error(listen_text, listen=True)
    if listen is None:
        raise ConfigError(f"{flag} {shown(text)}: bad LISTEN {problem}")
    if flag == "--expose" and far_text.startswith(UNIX_PREFIX):
        where = far_text.removeprefix(UNIX_PREFIX)
        if not where or "\0" in where:
            raise ConfigError(f"{flag} {shown(text)}: bad BACKEND: write unix:PATH")
        return listen, Path(where).absolute()
    far, problem = _address_error(far_text, listen=False)
    if far is None:
        raise ConfigError(f"{flag} {shown(text)}: bad {far_name} {problem}")
    return listen, far


def _read_flags(flags: TunnelFlags) -> list[_FlagTunnel]:
    tunnels: list[_FlagTunnel] = []
    for flag, value in flags:
        if flag in ("--expose", "--forward"):
            assert value is not None
            listen, far = _flag_addresses(flag, value)
            tunnels.append(_FlagTunnel(flag=flag, listen=listen, far=far))
            continue
        owner = _FLAG_OWNER[flag]
        shown_flag = flag if value is None else f"{flag} {value}"
        if not tunnels or tunnels[-1].flag != owner:
            after = f"follows {tunnels[-1].label}, but" if tunnels else "comes first, but"
            raise ConfigError(
                f"{shown_flag}: {after} it belongs to the {owner} just before it;"
                f" write it after its {owner}"
            )
        tunnel = tunnels[-1]
        if flag in ("--allow", "--expect"):
            assert value is not None
            if flag == "--expect" and tunnel.patterns:
                raise ConfigError(
                    f"{shown_flag}: {tunnel.label} already has --expect {tunnel.patterns[0]};"
                    " a forward dials one peer and expects one pattern"
                )
            tunnel.patterns.append(_flag_pattern(flag, value))
        elif flag == "--proxy-protocol":
            tunnel.proxy_protocol = True
        else:
            tunnel.unsafe = True
    return tunnels


def _flag_settings(tunnel: _FlagTunnel) -> ExposeSettings | ForwardSettings:
    if tunnel.flag == "--expose":
        problem = (
            None
            if tunnel.unsafe
            else expose_target_problem(tunnel.far, "add --unsafe-target after it")
        )
        if problem is not None:
            raise ConfigError(f"{tunnel.label}: backend {problem}")
        return ExposeSettings(
            listen=tunnel.listen,
            backend=tunnel.far,
            allow=tuple(tunnel.patterns) or None,
            unsafe_target=tunnel.unsafe,
            proxy_protocol=tunnel.proxy_protocol,
        )
    problem = (
        None
        if tunnel.unsafe
        else forward_listen_problem(tunnel.listen, "add --unsafe-listen after it")
    )
    if problem is not None:
        raise ConfigError(f"{tunnel.label}: listen {problem}")
    if not tunnel.patterns:
        raise ConfigError(
            f"{tunnel.label}: needs --expect ID|PATTERN after it, the peer it must reach"
        )
    assert not isinstance(tunnel.far, Path)  # unix:PATH is read for --expose only
    return ForwardSettings(
        listen=tunnel.listen,
        peer=tunnel.far,
        expect=tunnel.patterns[0],
        unsafe_listen=tunnel.unsafe,
    )


def with_flag_tunnels(config: NodeConfig, flags: TunnelFlags) -> NodeConfig:
    """`config` with the tunnels of ``meshtls node --expose/--forward`` added after its own.

    `flags` are in the order given. ``--expose LISTEN=BACKEND`` and ``--forward
    LISTEN=PEER`` each start a tunnel; ``--allow`` (repeatable), ``--unsafe-target`` and
    ``--proxy-protocol`` attach to the ``--expose`` just before them, ``--expect`` (exactly
    one) and ``--unsafe-listen`` to the ``--forward`` just before them. The rules of
    ``[[expose]]``/``[[forward]]`` apply, and no two listeners may share an address.
    Raises `ConfigError` with one line naming the flag.
    """
    tunnels = [(tunnel, _flag_settings(tunnel)) for tunnel in _read_flags(flags)]
    if not tunnels:
        return config
    listeners = _node_listeners(config.node)
    listeners += [(f"[[expose]] #{i} listen", e.listen) for i, e in enumerate(config.expose, 1)]
    listeners += [(f"[[forward]] #{i} listen", f.listen) for i, f in enumerate(config.forward, 1)]
    listeners += [(tunnel.label, settings.listen) for tunnel, settings in tunnels]
    clash = _clash(listeners)
    if clash is not None:
        raise ConfigError(f"{clash[0]}: {clash[1]}")
    expose = tuple(item for _, item in tunnels if isinstance(item, ExposeSettings))
    forward = tuple(item for _, item in tunnels if isinstance(item, ForwardSettings))
    return replace(config, expose=config.expose + expose, forward=config.forward + forward)


def parse_config(text: str, *, base_dir: Path, source: str = "<string>") -> NodeConfig:
    """Read a node config from TOML `text`. Relative paths resolve against `base_dir`.

    Checks that the identity files exist; creates nothing. Raises `ConfigError` with one
    line naming `source`, the table and the key. ``NodeConfig.source`` is None (see
    `load_config`).
    """
    reader = _Reader(source, base_dir.absolute())
    with mapped(lambda problem: reader.error("config", f"unreadable ({problem})")):
        return _parse(reader, text)


def _parse(reader: _Reader, text: str) -> NodeConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise reader.error(*_toml_error(str(exc), text)) from None
    except RecursionError as exc:  # tomllib recurses once per nesting level
        where = _toml_line(exc.__traceback__, text)
        raise reader.error(where, "bad TOML: nested too deeply") from None
    except ValueError as exc:  # int() past Python's 4,300-digit limit, inside tomllib
        where = _toml_line(exc.__traceback__, text)
        what = "digits" in str(exc) and "a number of more than 4300 digits"
        raise reader.error(where, f"bad TOML: {what or describe_error(exc)}") from None
    for key, value in document.items():
        if key not in _TABLES:
            where = f"[{_cut(key)}]" if isinstance(value, dict) else _cut(key)
            raise reader.error(where, _unknown_table(key))
        if key in _ARRAYS and isinstance(value, dict):
            raise reader.error(f"[{key}]", f"expected [[{key}]] (an array of tables), not [{key}]")

    def table(name: str) -> _Table:
        return reader.table(name, _label(name), document.get(name, {}), _TABLES[name])

    revocation = _revocation(table("revocation"))
    policy = _policy(table("policy"), revocation)
    if "identity" not in document:
        raise reader.error("[identity]", f"missing: {_FORMS_HINT}")
    identity = _identity(table("identity"), policy)
    node = _node(table("node"))
    metrics = _metrics(table("metrics"))
    authorize = _authorize(table("authorize")) if "authorize" in document else AuthorizeSettings()
    peers = _array(reader, document, "peers", _peer)
    mesh = _mesh(table("mesh"))
    tls = _tls(table("tls"))
    seen_ids: set[SpiffeId] = set()
    for peer_table, peer in peers:
        if peer.id in seen_ids:
            raise peer_table.error("id", f"{peer.id} is already listed in an earlier [[peers]]")
        seen_ids.add(peer.id)
    expose = _array(reader, document, "expose", _expose)
    forward = _array(reader, document, "forward", _forward)
    _check_listeners(reader, node, expose, forward)
    write = _array(reader, document, "write", _write)
    _check_written_files(identity, write)
    return NodeConfig(
        identity=identity,
        node=node,
        policy=policy,
        revocation=revocation,
        authorize=authorize,
        peers=tuple(peer for _, peer in peers),
        mesh=mesh,
        expose=tuple(item for _, item in expose),
        forward=tuple(item for _, item in forward),
        metrics=metrics,
        write=tuple(item for _, item in write),
        tls=tls,
        notes=tuple(reader.notes),
    )


def _toml_line(trace: TracebackType | None, text: str) -> str:
    """``line N`` of the outermost value tomllib was reading when it failed, from its
    frames' ``pos`` (an index into `text`); ``bad TOML`` if none is found."""
    while trace is not None:
        frame = trace.tb_frame
        position = frame.f_locals.get("pos")
        if frame.f_globals.get("__name__", "").startswith("tomllib") and isinstance(position, int):
            return f"line {text.count(chr(10), 0, position) + 1}"
        trace = trace.tb_next
    return "TOML"


def _unknown_table(key: str) -> str:
    homes = [_label(name) for name, keys in _TABLES.items() if key in keys]
    if homes:
        return f"unknown table; {shown(key)} is a key of {' or '.join(homes)}"
    close = difflib.get_close_matches(key, list(_TABLES), n=1)
    hint = f"did you mean {_label(close[0])}? " if close else ""
    return f"unknown table; {hint}known tables: {', '.join(map(_label, _TABLES))}"


def _toml_error(message: str, text: str) -> tuple[str, str]:
    """tomllib's ``Invalid value (at line 3, column 9)`` as (``line 3, column 9``, what)."""
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", message)
    if match is None:  # pragma: no cover - tomllib always says where
        return "bad TOML", message
    what, where = match.groups()
    if where == "end of document":
        where = f"at the end (line {max(1, len(text.splitlines()))})"
    return where, f"bad TOML: {what}"


def load_config(path: str | Path) -> NodeConfig:
    """Read the node config file at `path`; relative paths in it resolve against its directory.

    Raises `ConfigError` with one line naming the file, the table and the key.
    """
    file = Path(path)
    name = str(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{name}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
        ) from None
    config = parse_config(text, base_dir=file.absolute().parent, source=name)
    return replace(config, source=file.absolute())
