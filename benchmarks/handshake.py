"""Handshake benchmark: meshtls against bare trio.SSLStream, asyncio and blocking ssl.

The same as ``meshtls bench handshake``; see `meshtls._bench` for how it measures.

    python benchmarks/handshake.py [--count 300] [--rounds 5] [--concurrency 1,16,64] [--json F]
"""

from __future__ import annotations

from meshtls._bench import main

if __name__ == "__main__":
    raise SystemExit(main())
