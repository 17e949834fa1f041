"""tlsfuzzer against a meshtls server and against ``openssl s_server -verify -www``.

    python benchmarks/tlsfuzzer_compare.py --tlsfuzzer DIR --python PY [--script NAME ...]

tlsfuzzer (github.com/tlsfuzzer/tlsfuzzer) is not on PyPI: ``--tlsfuzzer`` is a checkout
of it, and ``--python`` an interpreter with the tlslite-ng and ecdsa versions its
requirements.txt names. Nothing of tlsfuzzer is part of meshtls; this file only runs it.

Both servers get the same identities from meshtls's test CA (RSA-2048, as tlsfuzzer's
TLS 1.3 scripts offer RSA-PSS only) and require TLS 1.3; meshtls always requires a
client certificate, s_server asks for one (``-verify 1``). The scripts that take a
client certificate (``-k``/``-c``) get one of the type they need. The others
(keyupdate, record-layer limits, zero content type, empty alert, CCS, ...) were written
for servers that ask for none, so each runs through benchmarks/tlsfuzzer_adapt.py,
which gives every TLS 1.3 conversation a client certificate. The same adapted
conversations go to both servers.

Prints, per script, the PASS and FAIL counts against each server, then exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import trio

import meshtls
from meshtls.testing import CA, IssuedCertificate, KeyType

SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/tlsfuzzer"

#: Scripts written for servers that ask no client certificate: adapted in the child.
ADAPTED = [
    "test-tls13-keyupdate.py",
    "test-tls13-record-layer-limits.py",
    "test-tls13-zero-content-type.py",
    "test-tls13-empty-alert.py",
    "test-tls13-ccs.py",
    "test-tls13-multiple-ccs-messages.py",
    "test-tls13-unencrypted-alert.py",
    "test-tls13-zero-length-data.py",
    "test-tls13-record-padding.py",
    "test-tls13-finished.py",
]
#: Scripts with their own client-certificate options, and the key type each needs.
WITH_CERTIFICATE: dict[str, KeyType] = {
    "test-tls13-certificate-request.py": "rsa-2048",
    "test-tls13-certificate-verify.py": "rsa-2048",
    "test-tls13-post-handshake-auth.py": "rsa-2048",
    "test-tls13-client-certificate-compression.py": "rsa-2048",
    "test-tls13-ecdsa-in-certificate-verify.py": "ec-p256",
    "test-tls13-eddsa-in-certificate-verify.py": "ed25519",
}
#: Runs one script with adapted conversations (in tlsfuzzer's interpreter).
ADAPTER = Path(__file__).with_name("tlsfuzzer_adapt.py")
#: Each script's last probe-count lines.
_COUNT = re.compile(r"^(PASS|FAIL|XFAIL|XPASS|SKIP|TOTAL): (\d+)$", re.MULTILINE)


# ---------------------------------------------------------------- the parent


def _write(directory: Path, name: str, issued: IssuedCertificate) -> tuple[Path, Path, Path]:
    """NAME.pem (leaf), NAME.key, NAME-both.pem (chain then key)."""
    leaf = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    both = directory / f"{name}-both.pem"
    leaf.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    both.write_bytes(issued.chain_pem + issued.key_pem)
    return leaf, key, both


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _www(stream: meshtls.MeshStream) -> None:
    """What ``s_server -www`` does: after a whole request head, one response, then close.
    The scripts were written against it: an echo would answer a partial request early."""
    request = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some()
            if not data:
                return
            request += data
        await stream.send_all(b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\nmeshtls\r\n")


@contextlib.asynccontextmanager
async def _servers(ca: CA, directory: Path) -> AsyncIterator[dict[str, int]]:
    """A meshtls server (in this process) and ``openssl s_server -verify 1 -www``."""
    issued = ca.issue(SERVER_ID, key_type="rsa-2048")
    cert, key, _ = _write(directory, "server", issued)
    bundle = directory / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    port = _free_port()
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert)]
    command += ["-key", str(key), "-CAfile", str(bundle), "-verify", "1", "-tls1_3", "-www"]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                meshtls.serve,
                _www,
                0,
                host="127.0.0.1",
                source=meshtls.StaticSource(issued.svid(), ca.bundle_set()),
                authorize=meshtls.authorize_any(),
            )
        )
        s_server = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await trio.sleep(0.5)  # s_server binds; no readiness signal without its output
            yield {"meshtls": listeners[0].socket.getsockname()[1], "s_server": port}
        finally:
            s_server.kill()
            await s_server.wait()
            nursery.cancel_scope.cancel()


async def _run(
    python: str, tlsfuzzer: Path, script: str, port: int, client: tuple[Path, Path, Path]
) -> dict[str, int]:
    """Run one script against 127.0.0.1:`port`; its final counts (empty if it crashed)."""
    cert, key, both = client
    base = ["-h", "127.0.0.1", "-p", str(port)]
    if script in WITH_CERTIFICATE:
        command = [
            python,
            str(tlsfuzzer / "scripts" / script),
            *base,
            "-k",
            str(key),
            "-c",
            str(cert),
        ]
    else:
        command = [python, str(ADAPTER), script, str(both), *base]
    environment = {**os.environ, "PYTHONPATH": str(tlsfuzzer)}
    done = await trio.run_process(
        command, capture_stdout=True, capture_stderr=True, check=False, env=environment
    )
    text = done.stdout.decode(errors="replace")
    return {name: int(count) for name, count in _COUNT.findall(text)}


async def compare(python: str, tlsfuzzer: Path, scripts: list[str]) -> list[str]:
    """One line per script: PASS/FAIL against meshtls, then against s_server."""
    ca = CA("example.org", now=datetime.now(UTC), key_type="rsa-2048")
    lines = [f"{'script':46} {'meshtls pass/fail':>18} {'s_server pass/fail':>19}"]
    with tempfile.TemporaryDirectory(prefix="tlsfuzzer-") as temporary:
        directory = Path(temporary)
        clients = {
            key_type: _write(
                directory, f"client-{key_type}", ca.issue(CLIENT_ID, key_type=key_type)
            )
            for key_type in ("rsa-2048", "ec-p256", "ed25519")
        }
        async with _servers(ca, directory) as ports:
            for script in scripts:
                client = clients[WITH_CERTIFICATE.get(script, "rsa-2048")]
                counts = {
                    name: await _run(python, tlsfuzzer, script, port, client)
                    for name, port in ports.items()
                }
                cells = [
                    f"{c.get('PASS', '?')}/{c.get('FAIL', '?')}"
                    for c in (counts["meshtls"], counts["s_server"])
                ]
                lines.append(f"{script:46} {cells[0]:>18} {cells[1]:>19}")
                print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tlsfuzzer", type=Path, required=True, help="a tlsfuzzer checkout")
    parser.add_argument("--python", required=True, help="python with tlsfuzzer's requirements")
    parser.add_argument("--script", action="append", help="run only these (repeatable)")
    options = parser.parse_args(argv)
    scripts = options.script or [*ADAPTED, *WITH_CERTIFICATE]
    print(f"meshtls from {Path(meshtls.__file__).parent}")
    trio.run(compare, options.python, options.tlsfuzzer, scripts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
