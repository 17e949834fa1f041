"""Log lines for `meshtls node`: one line per event, ``key=value`` text or JSON.

meshtls's modules log events as ``"what key=value ..."`` on the ``meshtls`` logger;
these formatters only add the time and level, so both formats carry the same fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = f"ts={when} level={record.levelname.lower()} {record.getMessage()}"
        if record.exc_info:
            line += f" error={self.formatException(record.exc_info)!r}"
        return line


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entry = {
            "ts": when,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> logging.Handler:
    """Send the ``meshtls`` logger to stderr, one line per event. Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if log_format == "json" else _Text())
    logger = logging.getLogger("meshtls")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
