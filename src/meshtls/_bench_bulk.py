"""Bulk transfer over one stream on one core: meshtls against blocking ``ssl`` and trio.

    meshtls bench bulk [--mib 64] [--transfers 3] [--rounds 3]
        [--stacks blocking,trio,meshtls] [--write-size 65536] [--read-size 65536]
        [--cpu N | --no-pin] [--profile] [--json FILE] [--quiet]

Theory of operation (issue 11's bulk target; the unit of work is the perf anchors' "H"
job). One connection per stack and round, over 127.0.0.1 with a port the kernel picks,
with `_bench`'s ECDSA P-256 identities; the TLS 1.3 mutual handshake (chains verified,
SPIFFE checks for meshtls) is not timed. Then the sender repeats *transfers*: ``--mib``
MiB written in ``--write-size`` writes, then it waits for one byte that the receiver
sends once it has read all of them, in reads of at most ``--read-size``. One warm-up
transfer, then ``--transfers`` timed ones; a transfer's rate is MiB over its wall time.

Both ends live in this process and the process is pinned to ONE cpu (``--cpu``, default
the first usable one; ``--no-pin`` leaves the affinity alone), so sender and receiver
share a core, as in the anchors' one-core placement:

- ``blocking``: stdlib ``ssl`` (the system's OpenSSL) over blocking sockets, the
  receiver in a thread (``ssl`` drops the GIL around each ``SSL_read``/``SSL_write`` and
  each socket call); the baseline. The anchors ran the two ends as two processes pinned
  to one core; a thread pair also pays for the GIL hand-offs.
- ``trio``: bare `trio.SSLStream` over `trio.open_tcp_stream`/`trio.serve_tcp`, stdlib
  contexts, sender and receiver as two tasks of one `trio.run`.
- ``meshtls``: `meshtls.connect`/`meshtls.serve` (pyOpenSSL on cryptography's OpenSSL),
  two tasks of one `trio.run`.

The stacks are measured round-robin, each round starting with a different stack, so
noise lands on all alike. Reported per stack: the median over rounds of each round's
median transfer rate, the slowest and fastest transfer, and CPU microseconds per MiB
(both ends: process CPU over the timed transfers). The target of issue 11 is meshtls at
least 0.8x blocking; its verdict is computed from the same run, *paired* as in
``meshtls bench handshake``: the median over rounds of meshtls's rate over blocking's in
the same round (the ratio of medians is printed beside it). ``--profile`` runs one
more meshtls transfer (untimed, after the rounds) under `cProfile` and prints where its
time went.

Used by ``meshtls bench bulk``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast

import trio

import meshtls

from ._bench import (
    HOST,
    TRUST_DOMAIN,
    Identity,
    Progress,
    _port_of,
    environment,
    make_identity,
    paired,
    positive_int,
    stack_names,
)

MiB: Final = 1 << 20
STACKS: Final = ("blocking", "trio", "meshtls")
BASELINE: Final = "blocking"
#: Issue 11: meshtls moves at least this share of blocking stdlib ssl's MiB/s.
TARGET_RATIO_BLOCKING: Final = 0.8
PROFILE_ROWS: Final = 25
ACK: Final = b"k"


@dataclass(frozen=True, slots=True)
class Shape:
    """What one transfer is: `total` bytes in `write_size` writes, read `read_size` at most."""

    total: int
    write_size: int
    read_size: int

    @property
    def writes(self) -> int:
        return -(-self.total // self.write_size)

    @property
    def mib(self) -> float:
        return self.total / MiB


@dataclass(frozen=True, slots=True)
class Step:
    """One stack in one round: the seconds of each timed transfer and the process CPU."""

    seconds: list[float]
    cpu: float  # seconds, every thread of the process, over the timed transfers
    mib: float  # per transfer

    @property
    def rates(self) -> list[float]:
        return [self.mib / s for s in self.seconds if s > 0]

    @property
    def cpu_us_per_mib(self) -> float:
        return 1e6 * self.cpu / (self.mib * len(self.seconds))


Transfer = Callable[[], Awaitable[None]]


def _deadline(shape: Shape, transfers: int) -> float:
    """Seconds after which a stuck step fails rather than hangs (1 MiB/s would be absurd)."""
    return 60.0 + shape.mib * (transfers + 1)


def _pattern(size: int) -> bytes:
    return os.urandom(size)


# ---------------------------------------------------------------- blocking


def run_blocking(identity: Identity, shape: Shape, transfers: int) -> Step:
    """Stdlib ``ssl`` over blocking sockets: this thread sends, a thread receives."""
    server_context = identity.ssl_context("server")
    client_context = identity.ssl_context("client")
    timeout = _deadline(shape, transfers)
    problems: list[BaseException] = []
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(timeout)
        port = int(listener.getsockname()[1])

        def receive() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    buffer = bytearray(shape.read_size)
                    while True:
                        got = 0
                        while got < shape.total:
                            count = tls.recv_into(buffer, shape.read_size)
                            if not count:
                                return
                            got += count
                        tls.sendall(ACK)
            except BaseException as exc:  # reported by the sender
                problems.append(exc)

        receiver = threading.Thread(target=receive, name="bench-bulk-receiver")
        receiver.start()
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with client_context.wrap_socket(sock) as tls:
                    data = memoryview(_pattern(shape.write_size))

                    def one() -> None:
                        left = shape.total
                        while left > 0:
                            tls.sendall(data[: min(left, shape.write_size)])
                            left -= shape.write_size
                        if tls.recv(1) != ACK:
                            raise RuntimeError(f"no ack from the receiver: {problems}")

                    return _timed_sync(one, shape, transfers)
        finally:
            receiver.join(timeout)
            if problems:
                raise RuntimeError(f"blocking receiver: {problems[0]!r}") from problems[0]


def _timed_sync(one: Callable[[], None], shape: Shape, transfers: int) -> Step:
    one()  # warm-up
    seconds: list[float] = []
    cpu_start = time.process_time()
    for _ in range(transfers):
        start = time.perf_counter()
        one()
        seconds.append(time.perf_counter() - start)
    return Step(seconds, time.process_time() - cpu_start, shape.mib)


# ---------------------------------------------------------------- trio stacks

Serve = Callable[[trio.Nursery, Callable[[trio.abc.Stream], Awaitable[None]]], Awaitable[int]]
Dial = Callable[[int], Awaitable[trio.abc.Stream]]


async def _receiver(stream: trio.abc.Stream, shape: Shape) -> None:
    try:
        while True:
            got = 0
            while got < shape.total:
                data = await stream.receive_some(shape.read_size)
                if not data:
                    return
                got += len(data)
            await stream.send_all(ACK)
    finally:
        await stream.aclose()


async def _sender(stream: trio.abc.Stream, shape: Shape) -> Transfer:
    data = memoryview(_pattern(shape.write_size))

    async def one() -> None:
        left = shape.total
        while left > 0:
            await stream.send_all(data[: min(left, shape.write_size)])
            left -= shape.write_size
        if await stream.receive_some(1) != ACK:
            raise RuntimeError("no ack from the receiver")

    return one


async def _run_trio(
    serve: Serve,
    dial: Dial,
    shape: Shape,
    transfers: int,
    profile: cProfile.Profile | None = None,
) -> Step:
    """Server and client as tasks of this trio run; time `transfers` after one warm-up.
    With `profile`, one more transfer runs under it (not timed)."""
    with trio.fail_after(_deadline(shape, transfers + (1 if profile else 0))):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, functools.partial(_receiver, shape=shape))
            stream = await dial(port)
            try:
                one = await _sender(stream, shape)
                await one()  # warm-up
                seconds: list[float] = []
                cpu_start = time.process_time()
                for _ in range(transfers):
                    start = time.perf_counter()
                    await one()
                    seconds.append(time.perf_counter() - start)
                cpu = time.process_time() - cpu_start
                if profile is not None:
                    profile.enable()
                    try:
                        await one()
                    finally:
                        profile.disable()
            finally:
                await stream.aclose()
            nursery.cancel_scope.cancel()
    return Step(seconds, cpu, shape.mib)


def _trio_pair(identity: Identity) -> tuple[Serve, Dial]:
    server_context = identity.ssl_context("server")
    client_context = identity.ssl_context("client")

    async def serve(
        nursery: trio.Nursery, handler: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> int:
        async def on_tcp(tcp: trio.SocketStream) -> None:
            tls = trio.SSLStream(tcp, server_context, server_side=True)
            await tls.do_handshake()
            await handler(tls)

        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=HOST), on_tcp, 0)
        return _port_of(listeners)

    async def dial(port: int) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(HOST, port)
        tls = trio.SSLStream(tcp, client_context, server_side=False, https_compatible=False)
        await tls.do_handshake()
        return tls

    return serve, dial


def _meshtls_pair(identity: Identity) -> tuple[Serve, Dial]:
    authorize = meshtls.authorize_member_of(TRUST_DOMAIN)

    def source(role: Literal["server", "client"]) -> meshtls.FileSource:
        return meshtls.FileSource(
            cert=identity.cert(role), key=identity.key(role), bundle=identity.bundle
        )

    server_source, client_source = source("server"), source("client")

    async def serve(
        nursery: trio.Nursery, handler: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> int:
        start = functools.partial(
            meshtls.serve, handler, 0, host=HOST, source=server_source, authorize=authorize
        )
        return _port_of(await nursery.start(start))

    async def dial(port: int) -> trio.abc.Stream:
        return await meshtls.connect(HOST, port, source=client_source, authorize=authorize)

    return serve, dial


def run_stack(
    name: str,
    identity: Identity,
    shape: Shape,
    transfers: int,
    profile: cProfile.Profile | None = None,
) -> Step:
    """Measure one stack once: a fresh connection, one warm-up, `transfers` timed."""
    if name == "blocking":
        return run_blocking(identity, shape, transfers)
    pair = _trio_pair(identity) if name == "trio" else _meshtls_pair(identity)
    return trio.run(functools.partial(_run_trio, *pair, shape, transfers, profile))


# ---------------------------------------------------------------- pinning


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[int | None]:
    """Pin this thread (and the threads it starts) to `cpu`, restoring the affinity after.

    None: leave the affinity alone. ValueError if `cpu` is not usable here; without
    ``os.sched_setaffinity`` (not Linux) a request to pin is refused the same way.
    """
    if cpu is None:
        yield None
        return
    problem = cpu_problem(cpu)
    if problem is not None:
        raise ValueError(problem)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def cpu_problem(cpu: int) -> str | None:
    """Why this process cannot be pinned to `cpu`, or None when it can."""
    get = getattr(os, "sched_getaffinity", None)
    if get is None or getattr(os, "sched_setaffinity", None) is None:
        return "this platform cannot pin a process to a cpu; use --no-pin"
    usable: set[int] = get(0)
    if cpu not in usable:
        return f"cpu {cpu} is not usable here (usable: {', '.join(map(str, sorted(usable)))})"
    return None


def default_cpu() -> int | None:
    """The first cpu this process may use, or None where affinity is unknown."""
    get = getattr(os, "sched_getaffinity", None)
    return min(get(0)) if get is not None else None


# ---------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Options:
    mib: int = 64
    transfers: int = 3
    rounds: int = 3
    stacks: tuple[str, ...] = STACKS
    write_size: int = 65536
    read_size: int = 65536
    cpu: int | None = None  # None: do not pin
    profile: bool = False


def summarise(stack: str, steps: Sequence[Step]) -> dict[str, object]:
    """Median over rounds of each round's median rate; slowest and fastest transfer."""
    every = [rate for step in steps for rate in step.rates]
    return {
        "stack": stack,
        "mib_per_second": round(statistics.median(statistics.median(s.rates) for s in steps), 1),
        "slowest_transfer": round(min(every), 1),
        "fastest_transfer": round(max(every), 1),
        "cpu_us_per_mib": round(statistics.median(step.cpu_us_per_mib for step in steps), 1),
        "rounds": [
            {
                "mib_per_second": round(statistics.median(step.rates), 1),
                "transfers": [round(rate, 1) for rate in step.rates],
                "cpu_us_per_mib": round(step.cpu_us_per_mib, 1),
            }
            for step in steps
        ],
    }


def compare(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Each stack's median MiB/s over blocking's and over trio's (ratios of medians)."""
    rates = {cast(str, r["stack"]): cast(float, r["mib_per_second"]) for r in results}
    ratios: list[dict[str, object]] = []
    for stack, rate in rates.items():
        for over in (BASELINE, "trio"):
            if stack != over and rates.get(over, 0) > 0:
                ratios.append({"stack": stack, "over": over, "ratio": round(rate / rates[over], 3)})
    return ratios


def judge(results: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Issue 11's bulk target, from this run: meshtls / blocking MiB/s >= 0.8, `paired`
    (``ratio_of_medians`` beside it); ``met`` and ``value`` None when either stack was left
    out."""
    rows = {cast(str, r["stack"]): r for r in results}
    value: float | None = None
    medians: float | None = None
    mesh, base = rows.get("meshtls"), rows.get(BASELINE)
    if mesh is not None and base is not None and cast(float, base["mib_per_second"]) > 0:
        value = paired(mesh, base, "mib_per_second")
        rate, base_rate = cast(float, mesh["mib_per_second"]), cast(float, base["mib_per_second"])
        medians = round(rate / base_rate, 3)
    return [
        {
            "name": "meshtls / blocking MiB/s over one stream on one core",
            "issue": 11,
            "value": value,
            "ratio_of_medians": medians,
            "target": f">= {TARGET_RATIO_BLOCKING}",
            "met": None if value is None else value >= TARGET_RATIO_BLOCKING,
        }
    ]


def profile_text(profile: cProfile.Profile, rows: int = PROFILE_ROWS) -> str:
    """The top `rows` functions by own time, then by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)
    return out.getvalue()


def run_benchmark(options: Options, progress: Progress | None = None) -> dict[str, object]:
    """Measure and return the whole report (the JSON document)."""
    shape = Shape(options.mib * MiB, options.write_size, options.read_size)
    stacks = [name for name in STACKS if name in options.stacks]
    progress = progress or Progress(0, "off", sys.stderr)
    progress.total = max(options.rounds * len(stacks) * options.transfers, 1)
    steps: dict[str, list[Step]] = {}
    done = 0
    profile = cProfile.Profile() if options.profile and "meshtls" in stacks else None
    with (
        pinned(options.cpu) as cpu,
        tempfile.TemporaryDirectory(prefix="meshtls-bench-bulk-") as tmp,
    ):
        for round_index in range(options.rounds):
            identity = make_identity(Path(tmp) / f"round-{round_index}")
            turn = round_index % len(stacks) if stacks else 0
            for name in stacks[turn:] + stacks[:turn]:
                progress.start(f"round {round_index + 1}/{options.rounds} {name}")
                step = run_stack(name, identity, shape, options.transfers)
                steps.setdefault(name, []).append(step)
                done += options.transfers
                progress.finish(done, f"{statistics.median(step.rates):8.1f} MiB/s")
        profiled = None
        if profile is not None:
            progress.note("profile: one more meshtls transfer under cProfile")
            run_stack("meshtls", make_identity(Path(tmp) / "profile"), shape, 0, profile)
            profiled = profile_text(profile)
    progress.close()
    results = [summarise(name, steps[name]) for name in stacks]
    env = environment()
    env["pinned_cpu"] = cpu
    return {
        "benchmark": "bulk",
        "environment": env,
        "options": {
            "mib": options.mib,
            "transfers": options.transfers,
            "rounds": options.rounds,
            "stacks": stacks,
            "write_size": options.write_size,
            "read_size": options.read_size,
            "cpu": options.cpu,
            "profile": options.profile,
        },
        "results": results,
        "ratios": compare(results),
        "targets": judge(results),
        "profile": profiled,
    }


def render(report: dict[str, object]) -> str:
    """The report as text."""
    env = cast(dict[str, object], report["environment"])
    options = cast(dict[str, object], report["options"])
    pinned_to = env.get("pinned_cpu")
    lines = [
        f"bulk transfer over one TLS 1.3 stream, both ends in this process"
        f" ({'pinned to cpu ' + str(pinned_to) if pinned_to is not None else 'not pinned'}):"
        f" python {env['python']}; blocking and trio on {env['openssl']},"
        f" meshtls on {env.get('pyopenssl_openssl', '?')}",
        f"{options['rounds']} rounds x {options['transfers']} transfers of {options['mib']} MiB"
        f" in {options['write_size']}-byte writes, reads of at most {options['read_size']}",
        f"{'stack':9s} {'MiB/s':>8s} {'per round (MiB/s)':>24s} {'min-max transfer':>17s}"
        f" {'cpu us/MiB':>10s}",
    ]
    for entry in cast(list[dict[str, object]], report["results"]):
        rounds = cast(list[dict[str, float]], entry["rounds"])
        per_round = " ".join(f"{r['mib_per_second']:.0f}" for r in rounds)
        spread = f"{entry['slowest_transfer']:.0f}-{entry['fastest_transfer']:.0f}"
        lines.append(
            f"{entry['stack']!s:9s} {entry['mib_per_second']:8.1f} {per_round:>24s}"
            f" {spread:>17s} {entry['cpu_us_per_mib']:10.1f}"
        )
    ratios = cast(list[dict[str, object]], report["ratios"])
    if ratios:
        lines.append("")
        lines.append("MiB/s as a ratio of medians:")
        for ratio in ratios:
            lines.append(f"  {ratio['stack']!s:9s} / {ratio['over']!s:9s} {ratio['ratio']!s:>6s}")
    lines.append("")
    lines.append("target (issue 11):")
    for target in cast(list[dict[str, object]], report["targets"]):
        if target["met"] is None:
            verdict, value = "not measured in this run", "-"
        else:
            verdict, value = ("met" if target["met"] else "NOT MET"), str(target["value"])
            value += f" paired (ratio of medians {target['ratio_of_medians']})"
        lines.append(f"  {target['name']}: {value} (target {target['target']}) {verdict}")
    if report.get("profile"):
        lines.append("")
        lines.append("profile of one meshtls transfer (cProfile; both ends, one thread):")
        lines.append(cast(str, report["profile"]).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def _cpu(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a cpu number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"want a cpu number >= 0: {text!r}")
    return value


def parser(
    prog: str | None = None, kind: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The bulk benchmark's options (`prog` and `kind` as `meshtls._bench.parser`)."""
    parser = kind(
        prog=prog,
        description="MiB/s over one TLS 1.3 stream on one core: meshtls, trio, blocking ssl.",
    )
    parser.add_argument("--mib", type=positive_int, default=64, help="MiB per transfer")
    parser.add_argument("--transfers", type=positive_int, default=3, help="timed, per round")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--stacks", type=stack_names(STACKS), default=STACKS, metavar="NAME,NAME")
    parser.add_argument("--write-size", type=positive_int, default=65536, metavar="BYTES")
    parser.add_argument("--read-size", type=positive_int, default=65536, metavar="BYTES")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cpu", type=_cpu, metavar="N", help="pin to cpu N (default: first)")
    where.add_argument("--no-pin", action="store_true", help="leave the cpu affinity alone")
    parser.add_argument("--profile", action="store_true", help="cProfile one more meshtls transfer")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    kind: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> int:
    """Run the bulk benchmark; 0 when every transfer completed, 2 on usage errors (a
    transfer that fails raises, with what failed). Ctrl-C raises `KeyboardInterrupt`."""
    cli = parser(prog, kind)
    args = cli.parse_args(argv)
    cpu = None if args.no_pin else (args.cpu if args.cpu is not None else default_cpu())
    options = Options(
        mib=args.mib,
        transfers=args.transfers,
        rounds=args.rounds,
        stacks=args.stacks,
        write_size=args.write_size,
        read_size=args.read_size,
        cpu=cpu,
        profile=args.profile,
    )
    mode: Literal["bar", "lines", "off"] = (
        "off" if args.quiet else "bar" if sys.stderr.isatty() else "lines"
    )
    if cpu is not None and (problem := cpu_problem(cpu)) is not None:
        cli.error(problem)
    report = run_benchmark(options, Progress(0, mode, sys.stderr))
    print(render(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
