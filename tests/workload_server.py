"""A SPIFFE Workload API server for tests: real gRPC, py-spiffe's generated protobufs.

It speaks ``FetchX509SVID`` (a server stream) on a Unix socket, in grpc's own threads, and
the tests drive it from Trio without blocking for long: every method here returns at once
or after a grpc start/stop.

Like the SPIRE agent, it answers a call without the ``workload.spiffe.io: true`` metadata
with InvalidArgument (W-1), sends the current state when a stream opens, and pushes every
new state to every open stream (each message is the full state, W-4). Knobs:

- `fail_next(code, ...)`: the next calls fail with these status codes, one each;
- `fail_always`: every call fails with this code (None: off);
- `end_streams()`: the open streams end with OK, as when the agent restarts;
- `calls` / `metadata`: how many ``FetchX509SVID`` calls came, and each one's metadata.

`x509_response` builds a message from `meshtls.testing` certificates (and DER CRLs, the
message's ``crl`` field; `signed_crl` makes one). `logged(fragment)`
gives a Trio event for a line the client logs (such as its first reconnect), so a test
waits for what happened rather than for some real time.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import grpc  # type: ignore[import-untyped]
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe._proto import workload_pb2, workload_pb2_grpc

from meshtls.testing import CA, IssuedCertificate

HEADER: tuple[str, str] = ("workload.spiffe.io", "true")

_Item = workload_pb2.X509SVIDResponse | None  # None: end this stream with OK


class _Context(Protocol):
    """The part of grpc.ServicerContext this server uses (grpc ships no types)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]: ...

    def add_callback(self, callback: object) -> bool: ...

    def abort(self, code: object, details: str) -> None: ...


@contextmanager
def logged(fragment: str) -> Iterator[trio.Event]:
    """A Trio event, set when meshtls logs a line holding `fragment` (in Trio's thread)."""
    event = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                event.set()

    watch = Watch(logging.WARNING)
    logger = logging.getLogger("meshtls")
    logger.addHandler(watch)
    try:
        yield event
    finally:
        logger.removeHandler(watch)


def der(certificates: Iterable[x509.Certificate]) -> bytes:
    """Certificates as the Workload API carries them: DER, concatenated."""
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certificates)


def svid_message(
    issued: IssuedCertificate,
    bundle: Iterable[x509.Certificate],
    *,
    spiffe_id: str | None = None,
    key: bytes | None = None,
) -> workload_pb2.X509SVID:
    """One X509SVID entry; `spiffe_id` defaults to the leaf's URI SAN, `key` to its PKCS#8 DER."""
    if spiffe_id is None:
        san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        spiffe_id = san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]
    if key is None:
        key = issued.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return workload_pb2.X509SVID(
        spiffe_id=spiffe_id, x509_svid=der(issued.chain), x509_svid_key=key, bundle=der(bundle)
    )


def x509_response(
    svids: Sequence[workload_pb2.X509SVID],
    federated: Mapping[str, Iterable[x509.Certificate]] | None = None,
    crls: Sequence[bytes] = (),
) -> workload_pb2.X509SVIDResponse:
    """A full-state message: these SVIDs, federated bundles keyed ``spiffe://td``, DER CRLs."""
    return workload_pb2.X509SVIDResponse(
        svids=svids,
        federated_bundles={td: der(roots) for td, roots in (federated or {}).items()},
        crl=list(crls),
    )


def signed_crl(ca: CA, revoked: Iterable[int], *, now: datetime) -> bytes:
    """A DER CRL `ca` signs at `now` (next update a day later), listing the `revoked` serials."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def simple_response(
    ca: CA, issued: IssuedCertificate, *federated: CA
) -> workload_pb2.X509SVIDResponse:
    """One SVID with its own CA's root as bundle, and each of `federated`'s root."""
    return x509_response(
        [svid_message(issued, [ca.root.certificate])],
        {f"spiffe://{f.trust_domain}": [f.root.certificate] for f in federated},
    )


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, server: WorkloadApiServer) -> None:
        self._server = server

    def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: _Context
    ) -> Iterator[workload_pb2.X509SVIDResponse]:
        return self._server._stream(context)


class WorkloadApiServer:
    """A Workload API on ``unix://<path>``. `start` and `stop` may be called more than once."""

    def __init__(self, path: Path, state: workload_pb2.X509SVIDResponse | None = None) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self.fail_always: grpc.StatusCode | None = None
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._state = state
        self._failures: collections.deque[grpc.StatusCode] = collections.deque()
        self._streams: set[queue.SimpleQueue[_Item]] = set()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.metadata)

    def start(self) -> None:
        assert self._server is None, "already started"
        self._executor = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="wl-server")
        server = grpc.server(self._executor)
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop at once: open streams end with CANCELLED, the socket goes away, threads end."""
        server, executor = self._server, self._executor
        self._server = self._executor = None
        if server is None or executor is None:
            return
        self.end_streams()
        server.stop(grace=None).wait()
        executor.shutdown(wait=True)

    def __enter__(self) -> WorkloadApiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def push(self, state: workload_pb2.X509SVIDResponse) -> None:
        """Make `state` current and send it on every open stream (rotation, bundle updates)."""
        with self._lock:
            self._state = state
            streams = list(self._streams)
        for stream in streams:
            stream.put(state)

    def fail_next(self, *codes: grpc.StatusCode) -> None:
        with self._lock:
            self._failures.extend(codes)

    def end_streams(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.put(None)

    def _stream(self, context: _Context) -> Iterator[workload_pb2.X509SVIDResponse]:
        metadata = {
            k: v if isinstance(v, str) else v.decode() for k, v in context.invocation_metadata()
        }
        with self._lock:
            self.metadata.append(metadata)
            failure = self._failures.popleft() if self._failures else self.fail_always
        if metadata.get(HEADER[0]) != HEADER[1]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        if failure is not None:
            context.abort(failure, f"test server fails this call with {failure.name}")
        items: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        context.add_callback(lambda: items.put(None))  # the client went away, or stop()
        with self._lock:  # the current state first, then every push, in order
            self._streams.add(items)
            if self._state is not None:
                items.put(self._state)
        try:
            while (item := items.get()) is not None:
                yield item
        finally:
            with self._lock:
                self._streams.discard(items)
