"""Our SVID on disk for other programs (``[[write]]``), as spiffe-helper writes it.

Theory of operation. One `SvidWriter` per ``[[write]]`` table runs in the node's nursery.
It watches the node's active identity (`Rotation.changed`, which pulses on every swap)
and, whenever what it would write differs from what it last wrote, writes its files and
then runs its ``on_rotate`` command. It compares before it waits, so an identity that
changes while it writes or while the command runs is written next, never missed.

What is written (PEM, all of it):

- ``cert``: our leaf, then its intermediates, as we present them;
- ``key``: the leaf's private key, PKCS#8, unencrypted (the file mode protects it);
- ``bundle``: the roots of *our own* trust domain only. A federated domain's roots are
  left out: a flat PEM file carries no trust domain, so a program trusting it would let a
  partner's CA vouch for ids of our domain, which the node itself never allows.

How it is written. Each file goes to a temporary file in its own directory, created 0600,
set to its mode, filled, flushed and fsynced, then moved over the old one with
`os.replace` (atomic on POSIX), and the directory is fsynced: a reader sees the old file or
the new one, never a part. The files are replaced in the order bundle, key, cert. Two
files cannot be replaced at once; this order gives the guarantee a reader can build on: a
reader that reads the certificate, then the key, and gets the new certificate gets its key
too (and the bundle that holds its roots). One that gets the old certificate may get the
new key in the instant between the two replacements: it should read again when they do not
match, or read when ``on_rotate`` tells it, which runs only once all the files are in place.

Errors. A write that fails (any `OSError`, any other exception while rendering) is one
error event and ``<prefix>_svid_writes_total{result="error"}``; the files are tried again
after a backoff (1 s doubling to 60 s) or at the next rotation, whichever comes first, and
the node goes on. The command runs only after a complete write, never through a shell,
with no input and its output discarded (it cannot break the one-line-per-event logs), in
its own process group; past ``on_rotate_timeout`` that group is killed. Its end (exit
status, signal, timeout or "could not start") is one event and one
``<prefix>_on_rotate_total{result}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NoReturn, Protocol

import trio
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from prometheus_client import CollectorRegistry, Counter

from ._boundary import describe_error
from ._config import WriteSettings
from ._identity import Identity
from ._logs import event, log_context
from ._metrics import NodeMetrics

__all__ = [
    "SvidFiles",
    "SvidWriter",
    "WriteMetrics",
    "render",
    "start_writers",
    "write_atomically",
]

logger = logging.getLogger("meshtls")

WriteResult = Literal["ok", "error"]
CommandResult = Literal["ok", "failed", "timeout", "error"]
_WRITE_RESULTS: Final[tuple[WriteResult, ...]] = ("ok", "error")
_COMMAND_RESULTS: Final[tuple[CommandResult, ...]] = ("ok", "failed", "timeout", "error")
#: Retrying a failed write: the first delay and the longest, in seconds (Trio time).
RETRY_FIRST: Final = 1.0
RETRY_MAX: Final = 60.0


class Watched(Protocol):
    """What a writer follows: the active identity and a wait for its next change."""

    def identity(self) -> Identity: ...

    async def changed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SvidFiles:
    """The bytes of the three files for one identity (see the theory above)."""

    cert: bytes
    key: bytes
    bundle: bytes


def render(identity: Identity) -> SvidFiles:
    """The PEM files for `identity`: chain, PKCS#8 key, and our own trust domain's roots."""
    svid = identity.svid
    bundle = identity.bundles.get(svid.spiffe_id.trust_domain)
    return SvidFiles(
        cert=b"".join(cert.public_bytes(Encoding.PEM) for cert in svid.chain),
        key=svid.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        bundle=bundle.pem if bundle is not None else b"",
    )


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` and `mode` at once: a reader never sees a partial file.

    Raises `OSError`; the temporary file is removed then, and `path` is left as it was.
    """
    directory = path.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the mode before the bytes: never a moment too open
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a crash
    finally:
        os.close(directory_fd)


def write_files(settings: WriteSettings, files: SvidFiles) -> None:
    """Write the files `settings` names, in the order bundle, key, cert. Raises `OSError`."""
    for path, data, mode in (
        (settings.bundle, files.bundle, settings.bundle_mode),
        (settings.key, files.key, settings.key_mode),
        (settings.cert, files.cert, settings.cert_mode),
    ):
        if path is not None:
            write_atomically(path, data, mode)


class WriteMetrics:
    """``<prefix>_svid_writes_total{result}`` and ``<prefix>_on_rotate_total{result}``.

    Created on the node's registry only when the config has ``[[write]]``, so a node that
    writes nothing exports nothing about it. Every label value exists from the start.
    """

    def __init__(self, registry: CollectorRegistry, *, prefix: str) -> None:
        writes = Counter(
            f"{prefix}_svid_writes_total",
            "Writes of our SVID files for other programs ([[write]]), by result (ok: every"
            " file replaced; error: a file could not be written, retried with a backoff).",
            ["result"],
            registry=registry,
        )
        self._writes = {result: writes.labels(result) for result in _WRITE_RESULTS}
        commands = Counter(
            f"{prefix}_on_rotate_total",
            "on_rotate commands run after a write, by result (ok: exit 0; failed: another"
            " exit status or a signal; timeout: killed after on_rotate_timeout; error: could"
            " not start).",
            ["result"],
            registry=registry,
        )
        self._commands = {result: commands.labels(result) for result in _COMMAND_RESULTS}

    def wrote(self, result: WriteResult) -> None:
        self._writes[result].inc()

    def ran(self, result: CommandResult) -> None:
        self._commands[result].inc()


class SvidWriter:
    """Keeps the files of one ``[[write]]`` table equal to `source`'s active identity.

    Owned by the node, which runs `run` in its nursery. `name` identifies the table in
    log lines (``write=1``). `settled` waits for the end of the next write attempt (and
    its command).
    """

    def __init__(
        self, settings: WriteSettings, source: Watched, metrics: WriteMetrics, *, name: str
    ) -> None:
        self.settings = settings
        self._source = source
        self._metrics = metrics
        self.name = name
        self._written: SvidFiles | None = None
        self._settled = trio.Event()

    async def settled(self) -> None:
        """Wait until the next write attempt, and its command if any, has finished."""
        await self._settled.wait()

    def _pulse(self) -> None:
        self._settled.set()
        self._settled = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Write at once, call ``started()``, then run the command; then follow every change."""
        retry = RETRY_FIRST
        starting = True
        with log_context(write=self.name):
            while True:
                files = self._render(self._source.identity())
                if files is not None and files != self._written:
                    wrote = await self._write(files)
                    if starting:
                        task_status.started()
                        starting = False
                    if wrote:
                        retry = RETRY_FIRST
                        await self._run_command()
                        self._pulse()
                        continue
                    self._pulse()
                    with trio.move_on_after(retry):
                        await self._source.changed()
                    retry = min(retry * 2, RETRY_MAX)
                    continue
                if starting:
                    task_status.started()
                    starting = False
                await self._source.changed()

    async def _write(self, files: SvidFiles) -> bool:
        """Write `files`; True when every file was replaced. Logs and counts either way."""
        try:
            await trio.to_thread.run_sync(write_files, self.settings, files)
        except Exception as exc:  # a disk that refuses a file must not stop the node
            self._failed(exc)
            return False
        self._written = files
        self._metrics.wrote("ok")
        event(
            logger,
            logging.INFO,
            "SVID files written",
            files=",".join(str(path) for path in self.settings.files),
        )
        return True

    def _render(self, identity: Identity) -> SvidFiles | None:
        """`render`, or None (logged, counted) when this identity cannot be rendered."""
        try:
            return render(identity)
        except Exception as exc:  # one identity we cannot write must not stop the node
            self._failed(exc)
            return None

    def _failed(self, exc: Exception) -> None:
        self._metrics.wrote("error")
        if isinstance(exc, OSError):
            where = str(exc.filename) if exc.filename else None
            error = exc.strerror or describe_error(exc)
        else:
            where, error = None, describe_error(exc)
        event(logger, logging.ERROR, "SVID files not written", file=where, error=error)

    async def _run_command(self) -> None:
        """Run ``on_rotate`` (if set) under its timeout; one event and one count for its end."""
        argv = self.settings.on_rotate
        if not argv:
            return
        timeout = self.settings.on_rotate_timeout.total_seconds()
        started = trio.current_time()
        with trio.move_on_after(timeout) as scope:
            try:
                done = await trio.run_process(
                    list(argv),
                    check=False,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    deliver_cancel=_kill_group,
                )
            except OSError as exc:
                self._metrics.ran("error")
                event(
                    logger,
                    logging.ERROR,
                    "on_rotate command could not start",
                    command=argv[0],
                    error=exc.strerror or describe_error(exc),
                )
                return
        seconds = round(trio.current_time() - started, 3)
        if scope.cancelled_caught:
            self._metrics.ran("timeout")
            event(
                logger,
                logging.ERROR,
                "on_rotate command timed out and was killed",
                command=argv[0],
                timeout=f"{timeout:g}s",
            )
            return
        code = done.returncode
        if code == 0:
            self._metrics.ran("ok")
            event(
                logger,
                logging.INFO,
                "on_rotate command finished",
                command=argv[0],
                exit=0,
                seconds=seconds,
            )
            return
        self._metrics.ran("failed")
        status = {"exit": code} if code > 0 else {"signal": _signal_name(-code)}
        event(
            logger,
            logging.ERROR,
            "on_rotate command failed",
            command=argv[0],
            seconds=seconds,
            **status,
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def _kill_group(process: trio.Process) -> None:
    """How a timed-out command is stopped: SIGKILL to its whole process group."""
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(process.pid, signal.SIGKILL)


async def start_writers(
    nursery: trio.Nursery,
    tables: tuple[WriteSettings, ...],
    source: Watched,
    node_metrics: NodeMetrics,
) -> list[SvidWriter]:
    """Start one `SvidWriter` per ``[[write]]`` table in `nursery`, each after its first write.

    The counters go on `node_metrics`' registry under its prefix.
    """
    metrics = WriteMetrics(node_metrics.registry, prefix=node_metrics.prefix)
    writers = [
        SvidWriter(settings, source, metrics, name=str(index))
        for index, settings in enumerate(tables, 1)
    ]
    for writer in writers:
        await nursery.start(writer.run)
    return writers
