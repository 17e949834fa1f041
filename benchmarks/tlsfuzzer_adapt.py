"""Run one tlsfuzzer script with a client certificate in every TLS 1.3 conversation.

    PYTHONPATH=TLSFUZZER python benchmarks/tlsfuzzer_adapt.py SCRIPT CHAIN_AND_KEY.pem ARGS...

Used by benchmarks/tlsfuzzer_compare.py, in an interpreter that has tlsfuzzer's
requirements (tlslite-ng, ecdsa) and not meshtls's. Many of tlsfuzzer's TLS 1.3 scripts
were written for servers that ask for no client certificate; against a server that
requires one (meshtls always does) they would stop at the handshake. So before each
conversation runs, this inserts an ExpectCertificateRequest after the server's
EncryptedExtensions, and Certificate + CertificateVerify (from CHAIN_AND_KEY.pem) at the
start of the client's second flight. Probes are otherwise untouched.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Protocol, cast

from tlsfuzzer import runner  # type: ignore[import-not-found,import-untyped,unused-ignore]
from tlsfuzzer.expect import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
    ExpectCertificateRequest,
    ExpectEncryptedExtensions,
    ExpectFinished,
)
from tlsfuzzer.messages import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
    CertificateGenerator,
    CertificateVerifyGenerator,
    ChangeCipherSpecGenerator,
)
from tlslite.utils.keyfactory import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
    parsePEMKey,
)
from tlslite.x509certchain import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
    X509CertChain,
)


class Node(Protocol):
    """A node of a tlsfuzzer conversation tree (``tlsfuzzer.tree.TreeNode``)."""

    child: Node | None
    next_sibling: Node | None


def adapt(root: Node, chain_pem: str, key_pem: str) -> None:
    """Give every TLS 1.3 conversation under `root` a client certificate, in place.

    ExpectCertificateRequest goes after the server's EncryptedExtensions; Certificate and
    CertificateVerify open the client's second flight, right after the server's Finished
    (and a middlebox-compatibility CCS), so that whatever the probe does to its own
    records (padding, sizes, the Finished itself) still applies to the records it meant.
    The tree may have cycles (optional repeated messages): each node is visited once.
    """
    chain = X509CertChain()
    chain.parsePemList(chain_pem)
    key = parsePEMKey(key_pem, private=True)
    seen: set[int] = set()
    stack: list[tuple[Node | None, bool]] = [(root, False)]
    while stack:
        node, tls13 = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ExpectEncryptedExtensions):
            tls13 = True
            child = node.child
            if child is not None and not isinstance(child, ExpectCertificateRequest):
                request = cast(Node, ExpectCertificateRequest())
                request.child, node.child = child, request
        elif tls13 and isinstance(node, ExpectFinished):
            last = node
            while isinstance(last.child, ChangeCipherSpecGenerator):
                last = last.child
            if last.child is not None and not isinstance(last.child, CertificateGenerator):
                certificate = cast(Node, CertificateGenerator(chain))
                verify = cast(Node, CertificateVerifyGenerator(key))
                certificate.child, verify.child = verify, last.child
                last.child = certificate
                seen.update({id(certificate), id(verify)})
        stack.append((node.next_sibling, tls13))
        stack.append((node.child, tls13))


def run(script: str, pem: str, argv: list[str]) -> None:
    """Run `script` as tlsfuzzer's stub would, with Runner adapting each conversation."""
    text = Path(pem).read_text()
    key_start = text.index("-----BEGIN PRIVATE KEY-----")
    chain_pem, key_pem = text[:key_start], text[key_start:]
    original = runner.Runner.__init__

    def adapted(self: object, conversation: Node) -> None:
        adapt(conversation, chain_pem, key_pem)
        original(self, conversation)

    runner.Runner.__init__ = adapted
    module = "tlsfuzzer._apps." + Path(script).stem.replace("-", "_")
    sys.argv = [script, *argv]
    runpy.run_module(module, run_name="__main__")


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3:])
