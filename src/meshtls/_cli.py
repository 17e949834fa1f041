"""The ``meshtls`` command line: ``ca init|issue|revoke`` and ``inspect``.

Each subcommand is an ``_add_*`` function that registers its parser (listed in
`_COMMANDS`) and a ``_cmd_*`` function that takes the parsed namespace and returns
the exit code; later commands (node, demo, check, bench) slot in the same way.

Errors are mapped in one place, `main`: `VerificationError` means the operation
failed (exit 1); any other `MeshError`, `OSError` or `ValueError` is a usage or
config error (exit 2). Either way the user sees one line on stderr, prefixed
``meshtls: error:``. Ctrl-C is one line, ``meshtls: interrupted``, and exit 130; a
stdout closed under us (``| head``) ends the command quietly with exit 141. Anything
else is a bug in meshtls and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NoReturn

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from . import __version__, _logs
from ._authorize import authorize_any, authorize_id
from ._bundle import BundleSet, X509Bundle, load_pem_certificates
from ._ca import DEFAULT_CA_TTL, DEFAULT_LEAF_TTL, LocalCA, revocation_url
from ._check import check_peer
from ._config import (
    DEFAULT_LISTEN,
    DEFAULT_METRICS,
    Address,
    LocalCAIdentity,
    NodeConfig,
    _address_error,
    default_config,
    default_state_dir,
    format_address,
    load_config,
    with_flag_tunnels,
)
from ._duration import format_duration, parse_duration, parse_optional_duration
from ._errors import BundleError, ConfigError, MeshError, SpiffeIdError, VerificationError
from ._node import NodeError
from ._ossl import DEFAULT_GROUPS, validate_groups
from ._policy import DEFAULT_POLICY, ValidationPolicy
from ._revocation import RevocationTarget, chain_targets
from ._revocation_report import CertRevocation, no_issuer, report_chain, report_lines
from ._service import run_node
from ._signals import HeldSignals, signals_held
from ._sources import FileSource, load_bundle_file
from ._spiffeid import SpiffeId, TrustDomain
from ._svid import check_svid_offline, leaf_spiffe_id, verify_svid

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the operation failed: verification failed, a peer was rejected
EXIT_USAGE: Final = 2  # usage or config error: bad flags, missing or unreadable files
EXIT_INTERRUPTED: Final = 130  # Ctrl-C (SIGINT): 128 + 2, as a shell reports it
EXIT_CLOSED_PIPE: Final = 141  # our stdout was closed (`| head`): 128 + SIGPIPE, as for `cat`

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
    """Every certificate in the PEM file at `path` (``-``: stdin); `BundleError` or `OSError`
    if unreadable."""
    if str(path) == "-":
        return load_pem_certificates(sys.stdin.buffer.read(), what="stdin")
    return load_pem_certificates(path.read_bytes(), what=str(path))


def _read_roots(path: Path, trust_domain: TrustDomain) -> tuple[x509.Certificate, ...]:
    """The roots in a bundle file: PEM, or a SPIFFE bundle (JSON), read as the node reads it."""
    try:
        return load_bundle_file(path, trust_domain).authorities
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc


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
    init.add_argument(
        "--crl-url",
        metavar="URL",
        help="CRL distribution point written into every leaf this CA issues (http/https)",
    )
    init.add_argument(
        "--ocsp-url",
        metavar="URL",
        help="OCSP responder (AIA) written into every leaf this CA issues (http/https)",
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
        help="write PREFIX.pem and PREFIX.key (default: ./<last segment of the id>; never"
        " in the CA directory, beside the CA's keys)",
    )
    issue.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="a DNS SAN (repeatable)"
    )
    issue.add_argument(
        "--ocsp-url", metavar="URL", help="OCSP responder (AIA extension; default: the CA's)"
    )
    issue.add_argument(
        "--crl-url", metavar="URL", help="CRL distribution point (default: the CA's)"
    )
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
        directory,
        trust_domain,
        intermediate=intermediate,
        lifetime=lifetime,
        force=args.force,
        crl_url=args.crl_url,
        ocsp_url=args.ocsp_url,
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
    for flag, url in (("--ocsp-url", args.ocsp_url), ("--crl-url", args.crl_url)):
        if url is not None:
            revocation_url(url, what=flag)
    ca = LocalCA.open(args.dir)
    out: Path | None = args.out
    prefix = out if out is not None else Path(spiffe_id.path.rsplit("/", 1)[-1])
    if not prefix.parent.is_dir():
        raise ConfigError(f"{prefix.parent} is not a directory (from --out {prefix})")
    if prefix.parent.resolve() == ca.directory.resolve():
        given = f"--out {prefix}" if out is not None else "the current directory"
        raise ConfigError(
            f"{given} would put a leaf key beside the CA's keys in {ca.directory};"
            " run it elsewhere or give --out PREFIX in another directory"
        )
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
    ca.record_issued(svid)
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
        if str(serial) not in ca.issued():
            raise ConfigError(
                f"serial {serial:#x} was not issued by the CA in {ca.directory} (it is not in"
                " issued.json); to revoke a certificate this CA signed some other way,"
                " give its PEM file"
            )
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
    when = ca.revoked().get(str(serial))
    if when is not None:
        print(f"serial {serial:#x} was already revoked at {when}; crl.pem is unchanged")
        return EXIT_OK
    crl_path = ca.revoke(serial)
    print(f"revoked serial {serial:#x}")
    print(f"wrote {crl_path}")
    return EXIT_OK


# ---------------------------------------------------------------- meshtls inspect


def _add_inspect(commands: _Subcommands) -> None:
    inspect = commands.add_parser(
        "inspect", help="show a certificate's SPIFFE ID and lifetime, and verify it"
    )
    inspect.add_argument(
        "cert", type=Path, metavar="CERT.pem", help="leaf first, then its chain; - reads stdin"
    )
    inspect.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="PATH|TD=PATH",
        help="roots of the leaf's own trust domain (PATH) or of TD; TD=PATH repeats."
        " PEM, or a SPIFFE bundle (JSON), as the node reads them",
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
    inspect.add_argument(
        "--revocation",
        action="store_true",
        help="fetch and print each certificate's revocation status (OCSP, then CRL);"
        " a revoked one fails the verdict",
    )
    inspect.set_defaults(run=_cmd_inspect)


def _read_bundle_args(
    specs: Sequence[str], own_domain: TrustDomain | None
) -> tuple[tuple[x509.Certificate, ...] | None, dict[TrustDomain, tuple[x509.Certificate, ...]]]:
    """``--bundle`` values: the roots of the leaf's own domain (plain PATH), and ``TD=PATH`` ones.

    Every file is read and parsed here, so a bad one is a config error even when the leaf
    turns out to be bad too. `own_domain` names a plain PATH's SPIFFE bundle in messages
    (the leaf's trust domain, when it has one).
    """
    own: tuple[x509.Certificate, ...] | None = None
    named: dict[TrustDomain, tuple[x509.Certificate, ...]] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            if own is not None:
                raise ConfigError("--bundle PATH is given twice; name the others as TD=PATH")
            own = _read_roots(Path(spec), own_domain or _NO_DOMAIN)
            continue
        td = TrustDomain.parse(name)
        if td in named:
            raise ConfigError(f"--bundle for {td} is given twice")
        named[td] = _read_roots(Path(file), td)
    return own, named


_NO_DOMAIN: Final = TrustDomain("unknown")  # a leaf without an id: its bundle is read anyway


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
    leaf = chain[0]
    try:
        spiffe_id = leaf_spiffe_id(leaf)  # maps whatever it cannot read to VerificationError
    except VerificationError:
        spiffe_id = None
    own, named = _read_bundle_args(
        args.bundle, spiffe_id.trust_domain if spiffe_id is not None else None
    )
    policy = ValidationPolicy(
        max_ttl=args.max_ttl, max_age=args.max_age, clock_skew=args.clock_skew
    )
    at: datetime | None = args.at
    now = at if at is not None else datetime.now(UTC)
    note = ""
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
    skew_note = _skew_note(not_before, not_after, now, policy.clock_skew)
    if skew_note:
        print(f"note: {skew_note}")
    rejected: VerificationError | None = None
    try:
        if spiffe_id is None or (own is None and not named):
            check_svid_offline(chain, policy=policy, now=now)
            note = " (chain not verified: no --bundle)"
        else:
            verify_svid(chain, _bundle_set(own, named, spiffe_id), policy=policy, now=now)
    except VerificationError as exc:
        rejected = exc
    revoked = None
    if args.revocation:
        roots = [*(own or ()), *(r for rs in named.values() for r in rs)]
        revoked = _print_revocation(_inspect_targets(chain, roots), policy.clock_skew)
    if rejected is not None:
        print(f"verdict: rejected reason={rejected.reason}")
        print(f"detail: {_one_line(str(rejected).removeprefix(f'{rejected.reason}: '))}")
        return EXIT_FAILED
    if revoked is not None:
        print("verdict: revoked")
        print(f"detail: {revoked}")
        return EXIT_FAILED
    print(f"verdict: ok{note}")
    return EXIT_OK


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # another issuer, an unreadable key, an unsupported algorithm
        return False
    return True


def _inspect_targets(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> list[RevocationTarget | x509.Certificate]:
    """What `inspect --revocation` asks about: each certificate with the next one as its
    issuer; the last with the --bundle root that signed it, or alone (no issuer known). A
    self-signed last certificate is a root and is not asked about."""
    issuers: list[x509.Certificate | None] = list(chain[1:])
    last = chain[-1]
    if _issued_by(last, last):
        issuers.append(last)  # a root: not asked about
    else:
        issuers.append(next((root for root in roots if _issued_by(last, root)), None))
    targets: list[RevocationTarget | x509.Certificate] = []
    for cert, issuer in zip(chain, issuers, strict=True):
        if issuer is last and cert is last:
            break
        try:
            targets.append(RevocationTarget.of(cert, issuer) if issuer is not None else cert)
        except Exception:  # an issuer key that cannot be read: no issuer to ask about
            targets.append(cert)
    return targets


def _print_revocation(
    targets: Sequence[RevocationTarget | x509.Certificate], skew: timedelta
) -> str | None:
    """Fetch and print the revocation lines of `targets` (a bare certificate: its issuer is
    unknown); a detail naming the first revoked one, or None."""
    askable = [t for t in targets if isinstance(t, RevocationTarget)]
    found = iter(trio.run(partial(report_chain, askable, skew=skew)))
    report = [next(found) if isinstance(t, RevocationTarget) else no_issuer(t) for t in targets]
    for line in report_lines(report):
        print(line)
    return _revoked_detail(report)


def _revoked_detail(report: Sequence[CertRevocation]) -> str | None:
    for index, entry in enumerate(report):
        if entry.revoked:
            why = f" ({entry.reason})" if entry.reason else ""
            return f"certificate {index} ({entry.name}) is revoked{why}, says {entry.source}"
    return None


def _skew_note(
    not_before: datetime, not_after: datetime, now: datetime, skew: timedelta
) -> str | None:
    """What to say about a certificate outside its validity window but inside `skew` of it."""
    if not_after < now <= not_after + skew:
        return (
            f"expired {format_duration(now - not_after)} ago, accepted only inside clock_skew"
            f" {format_duration(skew)}: a peer with a smaller skew rejects it"
        )
    if not_before - skew <= now < not_before:
        return (
            f"not valid for another {format_duration(not_before - now)}, accepted only inside"
            f" clock_skew {format_duration(skew)}: a peer with a smaller skew rejects it"
        )
    return None


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
    check.add_argument(
        "--groups",
        type=_groups_arg,
        default=DEFAULT_GROUPS,
        metavar="G1:G2",
        help="key-exchange groups to offer, most preferred first: OpenSSL names joined by"
        f" ':' (default: {DEFAULT_GROUPS}); the one negotiated is printed as group:",
    )
    check.add_argument(
        "--no-revocation",
        action="store_true",
        help="do not fetch and print the peer chain's revocation status (OCSP, then CRL)",
    )
    check.set_defaults(run=_cmd_check)


def _groups_arg(text: str) -> str:
    """``--groups``: checked and normalised as ``[tls] groups`` is (`validate_groups`)."""
    try:
        return validate_groups(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    _warn_if_expired(args.cert, source.identity().svid.leaf, datetime.now(UTC))

    async def run() -> int:
        with trio.fail_after(args.timeout.total_seconds()):
            result = await check_peer(
                host,
                port,
                source=source,
                authorize=authorize,
                wait=args.wait.total_seconds(),
                groups=args.groups,
            )
        if result.peer is not None:  # our side of the handshake finished: it has a time
            left = result.time_left()
            print(f"spiffe_id: {result.peer.spiffe_id}")
            print(f"time_left: {format_duration(left) if left is not None else '-'}")
            print(f"handshake: {result.handshake_seconds * 1000:.1f} ms")
            print(f"group: {result.group or '-'}")
            peer_leaf = result.peer.chain[0]
            skew_note = _skew_note(
                peer_leaf.not_valid_before_utc,
                peer_leaf.not_valid_after_utc,
                datetime.now(UTC),
                DEFAULT_POLICY.clock_skew,
            )
            if skew_note:
                print(f"note: the peer's certificate: {skew_note}")
        revoked = None
        if result.peer is not None and not args.no_revocation:
            report = await report_chain(
                chain_targets(result.peer.chain), skew=DEFAULT_POLICY.clock_skew
            )
            for line in report_lines(report):
                print(line)
            revoked = _revoked_detail(report)
        if result.ok and revoked is not None:
            print("verdict: rejected reason=revoked")
            print(f"detail: {revoked}")
            return EXIT_FAILED
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


def _warn_if_expired(path: Path, leaf: x509.Certificate, now: datetime) -> None:
    """`check` presents our --cert: say so when the peer will find it expired."""
    not_after = leaf.not_valid_after_utc
    if now > not_after:
        skew = format_duration(DEFAULT_POLICY.clock_skew)
        _warn(
            f"--cert {path} expired {format_duration(now - not_after)} ago ({_when(not_after)});"
            f" peers reject it once past their clock_skew ({skew} by default)"
        )


def _add_node(commands: _Subcommands) -> None:
    node = commands.add_parser(
        "node", help="run a mesh node (with no --config: an embedded local CA on 127.0.0.1)"
    )
    node.add_argument("--config", type=Path, metavar="node.toml")
    _add_node_default_flags(node)
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


def _listen_arg(text: str) -> Address:
    address, problem = _address_error(text, listen=True)
    if address is None:
        raise argparse.ArgumentTypeError(problem)
    return address


def _metrics_arg(text: str) -> Address | Literal["off"]:
    return "off" if text == "off" else _listen_arg(text)


#: The flags that shape the embedded default; with --config, the file says all of it.
_DEFAULT_ONLY: Final = {
    "state_dir": ("--state-dir", "[identity] local_ca names the CA directory"),
    "listen": ("--listen", "[node] listen"),
    "metrics": ("--metrics", "[node] metrics"),
}


def _add_node_default_flags(node: _Parser) -> None:
    """Flags for ``meshtls node`` without ``--config``: where it keeps its CA, where it listens."""
    node.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the embedded default keeps its CA (default: $STATE_DIRECTORY,"
        " $XDG_STATE_HOME/meshtls or ~/.local/state/meshtls)",
    )
    node.add_argument(
        "--listen",
        type=_listen_arg,
        metavar="HOST:PORT",
        help="the mesh listener of the embedded default"
        f" (default: {format_address(DEFAULT_LISTEN)})",
    )
    node.add_argument(
        "--metrics",
        type=_metrics_arg,
        metavar="HOST:PORT|off",
        help="health and metrics endpoint of the embedded default"
        f" (default: {format_address(DEFAULT_METRICS)})",
    )


def _embedded_config(args: argparse.Namespace) -> NodeConfig:
    """The embedded default, with ``--state-dir``, ``--listen`` and ``--metrics`` applied.

    Raises `ConfigError` for a state directory that cannot be one: a file, or under a
    home directory that does not exist (a service user's HOME is often /nonexistent, and
    creating it, as root can, would be worse than refusing).
    """
    state_dir: Path | None = args.state_dir
    if state_dir is None:
        state_dir = default_state_dir()
        home = _missing_home()
        if home is not None and state_dir.is_relative_to(home):
            raise ConfigError(
                f"no state directory: HOME {home} does not exist; give --state-dir DIR,"
                " or set STATE_DIRECTORY or XDG_STATE_HOME"
            )
        flag = "state directory"
    else:
        flag = "--state-dir"
    for path in (state_dir, state_dir / "ca"):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a directory")
    config = default_config(state_dir)
    listen: Address = args.listen or config.node.listen
    given: Address | Literal["off"] | None = args.metrics
    metrics = config.node.metrics if given is None else None if given == "off" else given
    if metrics is not None and metrics == listen and listen[1] != 0:
        raise ConfigError(f"--listen and --metrics are both {format_address(listen)}")
    return replace(config, node=replace(config.node, listen=listen, metrics=metrics))


def _missing_home() -> Path | None:
    """The home directory ($HOME, else the password entry's) when it does not exist."""
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry: default_state_dir uses ./.meshtls
        return None
    return None if home.is_dir() else home


def _credential_hint(config: NodeConfig) -> None:
    """Log the command that gives a client a credential from the embedded default's CA."""
    identity = config.identity
    assert isinstance(identity, LocalCAIdentity)
    client = SpiffeId(identity.spiffe_id.trust_domain, "/client")
    directory = Path(os.path.abspath(identity.directory))
    _logs.event(
        logging.getLogger("meshtls"),
        logging.INFO,
        "client credential",
        command=f"{PROG} ca issue {client} --dir {directory}",
        then=f"--cert client.pem --key client.key --bundle {directory / 'bundle.pem'}",
    )


def _cmd_node(args: argparse.Namespace) -> int:
    with signals_held() as held:  # SIGTERM, SIGINT and SIGHUP are ours from here on
        return _run_node(args, held)


def _run_node(args: argparse.Namespace, held: HeldSignals) -> int:
    if args.config is not None:
        given = [flag for key, (flag, _) in _DEFAULT_ONLY.items() if getattr(args, key) is not None]
        if given:
            where = "; ".join(
                f"{flag}: {instead}"
                for key, (flag, instead) in _DEFAULT_ONLY.items()
                if flag in given
            )
            raise ConfigError(
                f"{', '.join(given)}: for the embedded default only; with --config the file"
                f" says it ({where}): give one or the other"
            )
        config = load_config(args.config)
    else:
        config = _embedded_config(args)
    config = with_flag_tunnels(config, args.tunnels)
    _logs.configure(args.log_format, getattr(logging, args.log_level.upper()))
    if args.config is None:
        _credential_hint(config)

    def load() -> NodeConfig:  # what a SIGHUP reads: the file again, and the same flags
        path: Path | None = args.config
        fresh = load_config(path) if path is not None else _embedded_config(args)
        return with_flag_tunnels(fresh, args.tunnels)

    try:
        run_node(config, held, load=load)
    except NodeError as exc:
        config_error = _config_cause(exc)
        if config_error is not None:  # a file the config names is unusable: exit 2
            raise config_error from exc
        _error_line(args, str(exc), EXIT_FAILED)
        return EXIT_FAILED
    return EXIT_OK


def _config_cause(exc: BaseException) -> ConfigError | None:
    """The `ConfigError` behind a failed start (a cert, key, bundle or CA directory that the
    config names but that cannot be used), if that is what stopped it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigError):
            return current
        if isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
            current = current.exceptions[0]
        else:
            current = current.__cause__
    return None


def _add_bench(commands: _Subcommands) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure handshakes and bulk transfer against other TLS stacks, mesh formation"
        " and messages",
    )
    bench.add_argument(
        "what",
        choices=_BENCHES,
        metavar="{" + ",".join(_BENCHES) + "}",
        help="what to measure",
    )
    options = bench.add_argument(
        "options", nargs=argparse.REMAINDER, help="see 'meshtls bench WHAT --help'"
    )
    options.required = False  # argparse marks REMAINDER required, so a bare `bench` named it
    bench.set_defaults(run=_cmd_bench)


_BENCHES: Final = ("handshake", "bulk", "mesh", "messages")


def _cmd_bench(args: argparse.Namespace) -> int:
    # Heavy imports, which only `bench` needs.
    if args.what == "mesh":
        from ._bench_mesh import main_mesh as bench_main  # noqa: PLC0415
    elif args.what == "messages":
        from ._bench_mesh import main_messages as bench_main  # noqa: PLC0415
    elif args.what == "bulk":
        from ._bench_bulk import main as bench_main  # noqa: PLC0415
    else:
        from ._bench import main as bench_main  # noqa: PLC0415

    try:
        return bench_main(args.options, prog=f"{PROG} bench {args.what}", kind=_Parser)
    except SystemExit as exc:  # its own --help or usage error: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK


def _add_demo(commands: _Subcommands) -> None:
    demo = commands.add_parser(
        "demo",
        help="three nodes in one process: traffic, rotation, a restart and a revocation",
    )
    demo.add_argument(
        "--duration",
        type=_positive_arg,
        metavar="SECONDS",
        help="end after this many seconds, with exit 0 (default: run until Ctrl-C;"
        " the restart and the revocation then come at 21s and 30s)",
    )
    demo.add_argument(
        "--svid-ttl",
        type=_duration_arg,
        metavar="DURATION",
        help="the nodes' SVID lifetime (default: 2m; never more than 80%% of --duration,"
        " so that each node rotates before the end; at least 15s)",
    )
    demo.add_argument(
        "--rate",
        type=_positive_arg,
        default=5.0,
        metavar="N",
        help="messages a second from each node to each other node (default: 5)",
    )
    demo.add_argument(
        "--plain",
        action="store_true",
        help="plain periodic lines instead of the live table (the default when stdout"
        " is not a terminal)",
    )
    demo.set_defaults(run=_cmd_demo)


def _positive_arg(text: str) -> float:
    """A finite number above 0 (``--duration 20``, ``--rate 2.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import Plan, run_demo  # noqa: PLC0415 - rich only for the demo

    with signals_held() as held:  # SIGINT and SIGTERM end the demo cleanly (exit 0)
        plan = Plan.make(args.duration, args.svid_ttl)
        live = False if args.plain else None
        try:
            run_demo(plan, rate=args.rate, out=sys.stdout, held=held, live=live)
        except NodeError as exc:
            _error_line(args, str(exc), EXIT_FAILED)
            return EXIT_FAILED
    return EXIT_OK


_COMMANDS: Final[tuple[Callable[[_Subcommands], None], ...]] = (
    _add_ca,
    _add_inspect,
    _add_check,
    _add_node,
    _add_demo,
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
        code = run(args)
        sys.stdout.flush()  # a closed stdout shows here, where it can be caught
    except BrokenPipeError:
        return _stdout_closed()
    except VerificationError as exc:
        code = EXIT_FAILED
        message = _error_text(exc)
    except (MeshError, OSError, ValueError) as exc:
        code = EXIT_USAGE
        message = _error_text(exc)
    except KeyboardInterrupt:
        return interrupted()
    except BaseExceptionGroup as group:
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        return interrupted()
    else:
        return code
    _error_line(args, message, code)
    return code


def _error_line(args: argparse.Namespace, message: str, code: int) -> None:
    """The one line on stderr for an error: ``meshtls: error: ...``, or with ``node
    --log-format json`` an event like the node's other lines, which a JSON pipeline reads."""
    if getattr(args, "log_format", None) != "json":
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
        return
    fields = {"error": _one_line(message), "exit": code}
    record = logging.makeLogRecord(
        {"name": "meshtls", "levelno": logging.ERROR, "levelname": "ERROR",
         "msg": "node could not start", _logs.FIELDS: fields}
    )  # fmt: skip
    print(_logs.formatter("json").format(record), file=sys.stderr)


def interrupted() -> int:
    """Ctrl-C: one line and exit 130, never a traceback."""
    print(f"{PROG}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _stdout_closed() -> int:
    """Whoever reads our output stopped (`meshtls inspect ... | head -1`): exit quietly.

    As Python's documentation on SIGPIPE advises, stdout is pointed at /dev/null so that
    the interpreter's last flush cannot fail again; 141 is what a process killed by
    SIGPIPE reports, so a pipeline under ``set -o pipefail`` sees the same as with `cat`.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE
