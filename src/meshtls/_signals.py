"""Stop and reload signals held from the first instant of the ``meshtls`` command.

Theory of operation. Python's defaults for SIGINT (a KeyboardInterrupt traceback) and
SIGTERM and SIGHUP (death without a word) are wrong for a node at any moment, and the
node's imports alone take a few hundred milliseconds. So `signals_held` replaces them,
before anything heavy is imported, with a handler that only notes the signal
(`HeldSignals`); whoever runs the program acts on the notes when it is ready
(`meshtls._service.run_node` for a node, `meshtls._entry` for the other commands).

The module imports nothing but the standard library, so holding costs nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
SIGNALS: Final = (*STOP_SIGNALS, signal.SIGHUP)


class HeldSignals:
    """The signals that arrived before anyone listened, in order (the earliest first)."""

    def __init__(self) -> None:
        self.pending: list[signal.Signals] = []

    def note(self, signum: int, frame: FrameType | None) -> None:
        """A `signal.signal` handler: remember the signal; act on it later."""
        self.pending.append(signal.Signals(signum))


_active: HeldSignals | None = None


@contextmanager
def signals_held() -> Iterator[HeldSignals]:
    """Note SIGTERM, SIGINT and SIGHUP instead of dying of them, until the block ends.

    Must run in the main thread. Re-entrant: inside an outer block it yields the outer
    `HeldSignals` and changes nothing (the outer block restores the handlers). The
    previous handlers come back when the outermost block ends.
    """
    global _active  # noqa: PLW0603 - one process, one set of signal handlers
    if _active is not None:
        yield _active
        return
    held = _active = HeldSignals()
    previous = {signum: signal.signal(signum, held.note) for signum in SIGNALS}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _active = None
