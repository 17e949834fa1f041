"""Fast byte-edit fuzzing of every way into the verifier; the long run of test_verify.py's
DER-mutation property.

Each input sets one to eight random bytes of one certificate of a good chain (and cuts its
tail a third of the time). Unlike the Hypothesis targets of benchmarks/fuzz.py, whose edits
(inserts, deletes, copies) mostly break the DER before the verifier sees it, plain byte
edits keep its structure, so far more inputs reach the verifier's rules: this is the loop
that found the warnings a peer's negative serial and a bad countryName used to raise.

The judging is `fuzz.check_verify`, the one definition of what the verifier may do: run
`verify_svid` and the handshake's two entries, let only `VerificationError` leave, warn
never, and accept nothing `fuzz._check_accepted` calls a forgery or a broken rule.

    python benchmarks/fuzz_verify.py [--inputs 20000] [--seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

if not __package__:  # run as a script: make the repository's `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fuzz import check_verify, der, material
from meshtls._boundary import describe_error


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    if rng.random() < 0.3:
        del out[-rng.randint(1, 40) :]
    return bytes(out)


def run(inputs: int, seed: int) -> dict[str, object]:
    """`inputs` damaged chains from `seed`: how `verify_svid` judged them, and the findings
    (anything `check_verify` raises: a foreign exception, a warning, a broken property)."""
    rng = random.Random(seed)
    chains = [issued.chain for issued in material().leaves]
    outcomes: Counter[str] = Counter()
    findings: list[str] = []
    started = time.perf_counter()
    for _ in range(inputs):
        chain = list(rng.choice(chains))
        index = rng.randrange(len(chain))
        damaged = mutate(der(chain[index]), rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cryptography's own view of the input
                chain[index] = x509.load_der_x509_certificate(damaged)
        except Exception:  # cryptography refused the damaged bytes (ValueError, InvalidVersion)
            outcomes["not parsed by cryptography"] += 1
            continue
        try:
            outcomes[check_verify((chain, False))] += 1
        except Exception as exc:
            findings.append(f"#{index} {describe_error(exc)}: {damaged.hex()}")
    return {
        "inputs": inputs,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "outcomes": dict(outcomes),
        "findings": findings,
    }


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
