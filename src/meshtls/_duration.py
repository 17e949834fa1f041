"""Durations as people write them in flags and config: ``30s``, ``10m``, ``1h``, ``2h30m``.

Pure functions, shared by the command line, the config loader and error messages.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from ._errors import ConfigError

_DURATION_RE: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_UNITS: Final = ("days", "hours", "minutes", "seconds", "milliseconds")
_DURATION_HINT: Final = (
    "use whole numbers with the units d, h, m, s or ms, largest first,"
    " such as 30s, 10m, 1h, 2h30m or 365d"
)


def parse_duration(text: str, *, setting: str | None = None) -> timedelta:
    """Parse a duration such as ``30s``, ``10m``, ``1h``, ``2h30m``, ``365d`` or ``500ms``.

    Pure; checks syntax only (``0s`` is fine; ranges are the caller's). Raises `ConfigError`
    naming `setting`, when given, and the bad value.
    """
    match = _DURATION_RE.fullmatch(text) if text else None
    if match is None:
        where = f"{setting}: " if setting else ""
        raise ConfigError(f"{where}bad duration {text!r}: {_DURATION_HINT}")
    parts = {
        unit: int(value)
        for unit, value in zip(_DURATION_UNITS, match.groups(), strict=True)
        if value
    }
    try:
        return timedelta(**parts)
    except OverflowError:
        where = f"{setting}: " if setting else ""
        raise ConfigError(f"{where}duration {text!r} is too large") from None


def parse_optional_duration(text: str, *, setting: str | None = None) -> timedelta | None:
    """Like `parse_duration`, but ``off`` turns the setting off (None)."""
    return None if text == "off" else parse_duration(text, setting=setting)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`, to whole seconds: ``2h30m``, ``365d``, ``-5m``."""
    if value < timedelta(0):
        return "-" + format_duration(-value)
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    units = zip((days, hours, minutes, seconds), "dhms", strict=True)
    return "".join(f"{amount}{unit}" for amount, unit in units if amount)
