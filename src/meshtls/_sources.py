"""Identity sources: where our SVID and the trust bundles come from.

A source publishes values, `Identity` (our `X509Svid` and the `BundleSet`), and builds
nothing: the TLS contexts of a value are built once, by whoever first needs them (the
node's rotation task, before it swaps a value in; or the first handshake of `connect`
and `serve` without a node). Fixed values and live sources satisfy the same one-method
protocol, `IdentitySource.identity()` (go-spiffe's model), so `connect` and `serve` take
either.

A *live* source also has `run()`, a task the node supervises: it keeps the identity
current and publishes each new value into the source's `IdentityCell`, which the rotation
task watches. `run` calls ``task_status.started()`` once the first identity is there, and
raises only for errors it cannot recover from. Bytes read from files or a CA directory are
outside input: every read goes through `meshtls._boundary.mapped`, so whatever a parser
raises on a hostile file, the old identity stays, the refusal is logged on one line and
reported once to `on_invalid(reason, detail)`, and `run` goes on.

When an update's SVID is unusable but its bundles are fine, the source publishes the new
bundles beside the SVID it had: a bundle change stands on its own (B-7), so a root that
left the bundle is not kept trusted because of a bad certificate file beside it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn, Protocol

import trio

from ._boundary import mapped
from ._bundle import BundleSet, X509Bundle
from ._ca import LocalCA
from ._errors import ConfigError, MeshError, Reason, VerificationError
from ._identity import Identity, IdentitySource, NoIdentityError
from ._logs import event
from ._spiffeid import SpiffeId, TrustDomain
from ._svid import X509Svid
from ._tls import TlsContexts

__all__ = [
    "FileSource",
    "IdentityCell",
    "InvalidCallback",
    "LiveSource",
    "LocalCASource",
    "NoIdentityError",
    "StaticSource",
    "load_bundle_file",
]

logger = logging.getLogger("meshtls")

#: Called with (reason, one-line detail) for each update a source refuses; `reason` is one
#: of `REASONS`. The source has logged the refusal already: the callback counts it.
InvalidCallback = Callable[[Reason, str], object]


class IdentityCell:
    """The current identity of a live source, and a way to wait for the next one.

    One writer (the source's `run` task) publishes; any task may read or wait. Each
    publish makes a new generation; waiters see only the latest.
    """

    __slots__ = ("_changed", "_generation", "_identity")

    def __init__(self) -> None:
        self._identity: Identity | None = None
        self._generation = 0
        self._changed = trio.Event()

    @property
    def generation(self) -> int:
        """0 until the first publish, then +1 per identity."""
        return self._generation

    def current(self) -> Identity:
        """The latest identity. Raises `NoIdentityError` before the first publish."""
        if self._identity is None:
            raise NoIdentityError("no identity yet: the source has not loaded one")
        return self._identity

    def latest(self) -> Identity | None:
        """The latest identity, or None before the first publish."""
        return self._identity

    def publish(self, identity: Identity) -> None:
        """Make `identity` current and wake every waiter. Never blocks."""
        self._identity = identity
        self._generation += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_newer(self, generation: int) -> tuple[int, Identity]:
        """Wait until an identity newer than `generation` is published; return it."""
        while self._generation <= generation or self._identity is None:
            await self._changed.wait()
        return self._generation, self._identity


class LiveSource(IdentitySource, Protocol):
    """An identity source that changes over time; the node runs and watches it."""

    @property
    def cell(self) -> IdentityCell: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> NoReturn:
        """Keep `cell` current. ``started()`` once the first identity is published."""
        ...


class _Published:
    """What the live sources share: the latest value in a cell, and its contexts."""

    __slots__ = ("_cell", "on_invalid")

    def __init__(self, on_invalid: InvalidCallback | None) -> None:
        self._cell = IdentityCell()
        self.on_invalid = on_invalid

    @property
    def cell(self) -> IdentityCell:
        return self._cell

    def identity(self) -> Identity:
        """The latest published identity. Raises `NoIdentityError` before the first one."""
        return self._cell.current()

    def contexts(self) -> TlsContexts:
        """Shortcut for ``identity().contexts()``, kept for callers of the old protocol."""
        return self._cell.current().contexts()

    def _refuse(self, what: str, reason: Reason, detail: str) -> None:
        """One log line, then one report: the current identity stays."""
        event(
            logger,
            logging.WARNING,
            f"{what} rejected, keeping the current identity",
            reason=reason,
            detail=detail,
        )
        if self.on_invalid is not None:
            self.on_invalid(reason, detail)


class StaticSource:
    """A fixed SVID and bundle set, for tests and for programs that manage rotation."""

    __slots__ = ("_identity",)

    def __init__(self, svid: X509Svid, bundles: BundleSet) -> None:
        self._identity = Identity(svid, bundles)

    def identity(self) -> Identity:
        return self._identity

    def contexts(self) -> TlsContexts:
        """Shortcut for ``identity().contexts()``, kept for callers of the old protocol."""
        return self._identity.contexts()

    def __repr__(self) -> str:
        return f"StaticSource({self._identity.svid.spiffe_id})"


def load_bundle_file(path: Path, trust_domain: str | TrustDomain) -> X509Bundle:
    """A bundle file: PEM roots, or a SPIFFE bundle (JSON, starts with ``{``)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        return X509Bundle.from_spiffe_bundle(trust_domain, data)
    return X509Bundle.from_pem(trust_domain, data)


def _shown(path: Path | str) -> str:
    """A path for a one-line message: anything unprintable (a NUL byte, a newline) escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)[1:-1]


class _FileProblemError(MeshError):
    """Files that cannot make an identity: `reason` for the metrics, the message names the file."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Whatever fails inside becomes one `_FileProblemError` that names `what`, or the file an
    `OSError` names; a `VerificationError` keeps its reason."""

    def problem(description: str) -> MeshError:
        return _FileProblemError("malformed_certificate", f"{what}: {description}")

    try:
        with mapped(problem):
            yield
    except _FileProblemError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.strerror:
            name = _shown(cause.filename) if cause.filename is not None else what
            raise _FileProblemError(exc.reason, f"{name}: {cause.strerror}") from cause
        raise
    except VerificationError as exc:
        raise _FileProblemError(exc.reason, f"{what}: {exc}") from exc
    except MeshError as exc:  # BundleError, SpiffeIdError, ConfigError
        raise _FileProblemError("malformed_certificate", f"{what}: {exc}") from exc


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: inode, size, mtime, ctime."""
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileSource(_Published):
    """Our SVID and bundles from files, loaded when constructed and watched by `run`.

    - `cert`: our leaf then its intermediates (PEM); `key`: the leaf's key (PEM).
    - `bundle`: the roots of our own trust domain (PEM, or a SPIFFE bundle JSON).
    - `federated`: ``{"other.org": "other-bundle.pem", ...}``, other trusted domains.

    Construction raises `ConfigError` with one line naming the file and what is wrong.
    `run` polls the files every `poll_interval` seconds (Trio time); an atomic replace or
    an in-place rewrite is picked up at the next poll. The SVID files and the bundle files
    are judged apart: an unusable SVID keeps the old one (beside new bundles, if those are
    good), unusable bundles keep the old bundles. Whatever a parser raises, the refusal is
    logged on one line, reported once to `on_invalid(reason, detail)`, and the files are
    tried again as soon as any of them changes again.
    """

    __slots__ = ("_stamps", "bundle", "cert", "federated", "key", "poll_interval")

    def __init__(
        self,
        *,
        cert: str | Path,
        key: str | Path,
        bundle: str | Path,
        federated: dict[str, str | Path] | None = None,
        poll_interval: float = 0.5,
        on_invalid: InvalidCallback | None = None,
    ) -> None:
        super().__init__(on_invalid)
        self.cert, self.key, self.bundle = Path(cert), Path(key), Path(bundle)
        self.federated = {td: Path(p) for td, p in (federated or {}).items()}
        if not poll_interval > 0:
            raise ConfigError(
                f"poll_interval must be a positive number of seconds, not {poll_interval}"
            )
        self.poll_interval = poll_interval
        self._stamps = self._current_stamps()
        try:
            svid = self._read_svid()
            identity = Identity(svid, self._read_bundles(svid.spiffe_id.trust_domain))
        except _FileProblemError as exc:
            raise ConfigError(str(exc)) from exc.__cause__
        self._cell.publish(identity)

    def _paths(self) -> list[Path]:
        return [self.cert, self.key, self.bundle, *self.federated.values()]

    def _current_stamps(self) -> list[tuple[int, int, int, int] | None]:
        return [_stamp(path) for path in self._paths()]

    def _read_svid(self) -> X509Svid:
        """Our SVID from `cert` and `key`. Raises `_FileProblemError`, whatever went wrong."""
        with _reading(f"{_shown(self.cert)} / {_shown(self.key)}"):
            return X509Svid.load(self.cert.read_bytes(), self.key.read_bytes())

    def _read_bundles(self, own: TrustDomain) -> BundleSet:
        """Our domain's bundle and the federated ones. Raises `_FileProblemError` on any failure."""
        bundles: list[X509Bundle] = []
        for td, path in [(str(own), self.bundle), *self.federated.items()]:
            with _reading(_shown(path)):
                bundles.append(load_bundle_file(path, td))
        with _reading("bundles"):
            return BundleSet._build(bundles)

    def reload(self, *, force: bool = False) -> bool:
        """If any file changed (or `force`: at once, changed or not, as on SIGHUP), read
        them again and publish what is new and usable.

        Returns True when a new identity was published. What cannot be used keeps its old
        value (logged and reported once) until the files change again.
        """
        stamps = self._current_stamps()
        if stamps == self._stamps and not force:
            return False
        self._stamps = stamps
        current = self._cell.current()
        problems: list[_FileProblemError] = []
        try:
            svid = self._read_svid()
            if svid.chain == current.svid.chain:  # the same certificates, so the same key
                svid = current.svid
        except _FileProblemError as exc:
            problems.append(exc)
            svid = current.svid
        try:
            bundles = self._read_bundles(svid.spiffe_id.trust_domain)
            with _reading("bundles"):
                if bundles == current.bundles:
                    bundles = current.bundles  # the same contents: keep the value in use
        except _FileProblemError as exc:
            problems.append(exc)
            bundles = current.bundles
        if problems:
            detail = "; ".join(str(problem) for problem in problems)
            self._refuse("identity files", problems[0].reason, detail)
        if svid is current.svid and bundles is current.bundles:
            return False
        self._cell.publish(Identity(svid, bundles))
        return True

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Watch the files until cancelled. The first identity was loaded at construction."""
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            self.reload()

    def __repr__(self) -> str:
        files = f"cert={str(self.cert)!r}, key={str(self.key)!r}, bundle={str(self.bundle)!r}"
        return f"FileSource({files})"


class LocalCASource(_Published):
    """Our SVID from a development CA directory: the embedded default identity.

    The CA directory is created (for `spiffe_id`'s trust domain) if it does not exist. An
    SVID with lifetime `ttl` is issued at construction and published; `run` renews it at
    `renew_fraction` of its lifetime, moved by up to +/- `jitter` of the lifetime (drawn
    from `rng`), so that many nodes do not renew at once; ``renew_fraction - jitter`` and
    ``renew_fraction + jitter`` must both lie strictly between 0 and 1. `clock` gives
    certificate time (default: the wall clock); sleeping uses Trio time.

    Construction raises `ConfigError` (one line) for anything that stops the first issue:
    an unusable directory, a ttl that no certificate can hold. A failed renewal is logged,
    reported to `on_invalid`, and retried after a tenth of the time left (at least 1 s).
    """

    __slots__ = ("_ca", "_clock", "_rng", "jitter", "renew_fraction", "spiffe_id", "ttl")

    def __init__(
        self,
        ca_dir: str | Path,
        spiffe_id: SpiffeId | str,
        ttl: timedelta = timedelta(minutes=10),
        *,
        renew_fraction: float = 0.5,
        jitter: float = 0.05,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        on_invalid: InvalidCallback | None = None,
    ) -> None:
        super().__init__(on_invalid)
        if not (jitter >= 0 and renew_fraction - jitter > 0 and renew_fraction + jitter < 1):
            raise ConfigError(
                f"renew_fraction {renew_fraction} +/- jitter {jitter} must stay between 0 and 1"
            )
        self.spiffe_id = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        if ttl <= timedelta(0):
            raise ConfigError(f"ttl must be positive, not {ttl}")
        self.ttl = ttl
        self.renew_fraction = renew_fraction
        self.jitter = jitter
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()  # noqa: S311 - spreading renewals, not secrets
        directory = Path(ca_dir)
        with mapped(lambda text: ConfigError(f"local CA {_shown(directory)}: {text}")):
            if (directory / "ca.json").exists():
                self._ca = LocalCA.open(directory)
            else:
                self._ca = LocalCA.init(directory, self.spiffe_id.trust_domain, now=self._clock())
        if self._ca.trust_domain != self.spiffe_id.trust_domain:
            raise ConfigError(
                f"{_shown(directory)}: a CA for {self._ca.trust_domain}"
                f" cannot issue {self.spiffe_id}"
            )
        self._cell.publish(self._issue())

    def _issue(self) -> Identity:
        """A new SVID from the CA, with its bundle. Raises `ConfigError`, whatever went wrong."""
        what = (
            f"local CA {_shown(self._ca.directory)}: cannot issue {self.spiffe_id} for {self.ttl}"
        )
        with mapped(lambda text: ConfigError(f"{what}: {text}")):
            svid = self._ca.issue(self.spiffe_id, ttl=self.ttl, now=self._clock())
            return Identity(svid, self._ca.bundle())

    def renewal_delay(self) -> float:
        """Seconds from now until the current SVID should be renewed (draws the jitter)."""
        svid = self._cell.current().svid
        lifetime = svid.not_after - svid.not_before
        fraction = self.renew_fraction + self._rng.uniform(-self.jitter, self.jitter)
        due = svid.not_before + lifetime * fraction
        return max(0.0, (due - self._clock()).total_seconds())

    def renew(self) -> Identity:
        """Issue and publish a new SVID now, before its time (after a revocation, say);
        `run` schedules the next renewal from the new one. Raises `ConfigError` when the
        CA cannot issue (the current identity stays)."""
        identity = self._issue()
        self._cell.publish(identity)
        return identity

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Renew until cancelled. The first SVID was issued at construction."""
        task_status.started()
        while True:
            generation = self._cell.generation
            with trio.move_on_after(self.renewal_delay()) as timer:
                await self._cell.wait_newer(generation)  # `renew` came first
            if not timer.cancelled_caught:
                continue
            try:
                self._cell.publish(self._issue())
            except MeshError as exc:
                self._refuse("SVID renewal", "malformed_certificate", f"renewal failed: {exc}")
                left = (self._cell.current().svid.not_after - self._clock()).total_seconds()
                await trio.sleep(max(1.0, left / 10))

    def __repr__(self) -> str:
        return f"LocalCASource({str(self._ca.directory)!r}, {str(self.spiffe_id)!r})"
