"""Log lines for `meshtls node`: one line per event, logfmt text or JSON, fields as keys.

Theory of operation. meshtls's modules report an event with `event`: a short fixed
message (``"handshake rejected"``) and its fields as keywords (``reason="expired"``).
The fields travel on the `logging.LogRecord` (attribute ``meshtls_fields``), so each
formatter writes them its own way: `_Text` as logfmt (``key=value``, values quoted when
they need it, so no field can forge another), `_Json` as one key each. `log_context`
adds fields to every event logged inside it, by the task that entered it and by the
tasks it starts (trio copies context variables into child tasks): a connection's task
names its listener and peer once, and every line it logs carries them.

A record logged the plain way (``logger.info("text %s", x)``) has no fields and is
written with its message only; third-party loggers keep working.

Floods. What a peer can make happen again and again (a rejected handshake, a refused
connection) is logged through `throttled`, never `event` directly: a `Throttle` in the
log context lets each (event, key fields) through at most ``burst`` times per
``window`` seconds of Trio time, counts the rest, and writes one ``"log lines
suppressed"`` event with the exact count when that window ends. Whoever owns a listener
owns its throttle: it enters `Throttle.using` around the listener and runs
`Throttle.run` in the listener's nursery (which writes the summaries on time).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal, NoReturn

import trio

from ._errors import MeshError

LogFormat = Literal["text", "json"]

#: The attribute of a `logging.LogRecord` that holds an event's fields.
FIELDS: Final = "meshtls_fields"
#: Keys every line has; a field with one of these names is written as ``field_<name>``.
_RESERVED: Final = frozenset({"ts", "level", "logger", "msg", "traceback"})

_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("meshtls_log_context", default=_EMPTY)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add `fields` to every `event` logged inside the block (and by tasks started in it).

    Inner contexts and an event's own fields win over outer ones with the same key.
    """
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def context_fields() -> Mapping[str, object]:
    """The fields `log_context` has set for the current task (read-only)."""
    return _context.get()


def event(
    logger: logging.Logger,
    level: int,
    what: str,
    /,
    *,
    exc_info: BaseException | bool | None = None,
    **fields: object,
) -> None:
    """Log the event `what` at `level` with `fields` (plus the current `log_context`).

    `what` is a fixed, human message without values (values go in `fields`). A field
    whose value is None is left out. `exc_info` attaches a traceback: only for bugs,
    never for ordinary events such as a peer that went away.
    """
    if not logger.isEnabledFor(level):
        return
    merged = {**_context.get(), **fields}
    logger.log(
        level,
        what,
        exc_info=exc_info,
        extra={FIELDS: {k: v for k, v in merged.items() if v is not None}},
        stacklevel=2,
    )


def event_fields(
    logger: logging.Logger, level: int, what: str, fields: Mapping[str, object]
) -> None:
    """`event` with its fields given as a mapping (a record's fields, built elsewhere)."""
    _write(logger, level, what, {**_context.get(), **fields})


# ---------------------------------------------------------------- floods

#: Lines one (event, key) may write per window, and the window in seconds (Trio time).
DEFAULT_BURST: Final = 5
DEFAULT_WINDOW: Final = 10.0
#: Keys tracked at once; beyond that, new keys share one window (key fields ``"(other)"``).
DEFAULT_MAX_KEYS: Final = 1024
SUPPRESSED: Final = "log lines suppressed"
_OTHER: Final = "(other)"


class _Window:
    """One key's budget: when its window ends, what it logged, what it held back."""

    __slots__ = (
        "ends",
        "key_fields",
        "level",
        "listener",
        "logged",
        "logger",
        "suppressed",
        "what",
    )

    def __init__(
        self,
        ends: float,
        logger: logging.Logger,
        level: int,
        what: str,
        key_fields: dict[str, object],
    ) -> None:
        self.ends = ends
        self.logger = logger
        self.level = level
        self.what = what
        self.key_fields = key_fields
        self.listener = _context.get().get("listener")
        self.logged = 0
        self.suppressed = 0


class Throttle:
    """At most `burst` lines per (event, key fields) per `window` seconds; the rest counted.

    When a window that held lines back ends, one ``"log lines suppressed"`` event gives
    the event, its key fields, the listener and the exact count (`run` writes it on
    time; without `run`, the key's next event does). At most `max_keys` windows are
    open; further keys share one whose key fields read ``"(other)"``, so memory stays
    bounded too. Uses Trio time (`trio.current_time`), so tests jump the clock.
    """

    __slots__ = ("_opened", "_windows", "burst", "max_keys", "window")

    def __init__(
        self,
        *,
        burst: int = DEFAULT_BURST,
        window: float = DEFAULT_WINDOW,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if burst < 1 or max_keys < 1 or not window > 0:
            raise ValueError("a throttle needs burst >= 1, window > 0 and max_keys >= 1")
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        # Insertion order is end order: every window lasts `window`, and a key whose
        # window ended is removed before it opens a new one.
        self._windows: dict[tuple[object, ...], _Window] = {}
        self._opened = trio.Event()

    @contextmanager
    def using(self) -> Iterator[None]:
        """Make this the throttle of `throttled` calls in the block (and tasks started in it)."""
        token = _throttle.set(self)
        try:
            yield
        finally:
            _throttle.reset(token)

    def log(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        key_fields: dict[str, object],
        fields: dict[str, object],
    ) -> None:
        """`event` unless this key has used its budget for the window (then count it)."""
        now = trio.current_time()
        self.flush()  # the windows that ended, oldest first: none is looked up stale
        key = (what, *key_fields.values())
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                key_fields = dict.fromkeys(key_fields, _OTHER)
                key = (what, *key_fields.values())
                window = self._windows.get(key)
            if window is None:
                window = _Window(now + self.window, logger, level, what, key_fields)
                self._windows[key] = window
                self._opened.set()
        if window.logged < self.burst:
            window.logged += 1
            _write(logger, level, what, {**_context.get(), **fields, **key_fields})
        else:
            window.suppressed += 1

    def flush(self) -> None:
        """Close every window that has ended (writing its summary); `run` calls this."""
        now = trio.current_time()
        for key, window in list(self._windows.items()):
            if window.ends > now:
                break
            self._close(key, window)

    def _close(self, key: tuple[object, ...], window: _Window) -> None:
        del self._windows[key]
        if window.suppressed:
            _write(
                window.logger,
                window.level,
                SUPPRESSED,
                {
                    "listener": window.listener,
                    "event": window.what,
                    **window.key_fields,
                    "suppressed": window.suppressed,
                    "window": f"{self.window:g}s",
                },
            )

    async def run(self) -> NoReturn:
        """Write each summary when its window ends, until cancelled; then write the
        summaries of the windows still open (a count is never lost at shutdown)."""
        try:
            while True:
                if not self._windows:
                    self._opened = trio.Event()
                    await self._opened.wait()
                await trio.sleep_until(next(iter(self._windows.values())).ends)
                self.flush()
        finally:
            for key, window in list(self._windows.items()):
                self._close(key, window)


_throttle: ContextVar[Throttle | None] = ContextVar("meshtls_log_throttle", default=None)


def throttled(
    logger: logging.Logger,
    level: int,
    what: str,
    /,
    *,
    key: tuple[str, ...],
    **fields: object,
) -> None:
    """`event`, rate-limited by the current `Throttle` per `what` and the fields named in `key`.

    Without a throttle in the log context, it is `event`. Use it for every line a peer
    can repeat at will (rejections, refusals), with ``key=("reason", "source")``.
    """
    throttle = _throttle.get()
    if throttle is None or not logger.isEnabledFor(level):
        _write(logger, level, what, {**_context.get(), **fields})
        return
    key_fields = {name: fields.pop(name, None) for name in key}
    throttle.log(logger, level, what, key_fields, fields)


def _write(logger: logging.Logger, level: int, what: str, fields: Mapping[str, object]) -> None:
    """Log `what` with exactly `fields` (no log context), as `event` does."""
    if logger.isEnabledFor(level):
        logger.log(level, what, extra={FIELDS: {k: v for k, v in fields.items() if v is not None}})


# ---------------------------------------------------------------- values


def _json_value(value: object) -> object:
    """A field value as JSON keeps it: numbers and booleans native, the rest as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, MeshError):
        return str(value)  # our own errors are written as words already
    if isinstance(value, BaseException):
        from ._boundary import describe_error  # noqa: PLC0415 - _boundary imports nothing of ours

        return describe_error(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_json_value(item) for item in value]
    return str(value)


def _needs_quotes(text: str) -> bool:
    return (
        not text or any(c in text for c in ' ="\\') or not text.isprintable() or not text.isascii()
    )


def logfmt_value(value: object) -> str:
    """`value` as one logfmt value: bare when safe, else a JSON string (escaped, one line)."""
    plain = _json_value(value)
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, dict):
        plain = ",".join(f"{k}={v}" for k, v in plain.items())
    elif isinstance(plain, list):
        plain = ",".join(str(item) for item in plain)
    text = str(plain)
    return json.dumps(text) if _needs_quotes(text) else text


def _subkey(name: object) -> str:
    """A mapping's key as part of a logfmt key: what would end or break a key becomes ``_``."""
    text = str(name)
    return "".join(c if c.isprintable() and c.isascii() and c not in ' ="\\' else "_" for c in text)


def _key(name: str) -> str:
    return f"field_{name}" if name in _RESERVED else name


def record_fields(record: logging.LogRecord) -> Mapping[str, object]:
    """The fields `event` attached to `record` (empty for a plain record)."""
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, dict) else _EMPTY


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- formatters


class _Text(logging.Formatter):
    """logfmt: ``ts=... level=... msg="..." key=value ...``, one line per event."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"msg={logfmt_value(record.getMessage())}",
        ]
        for key, value in record_fields(record).items():
            if isinstance(value, Mapping):  # one key per entry: no "=" inside a value
                parts += [
                    f"{_key(key)}.{_subkey(name)}={logfmt_value(item)}"
                    for name, item in value.items()
                ]
            else:
                parts.append(f"{_key(key)}={logfmt_value(value)}")
        if record.exc_info:
            parts.append(f"traceback={logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _Json(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and each field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            entry[_key(key)] = _json_value(value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter for `log_format`."""
    return _Json() if log_format == "json" else _Text()


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> logging.Handler:
    """Send the ``meshtls`` logger to stderr, one line per event. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logger = logging.getLogger("meshtls")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
