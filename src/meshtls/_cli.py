"""The ``meshtls`` command line: ``ca init|issue|revoke`` and ``inspect``.

Each subcommand is an ``_add_*`` function that registers its parser (listed in
`_COMMANDS`) and a ``_cmd_*`` function that takes the parsed namespace and returns
the exit code; later commands (node, demo, check, bench) slot in the same way.

Errors are mapped in one place, `main`: `VerificationError` means the operation
failed (exit 1); any other `MeshError`, `OSError` or `ValueError` is a usage or
config error (exit 2). Either way the user sees one line on stderr, prefixed
``meshtls: error:``. Anything else is a bug in meshtls and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from . import __version__, _logs
from ._authorize import authorize_any, authorize_id
from ._bundle import BundleSet, X509Bundle, load_pem_certificates
from ._ca import DEFAULT_CA_TTL, DEFAULT_LEAF_TTL, LocalCA
from ._check import check_peer
from ._config import default_config, default_state_dir, load_config, with_flag_tunnels
from ._duration import format_duration, parse_duration, parse_optional_duration
from ._errors import ConfigError, MeshError, SpiffeIdError, VerificationError
from ._node import NodeError
from ._policy import DEFAULT_POLICY, ValidationPolicy
from ._service import HeldSignals, run_node, signals_held
from ._sources import FileSource
from ._spiffeid import SpiffeId, TrustDomain
from ._svid import check_svid_offline, leaf_spiffe_id, verify_svid

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the operation failed: verification failed, a peer was rejected
EXIT_USAGE: Final = 2  # usage or config error: bad flags, missing or unreadable files

PROG: Final = "meshtls"
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

# ---------------------------------------------------------------- argument types


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_duration_arg(text: str) -> timedelta | None:
    try:
        return parse_optional_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or off)") from None


def _instant_arg(text: str) -> datetime:
    """An ISO 8601 time; UTC when it has no offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: use ISO 8601, such as 2030-01-01T12:00:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


if TYPE_CHECKING:
    _Subcommands = argparse._SubParsersAction[_Parser]


# ---------------------------------------------------------------- output helpers


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def _read_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """Every certificate in the PEM file at `path`; `BundleError` or `OSError` if unreadable."""
    return load_pem_certificates(path.read_bytes(), what=str(path))


# ---------------------------------------------------------------- meshtls ca


def _add_ca(commands: _Subcommands) -> None:
    ca = commands.add_parser("ca", help="a development CA kept in a directory")
    actions = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create a CA directory")
    init.add_argument("--trust-domain", required=True, metavar="TD", help="e.g. example.org")
    init.add_argument("--dir", required=True, type=Path, help="the CA directory")
    init.add_argument(
        "--intermediate", action="store_true", help="sign leaves with an intermediate CA"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    init.add_argument(
        "--lifetime",
        type=_duration_arg,
        default=DEFAULT_CA_TTL,
        metavar="DURATION",
        help=f"how long the CA is valid (default: {format_duration(DEFAULT_CA_TTL)})",
    )
    init.set_defaults(run=_cmd_ca_init)

    issue = actions.add_parser("issue", help="issue a leaf SVID: PREFIX.pem and PREFIX.key")
    issue.add_argument("spiffe_id", metavar="SPIFFE_ID", help="e.g. spiffe://example.org/web")
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue.add_argument(
        "--ttl",
        type=_duration_arg,
        default=DEFAULT_LEAF_TTL,
        metavar="DURATION",
        help=f"lifetime of the leaf (default: {format_duration(DEFAULT_LEAF_TTL)})",
    )
    issue.add_argument(
        "--out",
        type=Path,
        metavar="PREFIX",
        help="write PREFIX.pem and PREFIX.key (default: DIR/<last segment of the id>)",
    )
    issue.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="a DNS SAN (repeatable)"
    )
    issue.add_argument("--ocsp-url", metavar="URL", help="OCSP responder (AIA extension)")
    issue.add_argument("--crl-url", metavar="URL", help="CRL distribution point")
    issue.add_argument("--force", action="store_true", help="overwrite existing files")
    issue.set_defaults(run=_cmd_ca_issue)

    revoke = actions.add_parser("revoke", help="revoke a certificate and write DIR/crl.pem")
    revoke.add_argument(
        "target", metavar="SERIAL|CERT.pem", help="a serial (decimal or 0x-hex) or a PEM file"
    )
    revoke.add_argument("--dir", required=True, type=Path, help="the CA directory")
    revoke.set_defaults(run=_cmd_ca_revoke)


def _ca_files(directory: Path, *, intermediate: bool) -> list[Path]:
    """The files `LocalCA.init` writes, in its order."""
    names = ["root.pem", "root.key"]
    if intermediate:
        names += ["intermediate.pem", "intermediate.key"]
    return [directory / name for name in (*names, "bundle.pem", "ca.json")]


def _cmd_ca_init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    lifetime: timedelta = args.lifetime
    intermediate: bool = args.intermediate
    try:
        trust_domain = TrustDomain.parse(args.trust_domain)
    except SpiffeIdError as exc:
        raise ConfigError(f"--trust-domain {args.trust_domain!r}: {exc}") from None
    if lifetime <= timedelta(0):
        raise ConfigError(f"--lifetime must be positive, not {format_duration(lifetime)}")
    LocalCA.init(
        directory, trust_domain, intermediate=intermediate, lifetime=lifetime, force=args.force
    )
    for path in _ca_files(directory, intermediate=intermediate):
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_ca_issue(args: argparse.Namespace) -> int:
    try:
        spiffe_id = SpiffeId.parse(args.spiffe_id)
    except SpiffeIdError as exc:
        raise ConfigError(f"bad SPIFFE_ID {args.spiffe_id!r}: {exc}") from None
    ttl: timedelta = args.ttl
    ca = LocalCA.open(args.dir)
    out: Path | None = args.out
    prefix = out if out is not None else ca.directory / spiffe_id.path.rsplit("/", 1)[-1]
    if not prefix.parent.is_dir():
        raise ConfigError(f"{prefix.parent} is not a directory (from --out {prefix})")
    now = datetime.now(UTC).replace(microsecond=0)  # certificates keep whole seconds
    svid = ca.issue(
        spiffe_id,
        ttl=ttl,
        now=now,
        dns_names=args.dns,
        ocsp_url=args.ocsp_url,
        crl_url=args.crl_url,
    )
    for path in ca.write_svid(svid, prefix, force=args.force):
        print(f"wrote {path}")
    print(f"spiffe_id: {svid.spiffe_id}")
    print(f"serial: {svid.leaf.serial_number:#x}")
    print(f"not_after: {_when(svid.not_after)}")
    limit = DEFAULT_POLICY.max_ttl
    if limit is not None and ttl > limit:
        _warn(
            f"--ttl {format_duration(ttl)} is over {format_duration(limit)}: peers with the"
            f" default policy (max_ttl {format_duration(limit)}) will reject this certificate"
        )
    if svid.not_after < now + ttl:
        _warn(f"not_after is cut to the expiry of the CA in {ca.directory}")
    return EXIT_OK


_SERIAL_RE: Final = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")


def _cmd_ca_revoke(args: argparse.Namespace) -> int:
    target: str = args.target
    ca = LocalCA.open(args.dir)
    if _SERIAL_RE.fullmatch(target):
        serial = int(target, 16) if target[:2].lower() == "0x" else int(target)
        if serial <= 0:
            raise ConfigError(f"serial {target} must be positive")
    else:
        path = Path(target)
        if not path.exists():
            raise ConfigError(
                f"{target} is neither a serial (decimal or 0x-hex) nor an existing file"
            )
        leaf = _read_certificates(path)[0]
        try:
            leaf.verify_directly_issued_by(ca.issuer_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise ConfigError(f"{path} was not issued by the CA in {ca.directory}") from None
        serial = leaf.serial_number
    crl_path = ca.revoke(serial)
    print(f"revoked serial {serial:#x}")
    print(f"wrote {crl_path}")
    return EXIT_OK


# ---------------------------------------------------------------- meshtls inspect


def _add_inspect(commands: _Subcommands) -> None:
    inspect = commands.add_parser(
        "inspect", help="show a certificate's SPIFFE ID and lifetime, and verify it"
    )
    inspect.add_argument("cert", type=Path, metavar="CERT.pem", help="leaf first, then its chain")
    inspect.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="PATH|TD=PATH",
        help="roots of the leaf's own trust domain (PATH) or of TD; TD=PATH repeats",
    )
    inspect.add_argument(
        "--max-ttl",
        type=_optional_duration_arg,
        default=DEFAULT_POLICY.max_ttl,
        metavar="DURATION|off",
        help="the longest allowed leaf lifetime (default: 1h)",
    )
    inspect.add_argument(
        "--max-age",
        type=_optional_duration_arg,
        default=DEFAULT_POLICY.max_age,
        metavar="DURATION|off",
        help="the longest allowed leaf age (default: off)",
    )
    inspect.add_argument(
        "--clock-skew",
        type=_duration_arg,
        default=DEFAULT_POLICY.clock_skew,
        metavar="DURATION",
        help="tolerance on validity windows (default: 30s)",
    )
    inspect.add_argument(
        "--at",
        type=_instant_arg,
        metavar="ISO8601",
        help="verify at this time instead of now (UTC when no offset is given)",
    )
    inspect.set_defaults(run=_cmd_inspect)


def _read_bundle_args(
    specs: Sequence[str],
) -> tuple[tuple[x509.Certificate, ...] | None, dict[TrustDomain, tuple[x509.Certificate, ...]]]:
    """``--bundle`` values: the roots of the leaf's own domain (plain PATH), and ``TD=PATH`` ones.

    Every file is read and parsed here, so a bad one is a config error even when the leaf
    turns out to be bad too.
    """
    own: tuple[x509.Certificate, ...] | None = None
    named: dict[TrustDomain, tuple[x509.Certificate, ...]] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            if own is not None:
                raise ConfigError("--bundle PATH is given twice; name the others as TD=PATH")
            own = _read_certificates(Path(spec))
            continue
        td = TrustDomain.parse(name)
        if td in named:
            raise ConfigError(f"--bundle for {td} is given twice")
        named[td] = _read_certificates(Path(file))
    return own, named


def _bundle_set(
    own: tuple[x509.Certificate, ...] | None,
    named: dict[TrustDomain, tuple[x509.Certificate, ...]],
    spiffe_id: SpiffeId,
) -> BundleSet:
    bundles = {td: X509Bundle(td, roots) for td, roots in named.items()}
    if own is not None:
        td = spiffe_id.trust_domain
        if td in bundles:
            raise ConfigError(f"--bundle PATH and --bundle {td}=PATH both give the roots of {td}")
        bundles[td] = X509Bundle(td, own)
    return BundleSet(bundles)


def _cmd_inspect(args: argparse.Namespace) -> int:
    chain = _read_certificates(args.cert)
    own, named = _read_bundle_args(args.bundle)
    policy = ValidationPolicy(
        max_ttl=args.max_ttl, max_age=args.max_age, clock_skew=args.clock_skew
    )
    at: datetime | None = args.at
    now = at if at is not None else datetime.now(UTC)
    leaf = chain[0]
    note = ""
    try:
        spiffe_id = leaf_spiffe_id(leaf)  # maps whatever it cannot read to VerificationError
    except VerificationError:
        spiffe_id = None
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    time_left = not_after - now
    print(f"spiffe_id: {spiffe_id if spiffe_id is not None else '-'}")
    print(f"serial: {leaf.serial_number:#x}")
    print(f"not_before: {_when(not_before)}")
    print(f"not_after: {_when(not_after)}")
    print(f"lifetime: {format_duration(not_after - not_before)}")
    expired = " (expired)" if time_left < timedelta(0) else ""
    print(f"time_left: {format_duration(time_left)}{expired}")
    print(f"chain: {len(chain)}")
    try:
        if spiffe_id is None or (own is None and not named):
            check_svid_offline(chain, policy=policy, now=now)
            note = " (chain not verified: no --bundle)"
        else:
            verify_svid(chain, _bundle_set(own, named, spiffe_id), policy=policy, now=now)
    except VerificationError as exc:
        print(f"verdict: rejected reason={exc.reason}")
        print(f"detail: {_one_line(str(exc).removeprefix(f'{exc.reason}: '))}")
        return EXIT_FAILED
    print(f"verdict: ok{note}")
    return EXIT_OK


# ---------------------------------------------------------------- main


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _add_check(commands: _Subcommands) -> None:
    check = commands.add_parser(
        "check", help="dial a peer, verify its SVID, and report its id and handshake time"
    )
    check.add_argument("address", type=_host_port, metavar="HOST:PORT")
    check.add_argument("--cert", type=Path, required=True, help="our SVID: leaf, then chain")
    check.add_argument("--key", type=Path, required=True, help="our SVID's private key")
    check.add_argument("--bundle", type=Path, required=True, help="roots of our trust domain")
    check.add_argument(
        "--federated",
        action="append",
        default=[],
        metavar="TD=PATH",
        help="roots of another trusted trust domain; repeats",
    )
    check.add_argument("--expect", metavar="SPIFFE_ID", help="the id the peer must have")
    check.add_argument(
        "--wait",
        type=_duration_arg,
        default=timedelta(seconds=1),
        metavar="DURATION",
        help="how long to wait for the peer's verdict on us after the handshake (default: 1s)",
    )
    check.add_argument(
        "--timeout", type=_duration_arg, default=timedelta(seconds=10), metavar="DURATION"
    )
    check.set_defaults(run=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    federated: dict[str, str | Path] = {}
    for item in args.federated:
        td, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--federated {item!r}: expected TD=PATH")
        federated[td] = path
    source = FileSource(cert=args.cert, key=args.key, bundle=args.bundle, federated=federated)
    authorize = authorize_id(SpiffeId.parse(args.expect)) if args.expect else authorize_any()
    host, port = args.address

    async def run() -> int:
        with trio.fail_after(args.timeout.total_seconds()):
            result = await check_peer(
                host, port, source=source, authorize=authorize, wait=args.wait.total_seconds()
            )
        if result.peer is not None:
            left = result.time_left()
            print(f"spiffe_id: {result.peer.spiffe_id}")
            print(f"time_left: {format_duration(left) if left is not None else '-'}")
        print(f"handshake: {result.handshake_seconds * 1000:.1f} ms")
        if result.ok:
            print(f"verdict: ok ({result.detail})")
            return EXIT_OK
        print(f"verdict: rejected reason={result.reason}")
        print(f"detail: {_one_line(result.detail)}")
        return EXIT_FAILED

    try:
        return trio.run(run)
    except (OSError, trio.TooSlowError) as exc:
        what = "timed out" if isinstance(exc, trio.TooSlowError) else _error_text(exc)
        print(f"{PROG}: error: {host}:{port}: {what}", file=sys.stderr)
        return EXIT_FAILED


def _add_node(commands: _Subcommands) -> None:
    node = commands.add_parser(
        "node", help="run a mesh node (with no --config: an embedded local CA on 127.0.0.1)"
    )
    node.add_argument("--config", type=Path, metavar="node.toml")
    node.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="where the embedded default keeps its CA"
    )
    node.add_argument("--log-format", choices=["text", "json"], default="text")
    node.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    _add_tunnel_flags(node)
    node.set_defaults(run=_cmd_node)


class _InOrder(argparse.Action):
    """Appends (flag, value) to ``tunnels``, so that flags keep the order they were given in."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        assert option_string is not None
        value = values if isinstance(values, str) else None
        namespace.tunnels = [*namespace.tunnels, (option_string, value)]


def _add_tunnel_flags(node: argparse.ArgumentParser) -> None:
    """``--expose``/``--forward`` and the flags that attach to the tunnel before them; the
    node adds them to its config with `with_flag_tunnels`, which says what goes where."""
    tunnels = node.add_argument_group(
        "tunnels from flags (added to --config's; each flag below an --expose or --forward"
        " belongs to the one just before it)"
    )
    node.set_defaults(tunnels=[])
    flags: tuple[tuple[str, str | None, str], ...] = (
        ("--expose", "LISTEN=BACKEND", "mTLS in on LISTEN, plaintext out to BACKEND; repeats"),
        (
            "--allow",
            "ID|PATTERN",
            "who may use the --expose before it: an id, spiffe://td/path/*"
            " or spiffe://td; repeats (default: [authorize], else our trust domain)",
        ),
        ("--unsafe-target", None, "let the --expose before it send plaintext off loopback"),
        ("--proxy-protocol", None, "send the --expose's backend a PROXY v2 header with the id"),
        ("--forward", "LISTEN=PEER", "plaintext in on LISTEN, mTLS out to PEER; repeats"),
        ("--expect", "ID|PATTERN", "the peer the --forward before it must reach (required)"),
        ("--unsafe-listen", None, "let the --forward before it listen off loopback"),
    )
    for flag, metavar, text in flags:
        tunnels.add_argument(
            flag,
            action=_InOrder,
            dest="tunnels",
            nargs=None if metavar else 0,
            metavar=metavar,
            help=text,
        )


def _cmd_node(args: argparse.Namespace) -> int:
    with signals_held() as held:  # SIGTERM, SIGINT and SIGHUP are ours from here on
        return _run_node(args, held)


def _run_node(args: argparse.Namespace, held: HeldSignals) -> int:
    if args.config is not None and args.state_dir is not None:
        raise ConfigError(
            "--state-dir is where the embedded default keeps its CA; with --config,"
            " [identity] local_ca names the CA directory: give one or the other"
        )
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = default_config(args.state_dir or default_state_dir())
    config = with_flag_tunnels(config, args.tunnels)
    _logs.configure(args.log_format, getattr(logging, args.log_level.upper()))

    try:
        run_node(config, held)
    except NodeError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_bench(commands: _Subcommands) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure handshakes against other TLS stacks, in the same run",
        add_help=False,
    )
    bench.add_argument("what", choices=["handshake"], help="what to measure")
    bench.add_argument(
        "options", nargs=argparse.REMAINDER, help="see 'meshtls bench handshake --help'"
    )
    bench.set_defaults(run=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import main as bench_main  # noqa: PLC0415 - heavy; only `bench` needs it

    return bench_main(args.options)


_COMMANDS: Final[tuple[Callable[[_Subcommands], None], ...]] = (
    _add_ca,
    _add_inspect,
    _add_check,
    _add_node,
    _add_bench,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``meshtls`` parser; each subparser sets ``run`` to its command function."""
    parser = _Parser(prog=PROG, description="SPIFFE mutual TLS for Trio.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshtls`` command with `argv` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except VerificationError as exc:
        code = EXIT_FAILED
        message = _error_text(exc)
    except (MeshError, OSError, ValueError) as exc:
        code = EXIT_USAGE
        message = _error_text(exc)
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return code
