"""``GET /crl.pem`` on a node's metrics address: the local CA's CRL, read at each request.

Real nodes on 127.0.0.1 port 0, real HTTP (httpx); the CRL is the one ``LocalCA.revoke``
(what ``meshtls ca revoke`` runs) writes, and it must pass `judge_crl` against that CA.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from prometheus_client import CollectorRegistry

from meshtls._ca import LocalCA
from meshtls._config import parse_config
from meshtls._crl import judge_crl, load_crl
from meshtls._metrics import serve_http
from meshtls._node import Node, open_node
from meshtls._spiffeid import SpiffeId
from meshtls._status import Readiness
from meshtls.testing import CA

SKEW = timedelta(seconds=30)


def local_ca_toml() -> str:
    return """
[identity]
local_ca = "ca"
spiffe_id = "spiffe://example.org/node"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
"""


def metrics_url(node: Node, path: str) -> str:
    (listener, *_) = node.listeners["metrics"]
    return f"http://127.0.0.1:{listener.socket.getsockname()[1]}{path}"


async def test_P_4_node_serves_the_local_ca_crl(tmp_path: Path) -> None:
    config = parse_config(local_ca_toml(), base_dir=tmp_path)
    async with open_node(config) as node, httpx.AsyncClient() as client:
        url = metrics_url(node, "/crl.pem")
        assert (await client.get(url)).status_code == 404  # nothing revoked yet: no CRL

        ca = LocalCA.open(tmp_path / "ca")  # the node created it
        ours = node.identity().svid.leaf.serial_number
        ca.revoke(ours)
        response = await client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-pem-file"
        assert response.content == (tmp_path / "ca" / "crl.pem").read_bytes()
        now = datetime.now(UTC)
        judged = judge_crl(load_crl(response.content), ca.issuer_certificate, now=now, skew=SKEW)
        assert judged.revoked == {ours}

        other = ca.issue(SpiffeId.parse("spiffe://example.org/other")).leaf.serial_number
        ca.revoke(other)  # re-read at each request: the new CRL at once
        judged = judge_crl(
            load_crl((await client.get(url)).content), ca.issuer_certificate, now=now, skew=SKEW
        )
        assert judged.revoked == {ours, other}

        head = await client.head(url)
        assert head.status_code == 200
        assert head.content == b""
        assert (await client.post(url)).status_code == 405
        assert (await client.get(metrics_url(node, "/crl.der"))).status_code == 404


async def test_P_4_node_without_a_local_ca_has_no_crl(tmp_path: Path) -> None:
    ca = CA("example.org", now=datetime.now(UTC))
    issued = ca.issue("spiffe://example.org/node")
    (tmp_path / "node.pem").write_bytes(issued.chain_pem)
    (tmp_path / "node.key").write_bytes(issued.key_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    (tmp_path / "crl.pem").write_bytes(b"not served: no local CA here")
    text = """
[identity]
cert = "node.pem"
key = "node.key"
bundle = "bundle.pem"

[node]
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
"""
    config = parse_config(text, base_dir=tmp_path)
    async with open_node(config) as node, httpx.AsyncClient() as client:
        assert (await client.get(metrics_url(node, "/crl.pem"))).status_code == 404
        assert (await client.get(metrics_url(node, "/healthz"))).status_code == 200


async def test_a_file_reader_that_fails_is_a_500_and_serving_goes_on() -> None:
    def broken() -> bytes | None:
        raise PermissionError("crl.pem: permission denied")

    serve = functools.partial(
        serve_http,
        CollectorRegistry(),
        "127.0.0.1",
        0,
        ready=lambda: Readiness(True, None),
        files={"/broken.pem": broken, "/x.crl": lambda: b"\x30\x00"},
    )
    async with trio.open_nursery() as nursery:
        (listener, *_) = await nursery.start(serve)
        base = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/broken.pem")).status_code == 500
            served = await client.get(f"{base}/x.crl")
            assert served.status_code == 200
            assert served.headers["content-type"] == "application/pkix-crl"
            assert (await client.get(f"{base}/healthz")).status_code == 200
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["crl.pem", "/metrics", "/a?b"])
async def test_a_file_path_that_is_not_its_own_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="files"):
        await serve_http(
            CollectorRegistry(),
            "127.0.0.1",
            0,
            ready=lambda: Readiness(True, None),
            files={path: lambda: None},
        )


async def test_P_4_a_leafs_crl_url_leads_to_the_node_that_serves_its_crl(tmp_path: Path) -> None:
    """``ca init --crl-url`` naming a node's /crl.pem: a client following the leaf's CRL
    distribution point gets a CRL that the CA signed and that lists the revoked leaf."""
    config = parse_config(local_ca_toml(), base_dir=tmp_path)
    async with open_node(config) as node, httpx.AsyncClient() as client:
        url = metrics_url(node, "/crl.pem")
        # The node made its CA; made again (forced) as `ca init --crl-url URL` would, so
        # that its leaves point at this node.
        td = LocalCA.open(tmp_path / "ca").trust_domain
        ca = LocalCA.init(tmp_path / "ca", td, crl_url=url, force=True)
        leaf = ca.issue(SpiffeId.parse("spiffe://example.org/web")).leaf
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        (named,) = [str(name.value) for point in points for name in point.full_name or ()]
        assert named == url
        ca.revoke(leaf.serial_number)
        response = await client.get(named)
        assert response.status_code == 200
        now = datetime.now(UTC)
        judged = judge_crl(load_crl(response.content), ca.issuer_certificate, now=now, skew=SKEW)
        assert judged.status(leaf.serial_number) == "revoked"
