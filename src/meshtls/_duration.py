"""Durations as people write them in flags and config: ``30s``, ``10m``, ``1h``, ``2h30m``.

Pure functions, shared by the command line, the config loader and error messages.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from ._boundary import shown
from ._errors import ConfigError

# [0-9], never \d: \d also matches other scripts' digits (Arabic-Indic "12s" would pass).
_DURATION_RE: Final = re.compile(
    r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
#: More digits than any duration that fits a `timedelta` needs (999999999 days in ms is 17);
#: checked before `int()`, which refuses over 4,300 digits with a ValueError of its own.
_MAX_DIGITS: Final = 18
_SHOWN: Final = 20
_DURATION_UNITS: Final = ("days", "hours", "minutes", "seconds", "milliseconds")
_DURATION_HINT: Final = (
    "use whole numbers with the units d, h, m, s or ms, largest first,"
    " such as 30s, 10m, 1h, 2h30m or 365d"
)


def parse_duration(text: str, *, setting: str | None = None) -> timedelta:
    """Parse a duration such as ``30s``, ``10m``, ``1h``, ``2h30m``, ``365d`` or ``500ms``.

    Pure; checks syntax only (``0s`` is fine; ranges are the caller's). Digits are ASCII
    only. Raises `ConfigError` naming `setting`, when given, and the bad value (cut short).
    """
    where = f"{setting}: " if setting else ""
    quoted = shown(text, _SHOWN)
    match = _DURATION_RE.fullmatch(text) if text else None
    if match is None:
        raise ConfigError(f"{where}bad duration {quoted}: {_DURATION_HINT}")
    values = [(unit, value) for unit, value in zip(_DURATION_UNITS, match.groups(), strict=True)]
    if any(value and len(value) > _MAX_DIGITS for _, value in values):
        raise ConfigError(
            f"{where}bad duration {quoted}: a number has more than {_MAX_DIGITS} digits"
        )
    try:
        return timedelta(**{unit: int(value) for unit, value in values if value})
    except OverflowError:
        raise ConfigError(f"{where}duration {quoted} is too large") from None


def parse_optional_duration(text: str, *, setting: str | None = None) -> timedelta | None:
    """Like `parse_duration`, but ``off`` turns the setting off (None)."""
    return None if text == "off" else parse_duration(text, setting=setting)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`, to whole milliseconds: ``2h30m``, ``365d``, ``-5m``,
    ``400ms``, ``1s500ms`` (a finer remainder is dropped)."""
    if value < timedelta(0):
        return "-" + format_duration(-value)
    milliseconds = value // timedelta(milliseconds=1)
    if milliseconds == 0:
        return "0s"
    seconds, milliseconds = divmod(milliseconds, 1000)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    units = zip(
        (days, hours, minutes, seconds, milliseconds), ("d", "h", "m", "s", "ms"), strict=True
    )
    return "".join(f"{amount}{unit}" for amount, unit in units if amount)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as ``2030-01-01T00:15:00Z``: how `/status`, the
    CLI and the logs write a time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
