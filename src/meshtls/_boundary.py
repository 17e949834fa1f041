"""The boundary: where bytes from outside become our values, and foreign errors ours.

Theory of operation. meshtls parses what peers, files, bundle endpoints and the
Workload API send: certificates, keys, bundles, TOML, durations. The libraries that
parse them raise far more than ``ValueError``: cryptography has its own types
(``UnsupportedGeneralNameType``, ``DuplicateExtension``, ``InvalidVersion``,
``UnsupportedAlgorithm``), and the standard library raises ``OverflowError``,
``RecursionError`` and ``UnicodeError`` on hostile input. cryptography also parses
lazily: a certificate that loads may raise later, when an extension or a date is
first read. So a parse is not one call, it is a stretch of code.

`mapped` marks such a stretch. Inside it, any ``Exception`` that is not already a
`MeshError` becomes the caller's error type, chained with ``from`` (httpcore's
``map_exceptions``). ``BaseException``s that are not ``Exception`` (trio's
``Cancelled``, ``KeyboardInterrupt``) pass untouched. Every public entry point that
reads outside bytes opens one, so no foreign type can cross it.

Dates from certificates are clamped into `EARLIEST`..`LATEST` before any arithmetic:
RFC 5280's "no well-defined expiry", ``99991231235959Z``, is a real value, and adding a
clock skew to it overflows `datetime`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

from ._errors import MeshError

#: The earliest and latest instants meshtls computes with. Certificate dates outside
#: them are moved to them; a year of room on each side keeps any skew, margin or cache
#: lifetime we add or subtract inside `datetime`'s range.
EARLIEST: Final = datetime(2, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9998, 12, 31, tzinfo=UTC)

_MAX_TEXT: Final = 300


def clamp_time(moment: datetime) -> datetime:
    """`moment` moved into `EARLIEST`..`LATEST`, so that arithmetic on it cannot overflow."""
    if moment > LATEST:
        return LATEST
    if moment < EARLIEST:
        return EARLIEST
    return moment


def shown(text: str, limit: int = 60) -> str:
    """`text` quoted and escaped (``repr``) for a message, cut to about `limit` characters:
    hostile values reach messages, and a message must stay one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def printable(text: str, limit: int = _MAX_TEXT) -> str:
    """`text` as printable ASCII on one line, cut to `limit` characters: anything else
    (control characters, line breaks, non-ASCII, lone surrogates) is backslash-escaped.
    For hostile text shown unquoted in a message, such as a certificate's subject."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_error(exc: BaseException) -> str:
    """One printable line for a foreign exception: its type and a bounded, escaped message.

    Hostile input reaches messages (a lone surrogate, a control character), and a log
    line must never fail to encode, so everything outside printable ASCII is escaped.
    """
    try:
        text = printable(str(exc))
    except Exception:  # a hostile __str__ must not escape the boundary either
        text = "unprintable"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@contextmanager
def mapped(error: Callable[[str], MeshError]) -> Iterator[None]:
    """Turn any foreign ``Exception`` raised inside the block into ``error(description)``.

    Our own errors (`MeshError`) pass unchanged; so do ``BaseException``s such as trio's
    ``Cancelled``. The original is kept as ``__cause__``.
    """
    try:
        yield
    except MeshError:
        raise
    except Exception as exc:
        raise error(describe_error(exc)) from exc
