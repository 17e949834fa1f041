"""Draw a handshake benchmark's JSON as a PNG: throughput and latency by stack and concurrency.

    python benchmarks/chart.py results.json out.png

Left, handshakes per second (median over rounds; the whisker spans the slowest
and fastest round), grouped by concurrency with one bar per stack. Right, the
p50 (solid) and p99 (pale, behind it) latency of one handshake, on a log scale.
Needs matplotlib (the ``bench`` dependency group), imported only when drawing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

COLOURS: Final = {
    "meshtls": "#d1495b",
    "trio": "#00798c",
    "asyncio": "#edae49",
    "blocking": "#30638e",
    "meshtls-rev": "#8f2d56",
    "pyopenssl-membio": "#66a182",
    "pyopenssl-membio-pq": "#2e4057",
    "spiffe-tls": "#a05195",
}
FALLBACK_COLOUR: Final = "#777777"


@dataclass(frozen=True, slots=True)
class Bar:
    stack: str
    concurrency: int
    rate: float
    slowest: float
    fastest: float
    p50_ms: float
    p99_ms: float


def read_bars(report: dict[str, object]) -> list[Bar]:
    """One `Bar` per stack and concurrency in a `benchmarks/handshake.py --json` report."""
    bars: list[Bar] = []
    for entry in cast(list[dict[str, object]], report["results"]):
        rounds = [r["handshakes_per_second"] for r in cast(list[dict[str, float]], entry["rounds"])]
        latency = cast(dict[str, float], entry["latency_ms"])
        bars.append(
            Bar(
                stack=cast(str, entry["stack"]),
                concurrency=cast(int, entry["concurrency"]),
                rate=cast(float, entry["handshakes_per_second"]),
                slowest=min(rounds),
                fastest=max(rounds),
                p50_ms=latency["p50"],
                p99_ms=latency["p99"],
            )
        )
    return bars


def _title(report: dict[str, object]) -> str:
    env = cast(dict[str, object], report.get("environment", {}))
    options = cast(dict[str, object], report.get("options", {}))
    return (
        "TLS 1.3 mutual-auth handshakes over loopback, ECDSA P-256"
        f" (python {env.get('python', '?')}, {env.get('openssl', '?')},"
        f" {env.get('cpus_usable', env.get('cpu_count', '?'))} cpus;"
        f" {options.get('rounds', '?')} rounds x {options.get('count', '?')})"
    )


def draw(report: dict[str, object], out: Path) -> None:
    """Write the chart of `report` to `out` (PNG). Raises ImportError without matplotlib."""
    # Lazy: only drawing needs matplotlib. The ignores let mypy pass where it is not installed.
    from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    bars = read_bars(report)
    stacks = list(dict.fromkeys(bar.stack for bar in bars))
    levels = sorted({bar.concurrency for bar in bars})
    by_key = {(bar.stack, bar.concurrency): bar for bar in bars}
    width = 0.8 / max(len(stacks), 1)

    figure = Figure(figsize=(12, 5), layout="constrained")
    throughput, latency = figure.subplots(1, 2)
    for index, stack in enumerate(stacks):
        colour = COLOURS.get(stack, FALLBACK_COLOUR)
        positions: list[float] = []
        rates: list[float] = []
        below: list[float] = []
        above: list[float] = []
        p50: list[float] = []
        p99: list[float] = []
        for level_index, level in enumerate(levels):
            bar = by_key.get((stack, level))
            if bar is None:
                continue
            positions.append(level_index - 0.4 + width * (index + 0.5))
            rates.append(bar.rate)
            below.append(bar.rate - bar.slowest)
            above.append(bar.fastest - bar.rate)
            p50.append(bar.p50_ms)
            p99.append(bar.p99_ms)
        throughput.bar(
            positions, rates, width * 0.9, color=colour, label=stack, yerr=[below, above], capsize=3
        )
        latency.bar(positions, p99, width * 0.9, color=colour, alpha=0.35)
        latency.bar(positions, p50, width * 0.9, color=colour, label=stack)
    for axes in (throughput, latency):
        axes.set_xticks(range(len(levels)), [f"concurrency {level}" for level in levels])
        axes.grid(axis="y", alpha=0.3)
        axes.set_axisbelow(True)
    throughput.set_ylabel("handshakes per second (median of rounds; whiskers: min-max)")
    throughput.set_title("throughput: higher is better")
    throughput.legend()
    latency.set_yscale("log")
    latency.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    latency.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}"))
    latency.yaxis.set_minor_formatter(ticker.NullFormatter())
    latency.set_ylabel("latency of one handshake, ms (log scale)")
    latency.set_title("latency: p50 solid, p99 pale; lower is better")
    latency.legend()
    figure.suptitle(_title(report), fontsize="medium")
    figure.savefig(out, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON from benchmarks/handshake.py --json")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        report = cast(dict[str, object], json.loads(args.results.read_text()))
        draw(report, args.out)
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("matplotlib"):
            raise
        print(
            "chart.py needs matplotlib: pip install matplotlib (the 'bench' dependency group)",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"chart.py: cannot chart {args.results}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
