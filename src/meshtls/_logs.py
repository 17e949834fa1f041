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
from typing import Final, Literal

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


# ---------------------------------------------------------------- values


def _json_value(value: object) -> object:
    """A field value as JSON keeps it: numbers and booleans native, the rest as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
        parts += [f"{_key(k)}={logfmt_value(v)}" for k, v in record_fields(record).items()]
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
