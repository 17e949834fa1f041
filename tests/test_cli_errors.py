"""The ``meshtls`` command never shows a traceback (issue 8, §5).

Signals, pipes and the node run the real command as a subprocess (``python -m meshtls``);
the rest goes through `main`, the entry point itself. Every error case asserts its exit
code and exactly one line on stderr in our words: no traceback, no Python repr, no link
to a library's FAQ.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import meshtls
from meshtls._cli import main
from meshtls.testing import CA

from .logfmt import parse_text
from .meshnet import Mesh, start_server

TD: Final = "example.org"
WEB: Final = "spiffe://example.org/web"
WAIT: Final = 15.0  # seconds: the bound on any wait for a child process
FOREIGN: Final = ("Traceback", "cryptography.io", "Error:", "Errno", "b'")


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "meshtls", *map(str, args)]


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without what could change what the node reads, plus `extra`."""
    drop = ("SPIFFE_", "MESHTLS_", "STATE_DIRECTORY", "XDG_STATE_HOME", "PYTHONWARNINGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, *needles: str) -> str:
    """The one stderr line, which starts ``meshtls: error:`` and is in our words."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("meshtls: error: "), line
    for foreign in FOREIGN:
        assert foreign not in line, line
    for needle in needles:
        assert needle in line, line
    return line


def fields(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory: ``ca issue`` writes there by default."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "ca"
    assert run(capsys, "ca", "init", "--trust-domain", TD, "--dir", directory)[0] == 0
    return directory


def issue(capsys: pytest.CaptureFixture[str], ca: Path, *extra: str | Path) -> Path:
    code, out, err = run(capsys, "ca", "issue", WEB, "--dir", ca, *extra)
    assert code == 0, err
    return Path(out.splitlines()[0].removeprefix("wrote "))


# ---------------------------------------------------------------- Ctrl-C and closed pipes


async def test_ctrl_c_in_check_wait_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """SIGINT while `check --wait` waits for the server's verdict: it printed a 46-line
    traceback and died of the signal."""
    mesh = Mesh()
    issued = mesh.ca.issue("spiffe://example.org/client")
    (tmp_path / "c.pem").write_bytes(issued.chain_pem)
    (tmp_path / "c.key").write_bytes(issued.key_pem)
    (tmp_path / "b.pem").write_bytes(mesh.ca.bundle_pem)
    served = trio.Event()

    async def hold(stream: meshtls.MeshStream) -> None:
        served.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, hold, source=mesh.server)
        process = await trio.lowlevel.open_process(
            command(
                "check",
                f"127.0.0.1:{port}",
                "--cert",
                "c.pem",
                "--key",
                "c.key",
                "--bundle",
                "b.pem",
                "--wait",
                "60s",
                "--timeout",
                "60s",
            ),
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            with trio.fail_after(WAIT):
                await served.wait()  # the handshake is done: check is in its --wait
            process.send_signal(signal.SIGINT)
            with trio.fail_after(WAIT):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.stderr is not None
        err = (await process.stderr.receive_some(65536)).decode()
        nursery.cancel_scope.cancel()
    assert code == 130
    assert err == "meshtls: interrupted\n"


def test_ctrl_c_in_bench_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """SIGINT in the middle of `bench`: it printed a traceback and exited 1."""
    with subprocess.Popen(
        command(
            "bench",
            "handshake",
            "--stacks",
            "meshtls",
            "--concurrency",
            "4",
            "--count",
            "20",
            "--rounds",
            "10000",
            "--no-memory",
        ),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        first = process.stderr.readline()  # a round has finished: it is measuring
        assert first.startswith("round 1/10000 meshtls"), first
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 130
    assert err == "meshtls: interrupted\n"
    assert out == ""


def test_inspect_into_a_closed_pipe_exits_141_quietly(ca_dir: Path, tmp_path: Path) -> None:
    """``meshtls inspect ... | head -1``: it said ``[Errno 32] Broken pipe`` and exited 2.
    Now it stops quietly with 141, what `cat` reports when killed by SIGPIPE."""
    cert = ca_dir / "bundle.pem"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write a byte
    try:
        done = subprocess.run(
            command("inspect", cert, "--bundle", cert),
            cwd=tmp_path,
            env=child_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=WAIT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


# ---------------------------------------------------------------- bench's help


def test_bench_help_is_help(capsys: pytest.CaptureFixture[str]) -> None:
    """It was a usage error pointing at itself."""
    code, out, err = run(capsys, "bench", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: meshtls bench ")
    assert "handshake" in out


def test_bench_without_what_to_measure_names_only_that(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said ``the following arguments are required: what, options``: two internal
    names, one of them (the options) not required at all."""
    code, _, err = run(capsys, "bench")
    assert code == 2
    line = one_error(err, "required: {handshake,bulk,mesh,messages}")
    assert "options" not in line


def test_bench_handshake_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """It said ``usage: handshake.py``."""
    code, out, err = run(capsys, "bench", "handshake", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: meshtls bench handshake ")
    assert "handshake.py" not in out
    assert "--count" in out


def test_bench_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """They printed the whole usage first, unlike every other command."""
    code, out, err = run(capsys, "bench", "handshake", "--count", "0")
    assert (code, out) == (2, "")
    one_error(err, "--count", "positive", "see 'meshtls bench handshake --help'")


# ---------------------------------------------------------------- the node's files


async def run_node(cwd: Path, *args: str | Path, **env: str) -> tuple[int, str]:
    """`meshtls node ARGS` that must fail at start: its exit code and its stderr."""
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            command("node", *args),
            cwd=cwd,
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode()


def files_toml(cert: str = "node.pem", key: str = "node.key", bundle: str = "bundle.pem") -> str:
    return (
        f'[identity]\ncert = "{cert}"\nkey = "{key}"\nbundle = "{bundle}"\n'
        '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
    )


FEDERATED: Final = '[identity.federated]\n"other.org" = "{}"\n'
LOCAL_CA: Final = (
    '[identity]\nlocal_ca = "{}"\nspiffe_id = "spiffe://meshtls.local/node"\n'
    '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
)

#: name -> (node.toml, a part of the one error line). A file the config names that is there
#: but malformed is exit 2, like a missing one (test_node_cli.py) and any other config error.
#: These were exit 1.
FILE_ERRORS: Final[dict[str, tuple[str, str]]] = {
    "malformed cert": (files_toml(cert="junk.pem"), "junk.pem"),
    "malformed key": (files_toml(key="junk.pem"), "junk.pem"),
    "malformed bundle": (files_toml(bundle="junk.pem"), "junk.pem"),
    "empty bundle": (files_toml(bundle="empty.pem"), "empty"),
    "malformed federated bundle": (files_toml() + FEDERATED.format("junk.json"), "junk.json"),
    "malformed local CA": (LOCAL_CA.format("badca"), "badca"),
}


@pytest.fixture
def own_logging() -> Iterator[None]:
    """`meshtls node` in-process sends the ``meshtls`` logger to stderr: undo it after."""
    logger = logging.getLogger("meshtls")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.usefixtures("own_logging")
@pytest.mark.parametrize("name", sorted(FILE_ERRORS))
def test_a_malformed_file_named_by_the_config_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    ca = CA(TD, now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node")
    (tmp_path / "node.pem").write_bytes(issued.chain_pem)
    (tmp_path / "node.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "junk.pem").write_text("not PEM at all\n")
    (tmp_path / "junk.json").write_text('{"keys": [{"use": "x509-svid", "kty": "EC"')
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "badca").mkdir()
    (tmp_path / "badca" / "ca.json").write_text("{")
    toml, part = FILE_ERRORS[name]
    (tmp_path / "node.toml").write_text(toml)
    code, _, err = run(capsys, "node", "--config", "node.toml")
    assert code == 2, err
    one_error(err, part)


def test_node_state_dir_that_is_a_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said ``NotADirectoryError: [Errno 20]`` and exited 1."""
    (tmp_path / "state").write_text("a file")
    code, _, err = run(capsys, "node", "--state-dir", "state")
    assert code == 2
    one_error(err, "--state-dir state", "not a directory")


async def test_node_with_a_home_that_does_not_exist_is_one_line_exit_2(tmp_path: Path) -> None:
    """A service user's HOME is often /nonexistent. The node created it (as root can) or
    failed deep inside; now it says what to give instead, and creates nothing."""
    home = tmp_path / "nonexistent"
    code, err = await run_node(tmp_path, HOME=str(home))
    assert code == 2
    one_error(err, str(home), "--state-dir", "STATE_DIRECTORY")
    assert not home.exists()


@pytest.mark.parametrize(
    "flags", [["--state-dir", "st"], ["--listen", "127.0.0.1:0"], ["--metrics", "off"]]
)
def test_node_flags_of_the_embedded_default_are_refused_with_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    (tmp_path / "node.toml").write_text(LOCAL_CA.format("ca"))
    code, _, err = run(capsys, "node", "--config", "node.toml", *flags)
    assert code == 2
    one_error(err, flags[0], "--config", "embedded default")
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(
    ("flags", "part"),
    [
        (["--listen", "127.0.0.1:99999"], "bad port"),
        (["--metrics", "localhost"], "no port"),
        (["--listen", "127.0.0.1:7001", "--metrics", "127.0.0.1:7001"], "both 127.0.0.1:7001"),
    ],
)
def test_node_bad_listen_flags_are_usage_errors(
    capsys: pytest.CaptureFixture[str], flags: list[str], part: str
) -> None:
    code, _, err = run(capsys, "node", "--state-dir", "st", *flags)
    assert code == 2
    one_error(err, part)
    assert not Path("st").exists()


async def test_node_listen_metrics_flags_and_the_client_credential_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``node --listen --metrics`` without a config, and the credential command it logs:
    that exact command gives a client that `check` gets through to the node."""
    process = await trio.lowlevel.open_process(
        command("node", "--state-dir", "st", "--listen", "127.0.0.1:0", "--metrics", "off"),
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[dict[str, object]] = []
    buffer = b""
    try:
        with trio.fail_after(WAIT):
            while not any(line["msg"] == "node ready" for line in lines):
                chunk = await process.stderr.receive_some()
                assert chunk, f"the node stopped: {buffer!r} {lines}"
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [parse_text(line.decode()) for line in complete]
        hint = next(line for line in lines if line["msg"] == "client credential")
        ready = next(line for line in lines if line["msg"] == "node ready")
        listen = ready["listen"]
        assert isinstance(listen, dict)
        assert set(listen) == {"mesh"}  # --metrics off: no metrics listener
        port = str(listen["mesh"]).removeprefix("127.0.0.1:")

        argv = str(hint["command"]).split()
        ca_dir = tmp_path / "st" / "ca"
        assert argv == [
            "meshtls", "ca", "issue", "spiffe://meshtls.local/client", "--dir", str(ca_dir)
        ]  # fmt: skip
        assert run(capsys, *argv[1:])[0] == 0
        then = str(hint["then"]).split()
        assert then[-1] == str(ca_dir / "bundle.pem")
        code = await trio.to_thread.run_sync(
            main, ["check", f"127.0.0.1:{port}", *then, "--wait", "200ms"]
        )
        assert code == 0, capsys.readouterr()
        assert "spiffe_id: spiffe://meshtls.local/node" in capsys.readouterr().out
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(WAIT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------- PEM in our words


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    """One file per way a PEM file goes wrong."""
    ca = CA(TD, now=datetime.now(UTC))
    issued = ca.issue(WEB)
    der = issued.leaf.public_bytes(serialization.Encoding.DER)
    cut = issued.chain_pem[: len(issued.chain_pem) // 2]
    damaged = issued.chain_pem.replace(b"\n", b"\n!!", 1)
    files = {
        "empty": b"",
        "der": der,
        "truncated": cut,
        "damaged": damaged,
        "key": issued.key_pem,
        "cert": issued.chain_pem,
        "text": b"hello\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


CERT_PROBLEMS: Final = {
    "empty": "(it is empty)",
    "der": "(it is DER, not PEM; convert it with: openssl x509 -inform DER",
    "truncated": "(truncated: '-----BEGIN CERTIFICATE-----' has no END line)",
    "damaged": "(damaged: the base64 inside '-----BEGIN CERTIFICATE-----' is broken)",
    "key": "(it holds a private key, not a certificate)",
    "text": "(no '-----BEGIN ...-----' line",
}


@pytest.mark.parametrize("problem", sorted(CERT_PROBLEMS))
def test_pem_certificate_errors_are_in_our_words(
    capsys: pytest.CaptureFixture[str], pems: dict[str, Path], problem: str
) -> None:
    """cryptography's "Unable to load PEM file. See https://cryptography.io/..." showed."""
    code, _, err = run(capsys, "inspect", pems[problem])
    assert code == 2
    one_error(err, f"no readable PEM certificate {CERT_PROBLEMS[problem]}")


KEY_PROBLEMS: Final = {
    "empty": "(it is empty)",
    "der": "(it is DER, not PEM; convert it with: openssl pkey -inform DER",
    "cert": "(it holds a certificate, not a private key)",
    "text": "(no '-----BEGIN ...-----' line",
}


@pytest.mark.parametrize("problem", sorted(KEY_PROBLEMS))
def test_pem_key_errors_are_in_our_words(
    capsys: pytest.CaptureFixture[str], pems: dict[str, Path], problem: str
) -> None:
    code, _, err = run(
        capsys, "check", "127.0.0.1:1", "--cert", pems["cert"], "--key", pems[problem],
        "--bundle", pems["cert"],
    )  # fmt: skip
    assert code == 2
    one_error(err, f"not a readable PEM private key {KEY_PROBLEMS[problem]}")


# ---------------------------------------------------------------- inspect


def spiffe_bundle(ca_dir: Path) -> str:
    """The CA's bundle.pem as a SPIFFE bundle (JWKS)."""
    (root,) = x509.load_pem_x509_certificates((ca_dir / "bundle.pem").read_bytes())
    der = root.public_bytes(serialization.Encoding.DER)
    key = {"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(der).decode()]}
    return json.dumps({"keys": [key], "spiffe_sequence": 1})


def test_inspect_takes_a_spiffe_json_bundle(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, ca_dir)
    (tmp_path / "bundle.json").write_text(spiffe_bundle(ca_dir))
    for spec in ("bundle.json", f"{TD}=bundle.json"):
        code, out, err = run(capsys, "inspect", cert, "--bundle", spec)
        assert (code, err) == (0, ""), spec
        assert fields(out)["verdict"] == "ok", spec

    (tmp_path / "bad.json").write_text('{"keys": 3}')
    code, _, err = run(capsys, "inspect", cert, "--bundle", "bad.json")
    assert code == 2
    one_error(err, "bad.json", "'keys' array")


def test_inspect_reads_stdin_for_dash(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = issue(capsys, ca_dir)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(cert.read_bytes())))
    code, out, err = run(capsys, "inspect", "-", "--bundle", ca_dir / "bundle.pem")
    assert (code, err) == (0, "")
    assert fields(out)["spiffe_id"] == WEB
    assert fields(out)["verdict"] == "ok"

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = run(capsys, "inspect", "-")
    assert code == 2
    one_error(err, "stdin: no readable PEM certificate (it is empty)")


def test_P_3_inspect_notes_a_certificate_expired_but_inside_clock_skew(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, ca_dir)
    (leaf,) = x509.load_pem_x509_certificates(cert.read_bytes())
    bundle = ca_dir / "bundle.pem"
    at = (leaf.not_valid_after_utc + timedelta(seconds=10)).isoformat()
    code, out, _ = run(capsys, "inspect", cert, "--bundle", bundle, "--at", at)
    assert code == 0
    info = fields(out)
    assert info["verdict"] == "ok"
    assert info["note"].startswith("expired 10s ago, accepted only inside clock_skew 30s")

    early = (leaf.not_valid_before_utc - timedelta(seconds=20)).isoformat()
    code, out, _ = run(capsys, "inspect", cert, "--bundle", bundle, "--at", early)
    assert code == 0
    assert fields(out)["note"].startswith("not valid for another 20s, accepted only inside")

    code, out, _ = run(capsys, "inspect", cert, "--bundle", bundle)  # now: valid, no note
    assert code == 0
    assert "note" not in fields(out)


# ---------------------------------------------------------------- check


async def test_check_warns_when_our_cert_is_expired_and_times_no_failed_handshake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = Mesh()
    now = datetime.now(UTC)
    expired = mesh.ca.issue(
        "spiffe://example.org/client",
        not_before=now - timedelta(hours=1),
        ttl=timedelta(minutes=30),
    )
    (tmp_path / "c.pem").write_bytes(expired.chain_pem)
    (tmp_path / "c.key").write_bytes(expired.key_pem)
    (tmp_path / "b.pem").write_bytes(mesh.ca.bundle_pem)
    (tmp_path / "other.pem").write_bytes(CA(TD, now=now).bundle_pem)
    ours = ["--cert", "c.pem", "--key", "c.key"]

    async def nothing(stream: meshtls.MeshStream) -> None:
        pass

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, nothing, source=mesh.server)
        code = await trio.to_thread.run_sync(
            main, ["check", f"127.0.0.1:{port}", *ours, "--bundle", "b.pem"]
        )
        out, err = capsys.readouterr()
        (warning,) = err.splitlines()
        assert warning.startswith("meshtls: warning: --cert c.pem expired 30m")
        assert code == 1
        assert fields(out)["verdict"].startswith("rejected")  # the server said so

        # The server's certificate is not trusted: our handshake failed, so it has no time.
        code = await trio.to_thread.run_sync(
            main, ["check", f"127.0.0.1:{port}", *ours, "--bundle", "other.pem"]
        )
        out, _ = capsys.readouterr()
        assert code == 1
        assert fields(out)["verdict"] == "rejected reason=untrusted_chain"
        assert "handshake" not in fields(out)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- meshtls ca


def test_ca_revoke_refuses_a_serial_this_ca_never_issued(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ca", "revoke", "0x1234", "--dir", ca_dir)
    assert code == 2
    one_error(err, "serial 0x1234 was not issued by the CA", "issued.json")
    assert not (ca_dir / "crl.pem").exists()


def test_ca_revoke_twice_says_already_revoked(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, ca_dir)
    (leaf,) = x509.load_pem_x509_certificates(cert.read_bytes())
    serial = f"{leaf.serial_number:#x}"
    code, out, err = run(capsys, "ca", "revoke", serial, "--dir", ca_dir)
    assert (code, err) == (0, "")
    assert f"revoked serial {serial}" in out
    crl = (ca_dir / "crl.pem").read_bytes()

    for target in (serial, str(cert)):
        code, out, err = run(capsys, "ca", "revoke", target, "--dir", ca_dir)
        assert (code, err) == (0, "")
        assert out.startswith(f"serial {serial} was already revoked at ")
        assert (ca_dir / "crl.pem").read_bytes() == crl  # unchanged, CRL number too


def test_ca_init_force_clears_the_old_crl_and_records(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = issue(capsys, ca_dir)
    assert run(capsys, "ca", "revoke", cert, "--dir", ca_dir)[0] == 0
    assert (ca_dir / "crl.pem").exists()
    code, _, err = run(capsys, "ca", "init", "--trust-domain", TD, "--dir", ca_dir, "--force")
    assert (code, err) == (0, "")
    for name in ("crl.pem", "revoked.json", "issued.json"):
        assert not (ca_dir / name).exists(), name


def test_ca_issue_never_writes_a_leaf_key_beside_the_ca_keys(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issue(capsys, ca_dir)
    assert (tmp_path / "web.key").is_file()
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "bundle.pem", "ca.json", "issued.json", "root.key", "root.pem"
    ]  # fmt: skip
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", ca_dir, "--out", ca_dir / "web")
    assert code == 2
    one_error(err, "beside the CA's keys")
    assert not (ca_dir / "web.key").exists()

    os.chdir(ca_dir)  # the default, from inside the CA directory (the fixture chdirs back)
    code, _, err = run(capsys, "ca", "issue", WEB, "--dir", ".")
    assert code == 2
    one_error(err, "the current directory would put a leaf key beside the CA's keys")
    assert not (ca_dir / "web.key").exists()


# ---------------------------------------------------------------- signals while Python imports


def _signal_while_importing(
    tmp_path: Path, signum: signal.Signals, *args: str
) -> tuple[int | None, str]:
    """Start ``python -v -m meshtls ARGS``, send `signum` once trio is imported (our
    imports then still take a few hundred ms), and return (exit code, stderr without
    the import trace)."""
    with subprocess.Popen(
        [sys.executable, "-v", "-m", "meshtls", *args],
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("import 'trio' "):
                process.send_signal(signum)
                break
        try:
            rest = process.stderr.read()
            process.wait(timeout=WAIT)
        finally:
            process.kill()
    verbose = re.compile(r"^(#|import |\s*$|Python \d|Type \"help\")")
    kept = [line for line in rest.splitlines() if not verbose.match(line)]
    return process.returncode, "\n".join(kept)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_while_the_node_imports_is_a_clean_stop(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """ "Handle them from the first instant": a stop signal that lands while Python is
    still importing meshtls (before any of our code ran) was a KeyboardInterrupt
    traceback, or death by SIGTERM with no line. Now it is held and acted on: exit 0."""
    (tmp_path / "node.toml").write_text(
        '[identity]\nlocal_ca = "ca"\nspiffe_id = "spiffe://meshtls.local/node"\n'
        '[node]\nlisten = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
    )
    code, err = _signal_while_importing(tmp_path, signum, "node", "--config", "node.toml")
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert code == 0, err
    assert f'msg="stopped during start-up" signal={signum.name}' in err, err


def test_ctrl_c_while_a_command_imports_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """The same for any other command: Ctrl-C during the imports is `meshtls: interrupted`."""
    code, err = _signal_while_importing(tmp_path, signal.SIGINT, "inspect", "missing.pem")
    assert (code, err) == (130, "meshtls: interrupted"), err


# ---------------------------------------------------------------- a JSON log pipeline


async def test_node_with_json_logs_says_why_it_stopped_in_json(tmp_path: Path) -> None:
    """``--log-format json`` feeds a pipeline that reads JSON: the line that says why the
    node did not start (a config error, exit 2; a start failure, exit 1) is JSON too, with
    the reason in its own key, not a ``meshtls: error:`` line the pipeline cannot read."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "busy.toml").write_text(
            LOCAL_CA.format("ca").replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        )
        cases = [("missing.toml", 2, "missing.toml"), ("busy.toml", 1, "already in use")]
        for config, exit_code, part in cases:
            code, err = await run_node(tmp_path, "--config", config, "--log-format", "json")
            assert code == exit_code, err
            line = json.loads(err.splitlines()[-1])
            assert (line["level"], line["msg"], line["exit"]) == (
                "error",
                "node could not start",
                exit_code,
            ), line
            assert part in line["error"], line
            for text in err.splitlines():
                json.loads(text)  # every line of the node's stderr is JSON
