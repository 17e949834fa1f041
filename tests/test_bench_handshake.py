"""Smoke tests of benchmarks/handshake.py: every stack runs and the JSON report is whole and sane.

Small counts, so this takes a couple of seconds; the figures themselves are not judged.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshtls import _bench as handshake

STACKS = ["trio", "asyncio", "blocking", "meshtls"]
LEVELS = (1, 4)
COUNT = 10
ROUNDS = 2


def numbers(value: object, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON document with its path; booleans are not numbers here."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{path}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "handshake.json"
    argv = ["--count", str(COUNT), "--rounds", str(ROUNDS), "--concurrency", "1,4"]
    argv += ["--stacks", ",".join(STACKS), "--json", str(out), "--quiet", "--no-memory"]
    assert handshake.main(argv) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_every_stack_and_level_is_measured_without_errors(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, list)
    assert sorted((r["stack"], r["concurrency"]) for r in results) == sorted(
        (stack, level) for stack in STACKS for level in LEVELS
    )
    for entry in results:
        assert entry["errors"] == 0, entry["first_error"]
        assert entry["first_error"] is None
        assert entry["samples"] == COUNT * ROUNDS
        assert [r["handshakes"] for r in entry["rounds"]] == [COUNT] * ROUNDS
        latency = entry["latency_ms"]
        assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        rates = sorted(r["handshakes_per_second"] for r in entry["rounds"])
        assert rates[0] <= entry["handshakes_per_second"] <= rates[-1]


def test_every_number_is_positive_and_finite(report: dict[str, object]) -> None:
    checked = 0
    for path, value in numbers(report):
        if path.endswith(".errors"):
            continue
        assert math.isfinite(value), path
        assert value > 0, path
        checked += 1
    assert checked > 50


def test_environment_and_options_are_recorded(report: dict[str, object]) -> None:
    env = report["environment"]
    assert isinstance(env, dict)
    assert env["python"].count(".") == 2
    assert env["openssl"].startswith(("OpenSSL", "LibreSSL"))
    assert env["cpu_count"] >= 1
    options = report["options"]
    assert isinstance(options, dict)
    assert options["concurrency"] == list(LEVELS)
    assert options["stacks"] == [s for s in handshake.STACKS if s in STACKS]


def test_meshtls_is_compared_to_every_baseline(report: dict[str, object]) -> None:
    ratios = report["ratios"]
    assert isinstance(ratios, list)
    assert sorted((r["concurrency"], r["baseline"]) for r in ratios) == sorted(
        (level, baseline) for level in LEVELS for baseline in ("trio", "asyncio", "blocking")
    )
    for ratio in ratios:
        assert len(ratio["per_round"]) == ROUNDS
    targets = report["targets"]
    assert isinstance(targets, list)
    names = [target["name"] for target in targets]
    assert "meshtls / trio handshakes/s at concurrency 1" in names
    assert "meshtls p99 / p50 latency at concurrency 1" in names


def test_the_text_report_names_every_stack(report: dict[str, object]) -> None:
    text = handshake.render(report)
    for stack in STACKS:
        assert f"\n{stack} " in text


@pytest.mark.parametrize("stack", ["trio", "meshtls"])
def test_idle_memory_is_measured(stack: str, tmp_path: Path) -> None:
    stacks = handshake.build_stacks([stack])
    flavour = stacks[0]
    assert isinstance(flavour, handshake._TrioFlavour)
    identity = handshake.make_identity(tmp_path)
    figures = handshake.idle_memory(flavour, identity, 20)
    assert figures["streams"] == 40
    heap = figures["python_heap_bytes"]
    assert isinstance(heap, int)
    assert heap > 0  # 20 live connections hold Python objects; tracemalloc sees them all
    assert isinstance(figures["rss_bytes"], int)  # may be 0 or less for so few
    malloc = figures["malloc_bytes"]
    assert malloc is None or (isinstance(malloc, int) and malloc > 0)


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert handshake.percentile(values, 50) == 3.0
    assert handshake.percentile(values, 90) == pytest.approx(4.6)
    assert handshake.percentile(values, 100) == 5.0
    assert handshake.percentile([7.0], 99) == 7.0
    assert math.isnan(handshake.percentile([], 50))


def test_progress_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = handshake.Progress(20, "lines", out)
    progress.start("round 1/1 trio c=1")
    for _ in range(10):
        progress.tick()
    progress.finish(10, "123.4 handshakes/s")
    progress.close()
    assert out.getvalue() == "round 1/1 trio c=1: 123.4 handshakes/s\n"


@pytest.mark.parametrize("argv", [["--stacks", "nope"], ["--count", "0"], ["--concurrency", "1,x"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        handshake.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_chart_draws_a_png(report: dict[str, object], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks import chart

    bars = chart.read_bars(report)
    assert len(bars) == len(STACKS) * len(LEVELS)
    assert all(bar.slowest <= bar.rate <= bar.fastest for bar in bars)
    out = tmp_path / "chart.png"
    source = tmp_path / "report.json"
    source.write_text(json.dumps(report))
    assert chart.main([str(source), str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_P_4_warm_cache_row_looks_up_on_every_handshake(tmp_path: Path) -> None:
    """The revocation-on row is honest: each handshake (warm-up included) runs the cache
    lookup on both sides, and every verdict is a cached ``good``."""
    stack = handshake.MeshtlsRevocationStack()
    identity = handshake.make_identity(tmp_path)
    count = 7
    step = stack.run(identity, 2, count, lambda: None)
    assert step.errors == 0, step.first_error
    assert len(step.latencies) == count
    handshakes = count + handshake.WARMUP
    assert stack.cache_checks("good") == 2 * handshakes  # server and client each look up
    assert stack.cache_checks("unknown") == 0
    assert stack.cache_checks("revoked") == 0


def test_P_4_revocation_on_is_compared_to_off_in_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "handshake.json"
    argv = ["--count", "5", "--rounds", "2", "--concurrency", "1", "--quiet", "--no-memory"]
    argv += ["--stacks", "meshtls,meshtls-rev", "--json", str(out)]
    assert handshake.main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["stack"] for r in report["results"]] == ["meshtls", "meshtls-rev"]
    (entry,) = report["revocation"]
    assert entry["concurrency"] == 1
    assert entry["ratio"] > 0
    assert len(entry["per_round"]) == 2
    on, off = (r["rounds"] for r in report["results"][::-1])
    each = [
        a["handshakes_per_second"] / b["handshakes_per_second"]
        for a, b in zip(on, off, strict=True)
    ]
    assert entry["paired"] == round(statistics.median(each), 3)
    assert entry["p50_ratio"] > 0
    targets = {target["name"]: target for target in report["targets"]}
    target = targets["meshtls revocation on / off handshakes/s at concurrency 1"]
    assert (target["value"], target["ratio_of_medians"]) == (entry["paired"], entry["ratio"])
    assert "revocation on (soft-fail, warm cache) / off" in handshake.render(report)


# ---------------------------------------------------------------- issue 11's pyOpenSSL rows

ENGINE_STACKS = ["trio", "pyopenssl-membio", "pyopenssl-membio-pq", "spiffe-tls"]


@pytest.fixture(scope="module")
def engine_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "engine.json"
    argv = ["--count", str(COUNT), "--rounds", str(ROUNDS), "--concurrency", "1,4"]
    argv += ["--stacks", ",".join(ENGINE_STACKS), "--json", str(out), "--quiet", "--no-memory"]
    assert handshake.main(argv) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_pyopenssl_rows_run_at_concurrency_1_only_without_errors(
    engine_report: dict[str, object],
) -> None:
    pytest.importorskip("spiffetls")
    results = engine_report["results"]
    assert isinstance(results, list)
    assert sorted((r["stack"], r["concurrency"]) for r in results) == sorted(
        [("trio", 1), ("trio", 4)] + [(stack, 1) for stack in ENGINE_STACKS[1:]]
    )
    for entry in results:
        assert entry["errors"] == 0, entry["first_error"]
        assert entry["samples"] == COUNT * ROUNDS
    assert engine_report["unavailable"] == []
    env = engine_report["environment"]
    assert isinstance(env, dict)
    assert env["pyopenssl_openssl"].startswith("OpenSSL 4.")


def test_every_pyopenssl_row_is_a_ratio_to_trio_and_the_hybrid_to_x25519(
    engine_report: dict[str, object],
) -> None:
    pytest.importorskip("spiffetls")
    ratios = engine_report["versus_trio"]
    assert isinstance(ratios, list)
    assert sorted((r["stack"], r["over"]) for r in ratios) == sorted(
        [(stack, "trio") for stack in ENGINE_STACKS[1:]]
        + [("pyopenssl-membio-pq", "pyopenssl-membio")]
    )
    assert all(r["ratio"] > 0 and r["paired"] > 0 for r in ratios)
    assert all(len(r["per_round"]) == ROUNDS for r in ratios)
    text = handshake.render(engine_report)
    for stack in ENGINE_STACKS:
        assert f"\n{stack} " in text
    assert "pyopenssl-membio-pq / pyopenssl-membio" in text


def test_meshtls_is_compared_to_the_pyopenssl_rows(tmp_path: Path) -> None:
    pytest.importorskip("spiffetls")
    out = tmp_path / "handshake.json"
    argv = ["--count", "5", "--rounds", "1", "--concurrency", "1,2", "--quiet", "--no-memory"]
    argv += ["--stacks", "meshtls,pyopenssl-membio,spiffe-tls", "--json", str(out)]
    assert handshake.main(argv) == 0
    report = json.loads(out.read_text())
    assert sorted((r["concurrency"], r["baseline"]) for r in report["ratios"]) == [
        (1, "pyopenssl-membio"),
        (1, "spiffe-tls"),
    ]
    text = handshake.render(report)
    assert "vs pyopenssl-membio" in text
    assert "vs spiffe-tls" in text


@pytest.mark.parametrize(
    ("stack", "group"), [("pyopenssl-membio", "x25519"), ("pyopenssl-membio-pq", "X25519MLKEM768")]
)
def test_the_membio_rows_negotiate_their_labelled_group(
    stack: str, group: str, tmp_path: Path
) -> None:
    row = handshake.PyOpenSSLMembioStack(stack)
    step = row.run(handshake.make_identity(tmp_path), 1, 3, lambda: None)
    assert step.errors == 0, step.first_error
    assert len(step.latencies) == 3
    assert row.last_group == group


def test_a_missing_spiffe_tls_is_reported_unavailable_not_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handshake, "spiffe_tls_unavailable", lambda: "not here (test)")
    out = tmp_path / "handshake.json"
    argv = ["--count", "3", "--rounds", "1", "--concurrency", "1", "--quiet", "--no-memory"]
    argv += ["--stacks", "trio,spiffe-tls", "--json", str(out)]
    assert handshake.main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["stack"] for r in report["results"]] == ["trio"]
    assert report["unavailable"] == [{"stack": "spiffe-tls", "reason": "not here (test)"}]
    assert "spiffe-tls          unavailable: not here (test)" in handshake.render(report)


# ---------------------------------------------------------------- issue 11 rows and targets

ISSUE_11_STACKS = [
    "meshtls",
    "meshtls-x25519",
    "trio",
    "asyncio",
    "uvloop",
    "pyopenssl-membio",
    "pyopenssl-membio-pq",
    "spiffe-tls",
]


@pytest.fixture(scope="module")
def report_11(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small real run of every issue-11 row at concurrency 1 and 64 (64 workers at most
    `--count`: the c=64 targets are computed, the figures are not judged)."""
    out = tmp_path_factory.mktemp("bench11") / "handshake.json"
    argv = ["--count", "8", "--rounds", "2", "--concurrency", "1,64", "--no-memory"]
    argv += ["--stacks", ",".join(ISSUE_11_STACKS), "--json", str(out), "--quiet"]
    assert handshake.main(argv) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def _results(report: dict[str, object]) -> list[object]:
    results = report["results"]
    assert isinstance(results, list)
    return results


def test_issue_11_rows_are_measured(report_11: dict[str, object]) -> None:
    assert report_11["unavailable"] == []  # uvloop and spiffe-tls are installed here
    rows = {(r["stack"], r["concurrency"]): r for r in _results(report_11) if isinstance(r, dict)}
    for stack in ("meshtls", "meshtls-x25519", "trio", "asyncio", "uvloop"):
        for level in (1, 64):
            entry = rows[(stack, level)]
            assert entry["errors"] == 0, entry["first_error"]
            assert entry["handshakes_per_second"] > 0
    for stack in ("pyopenssl-membio", "pyopenssl-membio-pq", "spiffe-tls"):
        assert rows[(stack, 1)]["handshakes_per_second"] > 0
        assert (stack, 64) not in rows  # sequential rows
    text = handshake.render(report_11)
    assert "\nmeshtls-x25519 " in text
    assert "\nuvloop " in text


def test_issue_11_targets_are_computed_from_this_run(report_11: dict[str, object]) -> None:
    rows = {(r["stack"], r["concurrency"]): r for r in _results(report_11) if isinstance(r, dict)}
    targets = report_11["targets"]
    assert isinstance(targets, list)
    by_name = {str(target["name"]): target for target in targets}
    for (stack, baseline, level), (relation, bound, issue) in handshake.RATIO_TARGETS.items():
        target = by_name[f"{stack} / {baseline} handshakes/s at concurrency {level}"]
        mine, theirs = rows[(stack, level)]["rounds"], rows[(baseline, level)]["rounds"]
        assert len(mine) == len(theirs) == 2
        each = [
            m["handshakes_per_second"] / o["handshakes_per_second"]
            for m, o in zip(mine, theirs, strict=True)
        ]
        value = round(statistics.median(each), 3)  # paired: the median of per-round ratios
        assert target["value"] == value
        assert target["ratio_of_medians"] == round(
            rows[(stack, level)]["handshakes_per_second"]
            / rows[(baseline, level)]["handshakes_per_second"],
            3,
        )
        assert target["issue"] == issue
        assert target["target"] == f"{relation} {bound}"
        assert target["met"] is (value >= bound if relation == ">=" else value > bound)
    spread = by_name["meshtls p99 / p50 latency at concurrency 1"]
    latency = rows[("meshtls", 1)]["latency_ms"]
    assert spread["value"] == round(latency["p99"] / latency["p50"], 3)
    assert spread["met"] is (spread["value"] <= 2.0)
    memory = by_name["meshtls RSS bytes per idle MeshStream"]
    assert memory["value"] is None  # --no-memory: reported, not judged
    assert memory["met"] is None
    assert "not measured in this run" in handshake.render(report_11)


def test_meshtls_is_compared_to_the_floor_and_spiffe_tls(report_11: dict[str, object]) -> None:
    rows = {(r["stack"], r["concurrency"]): r for r in _results(report_11) if isinstance(r, dict)}
    peers = report_11["versus_peers"]
    assert isinstance(peers, list)
    assert [(p["stack"], p["over"]) for p in peers] == [
        (stack, over)
        for stack in ("meshtls", "meshtls-x25519")
        for over in ("pyopenssl-membio", "pyopenssl-membio-pq", "spiffe-tls")
    ]
    for entry in peers:
        mine = rows[(entry["stack"], 1)]["handshakes_per_second"]
        theirs = rows[(entry["over"], 1)]["handshakes_per_second"]
        assert entry["ratio"] == round(mine / theirs, 3)
        assert entry["note"] is None
    text = handshake.render(report_11)
    assert "meshtls             / spiffe-tls" in text


def test_hybrid_cost_is_computed_from_the_two_meshtls_rows(report_11: dict[str, object]) -> None:
    rows = {(r["stack"], r["concurrency"]): r for r in _results(report_11) if isinstance(r, dict)}
    costs = report_11["hybrid_cost"]
    assert isinstance(costs, list)
    assert [cost["concurrency"] for cost in costs] == [1, 64]
    for cost in costs:
        hybrid = rows[("meshtls", cost["concurrency"])]
        classic = rows[("meshtls-x25519", cost["concurrency"])]
        rate = hybrid["handshakes_per_second"] / classic["handshakes_per_second"]
        assert cost["ratio"] == round(rate, 3)
        assert len(cost["per_round"]) == 2
        assert cost["cpu_us_per_handshake_hybrid"] == round(
            hybrid["cpu_ms_per_handshake"] * 1000, 1
        )
        assert cost["cpu_us_per_handshake_x25519"] == round(
            classic["cpu_ms_per_handshake"] * 1000, 1
        )
        assert cost["cpu_us_extra"] == pytest.approx(
            cost["cpu_us_per_handshake_hybrid"] - cost["cpu_us_per_handshake_x25519"]
        )
    assert "hybrid (X25519MLKEM768) vs X25519" in handshake.render(report_11)


def _row(
    stack: str, level: int, rate: float, p50: float = 1.0, p99: float = 1.5
) -> dict[str, object]:
    return {
        "stack": stack,
        "concurrency": level,
        "handshakes_per_second": rate,
        "cpu_ms_per_handshake": 1.0,
        "rounds": [{"handshakes_per_second": rate}],
        "latency_ms": {"p50": p50, "p99": p99},
    }


def test_a_target_flips_with_the_figures() -> None:
    """The verdict follows the numbers: 1.8x trio is met, 1.79x is not; a tie at c=64 is not
    'ahead of asyncio'; p99/p50 of 2.1 fails; a stack left out is not measured, not met."""
    base = [_row("trio", 1, 100.0), _row("asyncio", 64, 200.0), _row("trio", 64, 200.0)]

    def verdicts(results: list[dict[str, object]]) -> dict[str, object]:
        return {str(t["name"]): t["met"] for t in handshake.judge(results, [])}

    met = verdicts([*base, _row("meshtls-x25519", 1, 180.0), _row("meshtls", 64, 200.0)])
    assert met["meshtls-x25519 / trio handshakes/s at concurrency 1"] is True
    assert met["meshtls / asyncio handshakes/s at concurrency 64"] is False  # a tie
    assert met["meshtls / trio handshakes/s at concurrency 64"] is True  # issue 3: not behind
    assert met["meshtls / uvloop handshakes/s at concurrency 64"] is None  # uvloop not run
    assert met["meshtls / trio handshakes/s at concurrency 1"] is None  # meshtls c=1 not run
    missed = verdicts([*base, _row("meshtls-x25519", 1, 179.0), _row("meshtls", 1, 160.0, 1, 2.1)])
    assert missed["meshtls-x25519 / trio handshakes/s at concurrency 1"] is False
    assert missed["meshtls / trio handshakes/s at concurrency 1"] is True
    assert missed["meshtls p99 / p50 latency at concurrency 1"] is False


def _rounds(stack: str, rates: list[float]) -> dict[str, object]:
    row = _row(stack, 1, statistics.median(rates))
    row["rounds"] = [{"handshakes_per_second": rate} for rate in rates]
    return row


def test_a_ratio_target_is_judged_on_paired_rounds_so_drift_cancels() -> None:
    """The machine slows down and speeds up between rounds and both stacks with it:
    meshtls-x25519 is 2x, 1.8x and 1.27x trio round by round (paired: 1.8x), while its
    median rate (round 1's) over trio's median rate (round 3's) is 1.33x, which would call
    1.8x not met. One round's ratio alone does not decide either way."""
    trio = _rounds("trio", [100.0, 200.0, 150.0])
    mesh = _rounds("meshtls-x25519", [200.0, 360.0, 190.0])
    (target,) = [
        t
        for t in handshake.judge([trio, mesh], [])
        if t["name"] == "meshtls-x25519 / trio handshakes/s at concurrency 1"
    ]
    assert handshake.per_round(mesh, trio) == [2.0, 1.8, 1.267]
    assert target["value"] == 1.8
    assert target["met"] is True
    assert target["ratio_of_medians"] == 1.333
    slower = _rounds("meshtls-x25519", [170.0, 350.0, 190.0])  # two rounds under 1.8x
    assert handshake.paired(slower, trio) == 1.7
    (row,) = [r for r in handshake.versus_trio([trio, slower]) if r["stack"] == "meshtls-x25519"]
    assert (row["paired"], row["ratio"], row["per_round"]) == (1.7, 1.267, [1.7, 1.75, 1.267])


def test_a_missing_uvloop_is_reported_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    (stack,) = handshake.build_stacks(["uvloop"])
    assert isinstance(stack, handshake.UnavailableStack)
    assert "'bench' dependency group" in stack.reason
    report = handshake.run_benchmark(
        handshake.Options(count=1, rounds=1, concurrency=(1,), stacks=("uvloop",), memory=False)
    )
    assert report["results"] == []
    assert report["unavailable"] == [{"stack": "uvloop", "reason": stack.reason}]
