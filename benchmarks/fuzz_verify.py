"""Mutation fuzzing of both verification entry points; the long run of test_verify.py's
DER-mutation property.

Each input damages one certificate of a valid chain (random byte edits, a truncation, or
both) and runs it through three entries:

- `verify_svid`;
- `verify_handshake_chain` with the damaged chain as what OpenSSL verified ("handshake
  verified"). OpenSSL checks signatures there before meshtls sees the chain, so only the
  boundary is checked: no exception but `VerificationError`;
- `verify_handshake_chain` where OpenSSL's chain ends at another trust domain's root and
  the damaged chain is what the peer sent ("handshake search"), so meshtls searches it.

Any exception but `VerificationError` is a finding, and so is an accepted chain whose
damaged certificate has other TBS bytes than the original (a forgery), on the entries that
check signatures. Chains: P-256 leaf, P-256 leaf and intermediate, Ed25519 leaf and
intermediate, RSA-2048 leaf and intermediate.

    python benchmarks/fuzz_verify.py [--inputs 20000] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import meshtls
from meshtls._svid import verify_handshake_chain
from meshtls.testing import CA

T = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = meshtls.ValidationPolicy()


def chains() -> tuple[meshtls.BundleSet, dict[str, tuple[x509.Certificate, ...]]]:
    ca = CA("example.org", now=T)
    ed = CA("ed.example", now=T, key_type="ed25519")
    rsa = CA("rsa.example", now=T, key_type="rsa-2048")
    bundles = ca.bundle_set(ed, rsa)
    return bundles, {
        "p256 leaf": ca.issue().chain,
        "p256 leaf+intermediate": ca.intermediate().issue().chain,
        "ed25519 leaf+intermediate": ed.intermediate(key_type="ed25519")
        .issue(key_type="ed25519")
        .chain,
        "rsa leaf+intermediate": rsa.intermediate(key_type="rsa-2048").issue().chain,
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    if rng.random() < 0.3:
        del out[-rng.randint(1, 40) :]
    return bytes(out)


def run(inputs: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    bundles, targets = chains()
    names = sorted(targets)
    elsewhere = CA("elsewhere.example", now=T).certificate.public_bytes(Encoding.DER)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    findings: list[str] = []
    started = time.perf_counter()
    for _ in range(inputs):
        name = rng.choice(names)
        chain = targets[name]
        index = rng.randrange(len(chain))
        original = chain[index]
        damaged = mutate(original.public_bytes(Encoding.DER), rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_der_x509_certificate(damaged)
        except Exception:
            outcomes["not parsed by cryptography"] += 1
            continue
        mutated = (*chain[:index], cert, *chain[index + 1 :])
        ders = [c.public_bytes(Encoding.DER) for c in mutated]
        own_root = bundles[meshtls.TrustDomain(name_domain(chain))].authorities[0]
        for entry in ("verify_svid", "handshake verified", "handshake search"):
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                outcome = judge(
                    entry,
                    chain=mutated,
                    ders=ders,
                    own_root=own_root,
                    elsewhere=elsewhere,
                    bundles=bundles,
                )
            if warned:
                findings.append(f"{entry} {name} #{index}: warned {warned[0].message}")
            if isinstance(outcome, meshtls.VerificationError):
                outcomes[f"{entry}: refused"] += 1
                reasons[outcome.reason] += 1
            elif isinstance(outcome, str):
                findings.append(f"{entry} {name} #{index}: {outcome}")
            else:
                outcomes[f"{entry}: accepted"] += 1
                forged = cert.tbs_certificate_bytes != original.tbs_certificate_bytes
                if forged and entry != "handshake verified":
                    findings.append(f"{entry} {name} #{index}: FORGERY accepted: {damaged.hex()}")
    return {
        "inputs": inputs,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "outcomes": dict(outcomes),
        "reasons": dict(reasons),
        "findings": findings,
    }


def judge(
    entry: str,
    *,
    chain: tuple[x509.Certificate, ...],
    ders: list[bytes],
    own_root: x509.Certificate,
    elsewhere: bytes,
    bundles: meshtls.BundleSet,
) -> meshtls.VerificationError | str | None:
    """Run one entry point: None when it accepts, its error, or a traceback (a finding)."""
    try:
        if entry == "verify_svid":
            meshtls.verify_svid(chain, bundles, now=T)
        else:
            openssl = (
                [*ders, own_root.public_bytes(Encoding.DER)]
                if entry == "handshake verified"
                else [ders[0], elsewhere]
            )
            verify_handshake_chain(
                openssl, bundles, policy=POLICY, now=T, role="client", sent_chain=lambda: ders
            )
    except meshtls.VerificationError as exc:
        return exc
    except Exception:
        return traceback.format_exc(limit=3)
    return None


def name_domain(chain: Sequence[x509.Certificate]) -> str:
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)[0].split("/")[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    report = run(args.inputs, args.seed)
    print(
        f"{report['inputs']} inputs (seed {report['seed']}) in {report['seconds']} s;"
        f" python {sys.version.split()[0]}"
    )
    for key, count in sorted(report["outcomes"].items()):  # type: ignore[attr-defined]
        print(f"  {key:32s} {count}")
    print("  reasons:", ", ".join(f"{k} {v}" for k, v in sorted(report["reasons"].items())))  # type: ignore[attr-defined]
    findings: list[str] = report["findings"]  # type: ignore[assignment]
    print(f"  findings: {len(findings)}")
    for finding in findings[:10]:
        print("   ", finding)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
