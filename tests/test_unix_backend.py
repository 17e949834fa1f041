"""``[[expose]] backend = "unix:PATH"``: plaintext out to a Unix socket, as ghostunnel's
``unix:`` targets (issue 8 §3: a Unix socket, like loopback, needs no ``unsafe_target``).

The backend is a real Unix-domain socket server in the test's directory; the peer is a
real meshtls client through a real expose on 127.0.0.1:0.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio

import meshtls
from meshtls._config import ExposeSettings, parse_config, with_flag_tunnels
from meshtls._tunnel import expose

from .meshnet import Mesh

CLIENT: Final = "spiffe://example.org/client"
SERVER: Final = "spiffe://example.org/server"


@asynccontextmanager
async def unix_echo(path: Path) -> AsyncIterator[list[bytes]]:
    """An echo server on the Unix socket `path`; yields what each connection sent."""
    seen: list[bytes] = []
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()

    async def echo(stream: trio.SocketStream) -> None:
        got = b""
        async with stream:
            while data := await stream.receive_some():
                got += data
                await stream.send_all(data)
        seen.append(got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [trio.SocketListener(sock)])
        yield seen
        nursery.cancel_scope.cancel()


def files(directory: Path) -> Path:
    """The identity files the config names (loading checks they exist); `directory`."""
    for name in ("n.pem", "n.key", "b.pem"):
        (directory / name).write_text("not read at load")
    return directory


def config_text(backend: str) -> str:
    return f"""
[identity]
cert = "n.pem"
key = "n.key"
bundle = "b.pem"

[[expose]]
listen = "127.0.0.1:0"
backend = "{backend}"
"""


@pytest.mark.parametrize("written", ["unix:app.sock", "unix:{dir}/app.sock"])
def test_a_unix_backend_is_read_as_a_path_and_needs_no_unsafe_target(
    tmp_path: Path, written: str
) -> None:
    """Relative to the config's directory, like every path; no ``unsafe_target``: the
    plaintext never leaves the machine."""
    config = parse_config(config_text(written.format(dir=tmp_path)), base_dir=files(tmp_path))
    (item,) = config.expose
    assert item.backend == tmp_path / "app.sock"
    assert not item.unsafe_target


@pytest.mark.parametrize(("written", "part"), [("unix:", "empty"), ("unix:a\\u0000b", "NUL")])
def test_a_bad_unix_backend_is_one_line_naming_the_key(
    tmp_path: Path, written: str, part: str
) -> None:
    with pytest.raises(meshtls.ConfigError, match=r"\[\[expose\]\] #1 backend") as caught:
        parse_config(config_text(written), base_dir=files(tmp_path))
    assert part in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_unix_backend_from_the_flags(tmp_path: Path) -> None:
    config = parse_config(config_text("127.0.0.1:9000"), base_dir=files(tmp_path))
    flagged = with_flag_tunnels(config, [("--expose", f"127.0.0.1:0=unix:{tmp_path}/f.sock")])
    assert flagged.expose[-1].backend == tmp_path / "f.sock"
    assert ExposeSettings(listen=("127.0.0.1", 0), backend=tmp_path / "x").backend == tmp_path / "x"


async def test_an_expose_passes_a_verified_peer_to_a_unix_backend(tmp_path: Path) -> None:
    mesh = Mesh()
    path = tmp_path / "app.sock"
    async with unix_echo(path) as seen, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                path,
                source=mesh.server,
                authorize=meshtls.authorize_id(CLIENT),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_id(SERVER)
            )
            async with stream:
                await stream.send_all(b"over the mesh, into a unix socket")
                await stream.send_eof()
                got = b""
                while data := await stream.receive_some():
                    got += data
        assert got == b"over the mesh, into a unix socket"
        with trio.fail_after(10):
            while not seen:  # noqa: ASYNC110 - the backend's task records it
                await trio.sleep(0.01)
        assert seen == [b"over the mesh, into a unix socket"]
        nursery.cancel_scope.cancel()


async def test_a_missing_unix_backend_resets_the_peer(tmp_path: Path) -> None:
    """No socket at the path: the peer's stream breaks, never reads as a clean end."""
    mesh = Mesh()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                expose,
                ("127.0.0.1", 0),
                tmp_path / "nobody.sock",
                source=mesh.server,
                authorize=meshtls.authorize_id(CLIENT),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            stream = await meshtls.connect(
                "127.0.0.1", port, source=mesh.client, authorize=meshtls.authorize_id(SERVER)
            )
            async with stream:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
        nursery.cancel_scope.cancel()
