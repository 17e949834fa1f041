"""``meshtls bench mesh`` and ``bench messages`` on tiny runs: the reports are whole and their
numbers agree with each other and with the nodes' own metrics. No figure is judged for speed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
from pathlib import Path

import pytest
import trio

import meshtls
from meshtls import _bench_mesh as bench
from meshtls._bench import MeshtlsStack, Tally, make_identity
from meshtls._cli import main as cli_main
from meshtls._node import Node
from meshtls._stream import MeshStream

NODES = 3
LINKS = NODES * (NODES - 1)
COUNT = 12
SIZES = (1024, 65536)
LEVELS = (1, 4)


# ---------------------------------------------------------------- bench mesh


@pytest.fixture(scope="module")
def mesh_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "mesh.json"
    argv = ["--nodes", f"2,{NODES}", "--rounds", "2", "--baseline-count", "5"]
    assert bench.main_mesh([*argv, "--json", str(out), "--quiet"]) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_mesh_handshakes_are_counted_by_the_nodes_not_assumed(
    mesh_report: dict[str, object],
) -> None:
    results = mesh_report["results"]
    assert isinstance(results, list)
    assert [entry["nodes"] for entry in results] == [2, NODES]
    for entry in results:
        links = entry["nodes"] * (entry["nodes"] - 1)
        assert entry["links_expected"] == links
        assert entry["handshakes_match_links"] is True
        assert entry["errors"] == 0, entry["first_error"]
        assert len(entry["rounds"]) == 2
        for one in entry["rounds"]:
            # every node dialed every other: one verified handshake per link on each end
            assert one["handshakes_client_ok"] == links
            assert one["handshakes_server_ok"] == links
            assert one["handshakes_failed"] == 0
            assert one["time_to_full_mesh_s"] > 0
            assert one["startup_s"] > 0
            assert one["open_fds"] >= 2 * links
            assert one["handshakes_per_second"] == pytest.approx(
                links / one["time_to_full_mesh_s"], rel=0.01
            )
            assert one["dials"] == {"ok": links}  # the pool's own count: one dial per link
            assert one["links_ended"] == {}
            assert one["cpu_ms_per_link"] > 0
            assert len(one["gc"]["collections"]) == len(one["gc"]["seconds"]) == 3
            assert 0 <= one["gc"]["longest_s"] <= sum(one["gc"]["seconds"])


def test_mesh_rate_is_set_beside_the_single_pair_rate_of_the_same_run(
    mesh_report: dict[str, object],
) -> None:
    pair = mesh_report["single_pair"]
    assert isinstance(pair, dict)
    assert pair["stack"] == "meshtls"
    assert pair["concurrency"] == 1
    assert pair["errors"] == 0
    assert [r["handshakes"] for r in pair["rounds"]] == [5, 5]
    for entry in mesh_report["results"]:  # type: ignore[attr-defined]
        rates = sorted(r["handshakes_per_second"] for r in entry["rounds"])
        assert rates[0] <= entry["handshakes_per_second"] <= rates[-1]
        assert entry["ratio_to_single_pair"] == pytest.approx(
            entry["handshakes_per_second"] / pair["handshakes_per_second"], abs=0.002
        )
        assert len([r["ratio_to_single_pair"] for r in entry["rounds"]]) == 2
    text = bench.render_mesh(mesh_report)
    assert "single pair" in text
    assert f"\n{NODES:>5d} {LINKS:>6d} " in text


# ---------------------------------------------------------------- bench messages


@pytest.fixture(scope="module")
def messages_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "messages.json"
    argv = ["--size", "1KiB,64KiB", "--concurrency", "1,4", "--count", str(COUNT)]
    assert bench.main_messages([*argv, "--rounds", "2", "--json", str(out), "--quiet"]) == 0
    loaded: dict[str, object] = json.loads(out.read_text())
    return loaded


def test_messages_every_confirmed_send_arrived_once_and_was_counted(
    messages_report: dict[str, object],
) -> None:
    results = messages_report["results"]
    assert isinstance(results, list)
    assert sorted((r["stack"], r["size"], r["concurrency"]) for r in results) == sorted(
        (stack, size, level) for stack in bench.MESSAGE_STACKS for size in SIZES for level in LEVELS
    )
    for entry in results:
        assert entry["errors"] == 0, entry["first_error"]
        assert entry["sent"] == entry["received"] == entry["samples"] == 2 * COUNT
        assert [r["sent"] for r in entry["rounds"]] == [COUNT, COUNT]
        if entry["stack"] == "channel":  # the nodes' own counters agree (warm-up excluded)
            assert entry["counted_sent"] == entry["sent"]
            assert entry["counted_received"] == entry["sent"]
        else:
            assert entry["counted_sent"] is None


def test_messages_figures_are_consistent(messages_report: dict[str, object]) -> None:
    for entry in messages_report["results"]:  # type: ignore[attr-defined]
        latency = entry["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        rates = sorted(r["messages_per_second"] for r in entry["rounds"])
        assert rates[0] <= entry["messages_per_second"] <= rates[-1]
        assert entry["mib_per_second"] == pytest.approx(
            entry["messages_per_second"] * entry["size"] / (1 << 20), rel=0.001
        )
    ratios = messages_report["ratios"]
    assert isinstance(ratios, list)
    assert sorted((r["size"], r["concurrency"]) for r in ratios) == sorted(
        (size, level) for size in SIZES for level in LEVELS
    )
    for ratio in ratios:
        assert ratio["throughput_ratio"] > 0
        assert ratio["p99_ratio"] > 0
    text = bench.render_messages(messages_report)
    assert "channel / bare MeshStream" in text
    assert "\nchannel   1KiB   1 " in text


def test_messages_for_a_time_budget(tmp_path: Path) -> None:
    out = tmp_path / "messages.json"
    argv = ["--size", "64", "--concurrency", "2", "--seconds", "0.2", "--rounds", "1"]
    assert bench.main_messages([*argv, "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["options"]["count"] is None
    assert report["options"]["seconds"] == 0.2
    for entry in report["results"]:
        assert entry["sent"] == entry["received"] > 0
        (one,) = entry["rounds"]
        assert one["elapsed_s"] >= 0.2


# ---------------------------------------------------------------- the stream baseline


async def test_the_stream_baseline_confirms_each_message_after_the_receiver_stamped_it(
    tmp_path: Path,
) -> None:
    """Concurrent sends over one MeshStream: each send returns only once its message was
    whole at the receiver, and a stream that breaks fails the sends instead of hanging."""
    stack = MeshtlsStack()
    stack.setup(make_identity(tmp_path))
    inbound = [bench.Recorder(100)]
    async with trio.open_nursery() as nursery:
        port = await stack.serve(nursery, lambda s: bench._framed_receiver(inbound, s), Tally())
        stream = await stack.dial(port)
        assert isinstance(stream, MeshStream)
        sender = bench._FramedSender(stream)
        nursery.start_soon(sender.read_answers)
        filler = bytes(100)

        async def one(seq: int) -> None:
            inbound[0].sending(seq)
            await sender.send(bench.payload(seq, 100, filler))
            assert seq not in inbound[0].starts  # stamped (and matched) before the answer

        async with trio.open_nursery() as senders:
            for seq in range(20):
                senders.start_soon(one, seq)
        assert inbound[0].received == 20
        assert inbound[0].errors == 0
        assert len(inbound[0].latencies) == 20
        await stream.aclose()
        with pytest.raises(RuntimeError, match="broke"):
            await sender.send(bench.payload(99, 100, filler))
        nursery.cancel_scope.cancel()


def test_recorder_refuses_duplicates_unknown_and_wrong_sizes() -> None:
    recorder = bench.Recorder(16)
    filler = bytes(16)
    recorder.sending(1)
    recorder.got(bench.payload(1, 16, filler))
    recorder.got(bench.payload(1, 16, filler))  # twice
    recorder.got(bench.payload(2, 16, filler))  # never sent
    recorder.sending(3)
    recorder.got(bench.payload(3, 12, filler))  # short
    assert recorder.received == 4
    assert len(recorder.latencies) == 1
    assert recorder.errors == 3
    assert recorder.first_error == "message 1 was not sent, or arrived twice"


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "size"),
    [("1KiB", 1024), ("64KiB", 65536), ("1MiB", 1 << 20), ("4096", 4096), ("8", 8), ("2k", 2048)],
)
def test_sizes(text: str, size: int) -> None:
    assert bench.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1 KB", "-1", "7", "1.5KiB", "KiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_size(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "mesh", "--nodes", "1"],
        ["bench", "mesh", "--nodes", "3,x"],
        ["bench", "mesh", "--max-dials", "0"],
        ["bench", "mesh", "--max-dials", "1025"],
        ["bench", "messages", "--count", "5", "--seconds", "1"],
        ["bench", "messages", "--size", "3"],
        ["bench", "messages", "--seconds", "nan"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) <= 2  # the error line, and the --help hint
    assert "error" in captured.err


@pytest.mark.parametrize("what", ["mesh", "messages"])
def test_help_names_the_command(what: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", what, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: meshtls bench {what} ")
    assert "--json" in out


def test_a_mesh_too_big_for_the_fd_limit_is_refused_before_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench, "_soft_fd_limit", lambda: 1000)
    monkeypatch.setattr(bench, "raise_fd_limit", lambda: None)
    assert bench.fd_budget(20) == 2 * 20 * 19 + 4 * 20 + 64
    with pytest.raises(ValueError, match="file descriptors"):
        bench.run_mesh(bench.MeshOptions(nodes=(3, 30), rounds=1))


def test_summaries_of_failed_rounds_say_so() -> None:
    failed = bench.MeshRound(
        nodes=3,
        startup_s=0.1,
        elapsed_s=60.0,
        cpu_s=1.0,
        client_ok=4,
        server_ok=4,
        failed=0,
        dials={"ok": 4},
        links_ended={},
        fds=30,
        gc=bench.GcWatch(),
        error="no full mesh after 60 s: 4 of 6 connected",
    )
    entry = bench.summarise_mesh(3, [failed], 400.0, [400.0])
    assert entry["errors"] == 1
    assert entry["first_error"] == failed.error
    assert entry["handshakes_per_second"] == 0.0
    assert math.isnan(entry["time_to_full_mesh_s"])  # type: ignore[arg-type]


def test_gc_watch_counts_collections_only_while_watching() -> None:
    watch = bench.GcWatch()
    gc.collect()  # not watched
    with watch.watching():
        gc.collect()
        gc.collect(0)
    gc.collect()
    assert watch.collections[2] == 1  # an automatic young collection may add to [0] and [1]
    assert watch.collections[0] >= 1
    assert watch.seconds[2] > 0
    assert max(watch.seconds) <= watch.longest * sum(watch.collections)
    assert watch.report()["collections"] == watch.collections


def test_gc_freeze_is_undone_after_each_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []
    real_freeze = gc.freeze

    def freeze() -> None:  # the real freeze, counted: a freeze never made is no freeze undone
        frozen.append(1)
        real_freeze()

    monkeypatch.setattr(gc, "freeze", freeze)
    out = tmp_path / "mesh.json"
    argv = ["--nodes", "2", "--rounds", "1", "--baseline-count", "2", "--gc-freeze", "--quiet"]
    assert bench.main_mesh([*argv, "--json", str(out)]) == 0
    assert frozen == [1]
    report = json.loads(out.read_text())
    assert report["options"]["gc_freeze"] is True
    (entry,) = report["results"]
    assert entry["handshakes_match_links"] is True
    assert gc.get_freeze_count() == 0
    assert "gc.freeze() after start-up" in bench.render_mesh(report)


def test_max_dials_reaches_every_node_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_open_node = meshtls.open_node

    def open_node(config: meshtls.NodeConfig) -> contextlib.AbstractAsyncContextManager[Node]:
        seen.append(config.mesh.max_dials)  # what each mesh node really starts with
        return real_open_node(config)

    monkeypatch.setattr("meshtls._bench_mesh.open_node", open_node)
    out = tmp_path / "mesh.json"
    argv = ["--nodes", "3", "--rounds", "1", "--baseline-count", "2", "--max-dials", "1"]
    assert bench.main_mesh([*argv, "--quiet", "--json", str(out)]) == 0
    assert seen == [1, 1, 1]
    report = json.loads(out.read_text())
    assert report["options"]["max_dials"] == 1
    (entry,) = report["results"]
    assert entry["handshakes_match_links"] is True
    assert "max_dials 1" in bench.render_mesh(report)
    assert bench.node_config(tmp_path, 0).mesh.max_dials == 16  # the config default otherwise
