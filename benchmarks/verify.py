"""Microseconds per `verify_svid` call, against bare cryptography path validation.

Both run in the same process and are interleaved round by round, so machine noise
hits both alike; the report is the median over rounds and the ratio of medians, and the
ratio of the fastest rounds (less sensitive to other work on a shared machine).
The baseline is the least that validating a SPIFFE chain with pyca/cryptography
costs: a prebuilt store, a verifier built per call (the time is per call), and
`verify`. It does none of the SPIFFE rules.

It also reports the handshake path: `verify_handshake_chain` on the chain OpenSSL
would hand over (leaf, intermediates, root as DER), with the facts of each certificate
cached by DER as they are after a peer's first handshake. It has no baseline: it is the
cost meshtls adds to every handshake after OpenSSL's own checks.

    python benchmarks/verify.py [--rounds 30] [--calls 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification

import meshtls
from meshtls._svid import verify_handshake_chain
from meshtls.testing import CA

T = datetime(2030, 1, 1, tzinfo=UTC)
TARGET_RATIO = 1.5
POLICY = meshtls.ValidationPolicy()


def bare_validator(root: x509.Certificate) -> Callable[[Sequence[x509.Certificate]], None]:
    store = verification.Store([root])
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )
    ee_policy = verification.ExtensionPolicy.permit_all()

    def validate(chain: Sequence[x509.Certificate]) -> None:
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .time(T)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        verifier.verify(chain[0], list(chain[1:]))

    return validate


def per_call_us(function: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls / 1000


def measure(rounds: int, calls: int) -> list[dict[str, object]]:
    ca = CA("example.org", now=T)
    bundles = ca.bundle_set(CA("other.org", now=T))  # federation: two domains in the set
    bare = bare_validator(ca.certificate)
    results: list[dict[str, object]] = []
    for label, chain in (
        ("1-certificate chain (leaf <- root)", ca.issue().chain),
        ("2-certificate chain (leaf <- intermediate <- root)", ca.intermediate().issue().chain),
    ):
        meshtls.verify_svid(chain, bundles, now=T)  # warm up, and prove it verifies
        bare(chain)
        ders = [c.public_bytes(Encoding.DER) for c in (*chain, ca.certificate)]

        def handshake(d: list[bytes] = ders) -> object:
            return verify_handshake_chain(d, bundles, policy=POLICY, now=T, role="client")

        handshake()
        bare_us: list[float] = []
        mesh_us: list[float] = []
        handshake_us: list[float] = []
        for _ in range(rounds):
            bare_us.append(per_call_us(lambda c=chain: bare(c), calls))  # type: ignore[misc]
            mesh_us.append(
                per_call_us(lambda c=chain: meshtls.verify_svid(c, bundles, now=T), calls)  # type: ignore[misc]
            )
            handshake_us.append(per_call_us(handshake, calls))
        bare_median = statistics.median(bare_us)
        mesh_median = statistics.median(mesh_us)
        results.append(
            {
                "case": label,
                "certificates_sent": len(chain),
                "bare_cryptography_us": round(bare_median, 1),
                "verify_svid_us": round(mesh_median, 1),
                "ratio": round(mesh_median / bare_median, 3),
                "ratio_of_fastest_rounds": round(min(mesh_us) / min(bare_us), 3),
                "verify_handshake_chain_us": round(statistics.median(handshake_us), 1),
                "rounds": rounds,
                "calls_per_round": calls,
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = measure(args.rounds, args.calls)
    print(
        f"{'case':52s} {'bare us':>9s} {'meshtls us':>11s} {'ratio':>6s} {'fastest':>8s}"
        f" {'handshake us':>13s}"
    )
    for row in results:
        print(
            f"{row['case']:52s} {row['bare_cryptography_us']:>9} {row['verify_svid_us']:>11}"
            f" {row['ratio']:>6} {row['ratio_of_fastest_rounds']:>8}"
            f" {row['verify_handshake_chain_us']:>13}"
        )
    print(
        f"target: ratio <= {TARGET_RATIO}"
        f" (python {sys.version.split()[0]}, cryptography {cryptography.__version__})"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"python": sys.version, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
