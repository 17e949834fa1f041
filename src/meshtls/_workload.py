"""`WorkloadApiSource`: our SVID and trust bundles from a SPIFFE Workload API (a SPIRE agent).

Theory of operation. The Workload API is gRPC: ``FetchX509SVID`` is a server stream whose
every message carries the full X.509 state (W-4): our SVIDs with their keys, the bundle of
each SVID's trust domain, and the federated bundles. `run` keeps one stream open:

- Each connection attempt gets a fresh grpc channel (so grpc's own reconnect backoff never
  delays ours), one call with the ``workload.spiffe.io: true`` metadata (W-1), and one
  dedicated reader thread. grpc's synchronous API blocks, so the thread iterates the call,
  parses and checks each message there (certificate parsing is CPU work), and hands the
  result to Trio through a memory channel with ``trio.from_thread.run``. The `run` task
  consumes the channel: it publishes `Identity` values, logs, reports. It builds no TLS
  context: the node's rotation does that for the values it accepts.
- Leaving an attempt for any reason (stream end, error, cancellation) closes the channel's
  receiving end, cancels the call, and waits, shielded, for the thread to say it is done; the
  thread is then joined. So no thread outlives the attempt, and cancelling `run` really
  stops everything. (A dedicated thread rather than `trio.to_thread`: Trio's thread cache
  keeps idle workers alive for seconds, and a cancelled `to_thread` call could not reach
  into the blocked ``next()`` anyway; cancelling the grpc call can.)
- Every message is checked with meshtls's own strict rules, never py-spiffe's (which
  lowercases trust domains), in two parts. The *bundles*: the entry's ``spiffe_id`` parses
  as a `SpiffeId` (it names our trust domain), every root is readable, each federated key
  is a strict trust domain. The *SVID*: `X509Svid.from_parts` (L-1..L-3, key match), the
  entry's id equals the leaf's, and our chain verifies against our own trust domain's roots
  with every rule that does not depend on the time (L-1..L-10, S-1..S-4). Time and TTL (L-9
  windows, P-1..P-3) are the rotation's, which has the node's policy and clock.
- Unreadable bundles refuse the whole message: nothing is published, the old identity
  stays, one line is logged, `on_invalid(reason, detail)` is called, and the stream goes
  on. A refused SVID beside good bundles is logged and reported the same way, and the new
  bundles are published beside the SVID we had: a bundle change stands on its own (B-7).
- The bundle set is built from exactly the message's bundles, so a domain or root missing
  from it is no longer trusted (B-7). The Workload API's X.509 bundles carry no sequence
  number, so B-4 does not apply here. A message identical to the last one (SPIRE resends on
  changes we do not use, such as another SVID or a CRL) publishes and reports nothing.
- Errors (W-3): InvalidArgument is never retried; `run` raises `WorkloadApiError`. Any other
  status, a refused connection or a stream that ends is retried after an exponential
  backoff with jitter (0.1 s doubling, capped at `backoff_max`; reset by a stream that
  brought a good message and lasted a second, so an agent that hangs up at once after
  each message is not hammered).
  Until the first identity arrives, a `startup_timeout` deadline (Trio time) bounds all of
  it; when it passes, `run` raises `WorkloadApiError` naming the last error, without ever
  having called ``task_status.started()``.

Addresses (W-2) are checked when the source is made, strictly: ``unix:///absolute/path`` or
``tcp://IP:port`` and nothing else; None reads ``SPIFFE_ENDPOINT_SOCKET``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, NoReturn, Protocol, cast

import grpc  # type: ignore[import-untyped]
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_private_key
from spiffe._proto import workload_pb2, workload_pb2_grpc

from ._boundary import mapped
from ._bundle import BundleSet, X509Bundle
from ._errors import BundleError, ConfigError, MeshError, Reason, SpiffeIdError, VerificationError
from ._identity import Identity
from ._logs import event
from ._policy import ValidationPolicy
from ._sources import InvalidCallback, _Published
from ._spiffeid import SpiffeId, TrustDomain
from ._svid import PrivateKey, X509Svid, verify_svid

logger = logging.getLogger("meshtls")

ENDPOINT_SOCKET_ENV: Final = "SPIFFE_ENDPOINT_SOCKET"
HEADER: Final = ("workload.spiffe.io", "true")  # W-1
BACKOFF_INITIAL: Final = 0.1  # seconds; doubles per failed attempt up to backoff_max
_STABLE_STREAM: Final = 1.0  # seconds a stream with a good message must last to reset backoff
_JOIN_TIMEOUT: Final = 5.0  # seconds to wait for a cancelled reader thread; it takes ~1 ms
_MAX_UNIX_PATH: Final = 107  # bytes: sockaddr_un.sun_path holds 108 with the NUL
_EXPECTED: Final = "expected unix:///absolute/path or tcp://IP:port (W-2)"
_PORT_RE: Final = re.compile(r"[1-9][0-9]{0,4}")

# Everything but time (P-1..P-3 belong to the rotation task, with the node's policy).
_SHAPE_POLICY: Final = ValidationPolicy(
    max_ttl=None, max_age=None, clock_skew=timedelta(0), revocation="off"
)


class WorkloadApiError(MeshError):
    """The Workload API refused us for good (InvalidArgument, W-3), or gave no identity in time."""


# ---------------------------------------------------------------- addresses (W-2)


def workload_api_target(address: str, *, setting: str = "workload API address") -> str:
    """The grpc target of a Workload API address (W-2). Raises `ConfigError`, one line.

    Accepted: ``unix:///absolute/path`` (no host, query, fragment or percent-encoding;
    at most 107 bytes, the size of a Unix socket address) and ``tcp://IP:port`` with an
    IPv4 address or a bracketed IPv6 one, never a host name.
    """

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{setting} {address!r}: {problem}; {_EXPECTED}")

    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise bad("a unix address names no host and needs an absolute path (unix:///...)")
        if path.startswith("//"):
            raise bad("the path starts with '//'")
        if path.endswith("/"):
            raise bad("the path ends with '/'")
        odd = next((ch for ch in path if ch in "?#%" or not ch.isprintable() or ch.isspace()), None)
        if odd is not None:
            raise bad(f"the path has {odd!r}; no query, fragment, encoding or spaces")
        if len(path.encode()) > _MAX_UNIX_PATH:
            raise bad(f"the path is {len(path.encode())} bytes, over {_MAX_UNIX_PATH}")
        return f"unix:{path}"
    if address.startswith("tcp://"):
        hostport = address[len("tcp://") :]
        if any(ch in hostport for ch in "/?#@%") or not hostport.isprintable():
            raise bad("a tcp address is only IP:port, with no path, user, query or fragment")
        if hostport.startswith("["):
            host, sep, port = hostport[1:].partition("]:")
            if not sep:
                raise bad("an IPv6 address needs the form [IP]:port")
        else:
            host, sep, port = hostport.rpartition(":")
            if not sep:
                raise bad("a tcp address needs a port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IP address (host names are not allowed)") from None
        if isinstance(ip, ipaddress.IPv6Address) != hostport.startswith("["):
            raise bad("an IPv6 address goes in brackets, an IPv4 address does not")
        if _PORT_RE.fullmatch(port) is None or int(port) > 65535:
            raise bad(f"port {port!r} is not a number from 1 to 65535")
        return f"ipv6:[{ip}]:{port}" if ip.version == 6 else f"ipv4:{ip}:{port}"
    if not address:
        raise bad("it is empty")
    raise bad("the scheme must be unix or tcp")


def _resolve_address(address: str | None) -> tuple[str, str]:
    """(address, grpc target); None reads SPIFFE_ENDPOINT_SOCKET."""
    if address is not None:
        return address, workload_api_target(address)
    value = os.environ.get(ENDPOINT_SOCKET_ENV)
    if value is None:
        raise ConfigError(
            f"{ENDPOINT_SOCKET_ENV} is not set and no workload API address was given; {_EXPECTED}"
        )
    return value, workload_api_target(value, setting=ENDPOINT_SOCKET_ENV)


# ---------------------------------------------------------------- grpc, behind small types


class _Call(Protocol):
    """A ``FetchX509SVID`` response stream (grpc's rendezvous object)."""

    def __iter__(self) -> Iterator[workload_pb2.X509SVIDResponse]: ...

    def cancel(self) -> bool: ...


class _Channel(Protocol):
    def close(self) -> None: ...


def _open_stream(target: str) -> tuple[_Channel, _Call]:
    """A new channel and one ``FetchX509SVID`` call on it, with the security header (W-1)."""
    channel = grpc.insecure_channel(target)
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
    call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=(HEADER,))
    return cast(_Channel, channel), cast(_Call, call)


def _is_rpc_error(error: BaseException) -> bool:
    return isinstance(error, grpc.RpcError)


def _rpc_status(error: BaseException) -> tuple[str, str]:
    """A grpc error's status code name and details."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    name = str(getattr(code(), "name", "UNKNOWN")) if callable(code) else "UNKNOWN"
    text = str(details() or "") if callable(details) else str(error)
    return name, text


# ---------------------------------------------------------------- reading one message


@dataclass(frozen=True, slots=True)
class _Invalid:
    """A message, or its SVID, that may not be published."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class _Message:
    """A checked message: its bundles, and our SVID or why it is refused."""

    bundles: BundleSet
    svid: X509Svid | _Invalid
    fingerprint: tuple[bytes, ...]
    crls: tuple[bytes, ...] = ()  # the message's DER CRLs that parse, in order
    bad_crls: str | None = None  # why the others were left out (None: none were)


@dataclass(frozen=True, slots=True)
class _Ended:
    """The stream is over: ``status`` None when it ended with OK, else (code name, details)."""

    status: tuple[str, str] | None


_Item = _Message | _Invalid | _Ended


class _RejectedError(MeshError):
    """A message, or its SVID, fails our checks: `reason` from `REASONS`, one line of detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail


def _malformed(what: str) -> Callable[[str], MeshError]:
    """For `mapped`: whatever a parser raised about `what` is a ``malformed_certificate``."""

    def rejected(description: str) -> MeshError:
        return _RejectedError("malformed_certificate", f"{what}: {description}")

    return rejected


def split_der(data: bytes, *, what: str) -> list[bytes]:
    """Concatenated DER values (how the Workload API sends chains and bundles)."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise ValueError(f"{what}: byte {offset} does not start a DER certificate")
        first = data[offset + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or offset + 2 + count > len(data):
                raise ValueError(f"{what}: bad DER length at byte {offset}")
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header = 2 + count
        end = offset + header + length
        if end > len(data):
            raise ValueError(f"{what}: truncated DER certificate at byte {offset}")
        items.append(data[offset:end])
        offset = end
    return items


def _certificates(data: bytes, *, what: str) -> tuple[x509.Certificate, ...]:
    with mapped(_malformed(what)):
        return tuple(x509.load_der_x509_certificate(d) for d in split_der(data, what=what))


def _federated_domain(key: str) -> TrustDomain:
    """A federated bundle's key: ``spiffe://td`` (what SPIRE sends) or a bare name, strictly."""
    try:
        if key.startswith("spiffe://"):
            sid = SpiffeId.parse(key)
            if not sid.is_root:
                raise _RejectedError(
                    "invalid_spiffe_id", f"federated bundle key {key!r} is not a trust domain"
                )
            return sid.trust_domain
        return TrustDomain.parse(key)
    except SpiffeIdError as exc:
        raise _RejectedError("invalid_spiffe_id", f"federated bundle key {key!r}: {exc}") from None


def _select(
    entries: Iterable[workload_pb2.X509SVID], want: SpiffeId | None
) -> workload_pb2.X509SVID:
    listed = list(entries)
    if not listed:
        raise _RejectedError("malformed_certificate", "the message has no SVID")
    if want is None:
        return listed[0]  # the default SVID
    for entry in listed:
        if entry.spiffe_id == str(want):
            return entry
    ids = ", ".join(repr(e.spiffe_id[:200]) for e in listed)
    raise _RejectedError("invalid_spiffe_id", f"the message has no SVID for {want} (it has {ids})")


def _declared_id(entry: workload_pb2.X509SVID) -> SpiffeId:
    try:
        return SpiffeId.parse(entry.spiffe_id)
    except SpiffeIdError as exc:
        raise _RejectedError("invalid_spiffe_id", f"SVID entry spiffe_id: {exc}") from None


def _svid(entry: workload_pb2.X509SVID, declared: SpiffeId) -> X509Svid:
    chain = _certificates(entry.x509_svid, what=f"SVID chain of {declared}")
    with mapped(_malformed(f"SVID key of {declared}: not a PKCS#8 DER key")):
        key = load_der_private_key(entry.x509_svid_key, password=None)
    if not isinstance(key, PrivateKey):
        raise _RejectedError(
            "malformed_certificate", f"SVID key of {declared}: unsupported {type(key).__name__}"
        )
    try:
        with mapped(_malformed(f"SVID of {declared}")):
            svid = X509Svid.from_parts(chain, key)
    except VerificationError as exc:
        raise _RejectedError(exc.reason, f"SVID of {declared}: {exc.detail}") from None
    if svid.spiffe_id != declared:
        raise _RejectedError(
            "invalid_spiffe_id",
            f"the entry says {declared} but its certificate is {svid.spiffe_id}",
        )
    return svid


def _bundles(own: TrustDomain, own_roots: bytes, federated: Mapping[str, bytes]) -> BundleSet:
    """Exactly the bundles of the message (W-4, B-7): our domain's, then the federated ones."""
    raw: dict[TrustDomain, bytes] = {own: own_roots}
    for key in sorted(federated):
        td = _federated_domain(key)
        if td in raw and raw[td] != federated[key]:
            raise _RejectedError("malformed_certificate", f"two different bundles for {td} (B-6)")
        raw[td] = federated[key]
    try:
        with mapped(_malformed("bundles")):  # a root cryptography cannot read (a bad curve, ...)
            return BundleSet(
                {
                    td: X509Bundle(td, _certificates(data, what=f"bundle of {td}"))
                    for td, data in raw.items()
                }
            )
    except BundleError as exc:
        raise _RejectedError("malformed_certificate", str(exc)) from None


def _crls(raw: Sequence[bytes]) -> tuple[tuple[bytes, ...], str | None]:
    """The DER CRLs of a message that parse as CRLs, and why the others do not (or None).

    Only readability is checked here; whoever uses a CRL judges it (`judge_crl`).
    """
    kept: list[bytes] = []
    problems: list[str] = []
    for index, data in enumerate(raw):
        try:
            with mapped(MeshError):
                x509.load_der_x509_crl(data)
        except MeshError as exc:
            problems.append(f"crl[{index}] ({len(data)} bytes): {exc}")
        else:
            kept.append(bytes(data))
    if not problems:
        return tuple(kept), None
    shown = "; ".join(problems[:3]) + (
        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    )
    return tuple(kept), f"{len(problems)} of {len(raw)} CRLs unreadable, left out: {shown}"


def read_message(message: workload_pb2.X509SVIDResponse, want: SpiffeId | None) -> _Item:
    """Check one ``X509SVIDResponse`` with our rules, bundles and SVID apart. Never raises."""
    try:
        with mapped(_malformed("unreadable message")):  # it must not stop the stream
            entry = _select(message.svids, want)
            declared = _declared_id(entry)
            bundles = _bundles(declared.trust_domain, entry.bundle, message.federated_bundles)
    except _RejectedError as exc:
        return _Invalid(exc.reason, exc.detail)
    except MeshError as exc:
        return _Invalid("malformed_certificate", f"unreadable message ({exc})")
    crls, bad_crls = _crls(message.crl)
    fingerprint = (  # every field of our entry, the federated bundles, and the CRLs
        entry.SerializeToString(deterministic=True),
        *(b"%s=%s" % (k.encode(), v) for k, v in sorted(message.federated_bundles.items())),
        *(b"crl=%s" % bytes(data) for data in message.crl),
    )
    svid = _checked_svid(entry, declared, bundles)
    return _Message(bundles, svid, fingerprint, crls, bad_crls)


def _checked_svid(
    entry: workload_pb2.X509SVID, declared: SpiffeId, bundles: BundleSet
) -> X509Svid | _Invalid:
    """Our SVID from `entry`, if it passes every rule but time against `bundles`."""
    try:
        with mapped(_malformed(f"our SVID {declared}")):  # refused, never fatal
            svid = _svid(entry, declared)
            # Our chain must verify against our own domain's roots (L-10), at the instant
            # it was issued: every rule but the time ones, which the rotation applies.
            issued = max(cert.not_valid_before_utc for cert in svid.chain)
            verify_svid(svid.chain, bundles, policy=_SHAPE_POLICY, now=issued)
    except _RejectedError as exc:
        return _Invalid(exc.reason, exc.detail)
    except VerificationError as exc:
        return _Invalid(exc.reason, f"our SVID {declared}: {exc.detail}")
    except MeshError as exc:
        return _Invalid("malformed_certificate", f"our SVID {declared}: {exc}")
    return svid


def _read_stream(
    call: _Call,
    send: trio.MemorySendChannel[_Item],
    token: trio.lowlevel.TrioToken,
    done: trio.Event,
    want: SpiffeId | None,
) -> None:
    """The reader thread: each message, checked, into `send`; then how the stream ended.

    Whatever happens, its last act is to close `send` and set `done`, in Trio.
    """
    try:
        try:
            for message in call:
                trio.from_thread.run(send.send, read_message(message, want), trio_token=token)
            end = _Ended(None)
        except Exception as exc:
            status = _rpc_status(exc) if _is_rpc_error(exc) else ("INTERNAL", repr(exc))
            end = _Ended(status)
        trio.from_thread.run(send.send, end, trio_token=token)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
        pass  # Trio stopped listening: the attempt is over
    finally:
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(_finish, send, done)


def _finish(send: trio.MemorySendChannel[_Item], done: trio.Event) -> None:
    send.close()
    done.set()


# ---------------------------------------------------------------- the source


class WorkloadApiSource(_Published):
    """Our SVID and bundles, streamed from a SPIFFE Workload API (`run` keeps them current).

    - `address`: ``unix:///absolute/path`` or ``tcp://IP:port`` (W-2); None reads
      ``SPIFFE_ENDPOINT_SOCKET``. Checked here: a bad one raises `ConfigError`.
    - `spiffe_id`: which SVID to use when the workload has several; default the first.
    - `startup_timeout`: seconds (Trio time) `run` waits for a first identity.
    - `backoff_max`: the longest wait between two connection attempts, in seconds.
    - `on_invalid(reason, detail)`: called for each message, or SVID, that fails our
      checks (after one log line); the old identity, or SVID, stays. `reason` is one of
      `REASONS`.
    """

    __slots__ = (
        "_fingerprint",
        "_last_problem",
        "_rng",
        "_target",
        "address",
        "backoff_max",
        "spiffe_id",
        "startup_timeout",
    )

    def __init__(
        self,
        address: str | None = None,
        *,
        spiffe_id: SpiffeId | str | None = None,
        startup_timeout: float = 30.0,
        backoff_max: float = 30.0,
        on_invalid: InvalidCallback | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(on_invalid)
        self.address, self._target = _resolve_address(address)
        if isinstance(spiffe_id, str):
            try:
                spiffe_id = SpiffeId.parse(spiffe_id)
            except SpiffeIdError as exc:
                raise ConfigError(f"workload API spiffe_id: {exc}") from None
        self.spiffe_id: SpiffeId | None = spiffe_id
        if not startup_timeout > 0:
            raise ConfigError(f"workload API startup_timeout must be positive: {startup_timeout}")
        if not backoff_max >= BACKOFF_INITIAL:
            raise ConfigError(
                f"workload API backoff_max must be at least {BACKOFF_INITIAL}s: {backoff_max}"
            )
        self.startup_timeout = startup_timeout
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not secrets
        self._fingerprint: tuple[bytes, ...] | None = None
        self._last_problem = "no answer yet"

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based): half to all of the step."""
        step = min(self.backoff_max, BACKOFF_INITIAL * 2 ** min(attempt, 62))
        return self._rng.uniform(step / 2, step)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Follow the Workload API until cancelled. ``started()`` after the first identity.

        Raises `WorkloadApiError` on InvalidArgument (never retried, W-3), or when no
        identity arrived within `startup_timeout`.
        """
        startup = trio.CancelScope(deadline=trio.current_time() + self.startup_timeout)
        announced = False
        self._last_problem = "no answer yet"

        def first_identity() -> None:  # called for every good message; acts on the first
            nonlocal announced
            if not announced:
                announced = True
                startup.deadline = math.inf
                task_status.started()

        with startup:
            await self._follow(first_identity)
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled from outside: not our error
        raise WorkloadApiError(
            f"no identity from the Workload API at {self.address} within"
            f" {self.startup_timeout:g}s (last: {self._last_problem})"
        )

    async def _follow(self, first_identity: Callable[[], None]) -> NoReturn:
        attempt = 0
        while True:
            opened = trio.current_time()
            status, good = await self._attempt(first_identity)
            if good and trio.current_time() - opened >= _STABLE_STREAM:
                attempt = 0  # a stream that worked: the next failure starts the backoff over
            if status is not None and status[0] == "INVALID_ARGUMENT":
                raise WorkloadApiError(
                    f"the Workload API at {self.address} answered InvalidArgument"
                    f" ({status[1] or 'no details'}); not retrying (W-3)"
                )
            problem = "the stream ended" if status is None else f"{status[0]}: {status[1]}"
            self._last_problem = problem
            delay = self.backoff(attempt)
            attempt += 1
            event(
                logger,
                logging.WARNING,
                "workload API stream ended, reconnecting",
                address=self.address,
                delay=f"{delay:.2f}s",
                error=problem,
            )
            await trio.sleep(delay)

    async def _attempt(
        self, first_identity: Callable[[], None]
    ) -> tuple[tuple[str, str] | None, bool]:
        """One stream, until it ends. Returns how it ended and whether a good message came."""
        send, receive = trio.open_memory_channel[_Item](1)
        done = trio.Event()
        good = False
        channel, call = _open_stream(self._target)
        try:
            thread = threading.Thread(
                target=_read_stream,
                args=(call, send, trio.lowlevel.current_trio_token(), done, self.spiffe_id),
                name=f"meshtls-workload-api {self.address}",
                daemon=True,
            )
            thread.start()
            try:
                async with receive:
                    async for item in receive:
                        if isinstance(item, _Ended):
                            return item.status, good
                        if isinstance(item, _Invalid):
                            self._reject(item)
                        elif self._receive(item):
                            good = True
                            first_identity()
                return ("INTERNAL", "the reader thread stopped"), good  # it always sends _Ended
            finally:
                call.cancel()  # wakes the thread if it is blocked in next()
                with trio.CancelScope(shield=True), trio.move_on_after(_JOIN_TIMEOUT):
                    await done.wait()
                if done.is_set():
                    thread.join()  # it has returned or is returning: ~no wait
                else:  # pragma: no cover - grpc ignored the cancel
                    event(logger, logging.ERROR, "workload API reader thread did not stop")
        finally:
            channel.close()

    def _receive(self, item: _Message) -> bool:
        """Publish what `item` brings that is new. True once there is an identity."""
        if item.fingerprint == self._fingerprint:
            return self._cell.latest() is not None  # the same state again
        self._fingerprint = item.fingerprint
        if item.bad_crls is not None:  # counted once per new state; the rest stands
            event(
                logger,
                logging.WARNING,
                "workload API CRLs left out, the rest of the update stands",
                reason="malformed_certificate",
                detail=item.bad_crls,
            )
            if self.on_invalid is not None:
                self.on_invalid("malformed_certificate", item.bad_crls)
        current = self._cell.latest()
        if isinstance(item.svid, _Invalid):
            self._reject(item.svid)
            if current is None:
                return False
            if item.bundles == current.bundles and item.crls == current.crls:
                return True
            # The bundle (B-7) and CRL changes stand beside the refused SVID.
            identity = Identity(current.svid, item.bundles, item.crls)
        else:
            identity = Identity(item.svid, item.bundles, item.crls)
        self._cell.publish(identity)
        event(
            logger,
            logging.INFO,
            "workload API identity published",
            spiffe_id=identity.svid.spiffe_id,
            svid="kept" if current is not None and identity.svid is current.svid else "new",
            trust_domains=[str(td) for td in identity.bundles],
            crls=len(identity.crls),
        )
        return True

    def _reject(self, item: _Invalid) -> None:
        self._last_problem = f"rejected message: {item.reason}: {item.detail}"
        self._refuse("workload API update", item.reason, item.detail)

    def __repr__(self) -> str:
        return f"WorkloadApiSource({self.address!r})"
