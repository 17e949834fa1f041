"""The ``meshtls`` command's first instant: hold the stop signals, then load the rest.

`main` is the console script and ``python -m meshtls``. Importing the command takes a few
hundred milliseconds (trio, cryptography, prometheus_client); a SIGINT or SIGTERM in that
time used to be a KeyboardInterrupt traceback or a death without a word. So the signals
are held (`meshtls._signals`) before anything heavy is imported, and then:

- ``meshtls node`` and ``meshtls demo`` keep them held: their run loops act on what
  arrived (a stop during start-up is a clean exit 0);
- any other command gets Python's handlers back, and what arrived meanwhile is acted on
  as it would have been: SIGINT is ``meshtls: interrupted`` and exit 130, SIGTERM and
  SIGHUP end the process as they do by default.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from ._signals import signals_held


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshtls`` command with `argv` (default: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    with signals_held() as held:
        from ._cli import interrupted  # noqa: PLC0415 - the slow part, under the hold
        from ._cli import main as command  # noqa: PLC0415

        if _command(args) in _HOLDING:
            return command(args)
    for signum in held.pending:  # arrived during the imports: act on it now
        if signum == signal.SIGINT:
            return interrupted()
        signal.raise_signal(signum)  # the default handler is back: this ends the process
    return command(args)


#: The commands that keep the signals held and act on them themselves.
_HOLDING = frozenset({"node", "demo"})


def _command(args: list[str]) -> str | None:
    """The subcommand named in `args` (the first word that is not an option)."""
    return next((arg for arg in args if not arg.startswith("-")), None)
