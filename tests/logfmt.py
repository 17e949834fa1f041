"""A strict reader of meshtls's log lines, for tests: logfmt text and JSON, as dicts.

`parse_text` accepts exactly what `meshtls._logs` writes: ``key=value`` pairs split by one
space, a value bare (no space, ``=``, quote or backslash) or a JSON string. Anything else
fails the test, so a line that would confuse a logfmt pipeline cannot pass unnoticed.
"""

from __future__ import annotations

import json
import re
from typing import Final

_TS: Final = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
_PAIR: Final = re.compile(r'([A-Za-z_][^\s="\\]*)=("(?:[^"\\]|\\.)*"|[^\s="\\]+)')
LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})


def parse_text(line: str) -> dict[str, object]:
    """The fields of one ``--log-format text`` line; asserts it is well-formed logfmt.

    Keys ``name.entry`` (how a mapping field is written) come back as one mapping,
    ``fields[name][entry]``, as the JSON format has it.
    """
    fields: dict[str, object] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        assert match, f"not logfmt at column {position}: {line!r}"
        key, raw = match.groups()
        value = json.loads(raw) if raw.startswith('"') else raw
        head, dot, entry = key.partition(".")
        if dot and head not in ("ts", "level", "msg"):  # listen.mesh=...: one mapping field
            group = fields.setdefault(head, {})
            assert isinstance(group, dict), f"key {head} twice: {line!r}"
            assert entry not in group, f"key {key} twice: {line!r}"
            group[entry] = value
        else:
            assert key not in fields, f"key {key} twice: {line!r}"
            fields[key] = value
        position = match.end()
        if position < len(line):
            assert line[position] == " ", f"not logfmt at column {position}: {line!r}"
            position += 1
    _check_head(fields, line)
    return fields


def parse_json(line: str) -> dict[str, object]:
    """The fields of one ``--log-format json`` line; asserts ts, level and msg."""
    entry = json.loads(line)
    assert isinstance(entry, dict), line
    _check_head(entry, line)
    return entry


def _check_head(fields: dict[str, object], line: str) -> None:
    assert isinstance(fields.get("ts"), str), line
    assert re.fullmatch(_TS, str(fields["ts"])), line
    assert fields.get("level") in LEVELS, line
    assert isinstance(fields.get("msg"), str), line


PARSE: Final = {"text": parse_text, "json": parse_json}
