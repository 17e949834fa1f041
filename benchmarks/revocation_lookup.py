"""Microseconds per `Revocations.lookup` on a warm cache, against a bare `dict` lookup.

`lookup` runs on every handshake: it names each certificate of the chain by its issuer's
key and serial, looks both up in the revocation cache and counts the verdict. Here the
chain is a leaf and its root (one target), the cache holds a live OCSP answer about it,
and the metrics are a real `NodeMetrics`. The baseline is the least a status lookup can
cost: one `dict` lookup by (issuer key digest, serial), the digest precomputed. Both are
timed with `timeit` in the same run, round by round; the report is the median of rounds
and the ratio of medians.

    python benchmarks/revocation_lookup.py [--rounds 15] [--calls 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from meshtls._metrics import NodeMetrics
from meshtls._prefetch import Revocations
from meshtls._revocation import chain_targets
from meshtls.testing import CA

T = datetime(2030, 1, 1, tzinfo=UTC)


def _per_call_us(call: Callable[[], object], calls: int) -> float:
    return timeit.timeit(call, number=calls) / calls * 1e6


def measure(rounds: int, calls: int) -> dict[str, float]:
    """Median µs per call of `lookup` and of the dict baseline, and their ratio."""
    ca = CA("example.org", now=T)
    chain = (ca.issue("spiffe://example.org/web").leaf, ca.certificate)
    room = Revocations(metrics=NodeMetrics(CollectorRegistry(), clock=lambda: T), clock=lambda: T)
    (target,) = chain_targets(chain)
    room.cache.store_ocsp(
        target.ref, "good", this_update=T, next_update=T + timedelta(hours=1), now=T, origin="x"
    )
    assert room.lookup(chain, T).status == "good"
    table = {(target.ref.issuer_key, target.ref.serial): "good"}
    key = (target.ref.issuer_key, target.ref.serial)

    lookups: list[float] = []
    baselines: list[float] = []
    for _ in range(rounds):
        lookups.append(_per_call_us(lambda: room.lookup(chain, T), calls))
        baselines.append(_per_call_us(lambda: table[key], calls))
    lookup_us = statistics.median(lookups)
    dict_us = statistics.median(baselines)
    return {"lookup_us": lookup_us, "dict_us": dict_us, "ratio": lookup_us / dict_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    report = measure(args.rounds, args.calls)
    print(
        f"Revocations.lookup (2-cert chain, warm cache): {report['lookup_us']:.2f} µs/lookup;"
        f" dict baseline {report['dict_us']:.3f} µs; ratio {report['ratio']:.0f}x"
    )
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
