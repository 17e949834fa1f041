"""Identity sources: where our SVID and the trust bundles come from.

A source answers one question, `contexts()`: the TLS contexts of the current
identity, built once per identity. Fixed values and live sources satisfy the same
one-method protocol (go-spiffe's model), so `connect` and `serve` take either.

A *live* source also has `run()`, a task the node supervises: it keeps the identity
current and publishes each new one into the source's `IdentityCell`, which the
rotation task watches. `run` calls ``task_status.started()`` once the first identity is
there, and raises only for errors it cannot recover from.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn, Protocol

import trio

from ._bundle import BundleSet, X509Bundle
from ._ca import LocalCA
from ._errors import BundleError, ConfigError, MeshError, Reason, VerificationError
from ._spiffeid import SpiffeId
from ._svid import X509Svid
from ._tls import TlsContexts

logger = logging.getLogger("meshtls")


class IdentitySource(Protocol):
    """Gives the TLS contexts of the current identity. Must not block or do I/O."""

    def contexts(self) -> TlsContexts: ...


class NoIdentityError(MeshError):
    """A live source has no identity yet (its `run` task has not loaded one)."""


class IdentityCell:
    """The current identity of a live source, and a way to wait for the next one.

    One writer (the source's `run` task) publishes; any task may read or wait. Each
    publish makes a new generation; waiters see only the latest.
    """

    __slots__ = ("_changed", "_contexts", "_generation")

    def __init__(self) -> None:
        self._contexts: TlsContexts | None = None
        self._generation = 0
        self._changed = trio.Event()

    @property
    def generation(self) -> int:
        """0 until the first publish, then +1 per identity."""
        return self._generation

    def current(self) -> TlsContexts:
        """The latest identity. Raises `NoIdentityError` before the first publish."""
        if self._contexts is None:
            raise NoIdentityError("no identity yet: the source has not loaded one")
        return self._contexts

    def publish(self, contexts: TlsContexts) -> None:
        """Make `contexts` current and wake every waiter. Never blocks."""
        self._contexts = contexts
        self._generation += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_newer(self, generation: int) -> tuple[int, TlsContexts]:
        """Wait until an identity newer than `generation` is published; return it."""
        while self._generation <= generation or self._contexts is None:
            await self._changed.wait()
        return self._generation, self._contexts


class LiveSource(IdentitySource, Protocol):
    """An identity source that changes over time; the node runs and watches it."""

    @property
    def cell(self) -> IdentityCell: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> NoReturn:
        """Keep `cell` current. ``started()`` once the first identity is published."""
        ...


class StaticSource:
    """A fixed SVID and bundle set, for tests and for programs that manage rotation."""

    __slots__ = ("_contexts",)

    def __init__(self, svid: X509Svid, bundles: BundleSet) -> None:
        self._contexts = TlsContexts.build(svid, bundles)

    def contexts(self) -> TlsContexts:
        return self._contexts

    def __repr__(self) -> str:
        return f"StaticSource({self._contexts.svid.spiffe_id})"


def load_bundle_file(path: Path, trust_domain: str) -> X509Bundle:
    """A bundle file: PEM roots, or a SPIFFE bundle (JSON, starts with ``{``)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        return X509Bundle.from_spiffe_bundle(trust_domain, data)
    return X509Bundle.from_pem(trust_domain, data)


InvalidCallback = Callable[[Reason, str], object]


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: inode, size, mtime, ctime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileSource:
    """Our SVID and bundles from files, loaded when constructed and watched by `run`.

    - `cert`: our leaf then its intermediates (PEM); `key`: the leaf's key (PEM).
    - `bundle`: the roots of our own trust domain (PEM, or a SPIFFE bundle JSON).
    - `federated`: ``{"other.org": "other-bundle.pem", ...}``, other trusted domains.

    Construction raises `ConfigError` with one line naming the file and what is wrong.
    `run` polls the files every `poll_interval` seconds (Trio time); an atomic replace or
    an in-place rewrite is picked up at the next poll. A half-written or invalid new file
    keeps the old identity, is reported once to `on_invalid(reason, message)` and logged on
    one line, and is tried again as soon as any of the files changes again.
    """

    __slots__ = (
        "_cell",
        "_stamps",
        "bundle",
        "cert",
        "federated",
        "key",
        "on_invalid",
        "poll_interval",
    )

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
        self.cert, self.key, self.bundle = Path(cert), Path(key), Path(bundle)
        self.federated = {td: Path(p) for td, p in (federated or {}).items()}
        self.poll_interval = poll_interval
        self.on_invalid = on_invalid
        self._cell = IdentityCell()
        self._stamps = self._current_stamps()
        self._cell.publish(self._load())

    @property
    def cell(self) -> IdentityCell:
        return self._cell

    def _paths(self) -> list[Path]:
        return [self.cert, self.key, self.bundle, *self.federated.values()]

    def _current_stamps(self) -> list[tuple[int, int, int, int] | None]:
        return [_stamp(path) for path in self._paths()]

    def _load(self) -> TlsContexts:
        try:
            svid = X509Svid.load(self.cert.read_bytes(), self.key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
        except (ValueError, VerificationError) as exc:
            raise ConfigError(f"{self.cert} / {self.key}: {exc}") from None
        own = str(svid.spiffe_id.trust_domain)
        bundles: list[X509Bundle] = []
        for td, path in [(own, self.bundle), *self.federated.items()]:
            try:
                bundles.append(load_bundle_file(path, td))
            except OSError as exc:
                raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
            except (BundleError, json.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
        try:
            bundle_set = BundleSet._build(bundles)
        except BundleError as exc:
            raise ConfigError(f"bundles: {exc}") from None
        return TlsContexts.build(svid, bundle_set)

    def reload(self) -> bool:
        """If any file changed, load them again and publish the new identity if valid.

        Returns True when a new identity was published. Invalid files keep the old
        identity (reported, logged) until they change again.
        """
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            contexts = self._load()
        except ConfigError as exc:
            reason: Reason = "malformed_certificate"
            logger.warning(
                "identity files rejected, keeping the current identity reason=%s detail=%r",
                reason,
                str(exc),
            )
            if self.on_invalid is not None:
                self.on_invalid(reason, str(exc))
            return False
        self._cell.publish(contexts)
        return True

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Watch the files until cancelled. The first identity was loaded at construction."""
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            self.reload()

    def contexts(self) -> TlsContexts:
        return self._cell.current()

    def __repr__(self) -> str:
        files = f"cert={str(self.cert)!r}, key={str(self.key)!r}, bundle={str(self.bundle)!r}"
        return f"FileSource({files})"


class LocalCASource:
    """Our SVID from a development CA directory: the embedded default identity.

    The CA directory is created (for `spiffe_id`'s trust domain) if it does not exist. An
    SVID with lifetime `ttl` is issued at construction and published; `run` renews it at
    `renew_fraction` of its lifetime, moved by up to +/- `jitter` of the lifetime (drawn
    from `rng`), so that many nodes do not renew at once. `clock` gives certificate time
    (default: the wall clock); sleeping uses Trio time. A failed renewal is reported to
    `on_invalid`, logged, and retried after a tenth of the time left (at least 1 s).
    """

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
        if not renew_fraction - jitter > 0 and renew_fraction + jitter < 1:
            raise ConfigError("renew_fraction +/- jitter must stay between 0 and 1")
        self.spiffe_id = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        if ttl <= timedelta(0):
            raise ConfigError(f"ttl must be positive, not {ttl}")
        self.ttl = ttl
        self.renew_fraction = renew_fraction
        self.jitter = jitter
        self.on_invalid = on_invalid
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()  # noqa: S311 - spreading renewals, not secrets
        directory = Path(ca_dir)
        if (directory / "ca.json").exists():
            self._ca = LocalCA.open(directory)
        else:
            self._ca = LocalCA.init(directory, self.spiffe_id.trust_domain, now=self._clock())
        if self._ca.trust_domain != self.spiffe_id.trust_domain:
            raise ConfigError(
                f"{directory}: a CA for {self._ca.trust_domain} cannot issue {self.spiffe_id}"
            )
        self._cell = IdentityCell()
        self._cell.publish(self._issue())

    @property
    def cell(self) -> IdentityCell:
        return self._cell

    def _issue(self) -> TlsContexts:
        svid = self._ca.issue(self.spiffe_id, ttl=self.ttl, now=self._clock())
        return TlsContexts.build(svid, self._ca.bundle())

    def renewal_delay(self) -> float:
        """Seconds from now until the current SVID should be renewed (draws the jitter)."""
        svid = self._cell.current().svid
        lifetime = svid.not_after - svid.not_before
        fraction = self.renew_fraction + self._rng.uniform(-self.jitter, self.jitter)
        due = svid.not_before + lifetime * fraction
        return max(0.0, (due - self._clock()).total_seconds())

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Renew until cancelled. The first SVID was issued at construction."""
        task_status.started()
        while True:
            await trio.sleep(self.renewal_delay())
            try:
                self._cell.publish(self._issue())
            except (MeshError, OSError, ValueError) as exc:
                logger.error("SVID renewal failed, retrying error=%r", exc)
                if self.on_invalid is not None:
                    self.on_invalid("malformed_certificate", f"renewal failed: {exc}")
                left = (self._cell.current().svid.not_after - self._clock()).total_seconds()
                await trio.sleep(max(1.0, left / 10))

    def contexts(self) -> TlsContexts:
        return self._cell.current()

    def __repr__(self) -> str:
        return f"LocalCASource({str(self._ca.directory)!r}, {str(self.spiffe_id)!r})"
