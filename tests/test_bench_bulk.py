"""Smoke tests of `meshtls bench bulk`: every stack moves real bytes, the report is whole,
and the ratio and the issue-11 target are computed from the figures of the same run.

Small transfers (1 MiB), so this takes a few seconds; the figures themselves are not judged.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from meshtls import _bench_bulk as bulk
from meshtls._cli import main as cli_main

MIB = 1
TRANSFERS = 2
ROUNDS = 2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bulk") / "bulk.json"
    argv = ["--mib", str(MIB), "--transfers", str(TRANSFERS), "--rounds", str(ROUNDS)]
    argv += ["--write-size", "16384", "--read-size", "4096", "--json", str(out), "--quiet"]
    assert bulk.main(argv) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def _results(report: dict[str, object]) -> list[object]:
    results = report["results"]
    assert isinstance(results, list)
    return results


def test_every_stack_is_measured_every_round(report: dict[str, object]) -> None:
    rows = {r["stack"]: r for r in _results(report) if isinstance(r, dict)}
    assert list(rows) == ["blocking", "trio", "meshtls"]
    for entry in rows.values():
        rounds = entry["rounds"]
        assert isinstance(rounds, list)
        assert len(rounds) == ROUNDS
        for one in rounds:
            assert len(one["transfers"]) == TRANSFERS
            assert all(math.isfinite(rate) and rate > 0 for rate in one["transfers"])
            assert one["cpu_us_per_mib"] > 0
        assert entry["slowest_transfer"] <= entry["mib_per_second"] <= entry["fastest_transfer"]


def test_options_and_pinning_are_recorded(report: dict[str, object]) -> None:
    options = report["options"]
    assert isinstance(options, dict)
    assert options["write_size"] == 16384
    assert options["read_size"] == 4096
    env = report["environment"]
    assert isinstance(env, dict)
    assert env["pinned_cpu"] == bulk.default_cpu()
    assert env["pyopenssl_openssl"].startswith("OpenSSL")


def test_the_ratio_and_the_target_come_from_this_run(report: dict[str, object]) -> None:
    rows = {r["stack"]: r for r in _results(report) if isinstance(r, dict)}
    rates = {name: entry["mib_per_second"] for name, entry in rows.items()}
    ratios = report["ratios"]
    assert isinstance(ratios, list)
    by_pair = {(r["stack"], r["over"]): r["ratio"] for r in ratios}
    value = round(rates["meshtls"] / rates["blocking"], 3)
    assert by_pair[("meshtls", "blocking")] == value
    assert by_pair[("meshtls", "trio")] == round(rates["meshtls"] / rates["trio"], 3)
    targets = report["targets"]
    assert isinstance(targets, list)
    (target,) = targets
    each = [
        m["mib_per_second"] / b["mib_per_second"]
        for m, b in zip(rows["meshtls"]["rounds"], rows["blocking"]["rounds"], strict=True)
    ]
    assert target["value"] == round(statistics.median(each), 3)  # paired
    assert target["ratio_of_medians"] == value
    assert target["met"] is (target["value"] >= 0.8)
    text = bulk.render(report)
    assert "meshtls / blocking MiB/s over one stream on one core" in text
    assert ("NOT MET" in text) is (target["value"] < 0.8)


def test_the_target_flips_at_0_8_and_is_not_judged_without_blocking() -> None:
    def row(stack: str, *rates: float) -> dict[str, object]:
        rounds = [{"mib_per_second": rate} for rate in rates]
        return {"stack": stack, "mib_per_second": statistics.median(rates), "rounds": rounds}

    assert bulk.judge([row("blocking", 1000.0), row("meshtls", 800.0)])[0]["met"] is True
    assert bulk.judge([row("blocking", 1000.0), row("meshtls", 799.0)])[0]["met"] is False
    # paired: the box halves both stacks' speed in round 2 (700/1000, 410/500, 740/900);
    # the ratio of medians (round 1's 700 over round 3's 900) would say not met
    (drift,) = bulk.judge([row("blocking", 1000, 500, 900), row("meshtls", 700, 410, 740)])
    assert (drift["value"], drift["ratio_of_medians"], drift["met"]) == (0.82, 0.778, True)
    alone = bulk.judge([row("meshtls", 800.0)])[0]
    assert alone["met"] is None
    assert alone["value"] is None


def test_profile_shows_the_engine_path(tmp_path: Path) -> None:
    out = tmp_path / "bulk.json"
    argv = ["--mib", "1", "--transfers", "1", "--rounds", "1", "--stacks", "meshtls"]
    assert bulk.main([*argv, "--profile", "--no-pin", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["pinned_cpu"] is None
    profile = report["profile"]
    assert "receive_some" in profile
    assert "send_all" in profile
    assert "profile of one meshtls transfer" in bulk.render(report)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux cpu affinity")
def test_pinning_is_undone() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with bulk.pinned(cpu):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "bulk", "--stacks", "nope"],
        ["bench", "bulk", "--mib", "0"],
        ["bench", "bulk", "--cpu", "-1"],
        ["bench", "bulk", "--cpu", "100000"],
        ["bench", "bulk", "--cpu", "0", "--no-pin"],
        ["bench", "bulk", "--write-size", "x"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) <= 2
    assert "error" in captured.err


def test_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "bulk", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meshtls bench bulk ")
    assert "--read-size" in out
