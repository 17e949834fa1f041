"""What ``import meshtls`` costs, against another source tree of meshtls, in one run.

    python benchmarks/import_cost.py --before /tmp/base/src [--runs 15]

Each run is a fresh interpreter that times the statement itself (``time.perf_counter``
around it, so every import it triggers counts, lazy ones included); runs alternate between
the two trees so that machine noise hits both alike. For each tree it prints the best and
median time, the number of modules loaded, and how many of them are grpc, py-spiffe or
protobuf (``google``), for two statements: ``import meshtls`` and ``from meshtls import
open_node`` (what a program that runs a node loads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

STATEMENTS = ("import meshtls", "from meshtls import open_node")
PROBE = (
    "import sys, time; t = time.perf_counter(); {statement}; t = time.perf_counter() - t;"
    " print(t, len(sys.modules),"
    " sum(m.split('.')[0] in ('grpc', 'spiffe', 'google') for m in sys.modules))"
)
HERE = Path(__file__).resolve().parent.parent / "src"


def one(src: Path, statement: str) -> tuple[float, int, int]:
    """(milliseconds, modules, heavy modules) for `statement` with meshtls from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    seconds, modules, heavy = done.stdout.split()
    return float(seconds) * 1000, int(modules), int(heavy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="another tree's src/")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    trees = {"before": args.before, "after": HERE}
    for statement in STATEMENTS:
        results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, src in trees.items():
                results[name].append(one(src, statement))
        print(statement)
        for name, runs in results.items():
            ms = [run[0] for run in runs]
            print(
                f"  {name}: best {min(ms):.0f} ms, median {statistics.median(ms):.0f} ms,"
                f" {runs[0][1]} modules, {runs[0][2]} of them grpc/spiffe/protobuf"
            )


if __name__ == "__main__":
    main()
