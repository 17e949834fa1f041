"""`meshtls node`'s run loop: a node under the signals an operator sends.

Theory of operation. `meshtls._signals.signals_held` takes SIGTERM, SIGINT and SIGHUP from
the first instant of the command (before the rest of meshtls is imported): a signal that
arrives before the loop runs is only noted, never acted on by Python's default (death, or
a KeyboardInterrupt traceback). `run_node` then runs one Trio loop that owns both the
node and the signals:

- the node starts in its own task (`open_node`), while the loop listens; another task reads
  the node's incoming messages and drops them (logged at debug: a standalone node has no
  program to hand them to, and a queue nobody reads would hold up its peers' sends);
- SIGTERM or SIGINT *during start-up* (a Workload API that does not answer yet, a local
  CA being made) cancels the start-up: one log line, exit 0;
- SIGTERM or SIGINT once the node is up starts the drain (`Node.drain`, bounded by
  ``[node] shutdown_timeout``, read when the drain starts); a second one ends the drain
  at once;
- SIGHUP reloads: the config file is read again and handed to `Node.reload`, which
  applies it all or nothing. A config that does not load, or asks for a change that
  needs a restart, is one error line and leaves the running node as it was. A SIGHUP
  during start-up is kept and applied once the node is ready; one during the drain is
  ignored, with one line that says so.

Errors: `NodeError` (the node could not start) leaves `run_node` for the CLI to print;
nothing else that a signal causes is an error.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable

import trio

from ._boundary import describe_error
from ._config import NodeConfig, load_config
from ._errors import ConfigError
from ._logs import event
from ._node import Node, NodeError, ReloadError, open_node
from ._signals import SIGNALS, HeldSignals

logger = logging.getLogger("meshtls")


class _Run:
    """One run of ``meshtls node``: the node's task and the signal loop that steers it."""

    def __init__(self, load: Callable[[], NodeConfig] | None) -> None:
        self.load = load
        self.node: Node | None = None
        self.failed: NodeError | None = None
        self.stop = trio.Event()
        self.stop_signal = ""
        self.reload_pending = False
        self.drain_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None

    async def node_task(
        self, config: NodeConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the node until a stop signal, drain it, then end the run."""
        assert self.nursery is not None
        task_status.started()
        try:
            async with open_node(config) as node:
                self.node = node
                self.nursery.start_soon(_read_messages, node)
                if self.reload_pending:
                    self.reload_pending = False
                    self.reload()
                await self.stop.wait()
                node.begin_drain()  # before the line: whoever reads it is refused from then on
                shutdown = node.config.node.shutdown_timeout.total_seconds()
                event(
                    logger,
                    logging.INFO,
                    "shutting down",
                    signal=self.stop_signal,
                    drain=f"{shutdown:g}s",
                    live=node.live_connections,
                )
                with trio.move_on_after(shutdown) as scope:
                    self.drain_scope = scope
                    await node.drain()
                if node.live_connections:  # the timeout, or a second signal, ended the wait
                    timed_out = trio.current_time() >= scope.deadline
                    event(
                        logger,
                        logging.WARNING,
                        "drain cut short",
                        closing=node.live_connections,
                        by="shutdown_timeout" if timed_out else "a second stop signal",
                    )
        except NodeError as exc:
            self.failed = exc
        finally:
            self.nursery.cancel_scope.cancel()

    def on_signal(self, signum: signal.Signals) -> None:
        """Steer the run by one signal (see the theory of operation)."""
        assert self.nursery is not None
        if signum == signal.SIGHUP:
            if self.node is None:
                self.reload_pending = True
            elif not self.stop.is_set():
                self.reload()
            else:
                event(logger, logging.INFO, "reload ignored: the node is draining")
            return
        if self.node is None:
            event(logger, logging.INFO, "stopped during start-up", signal=signum.name)
            self.nursery.cancel_scope.cancel()
        elif not self.stop.is_set():
            self.stop_signal = signum.name
            self.stop.set()
        elif self.drain_scope is not None and not self.drain_scope.cancel_called:
            event(logger, logging.INFO, "stopping at once", signal=signum.name)
            self.drain_scope.cancel()

    def reload(self) -> None:
        """Read the config file again and apply it; one error line if that fails."""
        assert self.node is not None
        try:
            config = self.load() if self.load is not None else self.node.config
            self.node.reload(config)
        except (ConfigError, ReloadError) as exc:
            event(logger, logging.ERROR, "reload refused", error=str(exc))
        except Exception as exc:  # a bug in reloading must not stop a serving node
            event(logger, logging.ERROR, "reload failed", error=describe_error(exc))


async def _read_messages(node: Node) -> None:
    """`meshtls node` has no program to hand its messages to: it reads each one (so that its
    peers' sends are never held up by a queue nobody reads), logs it at debug and drops it.
    Ends when the node stops."""
    async for message in node.messages():
        event(
            logger,
            logging.DEBUG,
            "message received",
            spiffe_id=str(message.sender),
            size=len(message.data),
        )


async def _main(run: _Run, config: NodeConfig, held: HeldSignals) -> None:
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            run.nursery = nursery
            await nursery.start(run.node_task, config)
            while held.pending:
                run.on_signal(held.pending.pop(0))
            async for signum in signals:
                run.on_signal(signal.Signals(signum))


def run_node(
    config: NodeConfig, held: HeldSignals, *, load: Callable[[], NodeConfig] | None = None
) -> None:
    """Run a node with `config` until a stop signal; see the module docstring.

    `held` is from `signals_held`, entered before the config was read. `load` reads the
    config again for a SIGHUP (default: `load_config` on the file `config` came from; a
    config from no file has nothing to re-read). The caller passes its own when the
    running config is more than the file, such as tunnels given as flags. Returns once
    the node has stopped (exit 0). Raises `NodeError` when it could not start.
    """
    source = config.source
    if load is None and source is not None:
        load = functools.partial(load_config, source)
    run = _Run(load)
    trio.run(_main, run, config, held)
    if run.failed is not None:
        raise run.failed
