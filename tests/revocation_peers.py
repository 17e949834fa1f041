"""Real revocation peers for tests: the ``openssl ocsp`` responder and a tiny HTTP file server.

`OcspResponder` runs the real ``openssl ocsp`` on a 127.0.0.1 port, answering for one
issuer from an OpenSSL CA index (`write_index`). `HttpFiles` serves bytes by path on
127.0.0.1:0 (CRLs, or hand-made OCSP responses), and can be put `down` (answers nothing,
closes) or made to `hang` (accepts, never answers). Both are context managers that own
their process or thread and stop it on exit.
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshtls._ca import AnyPrivateKey

OPENSSL: Final = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")


def _when(moment: datetime) -> str:
    return moment.strftime("%y%m%d%H%M%SZ")


@dataclass(frozen=True, slots=True)
class Revoked:
    """A revocation in the index: when, and the OpenSSL reason name (e.g. keyCompromise)."""

    at: datetime
    reason: str | None = None


def write_index(
    path: Path,
    certificates: Iterable[x509.Certificate],
    revoked: Mapping[int, Revoked] = {},
) -> None:
    """An OpenSSL CA index (``index.txt``): a V or R line per certificate, atomically replaced.

    The file is replaced (a new inode), so ``openssl ocsp`` sees that it changed.
    """
    lines = []
    for cert in certificates:
        serial = f"{cert.serial_number:X}"
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        expiry = _when(cert.not_valid_after_utc)
        subject = "/" + "/".join(reversed(cert.subject.rfc4514_string().split(",")))
        mark = revoked.get(cert.serial_number)
        if mark is None:
            lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n")
        else:
            when = _when(mark.at) + (f",{mark.reason}" if mark.reason else "")
            lines.append(f"R\t{expiry}\t{when}\t{serial}\tunknown\t{subject}\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    path.with_name(path.name + ".attr").write_text("unique_subject = no\n")


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago (bind port 0, close)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pem_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class OcspResponder:
    """The real ``openssl ocsp`` answering for `issuer`'s certificates `certificates`.

    Signs with the issuer's key, or with a delegated responder (`signer`, `signer_key`).
    nextUpdate is ``next_update_minutes`` (``-nmin``) or ``next_update_days`` (``-ndays``)
    after thisUpdate. `revoke` rewrites the index and
    restarts the process on the same port, since ``openssl ocsp`` rereads its index only
    after the next request. Owns its process; `stop` ends it, `start` brings it back.
    """

    def __init__(
        self,
        directory: Path,
        issuer: x509.Certificate,
        issuer_key: AnyPrivateKey,
        certificates: Iterable[x509.Certificate],
        *,
        signer: x509.Certificate | None = None,
        signer_key: AnyPrivateKey | None = None,
        next_update_minutes: int = 1,
        next_update_days: int | None = None,
    ) -> None:
        assert OPENSSL is not None
        self.directory = directory
        self.certificates = list(certificates)
        self.revoked: dict[int, Revoked] = {}
        self.index = directory / "index.txt"
        self.issuer_pem = _pem_file(
            directory / "issuer.pem", issuer.public_bytes(serialization.Encoding.PEM)
        )
        signer_cert = signer if signer is not None else issuer
        key = signer_key if signer_key is not None else issuer_key
        self.signer_pem = _pem_file(
            directory / "signer.pem", signer_cert.public_bytes(serialization.Encoding.PEM)
        )
        self.signer_key_pem = _pem_file(
            directory / "signer.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        self.next_update = (
            ["-ndays", str(next_update_days)]
            if next_update_days is not None
            else ["-nmin", str(next_update_minutes)]
        )
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        write_index(self.index, self.certificates, self.revoked)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> OcspResponder:
        for _attempt in range(5):  # a port picked free may be taken before openssl binds it
            self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError("openssl ocsp could not bind a port")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _launch(self) -> bool:
        assert OPENSSL is not None
        command = [
            OPENSSL, "ocsp", "-index", str(self.index), "-port", str(self.port),
            "-rsigner", str(self.signer_pem), "-rkey", str(self.signer_key_pem),
            "-CA", str(self.issuer_pem), *self.next_update,
            "-timeout", "5",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        # Readiness: openssl prints "ACCEPT <addr> PID=..." once it listens. (A probe
        # connection would not do: openssl waits on an empty connection until -timeout.)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 10)
        line = self._process.stdout.readline() if ready else b""
        if line.startswith(b"ACCEPT"):
            return True
        self.stop()
        return False

    def stop(self) -> None:
        """End the responder: its URL then refuses connections."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def start(self) -> None:
        """Run the responder again on the same port."""
        if self._process is None and not self._launch():
            raise RuntimeError(f"openssl ocsp could not bind port {self.port} again")

    def add(self, certificate: x509.Certificate) -> None:
        """Answer for `certificate` too (good until revoked)."""
        self.certificates.append(certificate)
        self._reindex()

    def _reindex(self) -> None:
        write_index(self.index, self.certificates, self.revoked)
        if self._process is not None:
            self.stop()
            self.start()

    def revoke(self, serial: int, *, at: datetime, reason: str | None = None) -> None:
        """Mark `serial` revoked (reason as OpenSSL names it, e.g. ``keyCompromise``); the
        next answer says so."""
        self.revoked[serial] = Revoked(at, reason)
        self._reindex()


@dataclass
class HttpFiles:
    """A tiny HTTP server on 127.0.0.1:0 serving `files` by path, to GET and POST alike.

    ``down``: every connection is closed unanswered. ``hang``: requests are read and never
    answered until the server stops. ``status`` overrides the HTTP status of answers;
    ``refuse_post`` answers every POST 405. A key ending in ``*`` serves
    every path it begins (an OCSP GET puts the request in the path).
    ``requests`` records (method, path, content type) of each request.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    hang: bool = False
    status: int = 200
    refuse_post: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _released: threading.Event = field(default_factory=threading.Event)

    def lookup(self, path: str) -> bytes | None:
        if path in self.files:
            return self.files[path]
        for key, body in self.files.items():
            if key.endswith("*") and path.startswith(key[:-1]):
                return body
        return None

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> HttpFiles:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # silence
                pass

            def _answer(self, method: str) -> None:
                owner.requests.append((method, self.path, self.headers.get("Content-Type")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if owner.down:
                    self.close_connection = True
                    return
                if owner.hang:
                    owner._released.wait()
                    return
                if method == "POST" and owner.refuse_post:
                    body: bytes | None = b""
                    status = 405
                else:
                    body = owner.lookup(self.path)
                    status = owner.status if body is not None else 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def closed_port() -> Iterator[str]:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    yield f"http://127.0.0.1:{free_port()}/"
