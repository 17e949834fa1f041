"""Smoke test of benchmarks/engine_io.py: every variant completes real handshakes over
127.0.0.1 and the pyOpenSSL ones negotiate the group they are labelled with."""

from __future__ import annotations

from benchmarks import engine_io


def test_every_io_variant_runs_and_negotiates_its_group() -> None:
    report = engine_io.run(count=3, rounds=1)
    rows = report["rows"]
    assert isinstance(rows, list)
    assert [row["variant"] for row in rows] == [
        "trio-sslstream",
        "pyopenssl-membio-x25519",
        "pyopenssl-membio-raw-x25519",
        "pyopenssl-socket-x25519",
        "pyopenssl-membio-hybrid",
        "pyopenssl-membio-raw-hybrid",
        "pyopenssl-socket-hybrid",
    ]
    assert all(row["handshakes_per_second"] > 0 for row in rows)
    assert report["negotiated"] == {"x25519": "x25519", "hybrid": "X25519MLKEM768"}
    assert "| pyopenssl-socket-hybrid |" in engine_io.render(report)
